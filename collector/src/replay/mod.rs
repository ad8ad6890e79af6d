//! `replay`: runs a JSONL trace (`docs/trace-format.md`), or a Parquet results export
//! ([`parquet`]), through the detector and writes its events as JSONL. Same code path as the
//! live collector: one [`Observation`] per result, each JSONL line read by the trace format's
//! own reader ([`TraceLine`]).

pub mod parquet;

use std::io::{BufRead, Write};

use blockwatch_detector::{Detector, DetectorConfig, Event, Ingest, Observation};
use blockwatch_proto::trace::{LineError, TraceLine};

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
    /// Results dated more than 15 minutes after their receipt, ignored.
    pub future: u64,
    /// Events written.
    pub events: u64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading line {line}")]
    Read { line: u64, source: std::io::Error },
    #[error("writing events")]
    Write(#[source] std::io::Error),
    #[error("line {line}: not UTF-8")]
    Utf8 { line: u64 },
    #[error("line {line}")]
    Line { line: u64, source: LineError },
    #[error("{file}: {message}")]
    Parquet { file: String, message: String },
}

/// The detector and where its events go: what every input format feeds.
struct Sink<W: Write> {
    detector: Detector,
    events: Vec<Event>,
    output: W,
    stats: ReplayStats,
}

impl<W: Write> Sink<W> {
    fn new(output: W, config: DetectorConfig) -> Sink<W> {
        Sink { detector: Detector::new(config), events: Vec::new(), output, stats: ReplayStats::default() }
    }

    fn observe(&mut self, obs: &Observation<'_>) -> Result<(), ReplayError> {
        self.stats.lines += 1;
        match self.detector.observe(obs, &mut self.events) {
            Ingest::Accepted => self.stats.accepted += 1,
            Ingest::Duplicate => self.stats.duplicates += 1,
            Ingest::Stale => self.stats.stale += 1,
            Ingest::Future => self.stats.future += 1,
        }
        for e in self.events.drain(..) {
            self.output.write_all(e.to_json_line().as_bytes()).map_err(ReplayError::Write)?;
            self.output.write_all(b"\n").map_err(ReplayError::Write)?;
            self.stats.events += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ReplayStats, ReplayError> {
        self.output.flush().map_err(ReplayError::Write)?;
        Ok(self.stats)
    }
}

/// Replays a trace: one result per line, blank lines skipped, events written one per line.
/// Lines are parsed where they lie in the reader's buffer; only a line split across two
/// buffer fills is copied.
pub fn replay(mut input: impl BufRead, output: impl Write, config: DetectorConfig) -> Result<ReplayStats, ReplayError> {
    let mut sink = Sink::new(output, config);
    let mut carry: Vec<u8> = Vec::new();
    let mut line = 0u64;
    let mut one = |bytes: &[u8], line: u64| -> Result<(), ReplayError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ReplayError::Utf8 { line })?.trim();
        if text.is_empty() {
            return Ok(());
        }
        let parsed = TraceLine::parse(text).map_err(|source| ReplayError::Line { line, source })?;
        sink.observe(&Observation::from_line(&parsed))
    };
    loop {
        let buf = input.fill_buf().map_err(|source| ReplayError::Read { line: line + 1, source })?;
        if buf.is_empty() {
            if !carry.is_empty() {
                line += 1;
                one(&carry, line)?;
            }
            break;
        }
        let mut used = 0;
        while let Some(n) = memchr::memchr(b'\n', &buf[used..]) {
            line += 1;
            if carry.is_empty() {
                one(&buf[used..used + n], line)?;
            } else {
                carry.extend_from_slice(&buf[used..used + n]);
                one(&carry, line)?;
                carry.clear();
            }
            used += n + 1;
        }
        carry.extend_from_slice(&buf[used..]);
        let len = buf.len();
        input.consume(len);
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use blockwatch_proto::error::chain;

    use super::*;

    const LINE: &str = r#"{"probe_id":"eu-1/openai/1","agent_id":"eu-1","region":"eu","target":"openai","started_at":"2024-07-24T00:41:10.309Z","received_at":"2024-07-24T00:41:10.842Z","outcome":"ok","http_status":401,"provider_code":"","duration_ms":287}"#;

    #[test]
    fn lines_split_across_buffer_fills_and_a_last_line_without_newline() {
        let input = format!(
            "{LINE}\n{}\n\n{}",
            LINE.replace("eu-1/openai/1", "eu-1/openai/2"),
            LINE.replace("eu-1/openai/1", "eu-1/openai/3")
        );
        for cap in [1, 7, 64, 1 << 16] {
            let reader = std::io::BufReader::with_capacity(cap, input.as_bytes());
            let stats = replay(reader, Vec::new(), DetectorConfig::default()).expect("replays");
            assert_eq!((stats.lines, stats.accepted), (3, 3), "buffer of {cap}");
        }
        let err = replay(
            std::io::BufReader::with_capacity(5, format!("{LINE}\n\n{{oops").as_bytes()),
            Vec::new(),
            DetectorConfig::default(),
        )
        .unwrap_err();
        assert!(chain(&err).starts_with("line 3: not a trace record: "), "{err}");
    }

    #[test]
    fn counts_lines_duplicates_and_skips_blanks() {
        let input = format!("{LINE}\n\n{LINE}\n   \n");
        let mut out = Vec::new();
        let stats = replay(input.as_bytes(), &mut out, DetectorConfig::default()).expect("replays");
        assert_eq!(stats, ReplayStats { lines: 2, accepted: 1, duplicates: 1, stale: 0, future: 0, events: 0 });
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_lines_are_named() {
        let bad_json = format!("{LINE}\n{{\"probe_id\": 3}}\n");
        let err = replay(bad_json.as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert!(chain(&err).starts_with("line 2: not a trace record: "), "{err}");

        let melted = LINE.replace(r#""outcome":"ok""#, r#""outcome":"melted""#);
        let err = replay(format!("\n{melted}").as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(chain(&err), "line 2: unknown outcome \"melted\"");

        let noon = LINE.replace("2024-07-24T00:41:10.309Z", "noon");
        let err = replay(noon.as_bytes(), Vec::new(), DetectorConfig::default()).unwrap_err();
        assert_eq!(chain(&err), "line 1: bad started_at \"noon\" (want RFC 3339)");
    }
}
