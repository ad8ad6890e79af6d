//! Hand-built streams, one per confounder and per kind of block.

use blockwatch_proto::Outcome;
use blockwatch_proto::time::Millis;

use super::{Detector, DetectorConfig, Event, EventKind, Ingest, Observation};

const IV: Millis = 60_000;
const T0: Millis = 1_700_000_000_000;

/// One result of a hand-built stream.
#[derive(Clone)]
struct Rec {
    id: String,
    agent: String,
    region: String,
    target: String,
    t: Millis,
    recv: Millis,
    outcome: Outcome,
}

/// A fleet probing every target once per interval for `n` intervals, each (agent, target)
/// at its own fixed offset; `f(region, agent number, target, k)` gives the outcome of the
/// k-th probe. Results come back 400 ms after they start, in receive order.
fn fleet(
    regions: &[(&str, usize)],
    targets: &[&str],
    n: i64,
    f: impl Fn(&str, usize, &str, i64) -> Outcome,
) -> Vec<Rec> {
    let mut out = Vec::new();
    for (ri, (region, agents)) in regions.iter().enumerate() {
        for a in 0..*agents {
            for (ti, target) in targets.iter().enumerate() {
                let offset = ((ri * 7 + a * 13 + ti * 29) % 59) as Millis * 1000;
                for k in 0..n {
                    let t = T0 + k * IV + offset;
                    out.push(Rec {
                        id: format!("{region}-{a}/{target}/{k}"),
                        agent: format!("{region}-{a}"),
                        region: region.to_string(),
                        target: target.to_string(),
                        t,
                        recv: t + 400,
                        outcome: f(region, a, target, k),
                    });
                }
            }
        }
    }
    out.sort_by(|x, y| x.recv.cmp(&y.recv).then_with(|| x.id.cmp(&y.id)));
    out
}

fn run(recs: &[Rec]) -> Vec<Event> {
    let mut d = Detector::new(DetectorConfig::default());
    let mut events = Vec::new();
    for r in recs {
        d.observe(&obs(r), &mut events);
    }
    events
}

fn obs(r: &Rec) -> Observation<'_> {
    Observation {
        probe_id: &r.id,
        agent_id: &r.agent,
        region: &r.region,
        target: &r.target,
        started_at: r.t,
        received_at: r.recv,
        outcome: r.outcome,
        control: r.target == "control",
        confirmation: false,
        // What a provider refusing the location answers; the rest has no answer to show.
        http_status: if r.outcome == Outcome::HttpGeoBlocked { 403 } else { 0 },
        provider_code: if r.outcome == Outcome::HttpGeoBlocked { "unsupported_country_region_territory" } else { "" },
    }
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.kind == kind).collect()
}

/// A deterministic pseudo-random number in [0, 1) from a few integers.
fn noise(parts: &[u64]) -> f64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        h = (h ^ p).wrapping_mul(0x0100_0000_01b3);
        h ^= h >> 29;
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

const REGIONS: &[(&str, usize)] = &[("eu", 2), ("hk", 2), ("cn", 2), ("us", 2)];
const TARGETS: &[&str] = &["openai", "anthropic", "deepseek"];

#[test]
fn geo_block_is_confirmed_within_an_interval() {
    let recs = fleet(REGIONS, TARGETS, 200, |r, _, t, k| {
        if r == "hk" && t == "openai" && k >= 100 { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    });
    let ev = run(&recs);
    let started = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(started.len(), 1, "{ev:?}");
    let e = started[0];
    assert_eq!((e.target.as_str(), e.region.as_str()), ("openai", "hk"));
    let start = T0 + 100 * IV;
    assert!((e.onset - start).abs() <= IV, "onset {} vs {start}", e.onset);
    assert!(e.detected_at - start <= 2 * IV, "slow: {}", e.detected_at - start);
    assert_eq!(e.evidence.signature, "geo");
    assert!(of_kind(&ev, EventKind::BlockEnded).is_empty());
    // What the provider answered, and which probes to look up.
    assert_eq!(
        (e.evidence.http_status, e.evidence.provider_code.as_str()),
        (403, "unsupported_country_region_territory")
    );
    let ids = &e.evidence.sample_probe_ids;
    assert!(!ids.is_empty() && ids.len() <= 5, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("hk-") && id.contains("/openai/")), "{ids:?}");
    let summary = e.summary();
    assert!(summary.contains("HTTP 403, provider code unsupported_country_region_territory"), "{summary}");
    assert!(summary.contains(&format!("for example probes {}", ids[0])), "{summary}");
}

