//! What the detector decides.

use blockwatch_proto::time::{Millis, format_rfc3339};
use serde::Serialize;

use super::Observation;

/// The kinds of decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BlockStarted,
    BlockEnded,
}

/// Why the detector decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// Agents of the region whose results were weighed.
    pub agents: Vec<String>,
    /// Failing results in the current streaks.
    pub failing: u32,
    /// How many of them carried the provider's geo signature.
    pub geo_signatures: u32,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub target: String,
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The estimated change point (event time).
    #[serde(serialize_with = "rfc3339")]
    pub onset: Millis,
    /// `received_at` of the result on which the detector decided.
    #[serde(serialize_with = "rfc3339")]
    pub detected_at: Millis,
    pub evidence: Evidence,
}

fn rfc3339<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ms))
}

impl Event {
    pub(super) fn new(kind: EventKind, obs: &Observation<'_>, onset: Millis, evidence: Evidence) -> Event {
        Event {
            kind,
            target: obs.target.to_string(),
            region: obs.region.to_string(),
            agent_id: None,
            onset,
            detected_at: obs.received_at,
            evidence,
        }
    }

    /// The event as one line of JSON (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
