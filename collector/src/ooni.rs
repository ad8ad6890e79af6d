//! Results as OONI measurements: one `urlgetter` measurement per result, the generic
//! DNS → TCP → TLS → HTTP test whose keys OONI's pipeline parses into observations.
//!
//! The base keys follow `df-000-base`; `test_keys` carries `failure` / `failed_operation`
//! and one entry per phase that ran: `queries` (`df-002-dnst`: one per query type, with its
//! records or its failure), `tcp_connect` (`df-005`), `tls_handshakes` (`df-006`) and
//! `requests` (`df-001-httpt`: the request's headers as sent, which never include the
//! credential's, and the response's headers and first bytes). What only blockwatch knows goes
//! under `x_` keys. Nothing is padded: a phase that did not run has no entry, and a result
//! recorded before a field existed leaves that key out.

use serde_json::{Map, Value, json};

use blockwatch_proto::time::{format_rfc3339, parse_rfc3339};
use blockwatch_proto::trace::{MaybeBinary, TraceRecord};

/// The version of OONI's `urlgetter` whose keys these are.
const TEST_VERSION: &str = "0.2.0";
/// The data format version of the base keys.
const DATA_FORMAT_VERSION: &str = "0.2.0";

/// OONI's time form, `2026-07-09 12:00:00` (UTC).
fn ooni_time(ms: i64) -> String {
    let t = format_rfc3339(ms);
    t.get(..19).unwrap_or_default().replace('T', " ")
}

/// The first 16 hex digits of the SHA-256 of `s`: a stable id part.
fn hash16(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn opt(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.to_string()) }
}

/// Seconds, rounded to the microsecond.
fn secs(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1_000_000.0
}

/// The host of a URL (`https://h:p/...`), brackets of an IPv6 address removed.
fn host_of(url: &str) -> String {
    url.parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()))
        .unwrap_or_default()
}

/// `ip:port` split, brackets of IPv6 removed.
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    Some((sa.ip().to_string(), sa.port()))
}

/// A header list as OONI's `headers_list` and `headers`, without any header that may carry
/// a credential or name an account (whatever an agent recorded).
fn headers(list: &[(String, String)]) -> (Value, Value) {
    let public = || list.iter().filter(|(n, _)| !blockwatch_proto::bounds::private_header(n));
    let pairs: Vec<Value> = public().map(|(n, v)| json!([n, v])).collect();
    let mut map = Map::new();
    for (n, v) in public() {
        // The first of a repeated header, as OONI's `headers` map keeps it.
        map.entry(n.clone()).or_insert_with(|| Value::String(v.clone()));
    }
    (Value::Array(pairs), Value::Object(map))
}