#[test]
fn network_block_waits_out_blips_and_ends_with_hysteresis() {
    let recs = fleet(REGIONS, TARGETS, 300, |r, _, t, k| {
        let blip = r == "cn" && t == "deepseek" && (50..54).contains(&k);
        let block = r == "eu" && t == "anthropic" && (120..200).contains(&k);
        // One success in the middle of the block is not its end.
        if (blip || block) && !(block && k == 150) { Outcome::TlsReset } else { Outcome::Ok }
    });
    let ev = run(&recs);
    let started = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(started.len(), 1, "{ev:?}");
    assert_eq!(started[0].region, "eu");
    let start = T0 + 120 * IV;
    assert!(started[0].detected_at - start >= 4 * IV, "network failures need persistence");
    assert!(started[0].detected_at - start <= 7 * IV);
    let ended = of_kind(&ev, EventKind::BlockEnded);
    assert_eq!(ended.len(), 1, "{ev:?}");
    assert!((ended[0].onset - (T0 + 200 * IV)).abs() <= IV, "end onset {}", ended[0].onset - T0);
}

#[test]
fn forged_answers_are_confirmed_fast_but_a_forging_vantage_is_not_a_block() {
    // cn's resolvers forge deepseek's name from k = 100 on (bogons, some bad certificates);
    // meanwhile eu-0 sits behind a captive portal that forges every name for two hours.
    let recs = fleet(REGIONS, TARGETS, 300, |r, a, t, k| {
        if r == "cn" && t == "deepseek" && k >= 100 {
            if k % 4 == 0 { Outcome::TlsCertInvalid } else { Outcome::DnsBogon }
        } else if r == "eu" && a == 0 && (150..270).contains(&k) {
            Outcome::DnsBogon
        } else {
            Outcome::Ok
        }
    });
    let ev = run(&recs);
    let started = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(started.len(), 1, "{ev:?}");
    assert_eq!((started[0].target.as_str(), started[0].region.as_str()), ("deepseek", "cn"));
    assert_eq!(started[0].evidence.signature, "dns");
    let start = T0 + 100 * IV;
    assert!(started[0].detected_at - start <= 3 * IV, "slow: {} intervals", (started[0].detected_at - start) / IV);
    assert!((started[0].onset - start).abs() <= IV);
    let down = of_kind(&ev, EventKind::VantageDown);
    assert_eq!(down.iter().filter_map(|e| e.agent_id.as_deref()).collect::<Vec<_>>(), ["eu-0"], "{ev:?}");
}

