//! Notifications: the event log, delivered to the tools SREs already run.
//!
//! Each `[[sink]]` has its own task and a durable **cursor** in the store (the sequence number
//! of the last event it finished with), so nothing is copied into a second queue and nothing
//! is lost: a sink reads the log after its cursor, delivers the events its filter admits, in
//! order, each retried with exponential backoff and jitter until the receiver takes it, and
//! moves its cursor on. Delivery is at least once (a crash between a delivery and the cursor
//! write repeats that event), with the event's sequence number as the idempotency key. A sink
//! added to a store that already holds events starts at the end of the log.
//!
//! One slow or dead receiver holds up only its own sink: ingest and the detector never wait
//! on notifications, and the other sinks run on.

mod alertmanager;
mod pagerduty;
mod slack;
mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::Reader;

/// Longest backoff between two attempts at one event.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First backoff after a failed attempt.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// How often a sink looks at the log when nothing wakes it.
const POLL: Duration = Duration::from_secs(5);
/// Events read from the log at a time.
const READ_BATCH: usize = 256;

/// Where a sink sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A JSON POST signed with HMAC-SHA256 (`X-Blockwatch-Signature`).
    Webhook,
    /// Prometheus Alertmanager, API v2 (`POST /api/v2/alerts`).
    Alertmanager,
    /// PagerDuty Events API v2: trigger and resolve, one dedup key per block.
    Pagerduty,
    /// A Slack incoming webhook: Block Kit messages.
    Slack,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Alertmanager => "alertmanager",
            SinkKind::Pagerduty => "pagerduty",
            SinkKind::Slack => "slack",
        }
    }

    /// Kinds whose receivers keep state (an incident, an alert) that an end must close.
    pub(crate) fn pairs_ends(self) -> bool {
        matches!(self, SinkKind::Alertmanager | SinkKind::Pagerduty)
    }
}

/// How urgent an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// A block is critical; what tells the detector's judgement apart (an outage, a dead
    /// vantage, a silent agent, a block whose evidence stopped) is a warning; an end is info.
    pub fn of(kind: &str) -> Severity {
        match kind {
            "block_started" => Severity::Critical,
            "outage_started" | "vantage_down" | "agent_silent" | "block_stale" => Severity::Warning,
            _ => Severity::Info,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The end that resolves a start (and the start an end belongs to).
pub fn pair_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "block_started" => "block_ended",
        "block_ended" => "block_started",
        "outage_started" => "outage_ended",
        "outage_ended" => "outage_started",
        "vantage_down" => "vantage_up",
        "vantage_up" => "vantage_down",
        "agent_silent" => "agent_back",
        "agent_back" => "agent_silent",
        _ => return None,
    })
}

fn default_kinds() -> Vec<String> {
    vec!["block_started".into(), "block_ended".into()]
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_resend() -> Duration {
    Duration::from_secs(60)
}

fn default_per_minute() -> u32 {
    60
}

/// One `[[sink]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name (`ops-webhook`): its cursor, its status, `alert test --sink`.
    pub name: String,
    pub kind: SinkKind,
    /// Where to send: the webhook's or Slack's URL, Alertmanager's base URL
    /// (`http://am:9093`); PagerDuty's defaults to its Events API.
    #[serde(default)]
    pub url: String,
    /// Webhook: the signing secret; PagerDuty: the integration's routing key. From this
    /// environment variable…
    #[serde(default)]
    pub secret_env: Option<String>,
    /// …or from this file (trailing whitespace ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for an `https://` receiver, besides the web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Event kinds delivered. Default: `block_started`, `block_ended`. For Alertmanager and
    /// PagerDuty a start brings its end along (and an end its start), so nothing is left open.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<String>,
    /// Only these targets / regions / signatures (`geo`, `rst`, …); empty: all.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
    /// Events below this severity are not sent (ends are `info`, so a sink with
    /// `min_severity = "critical"` gets no resolves). Default: all.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// Longest one attempt may take. Default 10s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most notifications a minute; more wait their turn (none is dropped). Default 60.
    #[serde(default = "default_per_minute")]
    pub max_per_minute: u32,
    /// Alertmanager: how often active alerts are posted again (Alertmanager resolves an
    /// alert that is not, after its `endsAt`). Default 1m.
    #[serde(default = "default_resend", with = "humantime_serde")]
    pub resend_every: Duration,
}