/// The measurement of one result.
pub fn measurement(r: &TraceRecord) -> Value {
    let started = parse_rfc3339(&r.started_at).unwrap_or(0);
    let start_time = ooni_time(started);
    let cc = if r.egress_country.len() == 2 && r.egress_country.bytes().all(|b| b.is_ascii_uppercase()) {
        r.egress_country.clone()
    } else {
        "ZZ".to_string()
    };
    let asn = format!("AS{}", r.egress_asn);
    let failed = r.failed_operation.as_str();
    let failure_of = |op: &str| if failed == op { opt(&r.failure) } else { Value::Null };
    let host = host_of(&r.url);
    // Phase offsets from the start, in seconds.
    let dns_end = secs(r.dns_ms);
    let connect_end = dns_end + secs(r.connect_ms);
    let tls_end = connect_end + secs(r.tls_ms);
    let http_end = tls_end + secs(r.http_ms);

    let mut keys = Map::new();
    keys.insert("failure".into(), opt(&r.failure));
    keys.insert("failed_operation".into(), opt(&r.failed_operation));
    if !r.dns_queries.is_empty() {
        let queries: Vec<Value> = r
            .dns_queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let answers: Vec<Value> = q
                    .answers
                    .iter()
                    .map(|a| {
                        let key = match a.answer_type.as_str() {
                            "A" => "ipv4",
                            "AAAA" => "ipv6",
                            _ => "hostname",
                        };
                        json!({"answer_type": a.answer_type, key: a.value, "ttl": a.ttl})
                    })
                    .collect();
                json!({
                    "hostname": host,
                    "query_type": q.query_type,
                    "failure": opt(&q.failure),
                    "answers": if answers.is_empty() { Value::Null } else { Value::Array(answers) },
                    "transaction_id": i + 1,
                    "t0": 0.0,
                    "t": dns_end,
                })
            })
            .collect();
        keys.insert("queries".into(), Value::Array(queries));
    }
    let peer = split_addr(&r.peer_address);
    if let Some((ip, p)) = &peer {
        let ok = failed != "connect";
        keys.insert(
            "tcp_connect".into(),
            json!([{
                "ip": ip,
                "port": p,
                "status": {"success": ok, "failure": failure_of("connect"), "blocked": Value::Null},
                "t0": dns_end,
                "t": connect_end,
            }]),
        );
    }
    let https = r.url.starts_with("https://");
    let tls_ran = r.tls_ms > 0.0 || failed == "tls_handshake";
    if https && tls_ran {
        keys.insert(
            "tls_handshakes".into(),
            json!([{
                "network": "tcp",
                "address": opt(&r.peer_address),
                "server_name": host,
                "tls_version": opt(&r.tls_version),
                "cipher_suite": opt(&r.tls_cipher_suite),
                "negotiated_protocol": opt(&r.tls_alpn),
                "no_tls_verify": false,
                "failure": failure_of("tls_handshake"),
                "t0": connect_end,
                "t": tls_end,
            }]),
        );
    }
    let http_ran = r.http_ms > 0.0 || r.http_status != 0 || failed == "http_round_trip";
    if https && http_ran {
        let (req_list, req_map) = headers(&r.request_headers);
        let (resp_list, resp_map) = headers(&r.response_headers);
        let body = match &r.body_prefix {
            Some(MaybeBinary::Text(s)) => json!(s),
            Some(MaybeBinary::Binary { format, data }) => json!({"format": format, "data": data}),
            None => json!(""),
        };
        keys.insert(
            "requests".into(),
            json!([{
                "network": "tcp",
                "address": opt(&r.peer_address),
                "alpn": opt(&r.tls_alpn),
                "failure": failure_of("http_round_trip"),
                "request": {
                    "url": r.url,
                    "method": "GET",
                    "headers_list": req_list,
                    "headers": req_map,
                    "body": "",
                    "body_is_truncated": false,
                    "x_transport": "tcp",
                },
                "response": {
                    "code": r.http_status,
                    "headers_list": resp_list,
                    "headers": resp_map,
                    "body": body,
                    "body_is_truncated": r.body_truncated,
                },
                "t0": tls_end,
                "t": http_end,
            }]),
        );
    }
    let outcome = if r.outcome_detail.is_empty() { &r.outcome } else { &r.outcome_detail };
    for (k, v) in [
        ("x_probe_id", json!(r.probe_id)),
        ("x_agent_id", json!(r.agent_id)),
        ("x_region", json!(r.region)),
        ("x_target", json!(r.target)),
        ("x_provider", opt(&r.provider)),
        ("x_outcome", json!(outcome)),
        ("x_provider_code", opt(&r.provider_code)),
        ("x_detail", opt(&r.detail)),
        ("x_received_at", r.received_at.as_deref().map_or(Value::Null, |t| json!(t))),
        ("x_confirmation", json!(r.confirmation)),
        ("x_control", json!(r.control)),
        ("x_keyed", json!(r.keyed)),
        // The probe's own addresses (local and egress) stay out, as OONI keeps its probes'.
        ("x_resolved_addresses", json!(r.resolved_addresses)),
    ] {
        keys.insert(k.into(), v);
    }
    let micros = started.rem_euclid(1000) * 1000;
    let compact = format_rfc3339(started).replace(['-', ':'], "");
    json!({
        "annotations": {
            "engine_name": "blockwatch",
            "x_region": r.region,
            "x_agent_id": r.agent_id,
        },
        "data_format_version": DATA_FORMAT_VERSION,
        "input": opt(&r.url),
        "measurement_start_time": start_time,
        "test_start_time": start_time,
        "measurement_uid": format!(
            "{}.{micros:06}_{cc}_urlgetter_{}",
            compact.get(..15).unwrap_or_default().replace('T', ""),
            hash16(&r.probe_id)
        ),
        // A report is one agent's day of measurements.
        "report_id": format!(
            "{}T000000Z_urlgetter_{cc}_{}_n1_{}",
            compact.get(..8).unwrap_or_default(),
            r.egress_asn,
            hash16(&format!("{}/{}", r.agent_id, compact.get(..8).unwrap_or_default()))
        ),
        "probe_asn": asn,
        "probe_cc": cc,
        // OONI publishes no probe address; neither does this.
        "probe_ip": "127.0.0.1",
        "probe_network_name": opt(&r.egress_as_org),
        "software_name": "blockwatch",
        "software_version": env!("CARGO_PKG_VERSION"),
        "test_name": "urlgetter",
        "test_version": TEST_VERSION,
        "test_runtime": r.duration_ms as f64 / 1000.0,
        "test_keys": keys,
    })
}

#[cfg(test)]
mod tests {
    use blockwatch_proto::trace::{DnsQueryRecord, DnsRecord};

    use super::*;