#[test]
fn provider_outage_everywhere_is_not_a_block() {
    let recs = fleet(REGIONS, TARGETS, 200, |_, _, t, k| {
        if t == "anthropic" && (80..100).contains(&k) { Outcome::TcpTimeout } else { Outcome::Ok }
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
    assert_eq!(of_kind(&ev, EventKind::OutageStarted).len(), 1, "{ev:?}");
    assert_eq!(of_kind(&ev, EventKind::OutageEnded).len(), 1, "{ev:?}");
}

#[test]
fn a_server_error_outage_everywhere_is_reported_as_an_outage() {
    let recs = fleet(REGIONS, TARGETS, 200, |_, _, t, k| {
        if t == "openai" && (80..110).contains(&k) { Outcome::HttpServerError } else { Outcome::Ok }
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
    let started = of_kind(&ev, EventKind::OutageStarted);
    assert_eq!(started.len(), 1, "{ev:?}");
    assert_eq!((started[0].target.as_str(), started[0].region.as_str()), ("openai", "*"));
    assert_eq!(of_kind(&ev, EventKind::OutageEnded).len(), 1, "{ev:?}");
}

#[test]
fn a_geo_refusal_while_the_provider_fails_elsewhere_is_a_block() {
    // openai's origin answers 5xx everywhere but hk, which gets the location refusal.
    let recs = fleet(REGIONS, TARGETS, 200, |r, _, t, k| match (r, t) {
        ("hk", "openai") if k >= 80 => Outcome::HttpGeoBlocked,
        (_, "openai") if (80..120).contains(&k) => Outcome::HttpServerError,
        _ => Outcome::Ok,
    });
    let ev = run(&recs);
    let blocks = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(blocks.len(), 1, "{ev:?}");
    assert_eq!((blocks[0].target.as_str(), blocks[0].region.as_str()), ("openai", "hk"));
}

#[test]
fn a_result_dated_far_ahead_cannot_hold_a_cell_in_the_future() {
    let mut recs = fleet(REGIONS, TARGETS, 200, |r, _, t, k| {
        if r == "hk" && t == "openai" && k >= 120 { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    });
    // One result of hk's openai cell, early on, dated two hours after it was received.
    let i = recs.iter().position(|r| r.region == "hk" && r.target == "openai").unwrap();
    let mut ahead = recs[i].clone();
    ahead.id = "hk-0/ahead".into();
    ahead.t = ahead.recv + 2 * 3_600_000;
    recs.insert(i + 1, ahead.clone());
    let mut d = Detector::new(DetectorConfig::default());
    let mut ev = Vec::new();
    for r in &recs {
        let got = d.observe(&obs(r), &mut ev);
        if r.id == ahead.id {
            assert_eq!(got, Ingest::Future);
        }
    }
    let blocks = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(blocks.len(), 1, "{ev:?}");
}

#[test]
fn a_vantage_that_never_reached_its_targets_is_no_block() {
    // hk's agents start without the CA their targets need: every probe fails its TLS check
    // from the first one; the control target answers.
    let targets = &["openai", "anthropic", "deepseek", "control"];
    let recs =
        fleet(
            REGIONS,
            targets,
            120,
            |r, _, t, _| {
                if r == "hk" && t != "control" { Outcome::TlsCertInvalid } else { Outcome::Ok }
            },
        );
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
}

#[test]
fn a_country_firewall_seen_against_a_control_target_is_one_block_per_target() {
    // From k = 60 hk loses every provider, each its own way; its control target answers.
    let targets = &["openai", "anthropic", "deepseek", "control"];
    let recs = fleet(REGIONS, targets, 150, |r, _, t, k| match (r, t) {
        ("hk", "openai") if k >= 60 => Outcome::TlsReset,
        ("hk", "anthropic") if k >= 60 => Outcome::DnsBogon,
        ("hk", "deepseek") if k >= 60 => Outcome::TcpTimeout,
        _ => Outcome::Ok,
    });
    let ev = run(&recs);
    let mut blocked: Vec<&str> =
        of_kind(&ev, EventKind::BlockStarted).iter().filter(|e| e.region == "hk").map(|e| e.target.as_str()).collect();
    blocked.sort_unstable();
    assert_eq!(blocked, ["anthropic", "deepseek", "openai"], "{ev:?}");
    assert!(of_kind(&ev, EventKind::VantageDown).is_empty(), "{ev:?}");
}

#[test]
fn a_block_whose_agents_all_go_silent_becomes_stale_once() {
    // hk is geo-blocked from k = 100; its agents fall silent from k = 150 to 220, then
    // report the same refusal again.
    let recs: Vec<Rec> = fleet(REGIONS, TARGETS, 300, |r, _, t, k| {
        if r == "hk" && t == "openai" && k >= 100 { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    })
    .into_iter()
    .filter(|r| !(r.region == "hk" && (T0 + 150 * IV..T0 + 220 * IV).contains(&r.t)))
    .collect();
    let ev = run(&recs);
    let stale = of_kind(&ev, EventKind::BlockStale);
    assert_eq!(stale.len(), 1, "{ev:?}");
    let s = stale[0];
    assert_eq!((s.target.as_str(), s.region.as_str()), ("openai", "hk"));
    assert_eq!(s.evidence.agents, ["hk-0", "hk-1"]);
    // Onset: the last result heard; decided about ten intervals later.
    assert!((T0 + 149 * IV..T0 + 150 * IV).contains(&s.onset), "onset {}", s.onset - T0);
    let waited = (s.detected_at - s.onset) as f64 / IV as f64;
    assert!((10.0..=11.5).contains(&waited), "stale after {waited:.1} intervals");
    assert!(s.summary().contains("no results from its agents (hk-0, hk-1)"), "{}", s.summary());
    // The refusal carries on when they are back: the same block, not a new one.
    assert_eq!(of_kind(&ev, EventKind::BlockStarted).len(), 1, "{ev:?}");
    assert!(of_kind(&ev, EventKind::BlockEnded).is_empty());
    // Silent regions without a block are no business of this event.
    assert!(ev.iter().all(|e| e.target == "openai" || e.kind != EventKind::BlockStale));
}

#[test]
fn a_stale_block_that_comes_back_reachable_ends() {
    let recs: Vec<Rec> = fleet(REGIONS, TARGETS, 300, |r, _, t, k| {
        if r == "hk" && t == "openai" && (100..180).contains(&k) { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    })
    .into_iter()
    .filter(|r| !(r.region == "hk" && (T0 + 150 * IV..T0 + 200 * IV).contains(&r.t)))
    .collect();
    let ev = run(&recs);
    let kinds: Vec<EventKind> = ev.iter().filter(|e| e.region == "hk").map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::BlockStarted, EventKind::BlockStale, EventKind::BlockEnded], "{ev:?}");
}

#[test]
fn kind_names_are_the_serialized_names() {
    for k in EventKind::ALL {
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.name()));
    }
}

#[test]
fn server_errors_and_rate_limits_are_not_blocks() {
    let recs = fleet(REGIONS, TARGETS, 200, |r, a, t, k| match (r, t) {
        ("cn", "deepseek") if (40..80).contains(&k) => Outcome::HttpRateLimited,
        // A regional 5xx burst with a few timeouts among the errors.
        ("us", "openai") if (100..130).contains(&k) => {
            if (k + a as i64) % 4 == 0 {
                Outcome::TcpTimeout
            } else {
                Outcome::HttpServerError
            }
        }
        _ => Outcome::Ok,
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
}

#[test]
fn an_agent_losing_its_network_is_a_vantage_problem() {
    // hk-0 fails every target for two hours; all of cn loses its network for 20 minutes;
    // the single agent of "ru" dies too.
    let regions = &[("eu", 2), ("hk", 2), ("cn", 2), ("ru", 1)];
    let recs = fleet(regions, TARGETS, 300, |r, a, _, k| {
        let down = (r == "hk" && a == 0 && (100..220).contains(&k))
            || (r == "cn" && (50..70).contains(&k))
            || (r == "ru" && (150..250).contains(&k));
        if down { if k % 3 == 0 { Outcome::DnsTimeout } else { Outcome::TcpTimeout } } else { Outcome::Ok }
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
    let down = of_kind(&ev, EventKind::VantageDown);
    let mut agents: Vec<_> = down.iter().filter_map(|e| e.agent_id.clone()).collect();
    agents.sort();
    agents.dedup();
    assert_eq!(agents, ["cn-0", "cn-1", "hk-0", "ru-0"], "{down:?}");
    assert_eq!(of_kind(&ev, EventKind::VantageUp).len(), down.len());
}

#[test]
fn one_agent_failing_while_its_region_mates_succeed_is_not_a_block() {
    let regions = &[("eu", 3), ("hk", 2), ("ru", 3)];
    let recs = fleet(regions, TARGETS, 300, |r, a, t, k| {
        if r == "ru" && a == 1 && t == "openai" && (100..220).contains(&k) { Outcome::TcpReset } else { Outcome::Ok }
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
}

#[test]
fn flaky_agents_do_not_alarm() {
    let recs = fleet(&[("eu", 1), ("hk", 2), ("ir", 2)], TARGETS, 720, |r, a, t, k| {
        let rate = match (r, a) {
            ("eu", 0) | ("hk", 0) => 0.25,
            _ => 0.1,
        };
        let x = noise(&[r.len() as u64, a as u64, t.len() as u64, k as u64, r.as_bytes()[0] as u64]);
        if x < rate {
            [Outcome::TcpTimeout, Outcome::DnsTimeout, Outcome::TlsTimeout, Outcome::TcpReset]
                [(x * 1000.0) as usize % 4]
        } else {
            Outcome::Ok
        }
    });
    let ev = run(&recs);
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
}

#[test]
fn single_agent_region_detects_blocks_with_more_evidence() {
    let regions = &[("eu", 1), ("hk", 1), ("ir", 1)];
    let recs = fleet(regions, TARGETS, 300, |r, _, t, k| match (r, t) {
        ("ir", "anthropic") if k >= 100 => Outcome::TlsReset,
        ("hk", "openai") if k >= 150 => Outcome::HttpGeoBlocked,
        ("eu", "deepseek") if (200..203).contains(&k) => Outcome::HttpGeoBlocked,
        _ => Outcome::Ok,
    });
    let ev = run(&recs);
    let started = of_kind(&ev, EventKind::BlockStarted);
    let mut cells: Vec<_> = started.iter().map(|e| (e.region.as_str(), e.target.as_str(), e.onset)).collect();
    cells.sort();
    assert_eq!(cells.len(), 3, "{ev:?}");
    assert_eq!((cells[1].0, cells[1].1), ("hk", "openai"));
    assert_eq!((cells[2].0, cells[2].1), ("ir", "anthropic"));
    assert!((cells[2].2 - (T0 + 100 * IV)).abs() <= IV);
    // The three-probe geo burst is strong evidence too, and is reported (its end as well).
    assert_eq!((cells[0].0, cells[0].1), ("eu", "deepseek"));
    assert_eq!(of_kind(&ev, EventKind::BlockEnded).len(), 1);
}

/// An agent offline from interval 60 to 100 flushes its spool in shuffled order.
fn flushed(recs: Vec<Rec>, agent: &str) -> Vec<Rec> {
    let back = T0 + 100 * IV;
    let mut out: Vec<Rec> = recs
        .into_iter()
        .map(|mut r| {
            if r.agent == agent && r.t >= T0 + 60 * IV && r.t < back {
                r.recv = back + (noise(&[r.t as u64]) * 10_000.0) as Millis;
            }
            r
        })
        .collect();
    out.sort_by(|x, y| x.recv.cmp(&y.recv).then_with(|| x.id.cmp(&y.id)));
    out
}

#[test]
fn late_flush_is_slotted_in_by_event_time() {
    let regions = &[("eu", 1), ("hk", 1), ("ir", 1)];
    let recs = fleet(regions, &["openai", "dashscope"], 200, |r, _, t, k| {
        if r == "eu" && t == "dashscope" && k >= 80 { Outcome::TlsReset } else { Outcome::Ok }
    });
    let ev = run(&flushed(recs, "eu-0"));
    let started = of_kind(&ev, EventKind::BlockStarted);
    assert_eq!(started.len(), 1, "{ev:?}");
    assert!((started[0].onset - (T0 + 80 * IV)).abs() <= IV, "onset {}", (started[0].onset - T0) / IV);
    // Decided during the flush, not a probe interval later.
    assert!(started[0].detected_at < T0 + 100 * IV + 10_000 + IV / 2);
}

#[test]
fn late_flush_of_a_finished_outage_is_quiet() {
    // Everyone sees a 15-minute outage of openai; eu-0 was offline through it and
    // flushes it afterwards, when the others are long fine.
    let regions = &[("eu", 1), ("hk", 1), ("ir", 1)];
    let recs = fleet(regions, &["openai", "dashscope"], 200, |_, _, t, k| {
        if t == "openai" && (70..85).contains(&k) { Outcome::TcpTimeout } else { Outcome::Ok }
    });
    let ev = run(&flushed(recs, "eu-0"));
    assert!(of_kind(&ev, EventKind::BlockStarted).is_empty(), "{ev:?}");
    assert!(of_kind(&ev, EventKind::BlockEnded).is_empty(), "{ev:?}");
}

#[test]
fn re_sent_results_count_once_and_ancient_ones_are_stale() {
    let recs = fleet(&[("eu", 1)], &["openai"], 200, |_, _, _, _| Outcome::Ok);
    let mut d = Detector::new(DetectorConfig::default());
    let mut ev = Vec::new();
    for r in &recs {
        assert_eq!(d.observe(&obs(r), &mut ev), Ingest::Accepted);
    }
    let mut again = recs[199].clone();
    again.recv += 5_000;
    assert_eq!(d.observe(&obs(&again), &mut ev), Ingest::Duplicate);
    let mut ancient = recs[0].clone();
    ancient.id = "other".into();
    assert_eq!(d.observe(&obs(&ancient), &mut ev), Ingest::Stale);
}

#[test]
fn replays_are_deterministic() {
    let recs = fleet(REGIONS, TARGETS, 200, |r, a, t, k| {
        if r == "cn" && t == "openai" && k >= 90 {
            Outcome::TcpTimeout
        } else if noise(&[a as u64, k as u64, t.len() as u64]) < 0.03 {
            Outcome::TcpReset
        } else {
            Outcome::Ok
        }
    });
    assert_eq!(run(&recs), run(&recs));
}

#[test]
fn events_serialize_to_the_trace_format() {
    let recs = fleet(REGIONS, TARGETS, 120, |r, _, t, k| {
        if r == "eu" && t == "openai" && k >= 100 { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    });
    let ev = run(&recs);
    let line = ev[0].to_json_line();
    let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
    assert_eq!(v["kind"], "block_started");
    assert_eq!(v["target"], "openai");
    assert_eq!(v["region"], "eu");
    let onset = v["onset"].as_str().expect("onset is a string");
    assert!(onset.ends_with('Z') && onset.len() == 24, "{onset}");
    assert!(v["evidence"]["agents"].is_array());
}

#[test]
fn config_defaults_and_unknown_keys() {
    let c: DetectorConfig = serde_json::from_str("{}").expect("empty config");
    assert_eq!(c, DetectorConfig::default());
    let c: DetectorConfig = serde_json::from_str(r#"{"network_persistence": 6}"#).expect("one key");
    assert_eq!(c.network_persistence, 6.0);
    let err = serde_json::from_str::<DetectorConfig>(r#"{"network_persistance": 6}"#).unwrap_err();
    assert!(err.to_string().contains("network_persistance"), "{err}");
}

#[test]
fn suspected_blocks_ask_the_region_to_confirm_once_per_interval() {
    // hk-0 meets a geo refusal at k = 10 and from then on; the others have not probed yet.
    let recs = fleet(&[("hk", 3), ("eu", 2)], &["openai"], 14, |r, a, _, k| {
        if r == "hk" && a == 0 && k >= 10 { Outcome::HttpGeoBlocked } else { Outcome::Ok }
    });
    let mut d = Detector::new(DetectorConfig::default());
    d.request_confirmations();
    let mut events = Vec::new();
    let mut asked = Vec::new();
    for r in &recs {
        d.observe(&obs(r), &mut events);
        for q in d.take_requests() {
            asked.push((r.t, q));
        }
    }
    assert!(!asked.is_empty(), "a geo refusal asks for confirmation");
    let (t, first) = &asked[0];
    assert_eq!((first.target.as_str(), first.region.as_str()), ("openai", "hk"));
    assert!(first.reason.contains("geo refusal") && first.reason.contains("hk-0"), "{}", first.reason);
    assert_eq!(*t, recs.iter().find(|r| r.outcome == Outcome::HttpGeoBlocked).unwrap().t);
    for w in asked.windows(2) {
        assert!(w[1].0 - w[0].0 >= IV - 1000, "asked twice within an interval: {asked:?}");
    }

    // A lone network failure is noise: nobody is asked. Replay (no taker) collects nothing.
    let recs = fleet(
        &[("hk", 3)],
        &["openai"],
        30,
        |_, a, _, k| {
            if a == 1 && k == 12 { Outcome::TcpTimeout } else { Outcome::Ok }
        },
    );
    let mut d = Detector::new(DetectorConfig::default());
    d.request_confirmations();
    for r in &recs {
        d.observe(&obs(r), &mut events);
    }
    assert!(d.take_requests().is_empty());
    let mut d = Detector::new(DetectorConfig::default());
    for r in &recs {
        d.observe(&obs(r), &mut events);
    }
    assert!(d.take_requests().is_empty());
}
