//! What the detector says: events with the evidence behind each decision.

use blockwatch_proto::time::{Millis, format_rfc3339};
use serde::{Serialize, Serializer};

/// The kind of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A (target, region) started refusing traffic from the region.
    BlockStarted,
    /// A block of a (target, region) ended.
    BlockEnded,
    /// Every agent that could tell about a blocked (target, region) has stopped reporting:
    /// the block's evidence stopped, its state is unknown until results come again (then it
    /// ends, or carries on, without another start).
    BlockStale,
    /// A target failed in most regions at once: the provider, not a block.
    OutageStarted,
    /// Every region that failed in an outage is back.
    OutageEnded,
    /// An agent failed most of its targets at once: its own network, not a block.
    VantageDown,
    /// That agent is reaching its targets again.
    VantageUp,
    /// The collector has heard nothing from an agent (no result, no heartbeat) for three
    /// heartbeat intervals. Raised by the collector, not the detector.
    AgentSilent,
    /// A silent agent is heard from again.
    AgentBack,
}

impl EventKind {
    /// Every kind, in the order the README lists them.
    pub const ALL: [EventKind; 9] = [
        EventKind::BlockStarted,
        EventKind::BlockEnded,
        EventKind::BlockStale,
        EventKind::OutageStarted,
        EventKind::OutageEnded,
        EventKind::VantageDown,
        EventKind::VantageUp,
        EventKind::AgentSilent,
        EventKind::AgentBack,
    ];

    /// The kind as the event log, the API and the logs name it (`block_started`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::BlockStarted => "block_started",
            EventKind::BlockEnded => "block_ended",
            EventKind::BlockStale => "block_stale",
            EventKind::OutageStarted => "outage_started",
            EventKind::OutageEnded => "outage_ended",
            EventKind::VantageDown => "vantage_down",
            EventKind::VantageUp => "vantage_up",
            EventKind::AgentSilent => "agent_silent",
            EventKind::AgentBack => "agent_back",
        }
    }
}

/// Why the detector decided: who saw what, and how strongly.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evidence {
    /// Agents whose results carried the decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Agents of the region that reported and did not agree.
    pub dissenting_agents: u32,
    /// Failing results in the deciding run, across `agents` (for vantage events: the
    /// agent's failing targets).
    pub failing: u32,
    /// Successful results in the same run (for vantage events: targets still fine).
    pub ok: u32,
    /// The most frequent failure outcome of the run (`http_geo_blocked`, `tls_reset`, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dominant_outcome: String,
    /// Its family: `geo`, `dns`, `rst`, `blackhole`, `dns_timeout`, `other`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signature: String,
    /// Summed log-likelihood ratio of the change (nats).
    pub statistic: f64,
    /// How long the change had lasted when decided, in probe intervals.
    pub persisted_intervals: f64,
    /// The probe interval inferred from the results (milliseconds).
    pub interval_ms: i64,
    /// Other regions probing the target that were failing / fine at the time.
    pub regions_failing: u32,
    pub regions_ok: u32,
    /// Regions involved, for outages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// The HTTP status most often answered by the failing probes (0: no answer, omitted).
    #[serde(skip_serializing_if = "is_zero")]
    pub http_status: u16,
    /// The provider's error code most often in those answers (`unsupported_country_region_territory`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider_code: String,
    /// A few of the failing probes, newest first: their ids find them in `/v1/results`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sample_probe_ids: Vec<String>,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// One decision of the detector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    /// The target, or `*` for an agent-wide event.
    pub target: String,
    /// The region, or `*` for a target-wide event.
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The estimated change point (event time), not the moment of the decision.
    #[serde(serialize_with = "rfc3339")]
    pub onset: Millis,
    /// `received_at` of the result on which the detector decided.
    #[serde(serialize_with = "rfc3339")]
    pub detected_at: Millis,
    pub evidence: Evidence,
}

