//! The JSONL trace format (`docs/trace-format.md`): [`TraceRecord`], the whole record, is
//! what `export` writes and `blockwatch-agent probe --json` prints; [`TraceLine`], the part
//! the detector needs borrowed from the line, is what `replay` reads. Both name outcomes and
//! times by the same rules.

mod line;

pub use line::{LineError, TraceLine, outcome_named};

use serde::{Deserialize, Serialize};

use crate::time::{Millis, format_rfc3339, from_timestamp, parse_rfc3339, to_timestamp};
use crate::v1::{DnsAnswer, DnsQuery, Header, Outcome, PhaseDurations, ProbeResult, StoredResult};

/// One probe result as a line of JSON. The first ten fields are the trace format's; the rest
/// are blockwatch's own and optional (a trace without them reads fine).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    pub probe_id: String,
    pub agent_id: String,
    pub region: String,
    pub target: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// A trace-format outcome name (see [`Outcome::trace_name`]); `replay` also accepts
    /// blockwatch's richer names.
    pub outcome: String,
    #[serde(default)]
    pub http_status: u32,
    #[serde(default)]
    pub provider_code: String,
    #[serde(default)]
    pub duration_ms: u64,

    /// blockwatch's own outcome name when it is richer than `outcome` (`tls_alert`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome_detail: String,
    /// OONI-style failure string.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
    /// The operation that failed (OONI's `failed_operation`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_operation: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dns_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connect_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tls_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ttfb_ms: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_ms: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub egress_address: String,
    /// The egress network's autonomous system number (0 when unknown).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub egress_asn: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub egress_as_org: String,
    /// ISO 3166-1 alpha-2, upper case.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub egress_country: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmation: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub control: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Edge-identifying response headers (`server`, `cf-ray`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub edge_headers: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keyed: bool,
    /// The URL probed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// The DNS queries, each with its answer record by record or its failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_queries: Vec<DnsQueryRecord>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tls_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tls_cipher_suite: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tls_alpn: String,
    /// The request's headers as sent (never the credential's), `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<(String, String)>,
    /// The response's headers in the order received, `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers: Vec<(String, String)>,
    /// The body's first bytes: a string when they are UTF-8, else
    /// `{"format": "base64", "data": ...}` (OONI's form for binary data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_prefix: Option<MaybeBinary>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

/// One DNS query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsQueryRecord {
    /// `A` or `AAAA`.
    pub query_type: String,
    /// OONI's failure string; empty when answered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<DnsRecord>,
}

/// One record of a DNS answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// `A`, `AAAA` or `CNAME`.
    pub answer_type: String,
    /// An address, or a name for a CNAME.
    pub value: String,
    #[serde(default)]
    pub ttl: u32,
}

/// Bytes as JSON: text when they are UTF-8, base64 when not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaybeBinary {
    Text(String),
    Binary { format: String, data: String },
}

