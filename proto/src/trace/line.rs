//! The trace-line reader: one line of JSONL to what the detector needs, borrowed from the
//! line. `replay` reads every line of a trace through it, so it is built for speed, with
//! serde_json as the reference for anything unusual.

use std::borrow::Cow;

use serde::Deserialize;

use crate::Outcome;
use crate::time::{Millis, parse_rfc3339};

/// The fields of a trace line the detector needs, borrowed from the line where possible.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawLine<'a> {
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
    /// The HTTP status, as a number of any JSON form (see [`status_of`]); any other value
    /// reads as none rather than losing the line.
    #[serde(default, deserialize_with = "any_number")]
    http_status: Option<f64>,
    #[serde(borrow, default)]
    provider_code: Option<Cow<'a, str>>,
}

fn any_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_f64())
}

/// The fast path for the lines replay sees almost always: one flat JSON object whose strings
/// have no escapes. Anything else (escapes, nesting, odd spacing, a repeated or missing key,
/// a malformed token) returns `None` and the line goes to `serde_json`, which stays the
/// reference: whatever this accepts, `serde_json` parses to the same [`RawLine`] (the tests
/// check both on the same inputs). Parsing is the bulk of a replay's cost; this path is
/// several times faster than the general parser.
mod flat {
    use std::borrow::Cow;

    use super::RawLine;

    pub(super) struct Cursor<'a> {
        b: &'a [u8],
        s: &'a str,
        i: usize,
    }

    impl<'a> Cursor<'a> {
        pub(super) fn new(s: &'a str) -> Cursor<'a> {
            Cursor { b: s.as_bytes(), s, i: 0 }
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
        }

        /// A string without escapes or control characters, borrowed from the line. Eight
        /// bytes at a time (see [`stop_mask`]), then byte by byte for the last few: the
        /// strings are short, shorter than a vectorised search pays for.
        pub(super) fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.i;
            let mut i = start;
            while let Some(word) = self.b.get(i..i + 8) {
                let m = stop_mask(u64::from_le_bytes(word.try_into().expect("eight bytes")));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
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

        /// A JSON number, as its text.
        fn number(&mut self) -> Option<&'a str> {
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
            let start = self.i;
            self.i = i;
            Some(&self.s[start..i])
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
                _ => self.number().map(|_| ()),
            }
        }
    }

    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

    /// The bytes of a little-endian word that end or spoil a plain string (`"`, `\\`, or a
    /// control character), as their high bits. Only the lowest set bit is exact: a borrow can
    /// mark bytes above the first stop, never below it, which is all [`Cursor::string`] uses.
    fn stop_mask(w: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) | control
    }

    /// A JSON number's value: plain digits (a status, always) without the float parser.
    fn number_value(text: &str) -> Option<f64> {
        if text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit()) {
            Some(f64::from(text.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0'))))
        } else {
            text.parse().ok()
        }
    }

    /// Fills a key's slot; a key seen twice sends the line to serde_json.
    fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
        slot.replace(v).is_none().then_some(())
    }

    pub(super) fn parse(s: &str) -> Option<RawLine<'_>> {
        let mut c = Cursor::new(s);
        c.eat(b'{')?;
        let (mut probe_id, mut agent_id, mut region, mut target, mut started_at) = (None, None, None, None, None);
        let (mut received_at, mut outcome, mut outcome_detail, mut control, mut confirmation) =
            (None, None, None, None, None);
        let (mut http_status, mut provider_code) = (None, None);
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
                "http_status" => {
                    let v = if c.word(b"null") { None } else { Some(number_value(c.number()?)?) };
                    set(&mut http_status, v)?
                }
                "provider_code" => {
                    let v = if c.word(b"null") { None } else { Some(c.string()?) };
                    set(&mut provider_code, v)?
                }
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
        Some(RawLine {
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
            http_status: http_status.flatten(),
            provider_code: provider_code.flatten().map(Cow::Borrowed),
        })
    }
}

/// One trace line as the detector needs it, borrowed from the text where it lies: the ids,
/// both times, the richest outcome the line names, and the two flags.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceLine<'a> {
    pub probe_id: Cow<'a, str>,
    pub agent_id: Cow<'a, str>,
    pub region: Cow<'a, str>,
    pub target: Cow<'a, str>,
    pub started_at: Millis,
    /// `received_at`, or `started_at` when the line has none.
    pub received_at: Millis,
    pub outcome: Outcome,
    pub control: bool,
    pub confirmation: bool,
    /// The HTTP status, 0 when there was no response (or the line's is not a status).
    pub http_status: u16,
    /// The provider's error code from the body, empty when none.
    pub provider_code: Cow<'a, str>,
}

/// A line's `http_status` as a status: a whole number that fits, else 0 (no status).
fn status_of(v: Option<f64>) -> u16 {
    match v {
        Some(x) if x.fract() == 0.0 && (0.0..=f64::from(u16::MAX)).contains(&x) => x as u16,
        _ => 0,
    }
}

