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

/// The ids of the events the webhook notifications carried, in the order they came.
fn event_ids(got: &[Received]) -> Vec<u64> {
    got.iter()
        .flat_map(|r| json(r)["events"].as_array().unwrap().clone())
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
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
    let kinds =
        "kinds = [\"block_started\", \"block_ended\", \"outage_started\", \"outage_ended\"]\ngroup_window = \"0s\"";
    let config = format!(
        "public_url = \"https://blockwatch.example\"\n{}{}",
        webhook_sink("hook", &hook.url("/in"), &secret, kinds),
        webhook_sink("stuck", &stuck.url("/in"), &secret, "timeout = \"2s\"\ngroup_window = \"0s\"")
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
    assert!(all.iter().take(3).all(|r| r.headers["x-blockwatch-notification-id"] == ids[0].to_string()));
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
        for key in ["kind", "target", "onset", "detected_at", "summary", "severity"] {
            assert!(p[key].is_string(), "{key} in {p}");
        }
        assert!(p["link"].as_str().unwrap().starts_with("https://blockwatch.example/v1/events?after="), "{p}");
        // Without a group window, one event per notification, its id the notification's.
        let [e] = p["events"].as_array().unwrap().as_slice() else { panic!("one event: {p}") };
        assert_eq!((&e["id"], &p["regions"][0]), (&p["id"], &e["region"]), "{p}");
        for key in ["region", "onset", "detected_at", "summary", "block_id", "link"] {
            assert!(e[key].is_string(), "{key} in {p}");
        }
        assert!(e["evidence"].is_object(), "{p}");
        // A block's end names the block its start opened.
        let cell = format!("{}/{}", p["target"], e["region"]);
        match p["kind"].as_str().unwrap() {
            "block_started" => {
                assert_eq!(p["severity"], "critical");
                assert!(e["block_id"].as_str().unwrap().ends_with(&format!("/{}", p["id"].as_str().unwrap())));
                opened.insert(cell, e["block_id"].as_str().unwrap().to_string());
            }
            "block_ended" => {
                if let Some(id) = opened.remove(&cell) {
                    assert_eq!(e["block_id"].as_str().unwrap(), id, "{p}");
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
    let config = webhook_sink("hook", &hook.url("/"), &secret, "group_window = \"1s\"");
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
        (event_ids(&d).len() >= want.len()).then_some(d)
    });
    assert_eq!(event_ids(&got), want.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    // And nothing more comes: the cursor moved past them.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(delivered(&hook).len(), got.len());
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
         [[sink]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"{}\"\ngroup_window = \"0s\"\n",
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
        webhook_sink("hook", &hook.url("/"), &secret, "group_window = \"1s\""),
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
            (s["hook"]["events_delivered_total"].as_u64()? as usize, s["hook"]["suppressed_total"].as_u64()? as usize);
        (silenced > 0 && held == silenced && sent + held == l.len()).then_some((silenced, sent))
    });
    assert!(silenced > 0 && others > 0, "{silenced} {others}");
    let got = delivered(&hook);
    assert_eq!(event_ids(&got).len(), others);
    assert!(got.iter().all(|r| json(r)["target"] != "deepseek"), "nothing of deepseek sent");
}

use blockwatch_tests::session::wave;

const WAVE: [&str; 6] = ["hk", "cn", "ru", "ir", "by", "ve"];

#[test]
fn an_enforcement_wave_is_one_notification_listing_its_regions() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = Receiver::start();
    let slack = Receiver::start();
    let config = format!(
        "{}[[sink]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"{}\"\ngroup_window = \"10s\"\n",
        webhook_sink("hook", &hook.url("/"), &secret, "group_window = \"10s\""),
        slack.url("/services/T/B/X")
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, wave("openai", &WAVE, &["us", "de"]));
    let starts = wait_for("six block starts", Duration::from_secs(30), || {
        let l = logged(&collector, &["block_started"]);
        (l.len() >= WAVE.len()).then_some(l)
    });
    assert_eq!(starts.len(), WAVE.len(), "{starts:?}");
    let got = wait_for("the wave's notification", Duration::from_secs(30), || {
        let d = delivered(&hook);
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(got.len(), 1, "one notification for the wave");
    let p = json(&got[0]);
    assert_eq!((p["kind"].as_str(), p["target"].as_str()), (Some("block_started"), Some("openai")));
    let mut regions: Vec<&str> = p["regions"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    regions.sort();
    let mut want = WAVE.to_vec();
    want.sort();
    assert_eq!(regions, want);
    assert_eq!(
        p["summary"],
        format!(
            "openai is blocked in 6 regions: {}",
            p["regions"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect::<Vec<_>>().join(", ")
        )
    );
    // Every event, each with its block and evidence; the id is the first event's.
    assert_eq!(event_ids(&got), starts.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    assert_eq!(p["id"].as_str().unwrap(), starts[0].0.to_string());
    assert_eq!(got[0].headers["x-blockwatch-notification-id"], starts[0].0.to_string());
    for e in p["events"].as_array().unwrap() {
        assert!(e["block_id"].as_str().unwrap().starts_with("openai/"), "{e}");
        assert_eq!(e["evidence"]["signature"], "geo", "{e}");
    }
    // Slack: one message, a header naming the count, a line per region.
    let msgs = wait_for("the Slack message", Duration::from_secs(30), || {
        let d: Vec<_> = slack.received().into_iter().filter(|r| r.status == 200).collect();
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(msgs.len(), 1);
    let m = json(&msgs[0]);
    let blocks = m["blocks"].as_array().unwrap();
    assert!(blocks[0]["text"]["text"].as_str().unwrap().contains("openai is blocked in 6 regions"), "{m}");
    let lines = blocks.iter().filter(|b| b["text"]["text"].as_str().is_some_and(|t| t.contains(" since "))).count();
    assert_eq!(lines, WAVE.len(), "{m}");
    // Counted once the receiver's answer is in.
    wait_for("the delivery counted", Duration::from_secs(10), || {
        let (_, status) = http_get(collector.api, "/v1/alerts");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        let counts = (s["hook"]["delivered_total"].as_u64()?, s["hook"]["events_delivered_total"].as_u64()?);
        (counts == (1, 6)).then_some(())
    });
}

#[test]
fn a_template_makes_the_webhook_speak_to_discord() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let discord = Receiver::start();
    discord.answer_always(204);
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates/discord.json.j2");
    let config = webhook_sink(
        "discord",
        &discord.url("/api/webhooks/1/tok"),
        &secret,
        &format!("template_file = {:?}\ngroup_window = \"5s\"", template.display().to_string()),
    );
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, wave("anthropic", &WAVE[..3], &["us"]));
    let got = wait_for("the Discord message", Duration::from_secs(40), || {
        let d: Vec<_> = discord.received().into_iter().filter(|r| r.status == 204).collect();
        (!d.is_empty()).then_some(d)
    });
    let m = json(&got[0]);
    assert!(m["content"].as_str().unwrap().starts_with("anthropic is blocked in 3 regions"), "{m}");
    let fields = m["embeds"][0]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 3, "{m}");
    assert!(fields.iter().all(|f| f["value"].as_str().unwrap().starts_with("since ")), "{m}");
    // Still signed: the receiver can check it came from us.
    let now = blockwatch_proto::time::now() / 1000;
    verify(SECRET.as_bytes(), &got[0].headers["x-blockwatch-signature"], &got[0].body, now, 300).unwrap();
    drop(collector);
}

/// An SMTP server from PyPI (aiosmtpd) with STARTTLS required, on a free port; `None` when
/// Python or aiosmtpd is missing.
fn smtp_server(dir: &Path, ca: &blockwatch_demo::faultkit::TestPki) -> Option<(Proc, u16, std::path::PathBuf)> {
    let ok = std::process::Command::new("python3").args(["-c", "import aiosmtpd"]).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: python3 with aiosmtpd is not installed (tests/run.sh installs it)");
        return None;
    }
    let (cert, key) = ca.server_pem(&["127.0.0.1"]).unwrap();
    std::fs::write(dir.join("smtp.crt"), cert).unwrap();
    std::fs::write(dir.join("smtp.key"), key).unwrap();
    let out = dir.join("mail");
    std::fs::create_dir_all(&out).unwrap();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
    let p = |x: &Path| x.display().to_string();
    let port_s = port.to_string();
    let (crt, key) = (p(&dir.join("smtp.crt")), p(&dir.join("smtp.key")));
    let args = [p(&script), port_s, crt, key, p(&out), "blockwatch".into(), "smtp-pass-0123".into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::start(Path::new("python3"), &args, dir.join("smtp.log"));
    wait_for("the SMTP server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    Some((proc, port, out))
}

fn mails(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
}

#[test]
fn email_goes_over_starttls_with_auth_and_lists_the_wave() {
    let dir = tempfile::tempdir().unwrap();
    let pki = blockwatch_demo::faultkit::TestPki::new().unwrap();
    let Some((_smtp, port, out)) = smtp_server(dir.path(), &pki) else { return };
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let password = dir.path().join("smtp-password");
    std::fs::write(&password, "smtp-pass-0123\n").unwrap();
    let sink = |name: &str, pass: &Path| {
        format!(
            "[[sink]]\nname = \"{name}\"\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{port}\"\nca_file = {:?}\n\
             from = \"blockwatch <alerts@blockwatch.test>\"\nto = [\"oncall@example.test\", \"sre@example.test\"]\n\
             username = \"blockwatch\"\nsecret_file = {:?}\ngroup_window = \"5s\"\nkinds = [\"block_started\"]\n",
            ca.display().to_string(),
            pass.display().to_string()
        )
    };
    // A second sink with the wrong password: the server refuses it, and it says so.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let config = format!("{}{}", sink("mail", &password), sink("badauth", &wrong));
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    stream(&collector, wave("openai", &WAVE[..4], &["us"]));
    let got = wait_for("the e-mail", Duration::from_secs(40), || {
        let m = mails(&out);
        (!m.is_empty()).then_some(m)
    });
    assert_eq!(got.len(), 1, "one message for the wave");
    let m = &got[0];
    assert!(m.contains("X-Was-TLS: True") && m.contains("X-Auth: True"), "STARTTLS, then AUTH: {m}");
    assert!(m.contains("X-Envelope-To: oncall@example.test,sre@example.test"), "{m}");
    assert!(m.contains("Subject: [blockwatch] openai is blocked in 4 regions"), "{m}");
    for region in &WAVE[..4] {
        assert!(m.contains(&format!("block_started in {region}")), "{region}: {m}");
    }
    assert!(m.contains("signature: geo") && m.contains("/v1/events?after="), "{m}");
    // A refused login is the config's fault, not the message's: retried, never skipped.
    let s = wait_for("the bad login counted", Duration::from_secs(60), || {
        let (_, status) = http_get(collector.api, "/v1/alerts");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        (s["badauth"]["failed_attempts_total"].as_u64()? >= 1).then_some(s)
    });
    assert_eq!(s["badauth"]["pending"]["last_status"], "535", "{s}");
    assert_eq!(
        (s["badauth"]["delivered_total"].as_u64(), s["badauth"]["refused_total"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // Counted once the server's 250 is in (the file may be written a moment before).
    let s = wait_for("the delivery counted", Duration::from_secs(10), || {
        let (_, status) = http_get(collector.api, "/v1/alerts");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        (s["mail"]["delivered_total"].as_u64()? >= 1).then_some(s)
    });
    assert_eq!(s["mail"]["delivered_total"], 1, "{s}");

    // The CLI's test message goes the same way.
    let cfg = dir.path().join("collector.toml");
    let out_cli =
        run(&bin("blockwatch-collector"), &["alert", "test", "--config", cfg.to_str().unwrap(), "--sink", "mail"]);
    assert!(out_cli.status.success(), "{}", String::from_utf8_lossy(&out_cli.stderr));
    let got = wait_for("the test e-mail", Duration::from_secs(20), || {
        let m = mails(&out);
        (m.len() >= 2).then_some(m)
    });
    assert!(got[1].contains("Subject: [test] [blockwatch]"), "{}", got[1]);
}

#[test]
fn an_smtp_server_without_starttls_gets_nothing() {
    // A plain listener that greets as SMTP and offers no STARTTLS: the sink must not send
    // credentials or mail in the clear.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for stream in listener.incoming().flatten() {
            let mut w = stream.try_clone().unwrap();
            let _ = w.write_all(b"220 plain.test ESMTP\r\n");
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                seen2.lock().unwrap().push_str(&format!("{line}\n"));
                let reply: &[u8] =
                    if line.starts_with("EHLO") { b"250-plain.test\r\n250 AUTH PLAIN\r\n" } else { b"250 ok\r\n" };
                if w.write_all(reply).is_err() {
                    break;
                }
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "secret-password").unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "insecure = true\n[[sink]]\nname = \"mail\"\nkind = \"email\"\nurl = \"smtp://127.0.0.1:{port}\"\n\
             from = \"a@b.test\"\nto = [\"c@d.test\"]\nusername = \"u\"\nsecret_file = {:?}\n",
            pass.display().to_string()
        ),
    )
    .unwrap();
    let out =
        run(&bin("blockwatch-collector"), &["alert", "test", "--config", config.to_str().unwrap(), "--sink", "mail"]);
    assert!(!out.status.success());
    let seen = seen.lock().unwrap().clone();
    assert!(seen.starts_with("EHLO"), "{seen}");
    assert!(!seen.contains("AUTH") && !seen.contains("MAIL FROM"), "nothing in the clear: {seen}");
}

#[test]
fn maintenance_windows_are_managed_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let hook = Receiver::start();
    let config = webhook_sink("hook", &hook.url("/"), &secret, "group_window = \"1s\"");
    let mut collector = CollectorProc::start_insecure(dir.path(), None, &config);
    let t = |ms: i64| blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now() + ms);
    let window = |targets: &str| {
        format!(
            "{{\"start\": \"{}\", \"end\": \"{}\", \"targets\": [{targets}], \"reason\": \"failover drill\"}}",
            t(-60_000),
            t(600_000)
        )
    };
    // Bad windows: a precise 400 each.
    for (body, want) in [
        ("{\"start\": \"x\", \"end\": \"y\"}".to_string(), "RFC 3339"),
        (format!("{{\"start\": \"{}\", \"end\": \"{}\"}}", t(10_000), t(0)), "start must be before end"),
        (window("\"bad target!\""), "\"bad target!\""),
        ("{\"start\": 1}".to_string(), "not a maintenance window"),
        (window("\"openai\"").replace("\"reason\"", "\"colour\""), "unknown field"),
    ] {
        let (status, text) = http_send(collector.api, "POST", "/v1/maintenance", body.as_bytes());
        assert_eq!(status, 400, "{body}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(error["error"].as_str().unwrap().contains(want), "{want}: {text}");
    }
    let (status, text) = http_send(collector.api, "POST", "/v1/maintenance", window("\"openai\"").as_bytes());
    assert_eq!(status, 201, "{text}");
    let added: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!((added["active"].as_bool(), added["source"].as_str()), (Some(true), Some("api")));
    // It outlives a restart.
    collector.proc.kill9();
    let collector = CollectorProc::start_insecure(dir.path(), None, &config);
    let (_, list) = http_get(collector.api, "/v1/maintenance");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["id"], id, "{list}");
    assert_eq!(list[0]["reason"], "failover drill", "{list}");
    // openai's wave is held back; anthropic's is sent.
    stream(&collector, wave("openai", &WAVE[..2], &["us"]));
    stream(&collector, wave("anthropic", &WAVE[2..4], &["us"]));
    let s = wait_for("both waves settled", Duration::from_secs(40), || {
        let (_, status) = http_get(collector.api, "/v1/alerts");
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        (s["hook"]["suppressed_total"].as_u64()? == 2 && s["hook"]["events_delivered_total"].as_u64()? == 2)
            .then_some(s)
    });
    let got = delivered(&hook);
    assert!(got.iter().all(|r| json(r)["target"] == "anthropic"), "{s}");
    // Deleted: gone from the list, a second delete is a 404.
    let (status, _) = http_send(collector.api, "DELETE", &format!("/v1/maintenance/{id}"), b"");
    assert_eq!(status, 204);
    let (status, text) = http_send(collector.api, "DELETE", &format!("/v1/maintenance/{id}"), b"");
    assert_eq!(status, 404, "{text}");
    let (_, list) = http_get(collector.api, "/v1/maintenance");
    assert_eq!(list.trim(), "[]");
}