impl SinkConfig {
    /// Every problem, each naming the sink.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let me = format!("sink {:?}", self.name);
        if let Err(rule) = blockwatch_proto::id::check(&self.name) {
            p.push(format!("{me}: name: {rule}"));
        }
        let url = self.effective_url();
        if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(&url).is_err() {
            p.push(format!("{me}: url {:?}: an http:// or https:// URL", self.url));
        }
        for k in &self.kinds {
            if blockwatch_detector::EventKind::ALL.iter().all(|known| known.name() != k) {
                p.push(format!("{me}: kinds: {k:?} is no event kind"));
            }
        }
        let has_secret = self.secret_env.is_some() || self.secret_file.is_some();
        match self.kind {
            _ if self.secret_env.is_some() && self.secret_file.is_some() => {
                p.push(format!("{me}: secret_env and secret_file exclude each other"))
            }
            SinkKind::Webhook if !has_secret => {
                p.push(format!("{me}: a webhook needs secret_env or secret_file (its payloads are signed)"))
            }
            SinkKind::Pagerduty if !has_secret => {
                p.push(format!("{me}: pagerduty needs its integration's routing key in secret_env or secret_file"))
            }
            SinkKind::Alertmanager | SinkKind::Slack if has_secret => {
                p.push(format!("{me}: {} takes no secret", self.kind.name()))
            }
            _ => {}
        }
        if self.max_per_minute == 0 {
            p.push(format!("{me}: max_per_minute: at least 1"));
        }
        if self.timeout.is_zero() || self.resend_every < Duration::from_secs(1) {
            p.push(format!("{me}: timeout and resend_every: at least 1s"));
        }
        p
    }

    /// The URL posted to (PagerDuty's Events API when none is set).
    pub fn effective_url(&self) -> String {
        match (self.kind, self.url.is_empty()) {
            (SinkKind::Pagerduty, true) => pagerduty::EVENTS_URL.to_string(),
            (SinkKind::Alertmanager, _) => alertmanager::url(&self.url),
            _ => self.url.clone(),
        }
    }

    /// Whether the event goes to this sink.
    pub fn admits(&self, e: &EventView) -> bool {
        let kind_ok = self.kinds.contains(&e.kind)
            || (self.kind.pairs_ends() && pair_of(&e.kind).is_some_and(|p| self.kinds.iter().any(|k| k == p)));
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        kind_ok
            && any(&self.targets, &e.target)
            && any(&self.regions, &e.region)
            && any(&self.signatures, &e.signature)
            && self.min_severity.is_none_or(|m| Severity::of(&e.kind) >= m)
    }
}

/// A `[[maintenance]]` window: no notifications for its targets and regions while it lasts
/// (judged by the event's `detected_at`); the events are still recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// RFC 3339 (`2026-12-24T22:00:00Z`).
    pub start: String,
    /// RFC 3339; the window ends before it.
    pub end: String,
    /// Only these targets / regions; empty: all.
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    /// Why, for the logs.
    #[serde(default)]
    pub reason: String,
}

impl Window {
    fn span(&self) -> Option<(i64, i64)> {
        let t = blockwatch_proto::time::parse_rfc3339;
        Some((t(&self.start)?, t(&self.end)?))
    }

    /// Every problem, each naming the window.
    pub fn problems(&self, i: usize) -> Vec<String> {
        match self.span() {
            None => vec![format!("maintenance[{i}]: start and end must be RFC 3339 times (2026-12-24T22:00:00Z)")],
            Some((a, b)) if a >= b => vec![format!("maintenance[{i}]: start must be before end")],
            Some(_) => Vec::new(),
        }
    }

