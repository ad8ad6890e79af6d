//! `GET /metrics`: the collector in Prometheus' text exposition format (the `prometheus`
//! crate). Counters that ingest moves live in [`IngestMetrics`]; what is a state (cells,
//! agents, sinks, the store's size) is read when scraped from where it is kept, so the
//! figures cannot drift from what the API says.

use std::path::Path;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Counters and histograms ingest updates.
pub struct IngestMetrics {
    pub ingested: IntCounterVec,
    pub rejected: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub durable_seconds: HistogramVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            ingested: counter(
                "blockwatch_results_ingested_total",
                "Results stored (durable, deduplicated), by outcome.",
                &["outcome"],
            ),
            rejected: counter(
                "blockwatch_results_rejected_total",
                "Results refused as malformed or out of bounds, by the field at fault.",
                &["reason"],
            ),
            duplicates: counter(
                "blockwatch_results_duplicate_total",
                "Results received again (already stored; acked, not stored twice).",
                &[],
            ),
            durable_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "blockwatch_ingest_durable_seconds",
                    "From a batch's arrival to its results being durable (the ack waits for it).",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
                &[],
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
        }
    }
}

impl IngestMetrics {
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.ingested.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.durable_seconds.clone()),
        ]
    }
}

/// The field a validation problem names (`probe ID: FIELD …`), as a label with few values.
pub fn reason_label(problem: &str, probe_id: &str) -> String {
    let rest = problem.strip_prefix(&format!("probe {probe_id}: ")).unwrap_or(problem);
    let word: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
    match word.as_str() {
        "" if rest.starts_with(|c: char| c.is_ascii_digit()) => "list_len".into(),
        "" | "a" | "an" => "other".into(),
        w if w.len() <= 32 => w.into(),
        _ => "other".into(),
    }
}

/// Bytes under `dir`, every file (the store's size on disk).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// What a scrape reads.
pub struct Scrape<'a> {
    pub ingest: &'a crate::ingest::Ingest,
    pub status: &'a crate::status::Status,
    pub alerts: &'a crate::alert::Statuses,
    pub data_dir: &'a Path,
}

