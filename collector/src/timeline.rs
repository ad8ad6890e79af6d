//! `GET /v1/timeline`: results per time bucket and outcome, for one target (in one region,
//! or every region) — what a chart needs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::{Reader, StoreError};

/// Most buckets one answer holds.
pub const MAX_BUCKETS: usize = 2000;

/// What is asked: `[from, to)` in `step`s (ms).
#[derive(Debug)]
pub struct Ask {
    pub target: String,
    pub region: Option<String>,
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

/// One bucket of one region.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    pub start: String,
    pub total: u64,
    /// Results by outcome (`ok`, `http_geo_blocked`, …).
    pub outcomes: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    pub target: String,
    pub from: String,
    pub to: String,
    pub step_seconds: f64,
    /// Buckets with results, by region, in time order.
    pub regions: BTreeMap<String, Vec<Bucket>>,
}

/// Sums the results the ask covers. Blocking.
pub fn build(store: &Reader, a: &Ask) -> Result<Timeline, StoreError> {
    let mut counts: BTreeMap<String, BTreeMap<i64, BTreeMap<&'static str, u64>>> = BTreeMap::new();
    // The index alone: region, time and outcome are in it.
    store.cell_entries(&a.target, a.region.as_deref(), a.from, a.to, |region, at, _seq, outcome| {
        let bucket = a.from + (at - a.from) / a.step * a.step;
        let outcome = blockwatch_proto::Outcome::try_from(outcome).unwrap_or(blockwatch_proto::Outcome::Unspecified);
        if !counts.contains_key(region) {
            counts.insert(region.to_string(), BTreeMap::new());
        }
        if let Some(c) = counts.get_mut(region) {
            *c.entry(bucket).or_default().entry(outcome.name()).or_default() += 1;
        }
        true
    })?;
    let fmt = blockwatch_proto::time::format_rfc3339;
    let regions = counts
        .into_iter()
        .map(|(region, buckets)| {
            let list = buckets
                .into_iter()
                .map(|(start, outcomes)| Bucket { start: fmt(start), total: outcomes.values().sum(), outcomes })
                .collect();
            (region, list)
        })
        .collect();
    Ok(Timeline {
        target: a.target.clone(),
        from: fmt(a.from),
        to: fmt(a.to),
        step_seconds: a.step as f64 / 1000.0,
        regions,
    })
}
