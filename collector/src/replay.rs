//! `replay`: runs a JSONL trace (`shared/eval/FORMAT.md`) through the detector and writes its
//! events as JSONL. Same code path as the live collector: one [`Observation`] per line.

use std::borrow::Cow;
use std::io::{BufRead, Write};

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, parse_rfc3339};
use serde::Deserialize;

use crate::detector::{Detector, DetectorConfig, Event, Ingest, Observation};

/// Counts from one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Non-blank lines read.
    pub lines: u64,
    /// Results the detector used.
    pub accepted: u64,
    /// Re-sent results (same probe id), counted once.
    pub duplicates: u64,
    /// Results older than the detector's per-lane history, ignored.
    pub stale: u64,
    /// Events written.
    pub events: u64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading line {line}: {source}")]
    Read { line: u64, source: std::io::Error },
    #[error("writing events: {0}")]
    Write(#[source] std::io::Error),
    #[error("line {line}: not a trace record: {source}")]
    Json { line: u64, source: serde_json::Error },
    #[error("line {line}: not UTF-8")]
    Utf8 { line: u64 },
    #[error("line {line}: unknown outcome {outcome:?}")]
    UnknownOutcome { line: u64, outcome: String },
    #[error("line {line}: bad {field} {value:?} (want RFC 3339)")]
    BadTime { line: u64, field: &'static str, value: String },
}

/// The fields of a trace line the detector needs, borrowed from the line where possible.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    probe_id: Cow<'a, str>,
    #[serde(borrow)]
    agent_id: Cow<'a, str>,
    #[serde(borrow)]
    region: Cow<'a, str>,
    #[serde(borrow)]
    target: Cow<'a, str>,
    #[serde(borrow)]
    started_at: Cow<'a, str>,
    #[serde(borrow, default)]
    received_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    /// blockwatch's richer outcome name, when its export wrote one.
    #[serde(borrow, default)]
    outcome_detail: Option<Cow<'a, str>>,
    #[serde(default)]
    control: bool,
    #[serde(default)]
    confirmation: bool,
}

/// One parsed trace line.
pub struct Parsed<'a> {
    pub probe_id: Cow<'a, str>,
    pub agent_id: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub target: Cow<'a, str>,
    pub started_at: Millis,
    pub received_at: Millis,
    pub outcome: Outcome,
    pub control: bool,
    pub confirmation: bool,
}

impl Parsed<'_> {
    /// The observation the detector takes.
    pub fn observation(&self) -> Observation<'_> {
        Observation {
            probe_id: &self.probe_id,
            agent_id: &self.agent_id,
            region: &self.region,
            target: &self.target,
            started_at: self.started_at,
            received_at: self.received_at,
            outcome: self.outcome,
            control: self.control,
            confirmation: self.confirmation,
        }
    }
}

/// Parses one trace line (`line` numbers errors).
pub fn parse_line(text: &str, line: u64) -> Result<Parsed<'_>, ReplayError> {
    let l: Line<'_> = serde_json::from_str(text).map_err(|source| ReplayError::Json { line, source })?;
    let time = |field: &'static str, v: &str| {
        parse_rfc3339(v).ok_or_else(|| ReplayError::BadTime { line, field, value: v.to_string() })
    };
    let started_at = time("started_at", &l.started_at)?;
    let received_at = match &l.received_at {
        Some(r) => time("received_at", r)?,
        None => started_at,
    };
    let name = l.outcome_detail.as_deref().filter(|d| !d.is_empty()).unwrap_or(&l.outcome);
    let outcome =
        outcome_of(name).ok_or_else(|| ReplayError::UnknownOutcome { line, outcome: name.to_string() })?;
    Ok(Parsed {
        probe_id: l.probe_id,
        agent_id: l.agent_id,
        region: l.region,
        target: l.target,
        started_at,
        received_at,
        outcome,
        control: l.control,
        confirmation: l.confirmation,
    })
}

/// Outcome by name; the common ones first, without scanning the whole taxonomy.
fn outcome_of(name: &str) -> Option<Outcome> {
    match name {
        "ok" => Some(Outcome::Ok),
        "tcp_timeout" => Some(Outcome::TcpTimeout),
        "http_geo_blocked" => Some(Outcome::HttpGeoBlocked),
        _ => Outcome::from_name(name),
    }
}

/// Replays a trace: one result per line, blank lines skipped, events written one per line.
pub fn replay(mut input: impl BufRead, mut output: impl Write, config: DetectorConfig) -> Result<ReplayStats, ReplayError> {
    let mut detector = Detector::new(config);
    let mut stats = ReplayStats::default();
    let mut buf = Vec::with_capacity(512);
    let mut events: Vec<Event> = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        line += 1;
        let n = input.read_until(b'\n', &mut buf).map_err(|source| ReplayError::Read { line, source })?;
        if n == 0 {
            break;
        }
        let text = std::str::from_utf8(&buf).map_err(|_| ReplayError::Utf8 { line })?.trim();
        if text.is_empty() {
            continue;
        }
        stats.lines += 1;
        let parsed = parse_line(text, line)?;
        match detector.observe(&parsed.observation(), &mut events) {
            Ingest::Accepted => stats.accepted += 1,
            Ingest::Duplicate => stats.duplicates += 1,
            Ingest::Stale => stats.stale += 1,
        }
        for e in events.drain(..) {
            output.write_all(e.to_json_line().as_bytes()).map_err(ReplayError::Write)?;
            output.write_all(b"\n").map_err(ReplayError::Write)?;
            stats.events += 1;
        }
    }
    output.flush().map_err(ReplayError::Write)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"probe_id":"eu-1/openai/1","agent_id":"eu-1","region":"eu","target":"openai","started_at":"2024-07-24T00:41:10.309Z","received_at":"2024-07-24T00:41:10.842Z","outcome":"ok","http_status":401,"provider_code":"","duration_ms":287}"#;

    #[test]
    fn counts_lines_duplicates_and_skips_blanks() {
        let input = format!("{LINE}\n\n{LINE}\n   \n");
        let mut out = Vec::new();
        let stats = replay(input.as_bytes(), &mut out, DetectorConfig::default()).expect("replays");
        assert_eq!(stats, ReplayStats { lines: 2, accepted: 1, duplicates: 1, stale: 0, events: 0 });
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_lines_are_named() {
        let bad_json = format!("{LINE}\n{{\"probe_id\": 3}}\n");
        let err = replay(bad_json.as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert!(err.to_string().starts_with("line 2: not a trace record"), "{err}");

        let melted = LINE.replace(r#""outcome":"ok""#, r#""outcome":"melted""#);
        let err = replay(format!("\n{melted}").as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "line 2: unknown outcome \"melted\"");

        let noon = LINE.replace("2024-07-24T00:41:10.309Z", "noon");
        let err = replay(noon.as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "line 1: bad started_at \"noon\" (want RFC 3339)");
    }

    #[test]
    fn received_at_defaults_to_started_at_and_rich_outcomes_win() {
        let line = LINE.replace(r#","received_at":"2024-07-24T00:41:10.842Z""#, "")
            .replace(r#""outcome":"ok""#, r#""outcome":"tls_reset","outcome_detail":"tls_alert""#);
        let p = parse_line(&line, 1).expect("parses");
        assert_eq!(p.received_at, p.started_at);
        assert_eq!(p.outcome, Outcome::TlsAlert);
    }
}
