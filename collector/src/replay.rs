//! `replay`: the detector over a JSONL trace, writing events as JSONL.

use std::io::{BufRead, Write};

use blockwatch_proto::trace::TraceRecord;

use crate::detector::{Detector, DetectorConfig, Observation};

/// What a replay read and wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    pub results: u64,
    pub duplicates: u64,
    pub events: u64,
}

/// A trace that cannot be replayed, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("reading input: {0}")]
    Read(std::io::Error),
    #[error("writing events: {0}")]
    Write(std::io::Error),
}

/// Replays `input` through a fresh detector, writing events to `output`.
pub fn replay(
    input: impl BufRead,
    mut output: impl Write,
    config: DetectorConfig,
) -> Result<ReplayStats, ReplayError> {
    let mut detector = Detector::new(config);
    let mut stats = ReplayStats::default();
    let mut events = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in input.lines().enumerate() {
        let line_no = n as u64 + 1;
        let line = line.map_err(ReplayError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| ReplayError::Line { line: line_no, message };
        let rec: TraceRecord = serde_json::from_str(&line).map_err(|e| err(e.to_string()))?;
        let outcome = rec.outcome().map_err(|e| err(e.to_string()))?;
        let started_at = rec.started_ms().map_err(|e| err(e.to_string()))?;
        let received_at = rec.received_ms().map_err(|e| err(e.to_string()))?;
        if !seen.insert(rec.probe_id.clone()) {
            stats.duplicates += 1;
            continue;
        }
        stats.results += 1;
        detector.observe(
            &Observation {
                probe_id: &rec.probe_id,
                agent_id: &rec.agent_id,
                region: &rec.region,
                target: &rec.target,
                started_at,
                received_at,
                outcome,
                control: rec.control,
                confirmation: rec.confirmation,
            },
            &mut events,
        );
        for e in events.drain(..) {
            stats.events += 1;
            writeln!(output, "{}", e.to_json_line()).map_err(ReplayError::Write)?;
        }
    }
    output.flush().map_err(ReplayError::Write)?;
    Ok(stats)
}
