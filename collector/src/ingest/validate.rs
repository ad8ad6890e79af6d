//! Checks on results arriving from the network, before anything is stored: every field within
//! its bound, ids by the id rule, the result bound to the agent that sent it, and its time in
//! a window around its receipt.

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, checked_from_timestamp, format_rfc3339};
use blockwatch_proto::v1::ProbeResult;

use super::limits::Limits;

/// Who sent a result, and when it arrived.
pub struct Sender<'a> {
    pub agent_id: &'a str,
    /// The region the agent registered with.
    pub region: &'a str,
    pub received_at: Millis,
}

/// Why one result is refused, naming the field; `None` when it may be stored.
pub fn problem(r: &ProbeResult, from: &Sender<'_>, limits: &Limits) -> Option<String> {
    let id = &r.probe_id;
    let max = limits.max_field_bytes;
    if id.is_empty() || id.len() > max {
        return Some(format!("probe_id of {} bytes: must be 1-{max} bytes", id.len()));
    }
    // Results are deduplicated by probe id: an id outside the agent's own namespace could
    // claim, and so erase, another agent's result.
    if !id.strip_prefix(from.agent_id).is_some_and(|rest| rest.starts_with('/')) {
        return Some(format!("probe {id}: probe_id must start with the agent's id {:?} and '/'", from.agent_id));
    }
    if r.agent_id != from.agent_id {
        return Some(format!(
            "probe {id}: agent_id {:?} differs from the stream's agent {:?}",
            r.agent_id, from.agent_id
        ));
    }
    if r.region != from.region {
        return Some(format!(
            "probe {id}: region {:?} differs from the agent's registered region {:?}",
            r.region, from.region
        ));
    }
    if let Err(rule) = blockwatch_proto::id::check(&r.target_id) {
        return Some(format!("probe {id}: target_id {:?}: {rule}", shown(&r.target_id)));
    }
    let Some(ts) = &r.started_at else {
        return Some(format!("probe {id}: started_at is missing"));
    };
    let Some(started) = checked_from_timestamp(ts) else {
        return Some(format!("probe {id}: started_at {}s {}ns is not a valid time", ts.seconds, ts.nanos));
    };
    let ahead = started.saturating_sub(from.received_at);
    if ahead > millis(limits.max_future) {
        return Some(format!(
            "probe {id}: started_at {} is {} after its receipt (limits.max_future {})",
            format_rfc3339(started),
            humantime::format_duration(std::time::Duration::from_millis(ahead as u64)),
            humantime::format_duration(limits.max_future)
        ));
    }
    if from.received_at.saturating_sub(started) > millis(limits.max_age) {
        return Some(format!(
            "probe {id}: started_at {} is older than limits.max_age {}",
            format_rfc3339(started),
            humantime::format_duration(limits.max_age)
        ));
    }
    for (field, value) in [
        ("failure", &r.failure),
        ("provider_code", &r.provider_code),
        ("provider", &r.provider),
        ("peer_address", &r.peer_address),
        ("local_address", &r.local_address),
        ("egress_address", &r.egress_address),
        ("egress_as_org", &r.egress_as_org),
        ("tls_version", &r.tls_version),
        ("tls_cipher_suite", &r.tls_cipher_suite),
        ("tls_alpn", &r.tls_alpn),
    ] {
        if value.len() > max {
            return Some(format!("probe {id}: {field} of {} bytes: at most {max}", value.len()));
        }
    }
    // A country is a code (what groups and exports key on), not a name.
    let cc = &r.egress_country;
    if !cc.is_empty() && (cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase())) {
        return Some(format!(
            "probe {id}: egress_country {:?}: two upper-case letters (ISO 3166-1) or empty",
            shown(cc)
        ));
    }
    // An operation name (`resolve`, `tls_handshake`, ...): a word, not free text.
    let op = &r.failed_operation;
    if op.len() > 32 || !op.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Some(format!("probe {id}: failed_operation {:?}: at most 32 of a-z and _", shown(op)));
    }
    if r.detail.len() > limits.max_detail_bytes {
        return Some(format!("probe {id}: detail of {} bytes: at most {}", r.detail.len(), limits.max_detail_bytes));
    }
    if r.url.len() > blockwatch_proto::bounds::URL_BYTES {
        return Some(format!(
            "probe {id}: url of {} bytes: at most {}",
            r.url.len(),
            blockwatch_proto::bounds::URL_BYTES
        ));
    }
    if r.body_prefix.len() > blockwatch_proto::bounds::BODY_PREFIX_BYTES {
        return Some(format!(
            "probe {id}: body_prefix of {} bytes: at most {}",
            r.body_prefix.len(),
            blockwatch_proto::bounds::BODY_PREFIX_BYTES
        ));
    }
    let lists = [
        ("resolved_addresses", r.resolved_addresses.len()),
        ("edge_headers", r.edge_headers.len()),
        ("answers of a dns query", r.dns_queries.iter().map(|q| q.answers.len()).max().unwrap_or(0)),
        ("request_headers", r.request_headers.len()),
        ("response_headers", r.response_headers.len()),
    ];
    for (field, n) in lists {
        if n > limits.max_list_len {
            return Some(format!("probe {id}: {n} {field}: at most {}", limits.max_list_len));
        }
    }
    if r.resolved_addresses.iter().any(|a| a.len() > max) {
        return Some(format!("probe {id}: a resolved address is longer than {max} bytes"));
    }
    if r.edge_headers.iter().any(|(k, v)| k.len() > max || v.len() > max) {
        return Some(format!("probe {id}: an edge header is longer than {max} bytes"));
    }
    for (field, list) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
        if list.iter().any(|h| h.name.len() > max || h.value.len() > max) {
            return Some(format!("probe {id}: a header of {field} is longer than {max} bytes"));
        }
    }
    // Record types are words the export maps (`A`, `AAAA`, `CNAME`), not free text.
    let dns_type =
        |t: &str| (1..=10).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if r.dns_queries.len() > blockwatch_proto::bounds::DNS_QUERIES {
        return Some(format!(
            "probe {id}: {} dns queries: at most {}",
            r.dns_queries.len(),
            blockwatch_proto::bounds::DNS_QUERIES
        ));
    }
    for q in &r.dns_queries {
        if !dns_type(&q.query_type) {
            return Some(format!("probe {id}: dns query type {:?}: 1-10 of A-Z and 0-9", shown(&q.query_type)));
        }
        if q.failure.len() > max {
            return Some(format!("probe {id}: a dns query's failure is longer than {max} bytes"));
        }
        for a in &q.answers {
            if !dns_type(&a.answer_type) {
                return Some(format!("probe {id}: dns answer type {:?}: 1-10 of A-Z and 0-9", shown(&a.answer_type)));
            }
            if a.value.len() > max {
                return Some(format!("probe {id}: a dns answer is longer than {max} bytes"));
            }
        }
    }
    match Outcome::try_from(r.outcome) {
        Ok(Outcome::Unspecified) | Err(_) => Some(format!("probe {id}: outcome {} is not a known outcome", r.outcome)),
        Ok(_) => None,
    }
}