/// The exposition, text format 0.0.4.
pub fn render(s: &Scrape<'_>) -> Result<String, String> {
    let r = Registry::new();
    let add = |c: Box<dyn Collector>| r.register(c).map_err(|e| e.to_string());
    for c in s.ingest.metrics().collectors() {
        add(c)?;
    }
    // Cells: one series per cell, valued 1, labelled with its state; and counts by state.
    let cell_state = gauge(
        "blockwatch_cell_state",
        "The state of each (target, region): 1 on the series of its current state.",
        &["target", "region", "state"],
    );
    let cells_by_state = gauge("blockwatch_cells", "Cells (target × region) by state.", &["state"]);
    for st in ["blocked", "outage", "vantage_problem", "unknown", "reachable"] {
        cells_by_state.with_label_values(&[st]).set(0);
    }
    for c in s.status.cells() {
        cell_state.with_label_values(&[&c.target, &c.region, c.state]).set(1);
        cells_by_state.with_label_values(&[c.state]).inc();
    }
    add(Box::new(cell_state))?;
    add(Box::new(cells_by_state))?;
    // Agents.
    let agents =
        gauge("blockwatch_agents", "Agents known, connected now, silent, and stopped (said goodbye).", &["state"]);
    let now = blockwatch_proto::time::now();
    let known = s.ingest.agents();
    let connected = s.ingest.streams().connected();
    agents.with_label_values(&["known"]).set(known.len() as i64);
    agents.with_label_values(&["connected"]).set(known.keys().filter(|id| connected.contains(*id)).count() as i64);
    agents.with_label_values(&["silent"]).set(known.values().filter(|a| s.ingest.is_silent(a, now)).count() as i64);
    agents.with_label_values(&["stopped"]).set(known.values().filter(|a| a.stopped).count() as i64);
    add(Box::new(agents))?;
    let lag = Gauge::new(
        "blockwatch_detector_lag_seconds",
        "From the receipt of the latest results to the detector having judged them.",
    )
    .map_err(|e| e.to_string())?;
    lag.set(s.status.detector_lag());
    add(Box::new(lag))?;
    let buffer = gauge(
        "blockwatch_ingest_buffer_bytes",
        "Agent messages read and not yet done with, in encoded bytes, against limits.ingest_buffer_mib (`limit`).",
        &["kind"],
    );
    let budget = s.ingest.budget();
    buffer.with_label_values(&["in_use"]).set(budget.in_use() as i64);
    buffer.with_label_values(&["limit"]).set(budget.total() as i64);
    add(Box::new(buffer))?;
    let pace = gauge(
        "blockwatch_ingest_backlog_pace",
        "Backlog results a second each agent is told it may send (0: no pace; set while agents offer more than the collector takes).",
        &[],
    );
    pace.with_label_values::<&str>(&[]).set(i64::from(s.ingest.pacer().rate()));
    add(Box::new(pace))?;
    let store = gauge("blockwatch_store_bytes", "Bytes the store takes on disk.", &[]);
    store.with_label_values::<&str>(&[]).set(dir_bytes(s.data_dir) as i64);
    add(Box::new(store))?;
    let events = counter("blockwatch_events_total", "Events in the log, by kind.", &["kind"]);
    for k in blockwatch_detector::EventKind::ALL {
        events.with_label_values(&[k.name()]).inc_by(0);
    }
    for (kind, n) in s.status.events_by_kind() {
        if blockwatch_detector::EventKind::ALL.iter().any(|k| k.name() == kind) {
            events.with_label_values(&[&kind]).inc_by(n);
        }
    }
    add(Box::new(events))?;
    // Alerting, per sink.
    let attempts = counter(
        "blockwatch_alert_attempts_total",
        "Notification attempts, by sink and answer (HTTP or SMTP status, `error`, `template`).",
        &["sink", "status"],
    );
    let delivered = counter("blockwatch_alert_delivered_total", "Notifications delivered, by sink.", &["sink"]);
    let delivered_events =
        counter("blockwatch_alert_events_delivered_total", "Events the delivered notifications carried.", &["sink"]);
    let suppressed =
        counter("blockwatch_alert_suppressed_total", "Events a maintenance window held back, by sink.", &["sink"]);
    let pending = gauge("blockwatch_alert_pending", "1 while a sink waits to retry a notification.", &["sink"]);
    for (name, st) in s.alerts.snapshot() {
        for (status, n) in &st.attempts_by_status {
            attempts.with_label_values(&[&name, status]).inc_by(*n);
        }
        delivered.with_label_values(&[&name]).inc_by(st.delivered_total);
        delivered_events.with_label_values(&[&name]).inc_by(st.events_delivered_total);
        suppressed.with_label_values(&[&name]).inc_by(st.suppressed_total);
        pending.with_label_values(&[&name]).set(i64::from(st.pending.is_some()));
    }
    for c in [attempts, delivered, delivered_events, suppressed] {
        add(Box::new(c))?;
    }
    add(Box::new(pending))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_the_field_at_fault() {
        assert_eq!(reason_label("probe a/1/2: target_id \"x y\": bad", "a/1/2"), "target_id");
        assert_eq!(reason_label("probe a/1/2: 9 resolved: at most 8", "a/1/2"), "list_len");
        assert_eq!(reason_label("probe a/1/2: a resolved address is longer", "a/1/2"), "other");
        assert_eq!(reason_label("probe_id of 900 bytes: must be 1-256 bytes", "zzz"), "probe_id");
        // An id made to look like a field stays out of the label.
        assert_eq!(reason_label("probe x: evil: outcome 99 is not", "x: evil"), "outcome");
    }
}