    /// Whether the window silences the event.
    pub fn covers(&self, e: &EventView) -> bool {
        let Some((start, end)) = self.span() else { return false };
        let Some(at) = blockwatch_proto::time::parse_rfc3339(&e.detected_at) else { return false };
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        (start..end).contains(&at) && any(&self.targets, &e.target) && any(&self.regions, &e.region)
    }
}

/// The fields of a logged event a sink needs; the whole line rides along as `raw`.
#[derive(Debug, Clone)]
pub struct EventView {
    pub seq: u64,
    pub kind: String,
    pub target: String,
    pub region: String,
    pub agent_id: String,
    pub onset: String,
    pub detected_at: String,
    pub summary: String,
    pub signature: String,
    pub raw: serde_json::Value,
}

impl EventView {
    pub fn parse(seq: u64, line: &str) -> Option<EventView> {
        let raw: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| raw.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let signature =
            raw.get("evidence").and_then(|e| e.get("signature")).and_then(|v| v.as_str()).unwrap_or_default();
        Some(EventView {
            seq,
            kind: s("kind"),
            target: s("target"),
            region: s("region"),
            agent_id: s("agent_id"),
            onset: s("onset"),
            detected_at: s("detected_at"),
            summary: s("summary"),
            signature: signature.to_string(),
            raw,
        })
    }
}

/// What a sink is doing, for `GET /v1/alerts` and the logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStatus {
    pub kind: String,
    /// The last event it finished with (delivered, filtered out or refused).
    pub cursor: u64,
    pub delivered_total: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts_total: u64,
    /// Events the receiver refused for good (a 4xx other than 408/429), skipped.
    pub refused_total: u64,
    /// Events not sent because a maintenance window covered them.
    pub suppressed_total: u64,
    /// Attempts by answer: HTTP status, or `error` when none came.
    pub attempts_by_status: BTreeMap<String, u64>,
    /// The event being delivered now, when one is waiting for a retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub event: u64,
    pub attempts: u32,
    pub last_status: String,
    pub last_error: String,
    pub next_try: String,
}

/// Every sink's status, shared with the API.
#[derive(Debug, Default)]
pub struct Statuses(Mutex<BTreeMap<String, SinkStatus>>);

impl Statuses {
    pub fn snapshot(&self) -> BTreeMap<String, SinkStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut SinkStatus)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(name.to_string()).or_default());
    }
}

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink:?}: {why}")]
    Setup { sink: String, why: String },
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    Delivered(u16),
    /// Worth trying again (no answer, 5xx, 408, 429).
    Retry {
        status: Option<u16>,
        error: String,
    },
    /// The receiver will not take it however often it comes (another 4xx).
    Refused {
        status: u16,
        error: String,
    },
}

/// A ready sink: its config, its HTTP client and its secret.
pub struct Sink {
    pub cfg: SinkConfig,
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
    /// Where a person follows an event up (`public_url`).
    link_base: String,
    /// Maintenance windows.
    windows: Arc<Vec<Window>>,
}

