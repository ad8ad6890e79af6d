//! Detector knobs. Every threshold is expressed relative to what the detector observes
//! (probe intervals inferred per lane, failure baselines learned per agent, log-likelihood
//! ratios), so the defaults carry across fleets and probe intervals.

use serde::{Deserialize, Serialize};

/// Configuration of the [`Detector`](super::Detector). Unknown keys are rejected; every
/// missing key takes the default documented on its field.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Results kept per (agent, target) lane, newest by `started_at`: the window in which
    /// late results are slotted in, re-sent results are recognised, and onsets are estimated.
    /// A result older than the whole window is ignored. Default 128.
    pub lane_history: usize,
    /// Probe interval assumed for a lane until two of its results show the real one
    /// (milliseconds). Default 60 000.
    pub default_interval_ms: i64,
    /// Prior rate of non-geo failures of a healthy vantage. Default 0.02.
    pub baseline_prior: f64,
    /// Weight of that prior, in results. Default 25.
    pub baseline_prior_weight: f64,
    /// Half-life of an agent's learned failure rate, in results. Default 500.
    pub baseline_half_life: f64,
    /// Lower clamp of a learned failure rate. Default 0.005.
    pub baseline_min: f64,
    /// Upper clamp of a learned failure rate (an agent failing more than this is too noisy
    /// to learn anything more from). Default 0.5.
    pub baseline_max: f64,
    /// Rate at which a geo refusal or a forged answer appears without a block. Default 0.001.
    pub geo_baseline: f64,
    /// Failure rate the change-point statistic looks for: a block refuses at least this
    /// share of probes. Lower finds thinner partial blocks, more slowly. Default 0.8.
    pub block_fail_rate: f64,
    /// Log-likelihood ratio at which one lane counts as failing: for the vantage and outage
    /// checks, and for each agent agreeing to a block on network failures. Default 7.
    pub lane_threshold: f64,
    /// Log-likelihood ratio, summed over a region's failing agents, needed to start a block
    /// when two or more agents report. Default 12.
    pub block_threshold: f64,
    /// The same for network failures when only one agent reports for the region (more
    /// caution: a lone flaky vantage can look like a partial block). Default 16.
    pub single_agent_threshold: f64,
    /// Minimum duration, in probe intervals, of a network failure (timeouts, resets, DNS,
    /// certificates) before it is a block; shorter ones are blips. Default 5.
    pub network_persistence: f64,
    /// The same for geo signatures, which are strong evidence on their own. Default 0.
    pub geo_persistence: f64,
    /// The same for forged answers (DNS answers forged to bogon addresses, false NXDOMAIN,
    /// certificates that do not verify): interference that blips and outages do not
    /// produce, confirmed over one interval. Default 1.
    pub forgery_persistence: f64,
    /// Log-likelihood ratio of recovery, per agent, needed to end a block (twice this when
    /// only one agent reports). Default 6.
    pub end_threshold: f64,
    /// Minimum duration of a recovery, in probe intervals, before a block ends. Default 3.
    pub end_persistence: f64,
    /// Share of the other regions that must fail at once for a failure to be a provider
    /// outage rather than a block. Default 0.5.
    pub outage_fraction: f64,
    /// "At once", in probe intervals: how far apart failures in different regions may start
    /// and still be one outage. Default 5.
    pub outage_window: f64,
    /// Share of an agent's targets that must fail together for the agent to be a vantage
    /// problem (its own network) rather than evidence of a block. Default 0.75.
    pub vantage_fraction: f64,
    /// Largest gap, in probe intervals, inside a run of results before the run counts as
    /// incomplete (results still to arrive, or the agent was away). Default 2.5.
    pub max_gap: f64,
    /// Probe intervals without a result after which an agent no longer counts for a
    /// (target, region). Default 3.
    pub silent_after: f64,
    /// Probe intervals without a result from any agent of a blocked (target, region) after
    /// which the block is stale (`block_stale`: its evidence stopped). Default 10.
    pub stale_after: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            lane_history: 128,
            default_interval_ms: 60_000,
            baseline_prior: 0.02,
            baseline_prior_weight: 25.0,
            baseline_half_life: 500.0,
            baseline_min: 0.005,
            baseline_max: 0.5,
            geo_baseline: 0.001,
            block_fail_rate: 0.8,
            lane_threshold: 7.0,
            block_threshold: 12.0,
            single_agent_threshold: 16.0,
            network_persistence: 5.0,
            geo_persistence: 0.0,
            forgery_persistence: 1.0,
            end_threshold: 6.0,
            end_persistence: 3.0,
            outage_fraction: 0.5,
            outage_window: 5.0,
            vantage_fraction: 0.75,
            max_gap: 2.5,
            silent_after: 3.0,
            stale_after: 10.0,
        }
    }
}
