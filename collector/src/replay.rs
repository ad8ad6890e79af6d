//! `replay`: runs a JSONL trace (`shared/eval/FORMAT.md`) through the detector and writes its
//! events as JSONL. Same code path as the live collector: one [`Observation`] per line.

use std::borrow::Cow;
use std::io::{BufRead, Write};

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, parse_rfc3339};
use serde::Deserialize;

use blockwatch_detector::{Detector, DetectorConfig, Event, Ingest, Observation};

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
#[cfg_attr(test, derive(Debug, PartialEq))]
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

/// The fast path for the lines replay sees almost always: one flat JSON object whose strings
/// have no escapes. Anything else (escapes, nesting, odd spacing, a repeated or missing key,
/// a malformed token) returns `None` and the line goes to `serde_json`, which stays the
/// reference: whatever this accepts, `serde_json` parses to the same [`Line`] (the tests
/// check both on the same inputs). Parsing is the bulk of a replay's cost; this path is
/// several times faster than the general parser.
mod flat {
    use std::borrow::Cow;

    use super::Line;

    struct Cursor<'a> {
        b: &'a [u8],
        s: &'a str,
        i: usize,
    }

    impl<'a> Cursor<'a> {
        fn eat(&mut self, c: u8) -> Option<()> {
            (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
        }

        /// A string without escapes or control characters, borrowed from the line. One pass
        /// over the bytes: the strings are short, shorter than a vectorised search pays for.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.i;
            let mut i = start;
            loop {
                match *self.b.get(i)? {
                    b'"' => break,
                    b'\\' | 0..0x20 => return None,
                    _ => i += 1,
                }
            }
            self.i = i + 1;
            // Quotes are ASCII, so both ends are character boundaries.
            Some(&self.s[start..i])
        }

        /// A JSON number (skipped).
        fn number(&mut self) -> Option<()> {
            let b = self.b;
            let digits = |i: &mut usize| {
                let s = *i;
                while *i < b.len() && b[*i].is_ascii_digit() {
                    *i += 1;
                }
                *i > s
            };
            let mut i = self.i;
            if b.get(i) == Some(&b'-') {
                i += 1;
            }
            if b.get(i) == Some(&b'0') {
                i += 1;
            } else if !digits(&mut i) {
                return None;
            }
            if b.get(i) == Some(&b'.') {
                i += 1;
                if !digits(&mut i) {
                    return None;
                }
            }
            if matches!(b.get(i), Some(b'e' | b'E')) {
                i += 1;
                if matches!(b.get(i), Some(b'+' | b'-')) {
                    i += 1;
                }
                if !digits(&mut i) {
                    return None;
                }
            }
            self.i = i;
            Some(())
        }

        fn word(&mut self, w: &[u8]) -> bool {
            if self.b[self.i..].starts_with(w) {
                self.i += w.len();
                true
            } else {
                false
            }
        }

        fn bool(&mut self) -> Option<bool> {
            if self.word(b"true") {
                Some(true)
            } else if self.word(b"false") {
                Some(false)
            } else {
                None
            }
        }

        /// Any scalar value of a key replay does not use.
        fn skip(&mut self) -> Option<()> {
            match self.b.get(self.i)? {
                b'"' => self.string().map(|_| ()),
                b't' | b'f' => self.bool().map(|_| ()),
                b'n' => self.word(b"null").then_some(()),
                _ => self.number(),
            }
        }
    }

    /// Fills a key's slot; a key seen twice sends the line to serde_json.
    fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
        slot.replace(v).is_none().then_some(())
    }

    pub(super) fn parse(s: &str) -> Option<Line<'_>> {
        let mut c = Cursor { b: s.as_bytes(), s, i: 0 };
        c.eat(b'{')?;
        let (mut probe_id, mut agent_id, mut region, mut target, mut started_at) = (None, None, None, None, None);
        let (mut received_at, mut outcome, mut outcome_detail, mut control, mut confirmation) =
            (None, None, None, None, None);
        loop {
            let key = c.string()?;
            c.eat(b':')?;
            match key {
                "probe_id" => set(&mut probe_id, c.string()?)?,
                "agent_id" => set(&mut agent_id, c.string()?)?,
                "region" => set(&mut region, c.string()?)?,
                "target" => set(&mut target, c.string()?)?,
                "started_at" => set(&mut started_at, c.string()?)?,
                "received_at" => {
                    let v = if c.word(b"null") { None } else { Some(c.string()?) };
                    set(&mut received_at, v)?
                }
                "outcome" => set(&mut outcome, c.string()?)?,
                "outcome_detail" => {
                    let v = if c.word(b"null") { None } else { Some(c.string()?) };
                    set(&mut outcome_detail, v)?
                }
                "control" => set(&mut control, c.bool()?)?,
                "confirmation" => set(&mut confirmation, c.bool()?)?,
                _ => c.skip()?,
            }
            if c.eat(b',').is_none() {
                break;
            }
        }
        c.eat(b'}')?;
        if c.i != c.b.len() {
            return None;
        }
        Some(Line {
            probe_id: Cow::Borrowed(probe_id?),
            agent_id: Cow::Borrowed(agent_id?),
            region: Cow::Borrowed(region?),
            target: Cow::Borrowed(target?),
            started_at: Cow::Borrowed(started_at?),
            received_at: received_at.flatten().map(Cow::Borrowed),
            outcome: Cow::Borrowed(outcome?),
            outcome_detail: outcome_detail.flatten().map(Cow::Borrowed),
            control: control.unwrap_or(false),
            confirmation: confirmation.unwrap_or(false),
        })
    }
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
    let l: Line<'_> = match flat::parse(text) {
        Some(l) => l,
        None => serde_json::from_str(text).map_err(|source| ReplayError::Json { line, source })?,
    };
    let time = |field: &'static str, v: &str| {
        parse_rfc3339(v).ok_or_else(|| ReplayError::BadTime { line, field, value: v.to_string() })
    };
    let started_at = time("started_at", &l.started_at)?;
    let received_at = match &l.received_at {
        Some(r) => time("received_at", r)?,
        None => started_at,
    };
    let name = l.outcome_detail.as_deref().filter(|d| !d.is_empty()).unwrap_or(&l.outcome);
    let outcome = outcome_of(name).ok_or_else(|| ReplayError::UnknownOutcome { line, outcome: name.to_string() })?;
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
/// Lines are parsed where they lie in the reader's buffer; only a line split across two
/// buffer fills is copied.
pub fn replay(
    mut input: impl BufRead,
    mut output: impl Write,
    config: DetectorConfig,
) -> Result<ReplayStats, ReplayError> {
    let mut detector = Detector::new(config);
    let mut stats = ReplayStats::default();
    let mut carry: Vec<u8> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut line = 0u64;
    let mut one = |bytes: &[u8], line: u64, stats: &mut ReplayStats| -> Result<(), ReplayError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ReplayError::Utf8 { line })?.trim();
        if text.is_empty() {
            return Ok(());
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
        Ok(())
    };
    loop {
        let buf = input.fill_buf().map_err(|source| ReplayError::Read { line: line + 1, source })?;
        if buf.is_empty() {
            if !carry.is_empty() {
                line += 1;
                one(&carry, line, &mut stats)?;
            }
            break;
        }
        let mut used = 0;
        while let Some(n) = memchr::memchr(b'\n', &buf[used..]) {
            line += 1;
            if carry.is_empty() {
                one(&buf[used..used + n], line, &mut stats)?;
            } else {
                carry.extend_from_slice(&buf[used..used + n]);
                one(&carry, line, &mut stats)?;
                carry.clear();
            }
            used += n + 1;
        }
        carry.extend_from_slice(&buf[used..]);
        let len = buf.len();
        input.consume(len);
    }
    output.flush().map_err(ReplayError::Write)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"probe_id":"eu-1/openai/1","agent_id":"eu-1","region":"eu","target":"openai","started_at":"2024-07-24T00:41:10.309Z","received_at":"2024-07-24T00:41:10.842Z","outcome":"ok","http_status":401,"provider_code":"","duration_ms":287}"#;

    /// The fast path agrees with serde_json wherever it answers, and leaves everything it
    /// does not handle to serde_json.
    #[test]
    fn the_flat_fast_path_agrees_with_serde_json() {
        let with = |from: &str, to: &str| LINE.replace(from, to);
        let plain = [
            LINE.to_string(),
            with(r#","received_at":"2024-07-24T00:41:10.842Z""#, ""),
            with(r#""received_at":"2024-07-24T00:41:10.842Z""#, r#""received_at":null"#),
            with(r#""duration_ms":287"#, r#""duration_ms":-2.5e+3,"control":true,"confirmation":false"#),
            with(
                r#""provider_code":"""#,
                r#""provider_code":"unsupported_country","outcome_detail":"tls_alert","extra":null"#,
            ),
            with("eu-1/openai/1", "eu-1/ø/1"),
        ];
        for case in &plain {
            let fast = flat::parse(case).unwrap_or_else(|| panic!("fast path refused {case}"));
            assert_eq!(Ok(fast), serde_json::from_str::<Line<'_>>(case).map_err(|e| e.to_string()), "{case}");
        }
        let others = [
            with("eu-1/openai/1", r"eu-1\/openai\/1"),
            with(r#""region":"eu""#, r#""region": "eu""#),
            with(r#""duration_ms":287"#, r#""duration_ms":[1,2]"#),
            with(r#""region":"eu""#, r#""region":"eu","region":"us""#),
            with(r#""duration_ms":287"#, r#""duration_ms":01"#),
            with(r#""duration_ms":287"#, r#""duration_ms":1."#),
            with(r#""outcome":"ok""#, r#""outcome":3"#),
            with(r#""outcome":"ok","#, ""),
            with(r#""duration_ms":287"#, r#""control":"yes""#),
            with("eu-1/openai/1", "eu-1\topenai"),
            format!("{LINE} "),
            format!("{LINE}x"),
            "{}".to_string(),
            "{".to_string(),
        ];
        for case in &others {
            assert!(flat::parse(case).is_none(), "fast path took {case}");
        }
        // serde_json still reads the unusual but valid ones.
        assert!(serde_json::from_str::<Line<'_>>(&others[0]).is_ok());
        assert!(serde_json::from_str::<Line<'_>>(&others[1]).is_ok());
    }

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
        assert!(err.to_string().starts_with("line 3: not a trace record"), "{err}");
    }

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
        let line = LINE
            .replace(r#","received_at":"2024-07-24T00:41:10.842Z""#, "")
            .replace(r#""outcome":"ok""#, r#""outcome":"tls_reset","outcome_detail":"tls_alert""#);
        let p = parse_line(&line, 1).expect("parses");
        assert_eq!(p.received_at, p.started_at);
        assert_eq!(p.outcome, Outcome::TlsAlert);
    }
}
