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
mod email;
mod group;
mod maintenance;
mod pagerduty;
mod slack;
mod template;
mod webhook;

pub use maintenance::{Listed, Maintenance, MaintenanceError};

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
    /// E-mail over SMTP (STARTTLS on `smtp://`, TLS from the start on `smtps://`).
    Email,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Alertmanager => "alertmanager",
            SinkKind::Pagerduty => "pagerduty",
            SinkKind::Slack => "slack",
            SinkKind::Email => "email",
        }
    }

    /// Kinds whose receivers keep state (an incident, an alert) that an end must close.
    pub(crate) fn pairs_ends(self) -> bool {
        matches!(self, SinkKind::Alertmanager | SinkKind::Pagerduty)
    }

    /// Kinds whose notifications list an enforcement wave at once.
    pub(crate) fn groups(self) -> bool {
        matches!(self, SinkKind::Webhook | SinkKind::Slack | SinkKind::Email)
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

/// The group window of the sinks that group, unless set.
pub const DEFAULT_GROUP_WINDOW: Duration = Duration::from_secs(30);
/// The longest group window (a notification must not wait long).
pub const MAX_GROUP_WINDOW: Duration = Duration::from_secs(600);

/// One `[[sink]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name (`ops-webhook`): its cursor, its status, `alert test --sink`.
    pub name: String,
    pub kind: SinkKind,
    /// Where to send: the webhook's or Slack's URL, Alertmanager's base URL
    /// (`http://am:9093`); PagerDuty's defaults to its Events API; e-mail's SMTP server,
    /// `smtp://host:587` (STARTTLS, required) or `smtps://host:465`.
    #[serde(default)]
    pub url: String,
    /// Webhook: the signing secret; PagerDuty: the integration's routing key; e-mail: the
    /// SMTP password (with `username`). From this environment variable…
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
    /// Webhook, Slack, e-mail: events of one kind and target detected within this window of
    /// the first are one notification (an enforcement wave); `0s` sends each alone.
    /// Default 30s. Alertmanager groups by its own config; PagerDuty opens one incident per
    /// block.
    #[serde(default, with = "humantime_serde")]
    pub group_window: Option<Duration>,
    /// Webhook: the body, rendered from the payload by this template (MiniJinja, Jinja2's
    /// syntax), so the sink speaks to Discord, Teams, Mattermost and the like…
    #[serde(default)]
    pub template: Option<String>,
    /// …or the template in this file.
    #[serde(default)]
    pub template_file: Option<PathBuf>,
    /// Webhook: the body's content type. Default `application/json` (a rendered body must
    /// then be JSON).
    #[serde(default)]
    pub content_type: Option<String>,
    /// E-mail: the sender (`blockwatch <alerts@example.com>`).
    #[serde(default)]
    pub from: Option<String>,
    /// E-mail: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// E-mail: the SMTP user, whose password is the secret.
    #[serde(default)]
    pub username: Option<String>,
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
        if self.kind == SinkKind::Email {
            p.extend(email::problems(self).into_iter().map(|x| format!("{me}: {x}")));
        } else if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(&url).is_err() {
            p.push(format!("{me}: url {:?}: an http:// or https:// URL", self.url));
        }
        if self.kind != SinkKind::Email && (self.from.is_some() || !self.to.is_empty() || self.username.is_some()) {
            p.push(format!("{me}: from, to and username are for e-mail sinks"));
        }
        let templated = self.template.is_some() || self.template_file.is_some() || self.content_type.is_some();
        if templated && self.kind != SinkKind::Webhook {
            p.push(format!("{me}: template, template_file and content_type are for webhook sinks"));
        }
        if self.template.is_some() && self.template_file.is_some() {
            p.push(format!("{me}: template and template_file exclude each other"));
        } else if let Err(e) = template::Template::of(self) {
            p.push(format!("{me}: {e}"));
        }
        match self.group_window {
            Some(w) if !self.kind.groups() && !w.is_zero() => p.push(format!(
                "{me}: group_window: {} sinks do not group ({})",
                self.kind.name(),
                if self.kind == SinkKind::Alertmanager {
                    "Alertmanager groups by its own route config"
                } else {
                    "one incident per block"
                }
            )),
            Some(w) if w > MAX_GROUP_WINDOW => p.push(format!("{me}: group_window: at most 10m")),
            _ => {}
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

    /// How long the sink gathers a wave (zero: it does not).
    pub fn grouping(&self) -> Duration {
        if self.kind.groups() { self.group_window.unwrap_or(DEFAULT_GROUP_WINDOW) } else { Duration::ZERO }
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
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
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
    pub(crate) fn span(&self) -> Option<(i64, i64)> {
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
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SinkStatus {
    pub kind: String,
    /// The last event it finished with (delivered, filtered out or refused).
    pub cursor: u64,
    /// Notifications delivered (a wave is one)…
    pub delivered_total: u64,
    /// …and the events they carried.
    pub events_delivered_total: u64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts_total: u64,
    /// Notifications the receiver refused for good (a 4xx other than 408/429, an SMTP 5xx),
    /// or that the sink's template could not render: skipped.
    pub refused_total: u64,
    /// Events not sent because a maintenance window covered them.
    pub suppressed_total: u64,
    /// Attempts by answer: HTTP status, or `error` when none came.
    pub attempts_by_status: BTreeMap<String, u64>,
    /// The event being delivered now, when one is waiting for a retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// How a sink reaches its receiver.
enum Transport {
    Http(reqwest::Client),
    Smtp(Box<email::Mailer>),
}

/// A ready sink: its config, its client and its secret.
pub struct Sink {
    pub cfg: SinkConfig,
    transport: Transport,
    secret: Option<Vec<u8>>,
    /// Where a person follows an event up (`public_url`).
    link_base: String,
    /// Maintenance windows.
    windows: Arc<Maintenance>,
    /// A webhook's body template.
    template: Option<template::Template>,
}

impl Sink {
    /// Builds the client (TLS with the web roots plus `ca_file`) and reads the secret.
    pub fn new(
        cfg: SinkConfig,
        link_base: &str,
        windows: Arc<Maintenance>,
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
        let transport = if cfg.kind == SinkKind::Email {
            Transport::Smtp(Box::new(email::Mailer::new(&cfg, secret.as_deref()).map_err(setup)?))
        } else {
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
            Transport::Http(client)
        };
        let template = template::Template::of(&cfg).map_err(setup)?;
        Ok(Sink {
            cfg,
            transport,
            secret: secret.map(String::into_bytes),
            link_base: link_base.trim_end_matches('/').into(),
            windows,
            template,
        })
    }

    /// A link to the event in the collector's API.
    fn link(&self, e: &EventView) -> String {
        format!("{}/v1/events?after={}&limit=1", self.link_base, e.seq.saturating_sub(1))
    }

    /// One attempt: `body` POSTed with `headers` (or, for e-mail, the message sent).
    async fn send(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Attempt {
        let client = match &self.transport {
            Transport::Http(c) => c,
            Transport::Smtp(m) => return m.send(&body).await,
        };
        let url = self.cfg.effective_url();
        let content_type = self.cfg.content_type.as_deref().unwrap_or("application/json");
        let mut req = client.post(url).header("content-type", content_type);
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

/// A clustered detector's turns at alerting: its sinks run only while `leading` is true
/// (it holds the lease), and each cursor they move is also sent on `moved`, for the next
/// holder to go on from.
#[derive(Clone)]
pub struct Turns {
    pub leading: watch::Receiver<bool>,
    pub moved: tokio::sync::mpsc::UnboundedSender<(String, u64)>,
}

/// Runs every sink until `stop` turns true (with `turns`, only during this collector's
/// turns). `wake` ticks when events are appended.
pub fn spawn(
    sinks: Vec<Sink>,
    store: Reader,
    wake: tokio::sync::broadcast::Sender<blockwatch_detector::Event>,
    statuses: Arc<Statuses>,
    stop: watch::Receiver<bool>,
    turns: Option<Turns>,
) -> Vec<tokio::task::JoinHandle<()>> {
    sinks
        .into_iter()
        .map(|sink| {
            let (store, statuses, mut stop) = (store.clone(), Arc::clone(&statuses), stop.clone());
            let (wake, turns) = (wake.clone(), turns.clone());
            tokio::spawn(async move {
                let Some(turns) = turns else {
                    return run_sink(&sink, store, wake.subscribe(), statuses, stop, None).await;
                };
                let mut leading = turns.leading;
                loop {
                    tokio::select! {
                        r = leading.wait_for(|l| *l) => if r.is_err() { return },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    // The turn ends when the lease is lost or the collector stops.
                    let (end, ended) = watch::channel(false);
                    let watcher = {
                        let (mut leading, mut stop) = (leading.clone(), stop.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = leading.wait_for(|l| !*l) => {}
                                _ = stop.wait_for(|s| *s) => {}
                            }
                            let _ = end.send(true);
                        })
                    };
                    let moved = Some(turns.moved.clone());
                    run_sink(&sink, store.clone(), wake.subscribe(), Arc::clone(&statuses), ended, moved).await;
                    watcher.abort();
                    if *stop.borrow() {
                        return;
                    }
                }
            })
        })
        .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn run_sink(
    sink: &Sink,
    store: Reader,
    mut wake: tokio::sync::broadcast::Receiver<blockwatch_detector::Event>,
    statuses: Arc<Statuses>,
    mut stop: watch::Receiver<bool>,
    moved: Option<tokio::sync::mpsc::UnboundedSender<(String, u64)>>,
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
        let held = move |e: &EventView| windows.covering(e).is_some();
        blocking(move || alertmanager::Active::rebuild(&store, &cfg, cursor, held)).await.unwrap_or_default()
    };
    let pace = Duration::from_secs(60) / sink.cfg.max_per_minute.max(1);
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut resend = tokio::time::interval(sink.cfg.resend_every);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_repost = tokio::time::Instant::now();
    // Events read and not finished with, as the notifications they become.
    let mut queue = group::Queue::new(sink.cfg.grouping());
    // The last event read; `cursor` trails it while a group is waiting.
    let mut read = cursor;
    tracing::info!(sink = %name, kind, cursor, "sink running");
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = {
            let store = store.clone();
            blocking(move || store.events_after(read).take(READ_BATCH).collect::<Result<Vec<_>, _>>()).await
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
            let due = queue.next_due();
            tokio::select! {
                r = wake.recv() => {
                    // Closed only as the collector goes; then the log is polled.
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
                _ = resend.tick(), if sink.cfg.kind == SinkKind::Alertmanager && state.any_posted() => {
                    repost(sink, &state).await;
                    last_repost = tokio::time::Instant::now();
                }
                _ = stop.changed() => {}
            }
        }
        for (seq, line) in events {
            // A backlog must not starve the re-posts: Alertmanager would resolve open alerts.
            if sink.cfg.kind == SinkKind::Alertmanager
                && state.any_posted()
                && last_repost.elapsed() >= sink.cfg.resend_every
            {
                repost(sink, &state).await;
                last_repost = tokio::time::Instant::now();
            }
            read = seq;
            if let Some(e) = EventView::parse(seq, &line).filter(|e| state.admits(&sink.cfg, e)) {
                // A window holds back what it covers, but never the end of an alert that is
                // open (or about to be).
                let held = sink.windows.covering(&e).is_some() && !state.closes_open(&e) && !queue.opens(&e);
                queue.push(e, held, tokio::time::Instant::now());
            }
            // Without a group window, each event goes before the next is looked at (what
            // Alertmanager and PagerDuty are told depends on what was sent before).
            if !flush(sink, &statuses, &mut queue, &mut state, pace, &mut last_sent, &mut stop).await {
                return;
            }
            cursor = advance(&store, &name, &statuses, cursor, queue.first_seq().map_or(read, |s| s - 1), &moved).await;
        }
        if !flush(sink, &statuses, &mut queue, &mut state, pace, &mut last_sent, &mut stop).await {
            return;
        }
        cursor = advance(&store, &name, &statuses, cursor, queue.first_seq().map_or(read, |s| s - 1), &moved).await;
    }
}

/// Moves the sink's durable cursor to `to` (when it moved), and tells `moved`; returns the
/// cursor.
async fn advance(
    store: &Reader,
    name: &str,
    statuses: &Statuses,
    cursor: u64,
    to: u64,
    moved: &Option<tokio::sync::mpsc::UnboundedSender<(String, u64)>>,
) -> u64 {
    if to <= cursor {
        return cursor;
    }
    let (store, n) = (store.clone(), name.to_string());
    if let Some(Err(e)) = blocking(move || store.set_sink_cursor(&n, to)).await {
        tracing::warn!(sink = %name, error = %e, "cannot record the sink's cursor (events may be sent again)");
    }
    if let Some(m) = moved {
        let _ = m.send((name.to_string(), to));
    }
    statuses.update(name, |s| s.cursor = to);
    to
}

/// Sends (or, when a window holds them, only tracks) every group that is due; false on `stop`.
async fn flush(
    sink: &Sink,
    statuses: &Statuses,
    queue: &mut group::Queue,
    state: &mut alertmanager::Active,
    pace: Duration,
    last_sent: &mut Option<tokio::time::Instant>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = &sink.cfg.name;
    while let Some(g) = queue.pop_due(tokio::time::Instant::now()) {
        if g.held {
            for e in &g.events {
                // Still tracked, so an alert opened before the window closes after it.
                let _ = build(sink, std::slice::from_ref(e), state, false);
                let reason = sink.windows.covering(e).unwrap_or_default();
                tracing::info!(sink = %name, event = e.seq, kind = %e.kind, target = %e.target, region = %e.region,
                    reason = %reason, "notification suppressed: maintenance window");
            }
            statuses.update(name, |s| s.suppressed_total += g.events.len() as u64);
            continue;
        }
        if let Some(at) = *last_sent {
            let wait = (at + pace).saturating_duration_since(tokio::time::Instant::now());
            if !wait.is_zero() && !sleep_or_stop(wait, stop).await {
                return false;
            }
        }
        let body = build(sink, &g.events, state, true);
        if !deliver(sink, statuses, &g.events, body, stop).await {
            return false;
        }
        *last_sent = Some(tokio::time::Instant::now());
    }
    true
}

/// The body of one notification (a group of events: one, or a wave); `state` tracks what is
/// open, `posted`: it is sent (not held back by a window). An error: the sink's template
/// made no body the receiver could take.
fn build(sink: &Sink, events: &[EventView], state: &mut alertmanager::Active, posted: bool) -> Result<Vec<u8>, String> {
    let e = &events[0];
    Ok(match sink.cfg.kind {
        SinkKind::Webhook => return webhook::request(sink, events, state, posted),
        SinkKind::Alertmanager => state.apply(sink, e, posted),
        SinkKind::Pagerduty => pagerduty::request(sink, e, state, posted),
        SinkKind::Slack => slack::request(sink, events),
        SinkKind::Email => email::message(sink, events)?,
    })
}

/// The headers of one attempt (a webhook's signature is made at each).
fn headers(sink: &Sink, events: &[EventView], body: &[u8]) -> Vec<(&'static str, String)> {
    match sink.cfg.kind {
        SinkKind::Webhook => webhook::headers(sink, events, body),
        _ => Vec::new(),
    }
}

/// Posts every open alert again, so Alertmanager does not resolve them itself.
async fn repost(sink: &Sink, state: &alertmanager::Active) {
    let body = state.repost(sink);
    if let Attempt::Retry { error, .. } | Attempt::Refused { error, .. } = sink.send(body, &[]).await {
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

/// Sends one notification until the receiver takes it (or refuses it for good); false on
/// `stop`.
async fn deliver(
    sink: &Sink,
    statuses: &Statuses,
    events: &[EventView],
    body: Result<Vec<u8>, String>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let name = &sink.cfg.name;
    let e = &events[0];
    let n = events.len();
    let body = match body {
        Ok(b) => b,
        Err(error) => {
            tracing::error!(sink = %name, event = e.seq, events = n, error = %error,
                "the sink's template made no body; skipping the notification");
            statuses.update(name, |s| {
                s.refused_total += 1;
                *s.attempts_by_status.entry("template".into()).or_default() += 1;
            });
            return true;
        }
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let signed = headers(sink, events, &body);
        let outcome = tokio::select! {
            a = sink.send(body.clone(), &signed) => a,
            _ = stop.wait_for(|s| *s) => return false,
        };
        let status_key = |s: Option<u16>| s.map_or("error".to_string(), |s| s.to_string());
        match outcome {
            Attempt::Delivered(status) => {
                tracing::info!(sink = %name, event = e.seq, events = n, kind = %e.kind, target = %e.target,
                    regions = %group::places(events).join(","), status, attempts, "notification delivered");
                statuses.update(name, |s| {
                    s.delivered_total += 1;
                    s.events_delivered_total += n as u64;
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
    let events = [e];
    match build(sink, &events, &mut alertmanager::Active::default(), true) {
        Ok(body) => sink.send(body.clone(), &headers(sink, &events, &body)).await,
        Err(error) => Attempt::Refused { status: 0, error: format!("the template: {error}") },
    }
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
        c.template = Some("{% if %}".into());
        let p = c.problems().join("\n");
        for want in ["block_start", "ftp://x", "needs secret_env or secret_file", "max_per_minute", "template: "] {
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