impl Sink {
    /// Builds the client (TLS with the web roots plus `ca_file`) and reads the secret.
    pub fn new(
        cfg: SinkConfig,
        link_base: &str,
        windows: Arc<Vec<Window>>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Sink, SinkError> {
        let setup = |why: String| SinkError::Setup { sink: cfg.name.clone(), why };
        let secret = match (&cfg.secret_env, &cfg.secret_file) {
            (Some(var), _) => Some(env(var).ok_or_else(|| setup(format!("secret_env {var} is not set")))?),
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| setup(format!("secret_file {}: {e}", path.display())))?
                    .trim_end()
                    .to_string(),
            ),
            _ => None,
        };
        if secret.as_deref().is_some_and(str::is_empty) {
            return Err(setup("the secret is empty".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            use rustls_pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|e| setup(format!("ca_file {}: {e}", path.display())))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| setup(format!("ca_file {}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| setup(format!("ca_file {}: {e}", path.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("blockwatch-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(e.to_string()))?;
        Ok(Sink {
            cfg,
            client,
            secret: secret.map(String::into_bytes),
            link_base: link_base.trim_end_matches('/').into(),
            windows,
        })
    }

    /// A link to the event in the collector's API.
    fn link(&self, e: &EventView) -> String {
        format!("{}/v1/events?after={}&limit=1", self.link_base, e.seq.saturating_sub(1))
    }

    /// One POST of `body` (JSON) to `url` with `headers`.
    async fn post(&self, url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Attempt {
        let mut req = self.client.post(url).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                // The start of the answer, for the logs: no more is read, whatever it sends.
                let mut resp = resp;
                let head = resp.chunk().await.ok().flatten().unwrap_or_default();
                let shown: String = String::from_utf8_lossy(&head[..head.len().min(200)]).into_owned();
                match status {
                    200..=299 => Attempt::Delivered(status),
                    // A 4xx is the receiver's last word on this payload (but 408, 429: later).
                    400..=499 if status != 408 && status != 429 => Attempt::Refused { status, error: shown },
                    // A redirect (not followed), a 5xx, anything else: try again.
                    _ => Attempt::Retry { status: Some(status), error: shown },
                }
            }
            Err(e) => Attempt::Retry { status: None, error: blockwatch_proto::error::chain(&e) },
        }
    }
}

/// Backoff before attempt `n + 1` (n ≥ 1): doubling from `MIN_BACKOFF` to `MAX_BACKOFF`,
/// with ±20 % jitter so that sinks retrying together spread out.
pub fn backoff(n: u32) -> Duration {
    let base = MIN_BACKOFF.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Runs every sink until `stop` turns true. `wake` ticks when events are appended.
pub fn spawn(
    sinks: Vec<Sink>,
    store: Reader,
    wake: tokio::sync::broadcast::Sender<blockwatch_detector::Event>,
    statuses: Arc<Statuses>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    sinks
        .into_iter()
        .map(|sink| {
            let (store, statuses, stop) = (store.clone(), Arc::clone(&statuses), stop.clone());
            let wake = wake.subscribe();
            tokio::spawn(async move { run_sink(sink, store, wake, statuses, stop).await })
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn run_sink(
    sink: Sink,
    store: Reader,
    mut wake: tokio::sync::broadcast::Receiver<blockwatch_detector::Event>,
    statuses: Arc<Statuses>,
    mut stop: watch::Receiver<bool>,
) {
    let name = sink.cfg.name.clone();
    let kind = sink.cfg.kind.name();
    // A new sink starts at the end of the log: it is not sent the history (and holds no
    // alerts from it).
    let cursor = {
        let (store, name) = (store.clone(), name.clone());
        blocking(move || match store.sink_cursor(&name) {
            Ok(Some(c)) => Ok((c, false)),
            Ok(None) => {
                let end = store.last_event_seq()?;
                store.set_sink_cursor(&name, end)?;
                Ok((end, true))
            }
            Err(e) => Err(e),
        })
        .await
    };
    let (mut cursor, fresh) = match cursor {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(sink = %name, error = %e, "cannot read the sink's cursor; the sink does not run");
            return;
        }
        None => return,
    };
    statuses.update(&name, |s| {
        s.kind = kind.into();
        s.cursor = cursor;
    });
    // The alerts open at the cursor (Alertmanager re-posts them; a webhook names its blocks
    // by the event that opened them).
    let mut state = if fresh {
        alertmanager::Active::default()
    } else {
        let (store, cfg, windows) = (store.clone(), sink.cfg.clone(), Arc::clone(&sink.windows));
        let held = move |e: &EventView| windows.iter().any(|w| w.covers(e));
        blocking(move || alertmanager::Active::rebuild(&store, &cfg, cursor, held)).await.unwrap_or_default()
    };
    let pace = Duration::from_secs(60) / sink.cfg.max_per_minute.max(1);
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut resend = tokio::time::interval(sink.cfg.resend_every);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_repost = tokio::time::Instant::now();
    tracing::info!(sink = %name, kind, cursor, "sink running");
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = {
            let store = store.clone();
            blocking(move || store.events_after(cursor).take(READ_BATCH).collect::<Result<Vec<_>, _>>()).await
        };
        let events = match batch {
            Some(Ok(events)) => events,
            Some(Err(e)) => {
                tracing::warn!(sink = %name, error = %e, "cannot read the event log; trying again shortly");
                Vec::new()
            }
            None => return,
        };
        if events.is_empty() {
            tokio::select! {
                r = wake.recv() => {
                    // Closed only as the collector goes; then the log is polled.
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = resend.tick(), if sink.cfg.kind == SinkKind::Alertmanager && state.any_posted() => {
                    repost(&sink, &state).await;
                    last_repost = tokio::time::Instant::now();
                }
                _ = stop.changed() => {}
            }
            continue;
        }
        for (seq, line) in events {
            // A backlog must not starve the re-posts: Alertmanager would resolve open alerts.
            if sink.cfg.kind == SinkKind::Alertmanager
                && state.any_posted()
                && last_repost.elapsed() >= sink.cfg.resend_every
            {
                repost(&sink, &state).await;
                last_repost = tokio::time::Instant::now();
            }
            let admitted = EventView::parse(seq, &line).filter(|e| state.admits(&sink.cfg, e));
            // A window holds back what it covers, but never the end of an alert that is open.
            let held = |e: &&EventView| sink.windows.iter().any(|w| w.covers(e)) && !state.closes_open(e);
            if let Some(e) = admitted.as_ref().filter(held) {
                // Still tracked, so an alert opened before the window closes after it.
                let _ = build(&sink, e, &mut state, false);
                let reason = sink.windows.iter().find(|w| w.covers(e)).map(|w| w.reason.clone()).unwrap_or_default();
                tracing::info!(sink = %name, event = e.seq, kind = %e.kind, target = %e.target, region = %e.region,
                    reason = %reason, "notification suppressed: maintenance window");
                statuses.update(&name, |s| s.suppressed_total += 1);
            } else if let Some(e) = admitted {
                if let Some(at) = last_sent {
                    let wait = (at + pace).saturating_duration_since(tokio::time::Instant::now());
                    if !wait.is_zero() && !sleep_or_stop(wait, &mut stop).await {
                        return;
                    }
                }
                let body = build(&sink, &e, &mut state, true);
                if !deliver(&sink, &statuses, &e, &sink.cfg.effective_url(), body, &mut stop).await {
                    return;
                }
                last_sent = Some(tokio::time::Instant::now());
            }
            cursor = seq;
            let (store, n) = (store.clone(), name.clone());
            if let Some(Err(e)) = blocking(move || store.set_sink_cursor(&n, seq)).await {
                tracing::warn!(sink = %name, error = %e, "cannot record the sink's cursor (the event may be sent again)");
            }
            statuses.update(&name, |s| s.cursor = seq);
        }
    }
}

/// The body of one event's notification; `state` tracks what is open, `posted`: this one
/// is sent (not held back by a window).
fn build(sink: &Sink, e: &EventView, state: &mut alertmanager::Active, posted: bool) -> Vec<u8> {
    match sink.cfg.kind {
        SinkKind::Webhook => webhook::request(sink, e, state, posted),
        SinkKind::Alertmanager => state.apply(sink, e, posted),
        SinkKind::Pagerduty => pagerduty::request(sink, e, state, posted),
        SinkKind::Slack => slack::request(sink, e),
    }
}

/// The headers of one attempt (a webhook's signature is made at each).
fn headers(sink: &Sink, e: &EventView, body: &[u8]) -> Vec<(&'static str, String)> {
    match sink.cfg.kind {
        SinkKind::Webhook => webhook::headers(sink, e, body),
        _ => Vec::new(),
    }
}

/// Posts every open alert again, so Alertmanager does not resolve them itself.
async fn repost(sink: &Sink, state: &alertmanager::Active) {
    let body = state.repost(sink);
    if let Attempt::Retry { error, .. } | Attempt::Refused { error, .. } =
        sink.post(&sink.cfg.effective_url(), body, &[]).await
    {
        tracing::warn!(sink = %sink.cfg.name, error = %error, "re-posting open alerts failed");
    }
}

/// Sleeps `d`; false when `stop` came first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Sends one event until the receiver takes it (or refuses it for good); false on `stop`.
async fn deliver(
    sink: &Sink,
    statuses: &Statuses,
    e: &EventView,
    url: &str,
    body: Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = &sink.cfg.name;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let signed = headers(sink, e, &body);
        let outcome = tokio::select! {
            a = sink.post(url, body.clone(), &signed) => a,
            _ = stop.wait_for(|s| *s) => return false,
        };
        let status_key = |s: Option<u16>| s.map_or("error".to_string(), |s| s.to_string());
        match outcome {
            Attempt::Delivered(status) => {
                tracing::info!(sink = %name, event = e.seq, kind = %e.kind, target = %e.target, region = %e.region,
                    status, attempts, "notification delivered");
                statuses.update(name, |s| {
                    s.delivered_total += 1;
                    *s.attempts_by_status.entry(status.to_string()).or_default() += 1;
                    s.pending = None;
                });
                return true;
            }
            Attempt::Refused { status, error } => {
                tracing::error!(sink = %name, event = e.seq, status, error = %error,
                    "the receiver refused the notification; skipping it");
                statuses.update(name, |s| {
                    s.refused_total += 1;
                    s.failed_attempts_total += 1;
                    *s.attempts_by_status.entry(status.to_string()).or_default() += 1;
                    s.pending = None;
                });
                return true;
            }
            Attempt::Retry { status, error } => {
                let wait = backoff(attempts);
                tracing::warn!(sink = %name, event = e.seq, status = status_key(status), error = %error, attempts,
                    retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                    "notification not delivered; retrying");
                let next = blockwatch_proto::time::now() + wait.as_millis() as i64;
                statuses.update(name, |s| {
                    s.failed_attempts_total += 1;
                    *s.attempts_by_status.entry(status_key(status)).or_default() += 1;
                    s.pending = Some(Pending {
                        event: e.seq,
                        attempts,
                        last_status: status_key(status),
                        last_error: error.chars().take(200).collect(),
                        next_try: blockwatch_proto::time::format_rfc3339(next),
                    });
                });
                if !sleep_or_stop(wait, stop).await {
                    return false;
                }
            }
        }
    }
}

/// `alert test --sink NAME`: one synthetic notification, sent once.
pub async fn send_test(sink: &Sink) -> Attempt {
    let now = blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now());
    let line = serde_json::json!({
        "kind": "block_started", "target": "blockwatch-test", "region": "test",
        "onset": now, "detected_at": now,
        "evidence": {"signature": "test", "agents": [], "failing": 0, "ok": 0},
        "summary": "blockwatch test notification: no block, this checks the sink's configuration",
        "test": true,
    });
    let e = EventView::parse(0, &line.to_string()).unwrap_or_else(|| unreachable!("a literal event"));
    let body = build(sink, &e, &mut alertmanager::Active::default(), true);
    sink.post(&sink.cfg.effective_url(), body.clone(), &headers(sink, &e, &body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(kind: SinkKind) -> SinkConfig {
        let text =
            format!("name = \"s\"\nkind = \"{}\"\nurl = \"http://127.0.0.1:9/\"\nsecret_env = \"X\"\n", kind.name());
        let mut c: SinkConfig = toml::from_str(&text).unwrap();
        if matches!(kind, SinkKind::Alertmanager | SinkKind::Slack) {
            c.secret_env = None;
        }
        c
    }

    fn event(kind: &str, target: &str, region: &str, signature: &str) -> EventView {
        let line = serde_json::json!({"kind": kind, "target": target, "region": region,
            "onset": "2026-01-01T00:00:00Z", "detected_at": "2026-01-01T00:05:00Z",
            "evidence": {"signature": signature}, "summary": "s"});
        EventView::parse(7, &line.to_string()).unwrap()
    }

    #[test]
    fn filters_admit_what_they_name() {
        let mut c = sink(SinkKind::Webhook);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert!(c.admits(&event("block_started", "openai", "hk", "geo")));
        assert!(!c.admits(&event("outage_started", "openai", "*", "")), "not a default kind");
        c.regions = vec!["cn".into()];
        c.signatures = vec!["rst".into()];
        assert!(!c.admits(&event("block_started", "openai", "hk", "rst")));
        assert!(c.admits(&event("block_started", "openai", "cn", "rst")));
        c.min_severity = Some(Severity::Critical);
        assert!(!c.admits(&event("block_ended", "openai", "cn", "rst")), "an end is info");
        // Alertmanager: a start's end comes along, so no alert stays open.
        let mut am = sink(SinkKind::Alertmanager);
        am.kinds = vec!["outage_started".into()];
        assert!(am.problems().is_empty(), "{:?}", am.problems());
        assert!(am.admits(&event("outage_ended", "openai", "*", "")));
        assert!(!am.admits(&event("block_started", "openai", "hk", "geo")));
    }

    /// An end closes what its start opened, whatever the filters say of the end itself.
    #[test]
    fn ends_of_open_alerts_pass_every_filter() {
        let mut pd = sink(SinkKind::Pagerduty);
        pd.min_severity = Some(Severity::Critical);
        pd.signatures = vec!["geo".into()];
        let mut state = alertmanager::Active::default();
        let start = event("block_started", "openai", "hk", "geo");
        let end = event("block_ended", "openai", "hk", "");
        assert!(state.admits(&pd, &start));
        assert!(!state.admits(&pd, &end), "nothing open yet");
        state.block_start(&start, &pd, true);
        assert!(state.admits(&pd, &end), "the end of an open block");
        assert!(!state.admits(&pd, &event("block_ended", "openai", "cn", "")), "another cell");
        // A second start of an open block keeps the first's identity.
        let again = EventView { seq: 9, ..start.clone() };
        assert_eq!(state.block_start(&again, &pd, true), 7);
        assert_eq!(state.block_start(&end, &pd, true), 7);
        assert!(!state.any_posted(), "closed");
    }

    #[test]
    fn configs_are_checked() {
        let mut c = sink(SinkKind::Webhook);
        c.kinds = vec!["block_start".into()];
        c.url = "ftp://x".into();
        c.secret_env = None;
        c.max_per_minute = 0;
        let p = c.problems().join("\n");
        for want in ["block_start", "ftp://x", "needs secret_env or secret_file", "max_per_minute"] {
            assert!(p.contains(want), "{want}: {p}");
        }
    }

    #[test]
    fn maintenance_windows_cover_their_span_targets_and_regions() {
        let w = |targets: &[&str], regions: &[&str]| Window {
            start: "2026-01-01T00:00:00Z".into(),
            end: "2026-01-01T01:00:00Z".into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            regions: regions.iter().map(|s| s.to_string()).collect(),
            reason: String::new(),
        };
        let mut e = event("block_started", "openai", "hk", "geo");
        e.detected_at = "2026-01-01T00:30:00Z".into();
        assert!(w(&[], &[]).covers(&e));
        assert!(w(&["openai"], &["hk", "cn"]).covers(&e));
        assert!(!w(&["anthropic"], &[]).covers(&e));
        assert!(!w(&[], &["cn"]).covers(&e));
        e.detected_at = "2026-01-01T01:00:00Z".into();
        assert!(!w(&[], &[]).covers(&e), "the end is outside");
        let bad = Window { end: "2025-12-31T00:00:00Z".into(), ..w(&[], &[]) };
        assert_eq!(bad.problems(0), ["maintenance[0]: start must be before end"]);
        let bad = Window { start: "tomorrow".into(), ..w(&[], &[]) };
        assert!(bad.problems(2)[0].starts_with("maintenance[2]: start and end must be RFC 3339"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        for n in 1..30 {
            let b = backoff(n);
            let base = MIN_BACKOFF.saturating_mul(1 << (n - 1).min(16)).min(MAX_BACKOFF);
            assert!(b >= base.mul_f64(0.8) && b <= base.mul_f64(1.2), "{n}: {b:?}");
        }
    }
}