fn rfc3339<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ms))
}

/// An event as the log and the API carry it: its fields and a sentence saying them.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    event: &'a Event,
    summary: String,
}

impl Event {
    /// The event as one line of JSON (no trailing newline), with its `summary`.
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, numbers and vectors cannot fail.
        serde_json::to_string(&Line { event: self, summary: self.summary() }).unwrap_or_default()
    }

    /// The event in words, for people paging through alerts and logs.
    pub fn summary(&self) -> String {
        let ev = &self.evidence;
        let since = format_rfc3339(self.onset);
        let agents = if ev.agents.is_empty() { String::new() } else { format!(" ({})", ev.agents.join(", ")) };
        // "with tls_reset (signature rst)", "with http_geo_blocked (signature geo, HTTP 403,
        // provider code unsupported_country_region_territory)".
        let mut facts = Vec::new();
        if !ev.signature.is_empty() {
            facts.push(format!("signature {}", ev.signature));
        }
        if ev.http_status != 0 {
            facts.push(format!("HTTP {}", ev.http_status));
        }
        if !ev.provider_code.is_empty() {
            facts.push(format!("provider code {}", ev.provider_code));
        }
        let how = match (ev.dominant_outcome.as_str(), facts.is_empty()) {
            ("", _) => String::new(),
            (o, true) => format!(" with {o}"),
            (o, false) => format!(" with {o} ({})", facts.join(", ")),
        };
        let samples = if ev.sample_probe_ids.is_empty() {
            String::new()
        } else {
            format!("; for example probes {}", ev.sample_probe_ids.join(", "))
        };
        let iv = if ev.interval_ms > 0 {
            format!(", probed every {:.0}s", ev.interval_ms as f64 / 1000.0)
        } else {
            String::new()
        };
        match self.kind {
            EventKind::BlockStarted => format!(
                "{target} is refused in {region} since {since}: {n} agent(s){agents} failing {f} of {t} probes{how}, \
                 {dis} agent(s) of the region disagreeing, {rf} other region(s) failing and {ro} fine; held for \
                 {p:.1} probe intervals{iv}{samples}",
                target = self.target,
                region = self.region,
                n = ev.agents.len(),
                f = ev.failing,
                t = ev.failing + ev.ok,
                dis = ev.dissenting_agents,
                rf = ev.regions_failing,
                ro = ev.regions_ok,
                p = ev.persisted_intervals,
            ),
            EventKind::BlockEnded => format!(
                "{} reachable again in {} since {since}: {} agent(s){agents} succeeding",
                self.target,
                self.region,
                ev.agents.len()
            ),
            EventKind::BlockStale => format!(
                "{} in {}: no results from its agents{agents} since {since}; the block's state is unknown until they report again",
                self.target, self.region
            ),
            EventKind::OutageStarted => {
                format!(
                    "{} failing in most regions at once since {since} ({}): the provider, not a block",
                    self.target,
                    ev.regions.join(", ")
                )
            }
            EventKind::OutageEnded => format!("{} outage over at {since} ({})", self.target, ev.regions.join(", ")),
            EventKind::VantageDown => format!(
                "agent {} in {} lost its own network since {since}: {} of {} targets failing; its results are no evidence until it is back",
                self.agent_id.as_deref().unwrap_or("?"),
                self.region,
                ev.failing,
                ev.failing + ev.ok
            ),
            EventKind::VantageUp => {
                format!(
                    "agent {} in {} reaches its targets again",
                    self.agent_id.as_deref().unwrap_or("?"),
                    self.region
                )
            }
            EventKind::AgentSilent => format!(
                "agent {} in {} has not been heard from since {since}",
                self.agent_id.as_deref().unwrap_or("?"),
                self.region
            ),
            EventKind::AgentBack => {
                format!("agent {} in {} is heard from again", self.agent_id.as_deref().unwrap_or("?"), self.region)
            }
        }
    }
}
