//! The current state of every (target, region): what `/v1/status`, the dashboard and the
//! state gauges of `/metrics` show.
//!
//! Built from the event log (read after its own cursor, as a sink reads it, so it holds the
//! events' sequence numbers) and from the stored results as the detector hands them on (the
//! latest result of each cell, for freshness and the evidence). A restart rebuilds it from the
//! whole log and the most recent results in the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use blockwatch_proto::Outcome;
use blockwatch_proto::time::Millis;
use blockwatch_proto::v1::StoredResult;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::store::Reader;

/// A cell without a result for this long (or three of its probe intervals, if longer) is
/// `unknown`.
pub const FRESH: Duration = Duration::from_secs(300);
/// Results read from the store at start, newest last, to know each cell's latest.
const SEED_RESULTS: u64 = 200_000;
/// Most cells tracked (targets × regions); past it new cells are not shown.
pub const MAX_CELLS: usize = 100_000;

/// The latest result of a cell.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Latest {
    pub agent_id: String,
    pub started_at: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    pub http_status: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider_code: String,
    #[serde(skip)]
    at: Millis,
    /// The gap between the two latest results (the probe interval, as seen).
    #[serde(skip)]
    gap: Millis,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An open condition: the event that opened it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Open {
    /// The opening event's sequence number in the log.
    pub seq: u64,
    pub since: String,
    pub detected_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature: String,
    pub summary: String,
    /// A `block_stale` came: the evidence stopped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent_id: String,
}

/// One cell as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cell {
    pub target: String,
    pub region: String,
    /// `blocked`, `outage`, `vantage_problem`, `unknown` (no fresh result) or `reachable`.
    pub state: &'static str,
    /// Since when it is in that state, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<Open>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<Open>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vantage_problems: Vec<Open>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<Latest>,
}

/// What the view knows.
#[derive(Debug, Default)]
struct State {
    latest: HashMap<(String, String), Latest>,
    blocks: HashMap<(String, String), Open>,
    /// Target-wide outages, by target.
    outages: HashMap<String, Open>,
    /// Vantage problems by agent: (region, opening event).
    vantages: HashMap<String, (String, Open)>,
    /// The last event read.
    cursor: u64,
    /// Events read, by kind (for `/metrics`).
    events_by_kind: BTreeMap<String, u64>,
    /// Seconds between a result's receipt and the detector handing it on, latest batch.
    detector_lag: f64,
}

/// The live view, shared with the API.
#[derive(Debug, Default)]
pub struct Status(RwLock<State>);

fn parse_line(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}

impl Status {
    /// Reads the whole log and the newest results. Blocking.
    pub fn rebuild(store: &Reader) -> Status {
        let s = Status::default();
        s.read_events(store);
        let count = store.last_result_seq();
        let recent: Vec<StoredResult> =
            store.results_after(count.saturating_sub(SEED_RESULTS)).map_while(Result::ok).collect();
        s.observe(&recent, false);
        s
    }

    /// Reads the events after the view's cursor. Blocking.
    fn read_events(&self, store: &Reader) {
        let cursor = self.0.read().unwrap_or_else(|p| p.into_inner()).cursor;
        let mut batch = Vec::new();
        for item in store.events_after(cursor) {
            let Ok((seq, line)) = item else { break };
            batch.push((seq, line));
            if batch.len() >= 1024 {
                self.apply(&batch);
                batch.clear();
            }
        }
        self.apply(&batch);
    }

    fn apply(&self, events: &[(u64, String)]) {
        let mut st = self.0.write().unwrap_or_else(|p| p.into_inner());
        for (seq, line) in events {
            st.cursor = *seq;
            let Some(v) = parse_line(line) else { continue };
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
            let kind = s("kind");
            *st.events_by_kind.entry(kind.clone()).or_default() += 1;
            let open = || Open {
                seq: *seq,
                since: s("onset"),
                detected_at: s("detected_at"),
                signature: v
                    .get("evidence")
                    .and_then(|e| e.get("signature"))
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string(),
                summary: s("summary"),
                stale: false,
                agent_id: s("agent_id"),
            };
            let cell = (s("target"), s("region"));
            match kind.as_str() {
                // A second start of an open block keeps the first.
                "block_started" if !st.blocks.contains_key(&cell) && st.blocks.len() < MAX_CELLS => {
                    st.blocks.insert(cell, open());
                }
                "block_stale" => {
                    if let Some(b) = st.blocks.get_mut(&cell) {
                        b.stale = true;
                    }
                }
                "block_ended" => {
                    st.blocks.remove(&cell);
                }
                "outage_started" if st.outages.len() < MAX_CELLS => {
                    st.outages.entry(cell.0).or_insert_with(open);
                }
                "outage_ended" => {
                    st.outages.remove(&cell.0);
                }
                "vantage_down" if st.vantages.len() < MAX_CELLS => {
                    st.vantages.entry(s("agent_id")).or_insert_with(|| (cell.1.clone(), open()));
                }
                "vantage_up" => {
                    st.vantages.remove(&s("agent_id"));
                }
                _ => {}
            }
        }
    }

