//! The sizes a result's fields are held to: agents cap what they copy from an answer to
//! these, and the collector's default limits accept exactly these, so an answer full of huge
//! headers or codes makes a bounded result, never a refused one.

/// Longest free-form field (a provider code, a failure string, an address, an edge header's
/// name or value), in bytes.
pub const FIELD_BYTES: usize = 256;
/// Longest `detail`, in bytes.
pub const DETAIL_BYTES: usize = 2048;
/// Most entries of a list field (`resolved_addresses`, `edge_headers`, `dns_answers`, the
/// header lists).
pub const LIST_LEN: usize = 32;
/// Most DNS queries of one result (a probe asks two: AAAA and A).
pub const DNS_QUERIES: usize = 4;
/// Most bytes of `body_prefix`.
pub const BODY_PREFIX_BYTES: usize = 256;
/// Longest `url`, in bytes.
pub const URL_BYTES: usize = 2048;

/// True for a header that may carry a credential or name an account (`authorization`,
/// `x-api-key`, `cookie`, `set-cookie`, `openai-organization`, ...): results never record
/// one, and exports never write one.
pub fn private_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "key", "token", "secret", "cookie", "session", "organization", "password"].iter().any(|w| n.contains(w))
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking a cut with `…` (within
/// the bound).
pub fn cap(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    const MARK: &str = "…";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if s.len() + MARK.len() <= max {
        s.push_str(MARK);
    }
}

/// Holds every free-form field of `r` to the bounds (ids and times are the agent's own).
pub fn cap_result(r: &mut crate::v1::ProbeResult) {
    for field in [
        &mut r.failure,
        &mut r.failed_operation,
        &mut r.provider_code,
        &mut r.provider,
        &mut r.peer_address,
        &mut r.local_address,
        &mut r.egress_address,
        &mut r.egress_as_org,
        &mut r.egress_country,
        &mut r.tls_version,
        &mut r.tls_cipher_suite,
        &mut r.tls_alpn,
    ] {
        cap(field, FIELD_BYTES);
    }
    cap(&mut r.url, URL_BYTES);
    r.dns_queries.truncate(DNS_QUERIES);
    for q in &mut r.dns_queries {
        cap(&mut q.query_type, FIELD_BYTES);
        cap(&mut q.failure, FIELD_BYTES);
        q.answers.truncate(LIST_LEN);
        for a in &mut q.answers {
            cap(&mut a.answer_type, FIELD_BYTES);
            cap(&mut a.value, FIELD_BYTES);
        }
    }
    for list in [&mut r.request_headers, &mut r.response_headers] {
        list.truncate(LIST_LEN);
        for h in list.iter_mut() {
            cap(&mut h.name, FIELD_BYTES);
            cap(&mut h.value, FIELD_BYTES);
        }
    }
    if r.body_prefix.len() > BODY_PREFIX_BYTES {
        r.body_prefix.truncate(BODY_PREFIX_BYTES);
        r.body_truncated = true;
    }
    cap(&mut r.detail, DETAIL_BYTES);
    r.resolved_addresses.truncate(LIST_LEN);
    for a in &mut r.resolved_addresses {
        cap(a, FIELD_BYTES);
    }
    if r.edge_headers.len() > LIST_LEN
        || r.edge_headers.iter().any(|(k, v)| k.len() > FIELD_BYTES || v.len() > FIELD_BYTES)
    {
        let mut kept: Vec<(String, String)> =
            std::mem::take(&mut r.edge_headers).into_iter().filter(|(k, _)| k.len() <= FIELD_BYTES).collect();
        kept.sort();
        kept.truncate(LIST_LEN);
        r.edge_headers = kept
            .into_iter()
            .map(|(k, mut v)| {
                cap(&mut v, FIELD_BYTES);
                (k, v)
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_headers_are_known_by_name() {
        for h in [
            "Authorization",
            "x-api-key",
            "Cookie",
            "set-cookie",
            "openai-organization",
            "x-goog-api-key",
            "proxy-authorization",
        ] {
            assert!(private_header(h), "{h}");
        }
        for h in ["server", "cf-ray", "content-type", "user-agent", "host", "x-request-id", "anthropic-version"] {
            assert!(!private_header(h), "{h}");
        }
    }

    #[test]
    fn caps_cut_at_character_boundaries_within_the_bound() {
        for (text, max) in [("short", 10), ("ééééééé", 5), ("abcdefghij", 4), ("xyz", 0), ("ab", 1)] {
            let mut s = text.to_string();
            cap(&mut s, max);
            assert!(s.len() <= max.max(text.len().min(max)), "{s:?}");
            assert!(s.len() <= max || text.len() <= max, "{text} {max}: {s:?}");
            assert!(text.starts_with(s.trim_end_matches('…')), "{text} {max}: {s:?}");
        }
        let mut s = "x".repeat(300);
        cap(&mut s, FIELD_BYTES);
        assert_eq!(s.len(), FIELD_BYTES);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn a_result_full_of_huge_fields_is_held_to_the_bounds() {
        let huge = "é".repeat(1 << 20);
        let mut r = crate::v1::ProbeResult {
            provider_code: huge.clone(),
            detail: huge.clone(),
            resolved_addresses: vec![huge.clone(); 100],
            edge_headers: (0..100).map(|i| (format!("h{i}"), huge.clone())).collect(),
            url: huge.clone(),
            tls_cipher_suite: huge.clone(),
            dns_queries: vec![
                crate::v1::DnsQuery {
                    query_type: huge.clone(),
                    failure: huge.clone(),
                    answers: vec![crate::v1::DnsAnswer { answer_type: huge.clone(), value: huge.clone(), ttl: 1 }; 100],
                };
                10
            ],
            response_headers: vec![crate::v1::Header { name: huge.clone(), value: huge.clone() }; 100],
            body_prefix: vec![7; 1 << 20],
            ..Default::default()
        };
        cap_result(&mut r);
        assert!(r.url.len() <= URL_BYTES && r.tls_cipher_suite.len() <= FIELD_BYTES);
        assert_eq!((r.dns_queries.len(), r.response_headers.len()), (DNS_QUERIES, LIST_LEN));
        assert!(r.dns_queries.iter().all(|q| q.answers.len() == LIST_LEN && q.query_type.len() <= FIELD_BYTES));
        assert!(r.dns_queries.iter().flat_map(|q| &q.answers).all(|a| a.value.len() <= FIELD_BYTES));
        assert!(r.response_headers.iter().all(|h| h.name.len() <= FIELD_BYTES && h.value.len() <= FIELD_BYTES));
        assert!(r.body_prefix.len() == BODY_PREFIX_BYTES && r.body_truncated);
        assert!(r.provider_code.len() <= FIELD_BYTES && r.detail.len() <= DETAIL_BYTES);
        assert_eq!((r.resolved_addresses.len(), r.edge_headers.len()), (LIST_LEN, LIST_LEN));
        assert!(r.edge_headers.values().chain(&r.resolved_addresses).all(|v| v.len() <= FIELD_BYTES));
        use prost::Message;
        assert!(r.encoded_len() < 120_000, "{}", r.encoded_len());
    }
}