fn millis(d: std::time::Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// At most the start of a long value, for a message.
fn shown(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use blockwatch_proto::v1::{DnsAnswer, DnsQuery, Header};

    use super::*;

    const NOW: Millis = 1_700_000_000_000;

    fn good() -> ProbeResult {
        let mut r = ProbeResult {
            probe_id: "a1/1/7".into(),
            agent_id: "a1".into(),
            region: "hk".into(),
            target_id: "openai".into(),
            started_at: Some(blockwatch_proto::time::to_timestamp(NOW - 1000)),
            ..Default::default()
        };
        r.set_outcome(Outcome::Ok);
        r
    }

    fn check(r: &ProbeResult) -> Option<String> {
        problem(r, &Sender { agent_id: "a1", region: "hk", received_at: NOW }, &Limits::default())
    }

    #[test]
    fn a_good_result_passes() {
        assert_eq!(check(&good()), None);
    }

    #[test]
    fn results_are_bound_to_their_sender() {
        let hijack = ProbeResult { probe_id: "b2/1/7".into(), ..good() };
        assert!(check(&hijack).unwrap().contains("probe_id must start with the agent's id \"a1\""));
        let prefix = ProbeResult { probe_id: "a10/1/7".into(), ..good() };
        assert!(check(&prefix).is_some(), "a1 may not use a10's ids");
        let elsewhere = ProbeResult { region: "eu".into(), ..good() };
        assert!(check(&elsewhere).unwrap().contains("differs from the agent's registered region \"hk\""));
    }

    #[test]
    fn times_outside_the_window_are_refused() {
        let at = |seconds, nanos| ProbeResult { started_at: Some(prost_types::Timestamp { seconds, nanos }), ..good() };
        let future = at(NOW / 1000 + 3600, 0);
        assert!(
            check(&future).unwrap().contains("is 1h after its receipt (limits.max_future 5m)"),
            "{:?}",
            check(&future)
        );
        assert!(check(&at(NOW / 1000 + 60, 0)).is_none(), "a minute of clock skew is fine");
        assert!(check(&at(NOW / 1000 - 8 * 24 * 3600, 0)).unwrap().contains("older than limits.max_age 7days"));
        for (s, n) in
            [(i64::MAX, 0), (i64::MIN, 0), (-62_135_596_801, 0), (253_402_300_800, 0), (0, 1_000_000_000), (0, -1)]
        {
            assert!(check(&at(s, n)).unwrap().contains("is not a valid time"), "{s} {n}");
        }
    }

    #[test]
    fn every_field_has_a_bound() {
        let big = "x".repeat(300);
        for r in [
            ProbeResult { target_id: big.clone(), ..good() },
            ProbeResult { provider_code: big.clone(), ..good() },
            ProbeResult { failure: big.clone(), ..good() },
            ProbeResult { failed_operation: "Resolve; DROP".into(), ..good() },
            ProbeResult { egress_country: "Germany".into(), ..good() },
            ProbeResult { egress_country: "de".into(), ..good() },
            ProbeResult { egress_as_org: "x".repeat(300), ..good() },
            ProbeResult { peer_address: big.clone(), ..good() },
            ProbeResult { detail: "y".repeat(3000), ..good() },
            ProbeResult { resolved_addresses: vec!["1.1.1.1".into(); 33], ..good() },
            ProbeResult { edge_headers: [("server".to_string(), big.clone())].into(), ..good() },
            ProbeResult { probe_id: format!("a1/{big}"), ..good() },
            ProbeResult { url: "u".repeat(3000), ..good() },
            ProbeResult { tls_cipher_suite: big.clone(), ..good() },
            ProbeResult { body_prefix: vec![0; 257], ..good() },
            ProbeResult { response_headers: vec![Header { name: "a".into(), value: big.clone() }], ..good() },
            ProbeResult { request_headers: vec![Header::default(); 33], ..good() },
            ProbeResult { dns_queries: vec![dns("A", "A", "1.1.1.1", 33)], ..good() },
            ProbeResult { dns_queries: vec![dns("A", "A", "1.1.1.1", 1); 5], ..good() },
            ProbeResult { dns_queries: vec![dns("a", "A", "1.1.1.1", 1)], ..good() },
            ProbeResult { dns_queries: vec![dns("A", "A; DROP", "1.1.1.1", 1)], ..good() },
            ProbeResult { dns_queries: vec![dns("A", "CNAME", &big, 1)], ..good() },
            ProbeResult {
                dns_queries: vec![DnsQuery { failure: big.clone(), ..dns("A", "A", "1.1.1.1", 0) }],
                ..good()
            },
        ] {
            assert!(check(&r).is_some(), "{r:?}");
        }
        let network = ProbeResult {
            egress_asn: 64500,
            egress_as_org: "Example Net".into(),
            egress_country: "DE".into(),
            ..good()
        };
        assert_eq!(check(&network), None);
        let full = ProbeResult {
            url: "https://api.openai.com/v1/models".into(),
            dns_queries: vec![dns("A", "CNAME", "edge.example.", 1), dns("AAAA", "AAAA", "2001:db8::1", 32)],
            tls_version: "TLSv1_3".into(),
            response_headers: vec![Header { name: "server".into(), value: "x".into() }; 32],
            body_prefix: vec![0xff; 256],
            ..good()
        };
        assert_eq!(check(&full), None);
    }

    fn dns(q: &str, a: &str, v: &str, n: usize) -> DnsQuery {
        let answer = DnsAnswer { answer_type: a.into(), value: v.into(), ttl: 1 };
        DnsQuery { query_type: q.into(), failure: String::new(), answers: vec![answer; n] }
    }

    proptest::proptest! {
        /// Whatever bytes arrive as a message, decoding either fails or yields a result the
        /// checks answer for without panicking; what they pass is within every bound.
        #[test]
        fn any_bytes_are_decoded_and_checked(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            use prost::Message;
            if let Ok(r) = ProbeResult::decode(bytes.as_slice()) {
                check_bounds(&r);
            }
            if let Ok(m) = blockwatch_proto::v1::AgentMessage::decode(bytes.as_slice())
                && let Some(blockwatch_proto::v1::agent_message::Kind::Batch(b)) = m.kind
            {
                b.results.iter().for_each(check_bounds);
            }
        }

        /// Results near the rules: every field drawn from values on both sides of its bound.
        #[test]
        fn results_near_the_bounds(
            probe_id in proptest::prop_oneof!["a1/[0-9]{1,3}", "[a-z0-9/]{0,8}", "a1/x{250,260}"],
            region in proptest::prop_oneof![proptest::strategy::Just("hk".to_string()), "[a-z ]{0,3}"],
            target in proptest::prop_oneof!["[a-z]{1,8}", ".{0,70}"],
            seconds in proptest::prop_oneof![proptest::prelude::any::<i64>(), (NOW / 1000 - 800_000)..(NOW / 1000 + 600)],
            nanos in proptest::prop_oneof![proptest::prelude::any::<i32>(), 0i32..1_000_000_000],
            detail_len in 2000usize..2100,
            outcome in -2i32..40,
        ) {
            let r = ProbeResult {
                probe_id,
                region,
                target_id: target,
                started_at: Some(prost_types::Timestamp { seconds, nanos }),
                detail: "d".repeat(detail_len),
                outcome,
                ..good()
            };
            check_bounds(&r);
        }
    }

    fn check_bounds(r: &ProbeResult) {
        if check(r).is_none() {
            let l = Limits::default();
            assert!(r.probe_id.starts_with("a1/") && r.probe_id.len() <= l.max_field_bytes);
            assert!(r.region == "hk" && blockwatch_proto::id::check(&r.target_id).is_ok());
            assert!(r.detail.len() <= l.max_detail_bytes);
            let started = checked_from_timestamp(r.started_at.as_ref().unwrap()).unwrap();
            assert!((NOW - 7 * 24 * 3_600_000..=NOW + 5 * 60_000).contains(&started));
        }
    }
}
