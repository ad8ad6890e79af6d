//! A few failing results per lane, kept whole (probe id, HTTP status, provider code) so an
//! event can show an SRE what the provider actually answered and which probes to look up.

use blockwatch_proto::time::Millis;

/// Failing results kept per lane.
const KEPT: usize = 3;
/// Longest probe id and provider code kept (bytes, cut at a character boundary): ingest
/// bounds them already; a trace replayed from elsewhere may not.
const MAX_LEN: usize = 128;

/// One failing result.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sample {
    pub t: Millis,
    pub probe_id: String,
    pub http_status: u16,
    pub provider_code: String,
}

/// The newest few failing results of a lane, by event time.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Samples(Vec<Sample>);

impl Samples {
    /// Keeps a failing result if it is among the newest few; reuses the replaced strings.
    pub(crate) fn keep(&mut self, t: Millis, probe_id: &str, http_status: u16, provider_code: &str) {
        let slot = if self.0.len() < KEPT {
            self.0.push(Sample::default());
            self.0.len() - 1
        } else {
            match self.0.iter().enumerate().min_by_key(|(_, s)| s.t) {
                Some((i, oldest)) if oldest.t < t => i,
                _ => return,
            }
        };
        let s = &mut self.0[slot];
        s.t = t;
        s.http_status = http_status;
        copy_bounded(&mut s.probe_id, probe_id);
        copy_bounded(&mut s.provider_code, provider_code);
    }

    /// Kept results at or after `since`.
    pub(crate) fn since(&self, since: Millis) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.t >= since)
    }

    /// Moves every kept time by `by` (an agent's clock corrected).
    pub(crate) fn shift(&mut self, by: Millis) {
        for s in &mut self.0 {
            s.t += by;
        }
    }
}

fn copy_bounded(into: &mut String, from: &str) {
    let mut end = from.len().min(MAX_LEN);
    while !from.is_char_boundary(end) {
        end -= 1;
    }
    into.clear();
    into.push_str(&from[..end]);
}

/// The most frequent value among `values`, skipping `none`; ties to the first seen.
pub(crate) fn most_common<T: PartialEq + Clone>(values: impl Iterator<Item = T>, none: &T) -> Option<T> {
    let mut counts: Vec<(T, u32)> = Vec::new();
    for v in values.filter(|v| v != none) {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_few_within_bounds() {
        let mut s = Samples::default();
        for t in [5, 1, 9, 3, 7] {
            s.keep(t, &format!("p{t}"), 403, "unsupported_country");
        }
        let mut ts: Vec<Millis> = s.since(0).map(|x| x.t).collect();
        ts.sort_unstable();
        assert_eq!(ts, [5, 7, 9]);
        assert_eq!(s.since(8).map(|x| x.probe_id.as_str()).collect::<Vec<_>>(), ["p9"]);
        let long = "é".repeat(100);
        s.keep(10, &long, 0, &long);
        let kept = s.since(10).next().unwrap();
        assert!(kept.probe_id.len() <= MAX_LEN && kept.probe_id.chars().all(|c| c == 'é'));
        assert_eq!(most_common([0, 403, 0, 451, 403].into_iter(), &0), Some(403));
        assert_eq!(most_common([0u16, 0].into_iter(), &0), None);
    }
}
