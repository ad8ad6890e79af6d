//! Property tests over the parsers that read what the network and users hand us: trace lines,
//! RFC 3339 times, protobuf timestamps, URLs, ids and config files. Whatever the input, they
//! answer (a value or an error) without panicking, and what they accept keeps its promises.
//!
//! Each property runs 256 cases by default; `PROPTEST_CASES=1000000 cargo test -p
//! blockwatch-proto --test hostile_input --release` is the long run (README, Development).

use blockwatch_proto::time::{self, Millis};
use blockwatch_proto::trace::{TraceLine, TraceRecord};
use proptest::prelude::*;

/// Text that looks like a trace line often enough to reach deep into the parser.
fn trace_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "probe_id",
        "agent_id",
        "region",
        "target",
        "started_at",
        "received_at",
        "outcome",
        "outcome_detail",
        "control",
        "confirmation",
        "http_status",
        "x",
    ]);
    let value = prop_oneof![
        "[a-z0-9_/.:-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("\"2024-07-24T00:41:10.309Z\"".to_string()),
        Just("\"ok\"".to_string()),
        Just("\"tls_alert\"".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        "[\\x00-\\x7f]{0,6}",
        ".{0,6}",
    ];
    prop::collection::vec((key, value), 0..12).prop_map(|kv| {
        let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    })
}

proptest! {
    #[test]
    fn trace_lines_parse_or_say_why(text in prop_oneof![trace_like(), ".{0,200}"]) {
        if let Ok(line) = TraceLine::parse(&text) {
            // Accepted lines agree with the general reader on the fields both read.
            let rec: TraceRecord = serde_json::from_str(&text).expect("serde_json reads what the fast path read");
            prop_assert_eq!(line.probe_id.as_ref(), rec.probe_id.as_str());
            prop_assert_eq!(line.started_at, rec.started_ms().unwrap());
        }
    }

    #[test]
    fn rfc3339_parsing_never_panics_and_round_trips(text in ".{0,40}", ms in time::MIN..=time::MAX) {
        let _ = time::parse_rfc3339(&text);
        prop_assert_eq!(time::parse_rfc3339(&time::format_rfc3339(ms)), Some(ms));
    }

    #[test]
    fn protobuf_timestamps_are_checked_not_wrapped(seconds in any::<i64>(), nanos in any::<i32>()) {
        let ts = prost_types::Timestamp { seconds, nanos };
        match time::checked_from_timestamp(&ts) {
            Some(ms) => {
                prop_assert!((time::MIN..=time::MAX).contains(&ms));
                prop_assert!((0..1_000_000_000).contains(&nanos));
            }
            None => prop_assert!((time::MIN..=time::MAX).contains(&time::from_timestamp(&ts))),
        }
    }

    #[test]
    fn urls_parse_or_say_why(text in prop_oneof!["(https|http|tcp)://[a-z0-9.:\\[\\]@/?#%-]{0,40}", ".{0,60}"]) {
        let parsed = [blockwatch_proto::url::target(&text), blockwatch_proto::url::probe(&text), blockwatch_proto::url::endpoint(&text)];
        for u in parsed.into_iter().flatten() {
            prop_assert!(!u.host.is_empty());
            prop_assert!(u.port > 0);
            prop_assert!(u.path.starts_with('/'));
        }
    }

    #[test]
    fn ids_follow_the_rule(text in ".{0,80}") {
        let ok = blockwatch_proto::id::check(&text).is_ok();
        let rule = !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(ok, rule);
    }

    #[test]
    fn config_files_parse_or_list_their_problems(text in prop_oneof![
        "([a-z_]{1,8} = (\"[a-z]{0,5}\"|[0-9]{1,4}|true|\\[\\]|\\{\\})\n){0,8}(\\[\\[item\\]\\]\n(id = \"[a-z]\"\n)?)?",
        ".{0,120}",
    ]) {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Cfg {
            #[serde(default)]
            name: String,
            #[serde(default)]
            count: u32,
            #[serde(default)]
            item: Vec<Item>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Item {
            id: String,
        }
        if let Err(problems) = blockwatch_proto::config_file::parse_toml::<Cfg>(&text) {
            prop_assert!(!problems.is_empty());
            prop_assert!(problems.len() <= 64);
        }
    }
}

#[test]
fn the_extremes_of_the_time_range() {
    let ms: Millis = time::MAX;
    assert_eq!(time::format_rfc3339(ms), "9999-12-31T23:59:59.999Z");
}
