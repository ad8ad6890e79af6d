//! Notifications end to end: a running collector detects blocks in streamed results and its
//! sinks deliver them — a signed webhook to a local receiver (retried through its errors, in
//! order, once each; not held up by a receiver that hangs; delivered after a kill -9 of the
//! collector), and a real Prometheus Alertmanager that shows the block and its end.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use blockwatch_proto::v1::ProbeResult;
use blockwatch_sim::Family;
use blockwatch_tests::receiver::{Received, Receiver};
use blockwatch_tests::session::stream_all;
use blockwatch_tests::*;

const SECRET: &str = "whsec-test-0123456789";

/// What a receiver runs: the README's check, in Rust. `header` is `t=SECONDS,v1=HEX`.
fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance: i64) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no timestamp")?, v1.ok_or("no v1 signature")?);
    if (now - t).abs() > tolerance {
        return Err(format!("timestamp {t} is more than {tolerance} s from now: a replay"));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let want: Vec<u8> =
        (0..v1.len() / 2).filter_map(|i| u8::from_str_radix(v1.get(2 * i..2 * i + 2)?, 16).ok()).collect();
    ring::hmac::verify(&key, &signed, &want).map_err(|_| "signature does not match".to_string())
}

/// Streams every agent's results (in trace order) into the collector.
fn stream(collector: &CollectorProc, results: BTreeMap<String, (String, Vec<ProbeResult>)>) {
    stream_all(collector.addr, results);
}

fn by_agent(
    records: &[blockwatch_proto::trace::TraceRecord],
    keep: impl Fn(i64) -> bool,
) -> BTreeMap<String, (String, Vec<ProbeResult>)> {
    let mut out: BTreeMap<String, (String, Vec<ProbeResult>)> = BTreeMap::new();
    for r in records {
        let started = blockwatch_proto::time::parse_rfc3339(&r.started_at).unwrap();
        if keep(started) {
            out.entry(r.agent_id.clone())
                .or_insert_with(|| (r.region.clone(), Vec::new()))
                .1
                .push(r.to_result().unwrap());
        }
    }
    out
}

/// The event log's (seq, kind) of the given kinds.
fn logged(collector: &CollectorProc, kinds: &[&str]) -> Vec<(u64, String)> {
    let (_, body) = http_get(collector.api, "/v1/events?limit=100000");
    body.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| kinds.contains(&v["kind"].as_str().unwrap_or_default()))
        .map(|v| (v["seq"].as_u64().unwrap(), v["kind"].as_str().unwrap().to_string()))
        .collect()
}

fn delivered(r: &Receiver) -> Vec<Received> {
    r.received().into_iter().filter(|x| x.status == 200).collect()
}