    /// Takes stored results (in store order); `live`: the detector just handed them on.
    pub fn observe(&self, batch: &[StoredResult], live: bool) {
        let mut st = self.0.write().unwrap_or_else(|p| p.into_inner());
        let now = blockwatch_proto::time::now();
        let mut newest_received = None;
        for s in batch {
            let Some(r) = &s.result else { continue };
            let Some(at) = r.started_at.as_ref().map(blockwatch_proto::time::from_timestamp) else { continue };
            newest_received = s.received_at.as_ref().map(blockwatch_proto::time::from_timestamp).or(newest_received);
            let key = (r.target_id.clone(), r.region.clone());
            if !st.latest.contains_key(&key) && st.latest.len() >= MAX_CELLS {
                continue;
            }
            let outcome = Outcome::try_from(r.outcome).unwrap_or(Outcome::Unspecified);
            let prev = st.latest.get(&key).map(|l| l.at);
            if prev.is_some_and(|p| p > at) {
                continue;
            }
            let gap = prev.map_or(0, |p| at - p);
            let gap = if gap > 0 { gap } else { st.latest.get(&key).map_or(0, |l| l.gap) };
            st.latest.insert(
                key,
                Latest {
                    agent_id: r.agent_id.clone(),
                    started_at: blockwatch_proto::time::format_rfc3339(at),
                    outcome: outcome.name(),
                    http_status: r.http_status,
                    provider_code: r.provider_code.clone(),
                    at,
                    gap,
                },
            );
        }
        if live && let Some(rx) = newest_received {
            st.detector_lag = (now - rx).max(0) as f64 / 1000.0;
        }
    }

    /// Every cell, by target then region.
    pub fn cells(&self) -> Vec<Cell> {
        let st = self.0.read().unwrap_or_else(|p| p.into_inner());
        let now = blockwatch_proto::time::now();
        let mut keys: Vec<&(String, String)> = st.latest.keys().chain(st.blocks.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(target, region)| {
                let key = (target.clone(), region.clone());
                let block = st.blocks.get(&key).cloned();
                let outage = st.outages.get(target).cloned();
                let vantage_problems: Vec<Open> =
                    st.vantages.values().filter(|(r, _)| r == region).map(|(_, o)| o.clone()).collect();
                let latest = st.latest.get(&key).cloned();
                let fresh = latest.as_ref().is_some_and(|l| {
                    let limit = (FRESH.as_millis() as i64).max(3 * l.gap);
                    now - l.at <= limit
                });
                let (state, since) = if let Some(b) = &block {
                    ("blocked", Some(b.since.clone()))
                } else if let Some(o) = &outage {
                    ("outage", Some(o.since.clone()))
                } else if let Some(v) = vantage_problems.first() {
                    ("vantage_problem", Some(v.since.clone()))
                } else if !fresh {
                    ("unknown", latest.as_ref().map(|l| l.started_at.clone()))
                } else {
                    ("reachable", None)
                };
                Cell {
                    target: target.clone(),
                    region: region.clone(),
                    state,
                    since,
                    block,
                    outage,
                    vantage_problems,
                    latest,
                }
            })
            .collect()
    }

    /// Events read, by kind.
    pub fn events_by_kind(&self) -> BTreeMap<String, u64> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).events_by_kind.clone()
    }

    /// Seconds from receipt to the detector, for the latest batch.
    pub fn detector_lag(&self) -> f64 {
        self.0.read().unwrap_or_else(|p| p.into_inner()).detector_lag
    }
}

/// Keeps the view current until `stop`: results as the detector hands them on, the log on
/// every event.
pub async fn follow(
    status: Arc<Status>,
    store: Reader,
    mut results: broadcast::Receiver<Arc<Vec<StoredResult>>>,
    mut events: broadcast::Receiver<blockwatch_detector::Event>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = results.recv() => match r {
                Ok(batch) => status.observe(&batch, true),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "status view skipped result batches; the next ones bring it up to date");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = events.recv() => {
                if matches!(e, Err(broadcast::error::RecvError::Closed)) {
                    return;
                }
                let (status, store) = (Arc::clone(&status), store.clone());
                let _ = tokio::task::spawn_blocking(move || status.read_events(&store)).await;
            }
            _ = stop.changed() => return,
        }
    }
}