/// Why a line is not a trace record.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("not a trace record")]
    Json(#[source] serde_json::Error),
    #[error("unknown outcome {0:?}")]
    UnknownOutcome(String),
    #[error("bad {field} {value:?} (want RFC 3339)")]
    BadTime { field: &'static str, value: String },
}

impl<'a> TraceLine<'a> {
    /// Parses one line (no surrounding whitespace). Flat lines without escapes take a fast
    /// path; everything else goes to serde_json.
    pub fn parse(text: &'a str) -> Result<TraceLine<'a>, LineError> {
        let l: RawLine<'_> = match flat::parse(text) {
            Some(l) => l,
            None => serde_json::from_str(text).map_err(LineError::Json)?,
        };
        let time = |field: &'static str, v: &str| {
            parse_rfc3339(v).ok_or_else(|| LineError::BadTime { field, value: v.to_string() })
        };
        let started_at = time("started_at", &l.started_at)?;
        let received_at = match &l.received_at {
            Some(r) => time("received_at", r)?,
            None => started_at,
        };
        let name = richest_name(&l.outcome, l.outcome_detail.as_deref());
        let outcome = outcome_of(name).ok_or_else(|| LineError::UnknownOutcome(name.to_string()))?;
        Ok(TraceLine {
            probe_id: l.probe_id,
            agent_id: l.agent_id,
            region: l.region,
            target: l.target,
            started_at,
            received_at,
            outcome,
            control: l.control,
            confirmation: l.confirmation,
            http_status: status_of(l.http_status),
            provider_code: l.provider_code.unwrap_or_default(),
        })
    }
}

/// The outcome a record's `outcome` and `outcome_detail` (empty when none) mean, by the
/// rules of a trace line; `None` for a name the format does not know.
pub fn outcome_named(outcome: &str, detail: &str) -> Option<Outcome> {
    outcome_of(richest_name(outcome, Some(detail)))
}

/// The outcome name a record means: blockwatch's own `outcome_detail` when it has one, else
/// the format's `outcome`.
pub(super) fn richest_name<'n>(outcome: &'n str, detail: Option<&'n str>) -> &'n str {
    detail.filter(|d| !d.is_empty()).unwrap_or(outcome)
}

/// Outcome by name; the common ones first, without scanning the whole taxonomy.
pub(super) fn outcome_of(name: &str) -> Option<Outcome> {
    match name {
        "ok" => Some(Outcome::Ok),
        "tcp_timeout" => Some(Outcome::TcpTimeout),
        "http_geo_blocked" => Some(Outcome::HttpGeoBlocked),
        _ => Outcome::from_name(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"probe_id":"eu-1/openai/1","agent_id":"eu-1","region":"eu","target":"openai","started_at":"2024-07-24T00:41:10.309Z","received_at":"2024-07-24T00:41:10.842Z","outcome":"ok","http_status":401,"provider_code":"","duration_ms":287}"#;

    /// The word-at-a-time string scan stops exactly where a byte-by-byte scan does, for every
    /// byte value at every position of a word, among ASCII and non-ASCII neighbours.
    #[test]
    fn the_string_scan_stops_where_a_bytewise_scan_does() {
        let bytewise = |b: &[u8]| -> Option<usize> {
            let end = b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            (b[end] == b'"').then_some(end)
        };
        for filler in [b'a', b'~', 0x20, 0x7f, 0x80, 0xc3, 0xff] {
            for len in 0..20 {
                for at in 0..len {
                    for v in 0..=255u8 {
                        let mut body = vec![filler; len];
                        body[at] = v;
                        body.push(b'"');
                        let Ok(text) = std::str::from_utf8(&body) else { continue };
                        let line = format!("\"{text}");
                        let mut c = flat::Cursor::new(&line);
                        let got = c.string().map(str::len);
                        assert_eq!(got, bytewise(text.as_bytes()), "{:?}", text.as_bytes());
                    }
                }
            }
        }
    }

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
            with(r#""http_status":401,"provider_code":"""#, r#""http_status":null,"provider_code":null"#),
            with(r#""http_status":401"#, r#""http_status":4.03e2"#),
        ];
        for case in &plain {
            let fast = flat::parse(case).unwrap_or_else(|| panic!("fast path refused {case}"));
            assert_eq!(Ok(fast), serde_json::from_str::<RawLine<'_>>(case).map_err(|e| e.to_string()), "{case}");
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
            with(r#""http_status":401"#, r#""http_status":"401""#),
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
        assert!(serde_json::from_str::<RawLine<'_>>(&others[0]).is_ok());
        assert!(serde_json::from_str::<RawLine<'_>>(&others[1]).is_ok());
        assert_eq!(TraceLine::parse(&with(r#""http_status":401"#, r#""http_status":"401""#)).unwrap().http_status, 0);
    }

    #[test]
    fn fields_times_and_outcomes() {
        let l = TraceLine::parse(LINE).unwrap();
        assert_eq!((l.probe_id.as_ref(), l.outcome), ("eu-1/openai/1", Outcome::Ok));
        assert_eq!(l.received_at - l.started_at, 533);
        assert_eq!((l.http_status, l.provider_code.as_ref()), (401, ""));
        for (odd, status) in [("-1", 0), ("401.5", 0), ("1e9", 0), ("4.29e2", 429)] {
            let line = LINE.replace("401", odd);
            assert_eq!(TraceLine::parse(&line).unwrap().http_status, status, "{odd}");
        }
        let unreceived = LINE.replace(r#","received_at":"2024-07-24T00:41:10.842Z""#, "");
        let l = TraceLine::parse(&unreceived).unwrap();
        assert_eq!(l.received_at, l.started_at);
        let detail = LINE.replace(r#""outcome":"ok""#, r#""outcome":"tls_reset","outcome_detail":"tls_alert""#);
        assert_eq!(TraceLine::parse(&detail).unwrap().outcome, Outcome::TlsAlert);
        let melted = LINE.replace(r#""outcome":"ok""#, r#""outcome":"melted""#);
        assert_eq!(TraceLine::parse(&melted).unwrap_err().to_string(), "unknown outcome \"melted\"");
        let noon = LINE.replace("2024-07-24T00:41:10.309Z", "noon");
        assert_eq!(TraceLine::parse(&noon).unwrap_err().to_string(), "bad started_at \"noon\" (want RFC 3339)");
    }
}
