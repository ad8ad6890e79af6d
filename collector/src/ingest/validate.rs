//! Checks on results arriving from the network, before anything is stored.

use blockwatch_proto::Outcome;
use blockwatch_proto::v1::ProbeResult;

/// Longest probe id accepted.
pub const MAX_ID_BYTES: usize = 256;

/// Why one result is refused, naming the field.
pub fn problem(r: &ProbeResult, agent_id: &str) -> Option<String> {
    let id = &r.probe_id;
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Some(format!("probe_id {id:?}: must be 1-{MAX_ID_BYTES} bytes"));
    }
    if r.agent_id != agent_id {
        return Some(format!("probe {id}: agent_id {:?} differs from the stream's agent {agent_id:?}", r.agent_id));
    }
    if let Err(rule) = blockwatch_proto::id::check(&r.target_id) {
        return Some(format!("probe {id}: target_id {:?}: {rule}", r.target_id));
    }
    if let Err(rule) = blockwatch_proto::id::check(&r.region) {
        return Some(format!("probe {id}: region {:?}: {rule}", r.region));
    }
    if r.started_at.is_none() {
        return Some(format!("probe {id}: started_at is missing"));
    }
    match Outcome::try_from(r.outcome) {
        Ok(Outcome::Unspecified) | Err(_) => Some(format!("probe {id}: outcome {} is not a known outcome", r.outcome)),
        Ok(_) => None,
    }
}