fn json(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

fn webhook_sink(name: &str, url: &str, secret_file: &Path, extra: &str) -> String {
    format!(
        "[[sink]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = {:?}\n{extra}\n",
        secret_file.display().to_string()
    )
}

#[test]
fn webhooks_are_signed_retried_in_order_once_each_and_not_held_up() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let hook = Receiver::start();
    hook.answer_next(&[503, 503]);
    let stuck = Receiver::start();
    stuck.hang();
    let kinds = "kinds = [\"block_started\", \"block_ended\", \"outage_started\", \"outage_ended\"]";
    let config = format!(
        "public_url = \"https://blockwatch.example\"\n{}{}",
        webhook_sink("hook", &hook.url("/in"), &secret, kinds),
        webhook_sink("stuck", &stuck.url("/in"), &secret, "timeout = \"2s\"")
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    let records = session_sample(Family::LiftAndRollout, 3);
    stream(&collector, by_agent(&records, |_| true));

    let want = wait_for("the log's block events", Duration::from_secs(30), || {
        let l = logged(&collector, &["block_started", "block_ended", "outage_started", "outage_ended"]);
        (l.iter().any(|(_, k)| k == "block_ended")).then_some(l)
    });
    let got = wait_for("every event delivered", Duration::from_secs(60), || {
        let d = delivered(&hook);
        (d.len() >= want.len()).then_some(d)
    });
    // Once each, in log order, with its sequence number as the id (header and payload).
    let ids: Vec<u64> = got.iter().map(|r| json(r)["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, want.iter().map(|(s, _)| *s).collect::<Vec<_>>(), "delivered once each, in order");
    // The first was retried through two 503s.
    let all = hook.received();
    assert_eq!(all.iter().map(|r| r.status).take(3).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(all.iter().take(3).all(|r| r.headers["x-blockwatch-event-id"] == ids[0].to_string()));
    assert!(all[2].at.duration_since(all[0].at) >= Duration::from_millis(1500), "backoff between attempts");
    let now = blockwatch_proto::time::now() / 1000;
    let mut opened: BTreeMap<String, String> = BTreeMap::new();
    for r in &got {
        let sig = &r.headers["x-blockwatch-signature"];
        verify(SECRET.as_bytes(), sig, &r.body, now, 300).unwrap_or_else(|e| panic!("{e}: {sig}"));
        // An altered body, a wrong secret and an old timestamp are refused.
        let mut altered = r.body.clone();
        altered[10] ^= 1;
        assert!(verify(SECRET.as_bytes(), sig, &altered, now, 300).is_err());
        assert!(verify(b"another secret", sig, &r.body, now, 300).is_err());
        assert!(verify(SECRET.as_bytes(), sig, &r.body, now + 3600, 300).unwrap_err().contains("replay"));
        let p = json(r);
        assert_eq!(p["schema"], "blockwatch.alert.v1");
        assert_eq!(r.path, "/in");
        for key in ["kind", "target", "region", "onset", "detected_at", "summary", "severity", "block_id"] {
            assert!(p[key].is_string(), "{key} in {p}");
        }
        assert!(p["link"].as_str().unwrap().starts_with("https://blockwatch.example/v1/events?after="), "{p}");
        assert!(p["evidence"].is_object(), "{p}");
        // A block's end names the block its start opened.
        let cell = format!("{}/{}", p["target"], p["region"]);
        match p["kind"].as_str().unwrap() {
            "block_started" => {
                assert_eq!(p["severity"], "critical");
                assert!(p["block_id"].as_str().unwrap().ends_with(&format!("/{}", p["id"].as_str().unwrap())));
                opened.insert(cell, p["block_id"].as_str().unwrap().to_string());
            }
            "block_ended" => {
                if let Some(id) = opened.remove(&cell) {
                    assert_eq!(p["block_id"].as_str().unwrap(), id, "{p}");
                }
            }
            _ => {}
        }
    }

    // The hanging receiver holds up only its own sink, which says what it is waiting on.
    let (status, body) = http_get(collector.api, "/v1/alerts");
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["hook"]["delivered_total"], want.len(), "{body}");
    assert_eq!(s["hook"]["attempts_by_status"]["503"], 2, "{body}");
    assert_eq!(s["hook"]["cursor"], want.last().unwrap().0, "{body}");
    assert_eq!(s["stuck"]["delivered_total"], 0, "{body}");
    assert_eq!(s["stuck"]["pending"]["last_status"], "error", "{body}");
    assert!(s["stuck"]["pending"]["attempts"].as_u64().unwrap() >= 1, "{body}");
}

fn session_sample(family: Family, seed: u64) -> Vec<blockwatch_proto::trace::TraceRecord> {
    blockwatch_tests::session::sample(family, seed)
}

#[test]
fn undelivered_notifications_survive_a_kill9_of_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = Receiver::start();
    hook.answer_always(503);
    let config = webhook_sink("hook", &hook.url("/"), &secret, "");
    let mut collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, by_agent(&session_sample(Family::GeoBlock, 11), |_| true));
    let want = wait_for("block events", Duration::from_secs(30), || {
        let l = logged(&collector, &["block_started", "block_ended"]);
        (!l.is_empty()).then_some(l)
    });
    wait_for("an attempt", Duration::from_secs(30), || (!hook.received().is_empty()).then_some(()));
    collector.proc.kill9();
    hook.answer_always(200);
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    let got = wait_for("delivery after the restart", Duration::from_secs(60), || {
        let d = delivered(&hook);
        (d.len() >= want.len()).then_some(d)
    });
    let ids: Vec<u64> = got.iter().map(|r| json(r)["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, want.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    // And nothing more comes: the cursor moved past them.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(delivered(&hook).len(), want.len());
    drop(collector);
}

/// Debian's Alertmanager, on a free loopback port; `None` when it is not installed.
fn alertmanager(dir: &Path) -> Option<(Proc, std::net::SocketAddr)> {
    let exe =
        ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"].into_iter().find(|p| Path::new(p).exists())?;
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(&cfg, "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n").unwrap();
    // Alertmanager does not say which port it got, so it is handed one free a moment ago.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let am = Proc::start(
        Path::new(exe),
        &[
            &format!("--config.file={}", cfg.display()),
            &format!("--storage.path={}", dir.join("am-data").display()),
            &format!("--web.listen-address={addr}"),
            "--cluster.listen-address=",
        ],
        dir.join("alertmanager.log"),
    );
    wait_for("alertmanager to listen", Duration::from_secs(30), || {
        (listening(addr) && http_get(addr, "/api/v2/status").0 == 200).then_some(())
    });
    Some((am, addr))
}

fn am_alerts(addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let (status, body) = http_get(addr, "/api/v2/alerts");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
}

#[test]
fn alertmanager_shows_the_block_while_open_and_resolves_it() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_am, am)) = alertmanager(dir.path()) else {
        println!("skipped: prometheus-alertmanager is not installed (tests/run.sh installs it as root)");
        return;
    };
    let config =
        format!("[[sink]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://{am}\"\nresend_every = \"2s\"\n");
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    let trace = blockwatch_tests::session::sample_trace(Family::GeoBlock, 11);
    let block = trace.blocks.iter().find(|b| b.end.is_some()).expect("a block that ends").clone();
    let mid = block.start + (block.end.unwrap() - block.start) / 2;
    let records = trace.trace_records();
    // First the results up to the block's middle: it is open.
    stream(&collector, by_agent(&records, |t| t < mid));
    let cell = format!("target={}&region={}", block.target, block.region);
    let started = wait_for("block_started", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, &format!("/v1/events?kind=block_started&{cell}"));
        body.lines().next().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    });
    let ours = |a: &serde_json::Value| {
        a["labels"]["alertname"] == "BlockwatchBlock"
            && a["labels"]["target"] == block.target.as_str()
            && a["labels"]["region"] == block.region.as_str()
    };
    let alert = wait_for("the alert in Alertmanager", Duration::from_secs(30), || am_alerts(am).into_iter().find(ours));
    let labels = &alert["labels"];
    assert_eq!(labels["target"], started["target"]);
    assert_eq!(labels["region"], started["region"]);
    assert_eq!((labels["kind"].as_str(), labels["severity"].as_str()), (Some("block"), Some("critical")));
    assert_eq!(labels["signature"], "geo");
    assert_eq!(alert["status"]["state"], "active");
    let starts = blockwatch_proto::time::parse_rfc3339(alert["startsAt"].as_str().unwrap()).unwrap();
    assert_eq!(starts, blockwatch_proto::time::parse_rfc3339(started["onset"].as_str().unwrap()).unwrap());
    assert!(alert["annotations"]["summary"].as_str().unwrap().contains(started["region"].as_str().unwrap()));
    // Re-posted while open: still there after several resend intervals.
    std::thread::sleep(Duration::from_secs(5));
    assert!(am_alerts(am).iter().any(ours));
    // Then the rest: the block ends, and the alert resolves.
    stream(&collector, by_agent(&records, |t| t >= mid));
    wait_for("block_ended", Duration::from_secs(30), || {
        let (_, body) = http_get(collector.api, &format!("/v1/events?kind=block_ended&{cell}"));
        (!body.is_empty()).then_some(())
    });
    wait_for("the alert resolved", Duration::from_secs(30), || (!am_alerts(am).iter().any(ours)).then_some(()));
}

