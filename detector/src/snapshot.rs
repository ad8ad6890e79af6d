//! The detector's whole state as bytes, and back: a checkpoint the collector keeps so a
//! restart replays only the results after it instead of the whole store.
//!
//! The bytes are a header (magic, format, the crate's version) and the state in postcard.
//! A snapshot is taken up only by the same format and version with the same configuration
//! (the configuration is stored in it, as JSON); anything else is refused with the reason, and
//! the caller replays from the start instead. Every index inside a restored state is checked,
//! so a damaged snapshot is refused rather than becoming a detector that panics later.

use blockwatch_proto::time::Millis;
use serde::{Deserialize, Serialize};

use crate::intern::Interner;
use crate::lane::Lane;
use crate::{Agent, Cell, Detector, DetectorConfig, Target, pair_hash};

/// The first bytes of a snapshot.
const MAGIC: &[u8; 4] = b"BWDS";
/// The layout of the state. Bump it whenever a field of a saved struct (`Agent`, `Target`,
/// `Cell`, `Block`, `Outage`, `Lane`, `Entry`, `Baseline`, `Llr`, `Samples`) changes: postcard
/// is not self-describing. The crate's version is checked too, so a release never reads
/// another release's layout.
const FORMAT: u32 = 1;

/// Why a snapshot was not taken up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    NotASnapshot,
    OtherVersion { format: u32, version: String },
    OtherConfig,
    Damaged(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::NotASnapshot => f.write_str("not a detector snapshot"),
            SnapshotError::OtherVersion { format, version } => write!(
                f,
                "written by another version (format {format}, blockwatch {version}; this is format {FORMAT}, blockwatch {})",
                env!("CARGO_PKG_VERSION")
            ),
            SnapshotError::OtherConfig => f.write_str("written with another detector configuration"),
            SnapshotError::Damaged(why) => write!(f, "damaged: {why}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The state, borrowed for writing.
#[derive(Serialize)]
struct StateRef<'a> {
    config: String,
    agent_names: &'a Interner,
    target_names: &'a Interner,
    region_names: &'a Interner,
    agents: &'a [Agent],
    targets: &'a [Target],
    lanes: &'a [Lane],
    cells: &'a [Cell],
    stale_swept: Millis,
}

/// The state, owned, as read.
#[derive(Deserialize)]
struct State {
    config: String,
    agent_names: Interner,
    target_names: Interner,
    region_names: Interner,
    agents: Vec<Agent>,
    targets: Vec<Target>,
    lanes: Vec<Lane>,
    cells: Vec<Cell>,
    stale_swept: Millis,
}

fn config_text(cfg: &DetectorConfig) -> String {
    serde_json::to_string(cfg).unwrap_or_default()
}

impl Detector {
    /// The detector's state as bytes, for [`Detector::restore`]. Confirmation requests not
    /// yet taken are not part of it (they are advice for the moment).
    pub fn snapshot(&self) -> Vec<u8> {
        let state = StateRef {
            config: config_text(&self.cfg),
            agent_names: &self.agent_names,
            target_names: &self.target_names,
            region_names: &self.region_names,
            agents: &self.agents,
            targets: &self.targets,
            lanes: &self.lanes,
            cells: &self.cells,
            stale_swept: self.stale_swept,
        };
        let version = env!("CARGO_PKG_VERSION");
        let mut out = Vec::with_capacity(64 + self.lanes.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.push(version.len() as u8);
        out.extend_from_slice(version.as_bytes());
        // Writing to a Vec fails only on out-of-memory, which aborts anyway.
        postcard::to_io(&state, &mut out).expect("serialising into memory");
        out
    }

    /// The detector a [`Detector::snapshot`] was taken of, if it was written by this format
    /// and version with the same configuration, and is whole.
    pub fn restore(config: DetectorConfig, bytes: &[u8]) -> Result<Detector, SnapshotError> {
        let rest = bytes.strip_prefix(MAGIC).ok_or(SnapshotError::NotASnapshot)?;
        let (format, rest) = rest.split_first_chunk::<4>().ok_or(SnapshotError::NotASnapshot)?;
        let format = u32::from_le_bytes(*format);
        let (&len, rest) = rest.split_first().ok_or(SnapshotError::NotASnapshot)?;
        let version = rest.get(..usize::from(len)).ok_or(SnapshotError::NotASnapshot)?;
        let version = String::from_utf8_lossy(version).into_owned();
        if format != FORMAT || version != env!("CARGO_PKG_VERSION") {
            return Err(SnapshotError::OtherVersion { format, version });
        }
        let body = &rest[usize::from(len)..];
        let (state, left) =
            postcard::take_from_bytes::<State>(body).map_err(|e| SnapshotError::Damaged(e.to_string()))?;
        if !left.is_empty() {
            return Err(SnapshotError::Damaged(format!("{} bytes after the state", left.len())));
        }
        if state.config != config_text(&config) {
            return Err(SnapshotError::OtherConfig);
        }
        check(&state, config.lane_history).map_err(SnapshotError::Damaged)?;
        let mut d = Detector::new(config);
        d.agent_names = state.agent_names;
        d.target_names = state.target_names;
        d.region_names = state.region_names;
        d.agents = state.agents;
        d.targets = state.targets;
        d.lanes = state.lanes;
        d.cells = state.cells;
        d.stale_swept = state.stale_swept;
        // The lane index, as `find_lane` builds it: the first lane of a colliding pair keeps
        // the slot (the other finds its lane by name, as before).
        for (l, lane) in d.lanes.iter().enumerate() {
            let cell = &d.cells[lane.cell as usize];
            let key = pair_hash(d.agent_names.name(lane.agent), d.target_names.name(cell.target));
            d.lane_index.entry(key).or_insert(l as u32);
        }
        Ok(d)
    }
}

/// Every index of the state points at something, and the lanes, cells and agents agree on
/// who holds whom.
fn check(s: &State, lane_history: usize) -> Result<(), String> {
    let (agents, targets, regions) = (s.agent_names.len(), s.target_names.len(), s.region_names.len());
    let (lanes, cells) = (s.lanes.len(), s.cells.len());
    if s.agents.len() != agents || s.targets.len() != targets {
        return Err(format!(
            "{} agents for {agents} agent names, {} targets for {targets} target names",
            s.agents.len(),
            s.targets.len()
        ));
    }
    for (i, a) in s.agents.iter().enumerate() {
        if a.region as usize >= regions {
            return Err(format!("agent {i} is in region {} of {regions}", a.region));
        }
        if a.skew.abs() > crate::lane::MAX_TIME {
            return Err(format!("agent {i}'s clock offset is out of range"));
        }
        for &(t, l) in &a.lanes {
            if t as usize >= targets || l as usize >= lanes || s.lanes[l as usize].agent as usize != i {
                return Err(format!("agent {i} holds lane {l} of target {t}, which is not its own"));
            }
        }
    }
    for (i, t) in s.targets.iter().enumerate() {
        for &c in &t.cells {
            if c as usize >= cells || s.cells[c as usize].target as usize != i {
                return Err(format!("target {i} holds cell {c}, which is not its own"));
            }
        }
        if let Some(o) = &t.outage
            && o.regions.iter().any(|&r| r as usize >= regions)
        {
            return Err(format!("target {i}'s outage names a region out of {regions}"));
        }
    }
    for (i, c) in s.cells.iter().enumerate() {
        if c.target as usize >= targets || c.region as usize >= regions {
            return Err(format!("cell {i} is of target {} in region {}", c.target, c.region));
        }
        for &l in &c.lanes {
            if l as usize >= lanes || s.lanes[l as usize].cell as usize != i {
                return Err(format!("cell {i} holds lane {l}, which is not its own"));
            }
        }
    }
    for (i, l) in s.lanes.iter().enumerate() {
        if l.agent as usize >= agents || l.cell as usize >= cells {
            return Err(format!("lane {i} is of agent {} in cell {}", l.agent, l.cell));
        }
        l.check(lane_history).map_err(|e| format!("lane {i}: {e}"))?;
    }
    Ok(())
}
