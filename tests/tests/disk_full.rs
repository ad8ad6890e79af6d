//! A full disk under the store: acks stop (the agent keeps probing into its spool), the
//! collector says why, ingest resumes by itself when space returns, and nothing was acked that
//! is not stored. The store lives on a small tmpfs the test mounts, so it needs root; without
//! it the test says so and passes.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blockwatch_tests::provider::Provider;
use blockwatch_tests::*;

/// Mounts a tmpfs of `mib` MiB at `at`; why not, if it cannot.
fn mount_tmpfs(at: &Path, mib: u32) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", at.to_str().unwrap()])
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) }
}

/// Unmounts on drop, whatever the test did.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Bytes free on the filesystem holding `dir` (coreutils' `stat -f`).
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(dir).output().expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
    it.next().unwrap_or(0) * it.next().unwrap_or(0)
}

/// Writes `at` until less than `leave` bytes are free on its filesystem.
fn fill(at: &Path, leave: u64) {
    let mut f = std::fs::File::create(at).expect("filler");
    let chunk = vec![0u8; 256 * 1024];
    while free_bytes(at.parent().unwrap()) > leave {
        f.write_all(&chunk).expect("filling");
        f.sync_all().expect("sync");
    }
}

/// The spool size the agent's last heartbeat reported.
fn agent_spooled(api: std::net::SocketAddr, id: &str) -> Option<u64> {
    let (status, body) = http_get(api, "/v1/agents");
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v[id]["spooled"].as_u64()
}

#[test]
fn a_full_disk_stops_acks_and_ingest_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("collector-data");
    if let Err(why) = mount_tmpfs(&data, 48) {
        eprintln!(
            "SKIPPED a_full_disk_stops_acks_and_ingest_resumes_when_space_returns: cannot mount a tmpfs ({why}); run as root"
        );
        return;
    }
    let _mounted = Mounted(&data);
    let provider = Provider::start(dir.path());
    let mut collector =
        CollectorProc::start(dir.path(), None, "heartbeat_interval = \"1s\"\n[limits]\nmin_free_disk_mb = 16");
    let cfg = agent_toml("d-1", "eu", collector.addr, &provider, dir.path(), "127.0.0.2", 10);
    let mut agent = start_agent(dir.path(), "d-1", &cfg);
    wait_for("results to be stored", Duration::from_secs(30), || (stored(collector.api).len() >= 20).then_some(()));

    // Fill the disk past the reserve: results are refused, nothing more is acked, the
    // agent's spool grows.
    let filler = data.join("filler");
    fill(&filler, 8 << 20);
    wait_for("the collector to report the full disk", Duration::from_secs(30), || {
        collector.proc.log().contains("disk nearly full").then_some(())
    });
    let (status, body) = http_get(collector.api, "/readyz");
    assert_eq!(status, 503, "a collector refusing results said it was ready: {body}");
    assert!(body.contains("disk nearly full"), "{body}");
    let stalled = stored(collector.api).len();
    let src = "127.0.0.2".parse().unwrap();
    let probed = provider.requests_from(src);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(stored(collector.api).len(), stalled, "results were stored past the reserve");
    assert!(provider.requests_from(src) >= probed + 20, "the agent stopped probing");
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited:\n{}", agent.log());
    let log = collector.proc.log();
    assert!(!log.contains("store commit failed"), "the store met the full disk:\n{log}");
    assert!(agent.log().contains("disk nearly full"), "the agent was not told why:\n{}", agent.log());

    // Space returns: ingest resumes without a restart and the backlog drains.
    std::fs::remove_file(&filler).unwrap();
    wait_for("ingest to resume", Duration::from_secs(60), || {
        (stored(collector.api).len() > stalled + 30).then_some(())
    });
    assert_eq!(http_get(collector.api, "/readyz"), (200, "ready\n".to_string()));
    wait_for("the spool to drain", Duration::from_secs(60), || {
        agent_spooled(collector.api, "d-1").filter(|n| *n <= 10).map(|_| ())
    });
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    let (pending, last) = spool_state(dir.path(), "d-1");
    assert_eq!(pending, 0, "the agent kept results it had no ack for");

    // Everything the agent had acked (all of it: its spool is empty) is in the store, once,
    // after a restart of the collector from the same disk.
    assert_eq!(collector.proc.terminate(), Some(0));
    let seqs = seqs_by_agent(&export(&collector.data_dir)).remove("d-1").unwrap_or_default();
    let want: Vec<u64> = (1..=last).collect();
    assert_eq!(seqs, want, "results acked but not stored, or stored twice");
}
