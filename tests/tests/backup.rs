//! Online backup under load and restore: a backup taken through `POST /v1/backup` while
//! agents report restores (with the real `restore`) to a store identical to the live one as it
//! was at the snapshot, and a collector serves from it.

use std::time::Duration;

use blockwatch_demo::provider::Provider;
use blockwatch_tests::*;

/// `POST path` with extra request headers, as a browser would send it; the status.
fn browser_post(addr: std::net::SocketAddr, path: &str, headers: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn events(data_dir: &std::path::Path) -> Vec<String> {
    let out =
        run(&bin("blockwatch-collector"), &["export", "--what", "events", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn a_backup_taken_under_load_restores_to_the_store_at_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let provider = Provider::start(dir.path());
    // A geo block from the start for one agent, so there are events to back up too.
    provider.blocked.lock().unwrap().push("127.0.0.21".parse().unwrap());
    let mut collector = CollectorProc::start_insecure(dir.path(), None, &format!("backup_dir = {backups:?}"));
    let mut agents: Vec<Proc> = (0..3)
        .map(|i| {
            let id = format!("b-{i}");
            let cfg =
                agent_toml(&id, &format!("r{i}"), collector.addr, &provider, dir.path(), &format!("127.0.0.2{i}"), 6);
            start_agent(dir.path(), &id, &cfg)
        })
        .collect();
    wait_for("results to be stored", Duration::from_secs(30), || (stored(collector.api).len() >= 150).then_some(()));

    // No backup yet. A page of another site cannot start one through a browser.
    assert!(http_get(collector.api, "/v1/backup").1.contains("\"state\":\"none\""));
    assert_eq!(browser_post(collector.api, "/v1/backup", "Sec-Fetch-Site: cross-site\r\n"), 403);
    assert_eq!(browser_post(collector.api, "/v1/backup", "Origin: http://attacker.example\r\n"), 403);
    assert!(http_get(collector.api, "/v1/backup").1.contains("\"state\":\"none\""));
    // One starts, and ingest goes on while it runs.
    let (status, body) = http_send(collector.api, "POST", "/v1/backup", b"");
    assert_eq!(status, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(started["state"], "running", "{body}");
    let done: serde_json::Value = wait_for("the backup", Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&http_get(collector.api, "/v1/backup").1).ok()?;
        (v["state"] != "running").then_some(v)
    });
    assert_eq!(done["state"], "done", "{done}");
    let path = std::path::PathBuf::from(done["path"].as_str().unwrap());
    assert!(path.starts_with(&backups), "{done}");
    let in_backup = done["backup"]["entries"]["results"].as_u64().unwrap() as usize;
    assert!(in_backup >= 150, "{done}");
    wait_for("ingest to go on past the backup", Duration::from_secs(30), || {
        (stored(collector.api).len() >= in_backup + 30).then_some(())
    });

    for a in &mut agents {
        assert_eq!(a.terminate(), Some(0), "{}", a.log());
    }
    assert_eq!(collector.proc.terminate(), Some(0), "{}", collector.proc.log());

    // Restore into a fresh directory with the real command.
    let dir2 = tempfile::tempdir().unwrap();
    let restored = dir2.path().join("collector-data");
    let out = run(
        &bin("blockwatch-collector"),
        &["restore", "--from", path.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The restored store is the live store as it was at the snapshot: the same results in
    // the same order, and the events logged by then.
    let live = export(&collector.data_dir);
    let back = export(&restored);
    assert_eq!(back.len(), in_backup);
    assert!(live.len() > back.len());
    assert!(live[..back.len()] == back[..], "the restored results differ from the live store's first {in_backup}");
    let (live_events, back_events) = (events(&collector.data_dir), events(&restored));
    assert!(!back_events.is_empty(), "no events in the backup");
    assert_eq!(live_events[..back_events.len()], back_events[..]);

    // A collector serves from it, and knows the agents.
    let mut again = CollectorProc::start_insecure(dir2.path(), None, "");
    assert_eq!(http_get(again.api, "/readyz").0, 200);
    assert_eq!(stored(again.api).len(), in_backup);
    let agents_json = http_get(again.api, "/v1/agents").1;
    assert!(agents_json.contains("b-0") && agents_json.contains("b-2"), "{agents_json}");
    assert_eq!(again.proc.terminate(), Some(0));

    // A backup whose contents do not match its manifest is refused, and leaves nothing where
    // a collector would start.
    let manifest = path.join("blockwatch-backup.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let tampered = text.replacen(&format!("\"results\": {in_backup}"), &format!("\"results\": {}", in_backup + 1), 1);
    assert_ne!(text, tampered);
    std::fs::write(&manifest, &tampered).unwrap();
    let target = dir2.path().join("tampered");
    let out = run(
        &bin("blockwatch-collector"),
        &["restore", "--from", path.to_str().unwrap(), "--data-dir", target.to_str().unwrap()],
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("its manifest says"));
    assert!(std::fs::read_dir(&target).map_or(true, |mut d| d.next().is_none()), "a failed restore left files");
    let leftovers: Vec<_> = std::fs::read_dir(dir2.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::write(&manifest, &text).unwrap();

    // Restore refuses a directory in use and a backup that never finished.
    let out = run(
        &bin("blockwatch-collector"),
        &["restore", "--from", path.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()],
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    std::fs::remove_file(path.join("blockwatch-backup.json")).unwrap();
    let out = run(
        &bin("blockwatch-collector"),
        &["restore", "--from", path.to_str().unwrap(), "--data-dir", dir2.path().join("other").to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a complete backup"), "{err}");
}