#[test]
fn alert_test_sends_one_notification_and_says_what_came_back() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = Receiver::start();
    let closed = blockwatch_tests::faultkit::closed_port("127.0.0.1".parse().unwrap()).unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "insecure = true\n{}{}",
            webhook_sink("hook", &hook.url("/t"), &secret, ""),
            webhook_sink("down", &format!("http://{closed}/"), &secret, "")
        ),
    )
    .unwrap();
    let collector = bin("blockwatch-collector");
    let out = run(&collector, &["alert", "test", "--config", config.to_str().unwrap(), "--sink", "hook"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("test notification delivered (status 200)"));
    let got = hook.received();
    assert_eq!(got.len(), 1);
    let p = json(&got[0]);
    assert_eq!((p["test"].as_bool(), p["target"].as_str()), (Some(true), Some("blockwatch-test")));
    let now = blockwatch_proto::time::now() / 1000;
    verify(SECRET.as_bytes(), &got[0].headers["x-blockwatch-signature"], &got[0].body, now, 300).unwrap();

    let out = run(&collector, &["alert", "test", "--config", config.to_str().unwrap(), "--sink", "down"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sink \"down\": not delivered (no answer)"), "{err}");
    hook.answer_always(404);
    let out = run(&collector, &["alert", "test", "--config", config.to_str().unwrap(), "--sink", "hook"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused (status 404)"), "{out:?}");
    let out = run(&collector, &["alert", "test", "--config", config.to_str().unwrap(), "--sink", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sink named \"nope\""), "{out:?}");
}

#[test]
fn pagerduty_and_slack_get_their_documented_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("routing-key");
    std::fs::write(&key, "R0UT1NGKEY0123456789abcdef012345\n").unwrap();
    let pd = Receiver::start();
    pd.answer_always(202);
    let slack = Receiver::start();
    let config = format!(
        "[[sink]]\nname = \"pd\"\nkind = \"pagerduty\"\nurl = \"{}\"\nsecret_file = {:?}\n\
         [[sink]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"{}\"\n",
        pd.url("/v2/enqueue"),
        key.display().to_string(),
        slack.url("/services/T000/B000/XXXX")
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, by_agent(&session_sample(Family::LiftAndRollout, 3), |_| true));
    let want = wait_for("block events", Duration::from_secs(30), || {
        let l = logged(&collector, &["block_started", "block_ended"]);
        l.iter().any(|(_, k)| k == "block_ended").then_some(l)
    });
    let accepted =
        |r: &Receiver, status: u16| r.received().into_iter().filter(|x| x.status == status).collect::<Vec<_>>();
    let pd_got = wait_for("PagerDuty events", Duration::from_secs(30), || {
        let d = accepted(&pd, 202);
        (d.len() >= want.len()).then_some(d)
    });
    // Events API v2: a trigger per start, a resolve per end, paired by dedup_key.
    let mut open = std::collections::BTreeSet::new();
    for (r, (_, kind)) in pd_got.iter().zip(&want) {
        let p = json(r);
        assert_eq!(r.path, "/v2/enqueue");
        assert_eq!(p["routing_key"], "R0UT1NGKEY0123456789abcdef012345", "the key, trimmed");
        let dedup = p["dedup_key"].as_str().unwrap().to_string();
        assert!(
            dedup.starts_with(&format!("blockwatch/{}/", p["payload"]["component"].as_str().unwrap_or("openai")))
                || p["event_action"] == "resolve",
            "{p}"
        );
        match kind.as_str() {
            "block_started" => {
                assert_eq!(p["event_action"], "trigger");
                let payload = &p["payload"];
                assert_eq!(payload["severity"], "critical");
                for k in ["summary", "source", "timestamp", "component", "group", "class"] {
                    assert!(payload[k].is_string(), "{k}: {p}");
                }
                assert!(payload["summary"].as_str().unwrap().len() <= 1024);
                assert!(payload["custom_details"]["evidence"]["agents"].is_array(), "{p}");
                let link = format!("http://{}/v1/events?after=", collector.api);
                assert!(p["links"][0]["href"].as_str().unwrap().starts_with(&link), "the API as bound: {p}");
                assert!(open.insert(dedup), "one dedup key per block");
            }
            _ => {
                assert_eq!(p["event_action"], "resolve", "{p}");
                assert!(p.get("payload").is_none(), "a resolve carries only its key: {p}");
                assert!(open.remove(&dedup), "resolves a triggered block: {dedup}");
            }
        }
    }
    // Slack: a readable Block Kit message per event, with a text fallback.
    let slack_got = wait_for("Slack messages", Duration::from_secs(30), || {
        let d = accepted(&slack, 200);
        (d.len() >= want.len()).then_some(d)
    });
    for (r, (_, kind)) in slack_got.iter().zip(&want) {
        let p = json(r);
        assert!(p["text"].as_str().unwrap().len() > 20, "{p}");
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let title = blocks[0]["text"]["text"].as_str().unwrap();
        match kind.as_str() {
            "block_started" => assert!(title.contains("is blocked in"), "{title}"),
            _ => assert!(title.contains("reachable again in"), "{title}"),
        }
        let fields: Vec<&str> =
            blocks[2]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
        for want in ["*Target*", "*Region*", "*Since*", "*Detected*"] {
            assert!(fields.iter().any(|f| f.starts_with(want)), "{want}: {fields:?}");
        }
        if kind == "block_started" {
            assert!(fields.iter().any(|f| f.starts_with("*How sure*")), "{fields:?}");
            assert!(fields.iter().any(|f| f.starts_with("*Agents*")), "{fields:?}");
        }
        assert_eq!(blocks[3]["type"], "context");
    }
}

#[test]
fn a_maintenance_window_silences_its_cells_and_the_events_are_still_logged() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = Receiver::start();
    let t = |ms: i64| blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now() + ms);
    // The window covers every decision of the next ten minutes, for the target deepseek only.
    let config = format!(
        "{}[[maintenance]]\nstart = \"{}\"\nend = \"{}\"\ntargets = [\"deepseek\"]\nreason = \"provider migration\"\n",
        webhook_sink("hook", &hook.url("/"), &secret, ""),
        t(-60_000),
        t(600_000)
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, by_agent(&session_sample(Family::LiftAndRollout, 3), |_| true));
    // Settled: every logged block event either delivered or suppressed.
    let (silenced, others) = wait_for("each event delivered or suppressed", Duration::from_secs(30), || {
        let l = logged(&collector, &["block_started", "block_ended"]);
        let (_, body) = http_get(collector.api, "/v1/events?limit=100000");
        let silenced =
            body.lines().filter(|l| l.contains("\"target\":\"deepseek\"") && l.contains("\"kind\":\"block_")).count();
        let (_, status) = http_get(collector.api, "/v1/alerts");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        let (sent, held) =
            (s["hook"]["delivered_total"].as_u64()? as usize, s["hook"]["suppressed_total"].as_u64()? as usize);
        (silenced > 0 && held == silenced && sent + held == l.len()).then_some((silenced, sent))
    });
    assert!(silenced > 0 && others > 0, "{silenced} {others}");
    let got = delivered(&hook);
    assert_eq!(got.len(), others);
    assert!(got.iter().all(|r| json(r)["target"] != "deepseek"), "nothing of deepseek sent");
}
