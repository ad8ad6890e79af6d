//! The sizes a result's fields are held to: agents cap what they copy from an answer to
//! these, and the collector's default limits accept exactly these, so an answer full of huge
//! headers or codes makes a bounded result, never a refused one.

/// Longest free-form field (a provider code, a failure string, an address, an edge header's
/// name or value), in bytes.
pub const FIELD_BYTES: usize = 256;
/// Longest `detail`, in bytes.
pub const DETAIL_BYTES: usize = 2048;
/// Most entries of a list field (`resolved_addresses`, `edge_headers`).
pub const LIST_LEN: usize = 32;

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
    ] {
        cap(field, FIELD_BYTES);
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
            ..Default::default()
        };
        cap_result(&mut r);
        assert!(r.provider_code.len() <= FIELD_BYTES && r.detail.len() <= DETAIL_BYTES);
        assert_eq!((r.resolved_addresses.len(), r.edge_headers.len()), (LIST_LEN, LIST_LEN));
        assert!(r.edge_headers.values().chain(&r.resolved_addresses).all(|v| v.len() <= FIELD_BYTES));
        use prost::Message;
        assert!(r.encoded_len() < 20_000, "{}", r.encoded_len());
    }
}
