//! The block history as blocks: each `block_started` paired with the `block_ended` of its
//! cell, from the event log (which is small: events, not results).

use std::collections::HashMap;

use serde::Serialize;

use crate::store::{Reader, StoreError};

/// One block.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Block {
    /// The sequence number of the event that opened it (its id; the cursor of a page).
    pub id: u64,
    pub target: String,
    pub region: String,
    pub onset: String,
    pub detected_at: String,
    /// When it ended (the end's change point), or `None` while open.
    pub end: Option<String>,
    pub ended_seq: Option<u64>,
    /// From the onset to the end, or to now while open.
    pub duration_seconds: f64,
    pub signature: String,
    pub dominant_outcome: String,
    /// The agents whose results proved it, and their counts then.
    pub agents: Vec<String>,
    pub failing: u64,
    pub ok: u64,
    pub summary: String,
    /// A `block_stale` came while it was open: its evidence stopped.
    pub stale: bool,
}

/// What `GET /v1/blocks` asks for.
#[derive(Debug, Default)]
pub struct Filter {
    pub target: Option<String>,
    pub region: Option<String>,
    /// Blocks that overlap [from, to).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Only blocks opened after this event.
    pub after: u64,
    pub limit: usize,
    /// Only open (`true`) or ended (`false`) blocks.
    pub open: Option<bool>,
}

/// A page of blocks and where the next begins.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub blocks: Vec<Block>,
    /// Pass as `after=` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// Every block the filter admits, oldest first, a page at a time. Blocking.
pub fn list(store: &Reader, f: &Filter) -> Result<Page, StoreError> {
    let mut all: Vec<Block> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let now = blockwatch_proto::time::now();
    for item in store.events() {
        let (seq, line) = item?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
        let cell = (s("target"), s("region"));
        match s("kind").as_str() {
            "block_started" if !open.contains_key(&cell) => {
                let ev = v.get("evidence").cloned().unwrap_or_default();
                let es = |k: &str| ev.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
                let n = |k: &str| ev.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                let agents = ev
                    .get("agents")
                    .and_then(|a| a.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                open.insert(cell.clone(), all.len());
                all.push(Block {
                    id: seq,
                    target: cell.0,
                    region: cell.1,
                    onset: s("onset"),
                    detected_at: s("detected_at"),
                    end: None,
                    ended_seq: None,
                    duration_seconds: 0.0,
                    signature: es("signature"),
                    dominant_outcome: es("dominant_outcome"),
                    agents,
                    failing: n("failing"),
                    ok: n("ok"),
                    summary: s("summary"),
                    stale: false,
                });
            }
            "block_stale" => {
                if let Some(&i) = open.get(&cell) {
                    all[i].stale = true;
                }
            }
            "block_ended" => {
                if let Some(i) = open.remove(&cell) {
                    all[i].end = Some(s("onset"));
                    all[i].ended_seq = Some(seq);
                }
            }
            _ => {}
        }
    }
    let t = blockwatch_proto::time::parse_rfc3339;
    let mut out = Vec::new();
    let mut more = false;
    for mut b in all.into_iter().filter(|b| b.id > f.after) {
        let start = t(&b.onset).unwrap_or(0);
        let end = b.end.as_deref().and_then(t);
        b.duration_seconds = (end.unwrap_or(now) - start).max(0) as f64 / 1000.0;
        let keep = f.target.as_deref().is_none_or(|x| x == b.target)
            && f.region.as_deref().is_none_or(|x| x == b.region)
            && f.open.is_none_or(|o| o == b.end.is_none())
            && f.from.is_none_or(|from| end.is_none_or(|e| e > from))
            && f.to.is_none_or(|to| start < to);
        if !keep {
            continue;
        }
        if out.len() == f.limit {
            more = true;
            break;
        }
        out.push(b);
    }
    let next_after = if more { out.last().map(|b| b.id) } else { None };
    Ok(Page { blocks: out, next_after })
}