    fn record() -> TraceRecord {
        TraceRecord {
            probe_id: "hk-1/1/7".into(),
            agent_id: "hk-1".into(),
            region: "hk".into(),
            target: "openai".into(),
            started_at: "2026-07-09T12:03:04.567Z".into(),
            received_at: Some("2026-07-09T12:03:05.000Z".into()),
            outcome: "http_geo_blocked".into(),
            http_status: 403,
            provider_code: "unsupported_country_region_territory".into(),
            duration_ms: 287,
            failure: "http_request_failed".into(),
            failed_operation: "http_round_trip".into(),
            dns_ms: 1.5,
            connect_ms: 10.0,
            tls_ms: 20.0,
            http_ms: 30.0,
            peer_address: "[2001:db8::7]:443".into(),
            egress_asn: 64500,
            egress_country: "HK".into(),
            url: "https://api.openai.com/v1/models".into(),
            dns_queries: vec![
                DnsQueryRecord {
                    query_type: "AAAA".into(),
                    failure: String::new(),
                    answers: vec![DnsRecord { answer_type: "AAAA".into(), value: "2001:db8::7".into(), ttl: 60 }],
                },
                DnsQueryRecord { query_type: "A".into(), failure: "dns_no_answer".into(), answers: vec![] },
            ],
            request_headers: vec![
                ("host".into(), "api.openai.com".into()),
                ("Authorization".into(), "Bearer sk-should-never-be-here".into()),
            ],
            response_headers: vec![
                ("via".into(), "a".into()),
                ("via".into(), "b".into()),
                ("set-cookie".into(), "s=1".into()),
            ],
            body_prefix: Some(MaybeBinary::Text("{\"error\":{}}".into())),
            ..Default::default()
        }
    }

    #[test]
    fn a_refusal_is_a_failed_http_round_trip_after_three_good_phases() {
        let m = measurement(&record());
        assert_eq!(m["measurement_start_time"], "2026-07-09 12:03:04");
        assert_eq!(m["measurement_uid"].as_str().unwrap().split('_').next().unwrap(), "20260709120304.567000");
        assert!(m["report_id"].as_str().unwrap().starts_with("20260709T000000Z_urlgetter_HK_64500_n1_"));
        assert_eq!((m["probe_asn"].as_str(), m["probe_cc"].as_str()), (Some("AS64500"), Some("HK")));
        let k = &m["test_keys"];
        assert_eq!(
            (k["failure"].as_str(), k["failed_operation"].as_str()),
            (Some("http_request_failed"), Some("http_round_trip"))
        );
        assert_eq!(k["queries"][0]["answers"][0]["ipv6"], "2001:db8::7");
        assert_eq!(k["queries"][1]["failure"], "dns_no_answer");
        assert_eq!(k["queries"][1]["hostname"], "api.openai.com");
        assert_eq!(k["tcp_connect"][0]["ip"], "2001:db8::7");
        assert_eq!(k["tcp_connect"][0]["status"]["success"], true);
        assert!(k["tls_handshakes"][0]["failure"].is_null());
        assert_eq!(k["requests"][0]["failure"], "http_request_failed");
        assert_eq!(k["requests"][0]["response"]["code"], 403);
        assert_eq!(k["requests"][0]["response"]["headers"]["via"], "a");
        assert!(k["requests"][0]["response"]["headers"].get("set-cookie").is_none());
        assert_eq!(k["requests"][0]["response"]["headers_list"][1][1], "b");
        let t = |i: &str, f: &str| k[i][0][f].as_f64().unwrap();
        assert!(t("tcp_connect", "t0") == 0.0015 && (t("requests", "t") - 0.0615).abs() < 1e-9);
        assert_eq!(k["x_outcome"], "http_geo_blocked");
        // A private header an agent recorded anyway never reaches the export.
        assert_eq!(k["requests"][0]["request"]["headers_list"], json!([["host", "api.openai.com"]]));
        assert!(!m.to_string().contains("sk-should-never-be-here"));
    }

    #[test]
    fn phases_that_did_not_run_have_no_entries() {
        let mut r = record();
        r.failed_operation = "connect".into();
        r.failure = "connection_refused".into();
        (r.tls_ms, r.http_ms, r.http_status, r.egress_country, r.egress_asn) = (0.0, 0.0, 0, String::new(), 0);
        let m = measurement(&r);
        let k = &m["test_keys"];
        assert_eq!(
            k["tcp_connect"][0]["status"],
            json!({"success": false, "failure": "connection_refused", "blocked": null})
        );
        assert!(k.get("tls_handshakes").is_none() && k.get("requests").is_none(), "{k}");
        assert_eq!((m["probe_asn"].as_str(), m["probe_cc"].as_str()), (Some("AS0"), Some("ZZ")));
        // Recorded before the DNS queries were: no queries key, rather than invented ones.
        r.dns_queries.clear();
        assert!(measurement(&r)["test_keys"].get("queries").is_none());
    }
}