impl MaybeBinary {
    pub fn of(bytes: &[u8]) -> MaybeBinary {
        use base64::Engine;
        match std::str::from_utf8(bytes) {
            Ok(s) => MaybeBinary::Text(s.to_string()),
            Err(_) => MaybeBinary::Binary {
                format: "base64".into(),
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    /// The bytes; `None` for base64 that does not decode or another format.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            MaybeBinary::Text(s) => Some(s.as_bytes().to_vec()),
            MaybeBinary::Binary { format, data } if format == "base64" => {
                base64::engine::general_purpose::STANDARD.decode(data).ok()
            }
            MaybeBinary::Binary { .. } => None,
        }
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn us_to_ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// Why a trace record could not become a probe result.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TraceError {
    #[error("probe {probe_id}: unknown outcome {outcome:?}")]
    UnknownOutcome { probe_id: String, outcome: String },
    #[error("probe {probe_id}: bad {field} timestamp {value:?} (want RFC 3339)")]
    BadTime { probe_id: String, field: &'static str, value: String },
}

impl TraceRecord {
    /// Builds the record of a result; `received_at` is the collector's receive time, if any.
    pub fn from_result(r: &ProbeResult, received_at: Option<Millis>) -> TraceRecord {
        let outcome = r.outcome();
        let d = r.durations.unwrap_or_default();
        TraceRecord {
            probe_id: r.probe_id.clone(),
            agent_id: r.agent_id.clone(),
            region: r.region.clone(),
            target: r.target_id.clone(),
            started_at: format_rfc3339(r.started_at.as_ref().map_or(0, from_timestamp)),
            received_at: received_at.map(format_rfc3339),
            outcome: outcome.trace_name().to_string(),
            http_status: r.http_status,
            provider_code: r.provider_code.clone(),
            duration_ms: d.total_us / 1000,
            outcome_detail: if outcome.trace_name() == outcome.name() {
                String::new()
            } else {
                outcome.name().to_string()
            },
            failure: r.failure.clone(),
            failed_operation: r.failed_operation.clone(),
            dns_ms: us_to_ms(d.dns_us),
            connect_ms: us_to_ms(d.connect_us),
            tls_ms: us_to_ms(d.tls_us),
            ttfb_ms: us_to_ms(d.http_ttfb_us),
            http_ms: us_to_ms(d.http_us),
            peer_address: r.peer_address.clone(),
            local_address: r.local_address.clone(),
            egress_address: r.egress_address.clone(),
            egress_asn: r.egress_asn,
            egress_as_org: r.egress_as_org.clone(),
            egress_country: r.egress_country.clone(),
            resolved_addresses: r.resolved_addresses.clone(),
            provider: r.provider.clone(),
            confirmation: r.confirmation,
            control: r.control,
            detail: r.detail.clone(),
            edge_headers: r.edge_headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            keyed: r.keyed,
            url: r.url.clone(),
            dns_queries: r
                .dns_queries
                .iter()
                .map(|q| DnsQueryRecord {
                    query_type: q.query_type.clone(),
                    failure: q.failure.clone(),
                    answers: q
                        .answers
                        .iter()
                        .map(|a| DnsRecord { answer_type: a.answer_type.clone(), value: a.value.clone(), ttl: a.ttl })
                        .collect(),
                })
                .collect(),
            tls_version: r.tls_version.clone(),
            tls_cipher_suite: r.tls_cipher_suite.clone(),
            tls_alpn: r.tls_alpn.clone(),
            request_headers: r.request_headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            response_headers: r.response_headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
            body_prefix: (!r.body_prefix.is_empty()).then(|| MaybeBinary::of(&r.body_prefix)),
            body_truncated: r.body_truncated,
        }
    }

    /// Builds the record of a stored result.
    pub fn from_stored(s: &StoredResult) -> TraceRecord {
        let r = s.result.clone().unwrap_or_default();
        TraceRecord::from_result(&r, s.received_at.as_ref().map(from_timestamp))
    }

    /// The richest outcome the record names (`outcome_detail` when present).
    pub fn outcome(&self) -> Result<Outcome, TraceError> {
        let name = line::richest_name(&self.outcome, Some(&self.outcome_detail));
        line::outcome_of(name)
            .ok_or_else(|| TraceError::UnknownOutcome { probe_id: self.probe_id.clone(), outcome: name.to_string() })
    }

    fn time(&self, field: &'static str, value: &str) -> Result<Millis, TraceError> {
        parse_rfc3339(value).ok_or_else(|| TraceError::BadTime {
            probe_id: self.probe_id.clone(),
            field,
            value: value.to_string(),
        })
    }

    /// `started_at` in milliseconds.
    pub fn started_ms(&self) -> Result<Millis, TraceError> {
        self.time("started_at", &self.started_at)
    }

    /// `received_at` in milliseconds, or `started_at` when absent (as the format says).
    pub fn received_ms(&self) -> Result<Millis, TraceError> {
        match &self.received_at {
            Some(r) => self.time("received_at", r),
            None => self.started_ms(),
        }
    }

    /// The probe result this record describes.
    pub fn to_result(&self) -> Result<ProbeResult, TraceError> {
        let ms_to_us = |ms: f64| (ms * 1000.0).round() as u64;
        let mut r = ProbeResult {
            probe_id: self.probe_id.clone(),
            agent_id: self.agent_id.clone(),
            region: self.region.clone(),
            target_id: self.target.clone(),
            started_at: Some(to_timestamp(self.started_ms()?)),
            durations: Some(PhaseDurations {
                dns_us: ms_to_us(self.dns_ms),
                connect_us: ms_to_us(self.connect_ms),
                tls_us: ms_to_us(self.tls_ms),
                http_ttfb_us: ms_to_us(self.ttfb_ms),
                http_us: ms_to_us(self.http_ms),
                total_us: self.duration_ms * 1000,
            }),
            failure: self.failure.clone(),
            failed_operation: self.failed_operation.clone(),
            http_status: self.http_status,
            provider_code: self.provider_code.clone(),
            peer_address: self.peer_address.clone(),
            local_address: self.local_address.clone(),
            egress_address: self.egress_address.clone(),
            egress_asn: self.egress_asn,
            egress_as_org: self.egress_as_org.clone(),
            egress_country: self.egress_country.clone(),
            resolved_addresses: self.resolved_addresses.clone(),
            provider: self.provider.clone(),
            confirmation: self.confirmation,
            control: self.control,
            detail: self.detail.clone(),
            edge_headers: self.edge_headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            keyed: self.keyed,
            url: self.url.clone(),
            dns_queries: self
                .dns_queries
                .iter()
                .map(|q| DnsQuery {
                    query_type: q.query_type.clone(),
                    failure: q.failure.clone(),
                    answers: q
                        .answers
                        .iter()
                        .map(|a| DnsAnswer { answer_type: a.answer_type.clone(), value: a.value.clone(), ttl: a.ttl })
                        .collect(),
                })
                .collect(),
            tls_version: self.tls_version.clone(),
            tls_cipher_suite: self.tls_cipher_suite.clone(),
            tls_alpn: self.tls_alpn.clone(),
            request_headers: self
                .request_headers
                .iter()
                .map(|(n, v)| Header { name: n.clone(), value: v.clone() })
                .collect(),
            response_headers: self
                .response_headers
                .iter()
                .map(|(n, v)| Header { name: n.clone(), value: v.clone() })
                .collect(),
            body_prefix: self.body_prefix.as_ref().and_then(MaybeBinary::bytes).unwrap_or_default(),
            body_truncated: self.body_truncated,
            ..Default::default()
        };
        r.set_outcome(self.outcome()?);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_line_round_trips() {
        let line = r#"{"probe_id":"eu-west-1/anthropic/1","agent_id":"eu-west-1","region":"eu-west","target":"anthropic","started_at":"2024-07-24T00:41:10.309Z","received_at":"2024-07-24T00:41:10.842Z","outcome":"ok","http_status":401,"provider_code":"","duration_ms":287}"#;
        let rec: TraceRecord = serde_json::from_str(line).unwrap();
        let r = rec.to_result().unwrap();
        assert_eq!(r.outcome(), Outcome::Ok);
        let back = TraceRecord::from_result(&r, Some(rec.received_ms().unwrap()));
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
    }

    /// Every field a result carries survives a trip through a trace line.
    #[test]
    fn every_result_field_round_trips() {
        let mut r = ProbeResult {
            probe_id: "a/1".into(),
            agent_id: "a".into(),
            region: "hk".into(),
            target_id: "openai".into(),
            started_at: Some(to_timestamp(1_700_000_000_123)),
            durations: Some(PhaseDurations { total_us: 287_000, ..Default::default() }),
            failure: "http_request_failed".into(),
            failed_operation: "http_round_trip".into(),
            http_status: 403,
            provider_code: "unsupported_country_region_territory".into(),
            peer_address: "203.0.113.7:443".into(),
            local_address: "192.0.2.4:40000".into(),
            egress_address: "198.51.100.9".into(),
            egress_asn: 64500,
            egress_as_org: "Example Net".into(),
            egress_country: "DE".into(),
            resolved_addresses: vec!["203.0.113.7".into()],
            provider: "openai".into(),
            detail: "status 403: ...".into(),
            edge_headers: [("cf-ray".to_string(), "8f00-HKG".to_string())].into(),
            keyed: true,
            url: "https://api.openai.com/v1/models".into(),
            dns_queries: vec![
                DnsQuery { query_type: "AAAA".into(), failure: "dns_no_answer".into(), answers: vec![] },
                DnsQuery {
                    query_type: "A".into(),
                    failure: String::new(),
                    answers: vec![
                        DnsAnswer { answer_type: "CNAME".into(), value: "edge.example.".into(), ttl: 30 },
                        DnsAnswer { answer_type: "A".into(), value: "203.0.113.7".into(), ttl: 30 },
                    ],
                },
            ],
            tls_version: "TLSv1_3".into(),
            tls_cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            tls_alpn: "http/1.1".into(),
            request_headers: vec![Header { name: "host".into(), value: "api.openai.com".into() }],
            response_headers: vec![
                Header { name: "server".into(), value: "cloudflare".into() },
                Header { name: "set-cookie".into(), value: "a=1".into() },
                Header { name: "set-cookie".into(), value: "b=2".into() },
            ],
            body_prefix: br#"{"error":{"code":"unsupported_country_region_territory"}}"#.to_vec(),
            body_truncated: true,
            ..Default::default()
        };
        r.set_outcome(Outcome::HttpGeoBlocked);
        for body in [r.body_prefix.clone(), vec![0xff, 0, 0x80, b'x']] {
            r.body_prefix = body;
            let line = serde_json::to_string(&TraceRecord::from_result(&r, None)).unwrap();
            let back: TraceRecord = serde_json::from_str(&line).unwrap();
            assert_eq!(back.to_result().unwrap(), r, "{line}");
        }
        // Binary bodies are base64, as OONI writes them.
        let line = serde_json::to_string(&TraceRecord::from_result(&r, None)).unwrap();
        assert!(line.contains(r#""body_prefix":{"format":"base64","data":"/wCAeA=="}"#), "{line}");
    }

    #[test]
    fn rich_outcomes_keep_their_name() {
        let mut r = ProbeResult { probe_id: "a/1".into(), ..Default::default() };
        r.set_outcome(Outcome::TlsAlert);
        let rec = TraceRecord::from_result(&r, None);
        assert_eq!(rec.outcome, "tls_reset");
        assert_eq!(rec.outcome_detail, "tls_alert");
        assert_eq!(rec.to_result().unwrap().outcome(), Outcome::TlsAlert);
    }

    #[test]
    fn bad_fields_are_named() {
        let rec = TraceRecord {
            probe_id: "p".into(),
            outcome: "melted".into(),
            started_at: "2024-07-24T00:41:10Z".into(),
            ..Default::default()
        };
        assert_eq!(rec.to_result().unwrap_err().to_string(), "probe p: unknown outcome \"melted\"");
        let rec =
            TraceRecord { probe_id: "p".into(), outcome: "ok".into(), started_at: "noon".into(), ..Default::default() };
        assert!(rec.to_result().unwrap_err().to_string().contains("bad started_at"));
    }
}
