//! What one agent may send: bounds on every field, a window on its timestamps, and caps on
//! what it may introduce. Each is named in the collector's `[limits]` config with a safe
//! default; anything past a bound is refused with a message naming it.

use std::time::Duration;

use serde::Deserialize;

/// `[limits]` in the collector's config.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest probe id, provider code, failure string, provider, address or edge header
    /// (name or value), in bytes. Default 256. (Ids — agent, region, target — follow the id
    /// rule: 1-64 of `[A-Za-z0-9._-]`.)
    pub max_field_bytes: usize,
    /// Longest `detail` (what the classifier saw), in bytes. Default 2048.
    pub max_detail_bytes: usize,
    /// Most resolved addresses, and most edge headers, in one result. Default 32.
    pub max_list_len: usize,
    /// How far after its receipt a result may say it started (agent clocks run fast).
    /// Default 5m.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// How long before its receipt a result may have started (an agent's spool flushed after
    /// an outage). Default 7 days.
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most agents the collector keeps track of; a Register past it is refused. Default 10000.
    pub max_agents: usize,
    /// Most distinct target ids one agent may report. Default 1000.
    pub max_targets_per_agent: usize,
    /// Most results per second read from one agent; past it the collector reads that agent's
    /// stream more slowly (nothing is refused or lost). Default 2000.
    pub max_results_per_second: u32,
    /// Most gRPC connections open at once; past it, new ones wait to be accepted. Default
    /// 512 (keep it below the process's open-file limit).
    pub max_connections: usize,
    /// Most gRPC connections open at once from one peer address; past it, new ones are
    /// closed. Default 32.
    pub max_connections_per_address: usize,
    /// Most concurrent gRPC streams on one connection. Default 16 (an agent uses two).
    pub max_streams_per_connection: u32,
    /// HTTP/2 receive window of each agent connection and stream, in KiB: how much an agent
    /// may send ahead of what the collector has read. With one batch being decoded per
    /// stream, the memory agents can make the collector hold is about `max_connections` ×
    /// (this + one batch). Default 64 (HTTP/2's own default; the server library's is 1 MiB).
    pub receive_window_kib: u32,
    /// Agent messages read and not yet done with (decoded, validated, waiting for the store),
    /// across every stream at once, in MiB of their encoded size: a stream whose next message
    /// does not fit waits unread (its agent held by HTTP/2 flow control; nothing is refused).
    /// What they take decoded is about three times this. Default 32.
    pub ingest_buffer_mib: u32,
    /// Free space kept on the store's filesystem, in MiB: below it results are refused
    /// (`UNAVAILABLE`, agents keep them spooled) until space returns, so the store never
    /// meets a full disk mid-write. Default 128; 0 turns the check off.
    pub min_free_disk_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_bytes: blockwatch_proto::bounds::FIELD_BYTES,
            max_detail_bytes: blockwatch_proto::bounds::DETAIL_BYTES,
            max_list_len: blockwatch_proto::bounds::LIST_LEN,
            max_future: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_agents: 10_000,
            max_targets_per_agent: 1000,
            max_results_per_second: 2000,
            max_connections: 512,
            max_connections_per_address: 32,
            max_streams_per_connection: 16,
            receive_window_kib: 64,
            ingest_buffer_mib: 32,
            min_free_disk_mb: 128,
        }
    }
}

impl Limits {
    /// Problems with the limits themselves, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                p.push(format!("limits.{key} = {v}: must be {lo}..={hi}"));
            }
        };
        range("max_field_bytes", self.max_field_bytes as u64, 64, 65_536);
        range("max_detail_bytes", self.max_detail_bytes as u64, 64, 1 << 20);
        range("max_list_len", self.max_list_len as u64, 1, 4096);
        range("max_agents", self.max_agents as u64, 1, 10_000_000);
        range("max_targets_per_agent", self.max_targets_per_agent as u64, 1, 1_000_000);
        range("max_results_per_second", u64::from(self.max_results_per_second), 1, 10_000_000);
        range("max_connections", self.max_connections as u64, 1, 1_000_000);
        range("max_connections_per_address", self.max_connections_per_address as u64, 1, 1_000_000);
        range("max_streams_per_connection", u64::from(self.max_streams_per_connection), 2, 100_000);
        range("receive_window_kib", u64::from(self.receive_window_kib), 16, 16 * 1024);
        range("ingest_buffer_mib", u64::from(self.ingest_buffer_mib), 1, 4095);
        range("min_free_disk_mb", self.min_free_disk_mb, 0, 1 << 30);
        if self.max_future > Duration::from_secs(24 * 3600) {
            p.push("limits.max_future: must be at most 24h".into());
        }
        if self.max_age < Duration::from_secs(60) || self.max_age > Duration::from_secs(366 * 24 * 3600) {
            p.push("limits.max_age: must be 1m..=366d".into());
        }
        p
    }
}
