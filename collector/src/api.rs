//! The collector's HTTP query API (plain HTTP/1.1, JSON), for SREs, scripts and dashboards:
//!
//! - `GET /healthz` — `ok` while the collector runs.
//! - `GET /readyz` — `ready` while the store is open and ingest takes results; `503` with the
//!   reason (shutting down, the store writer stopped, the disk at its reserve) otherwise.
//! - `GET /v1/events` — the event log as JSON lines, oldest first, each with its `seq`.
//!   Query: `after=SEQ` (only later events: poll with the last `seq` you saw), `kind=`,
//!   `target=`, `region=` (exact matches), `limit=` (default 1000, at most 100 000).
//! - `GET /v1/results` — stored results in the trace format (JSON lines, what `export`
//!   writes), in the order stored, streamed. Query: `after=N` (skip the first N: results are
//!   numbered 1, 2, 3, … as stored, so a poller adds the lines it got), `limit=` (default all).
//! - `GET /v1/networks` — stored results summed by the network they left from (the agents'
//!   egress ASN and country, from their `geoip_db`), as JSON lines: results, per-outcome
//!   counts, the share `ok`, first and last start. Query: `by=` (any of `region`, `target`,
//!   `asn`, `country`, comma-separated; default `region,asn`), filters `target=`, `region=`,
//!   `asn=`, `country=`, `from=` / `to=` (RFC 3339, on `started_at`), `control=true` to count
//!   the control target too.
//! - `GET /v1/alerts` — each notification sink (`[[sink]]`): its cursor, deliveries, failed
//!   attempts by status, refusals, and the event waiting for a retry.
//! - `GET /v1/agents` — the agents seen since start: region, whether a stream is open and
//!   whether the agent is silent, version, last heard of, results spooled, dropped and
//!   refused. Query: `after=ID` (agents after this id), `limit=` (default 1000, at most 10 000).
//!
//! - `POST /v1/probe?target=ID&region=R` (admin) — asks every connected agent of the region
//!   to probe the target now; answers `{"asked": N}`.
//!
//! Authentication (`[api]`): with `auth = "token"` every route but `/healthz`, `/readyz` and
//! the dashboard files needs `Authorization: Bearer TOKEN` — `401` without a valid one, `403` when a `read` token
//! asks for an admin route (see `api_auth`).
//!
//! Reads run on the blocking pool and never hold the store's writer. At most
//! `MAX_REQUESTS` requests run at once and each must answer within `REQUEST_TIMEOUT`; at
//! most `MAX_EXPORTS` result exports stream at once, and one whose client stops reading for
//! `SEND_DEADLINE` is ended. Past a bound the answer is `503` with `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use blockwatch_detector::EventKind;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::api_auth::{Role, Tokens, Verdict};
use crate::ingest::Ingest;
use crate::store::Reader;

/// Default and largest `limit` of `/v1/events`.
pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;
/// Default and largest `limit` of `/v1/agents`.
pub const DEFAULT_AGENTS: usize = 1000;
pub const MAX_AGENTS: usize = 10_000;
/// Requests served at once; past it, `503`.
pub const MAX_REQUESTS: usize = 64;
/// Longest a request may take to produce its answer (a streamed export's first byte).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Result exports streaming at once (each holds a blocking thread); past it, `503`.
pub const MAX_EXPORTS: usize = 4;
/// Longest an export waits for a client that stopped reading before it ends the transfer.
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Api {
    store: Reader,
    ingest: Arc<Ingest>,
    exports: Arc<Semaphore>,
    alerts: Arc<crate::alert::Statuses>,
    maintenance: Arc<crate::alert::Maintenance>,
    status: Arc<crate::status::Status>,
    data_dir: Arc<std::path::PathBuf>,
    backups: Arc<Backups>,
    archive: Option<Arc<crate::archive::Archive>>,
}

/// `POST /v1/backup`'s directory and the state of the last backup.
struct Backups {
    dir: Option<std::path::PathBuf>,
    /// Bytes kept free on its filesystem (`limits.min_free_disk_mb`).
    reserve: u64,
    /// Set when the API stops: a running backup ends within one batch (and removes what it
    /// wrote) instead of holding up shutdown.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    state: std::sync::Mutex<BackupState>,
}

/// The last backup started through the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
enum BackupState {
    /// None since the collector started.
    None,
    Running {
        path: String,
        started_at: String,
    },
    Done {
        path: String,
        #[schema(value_type = Object)]
        backup: crate::store::Backup,
    },
    Failed {
        path: String,
        error: String,
    },
}

/// What the API serves from.
pub struct Parts {
    pub store: Reader,
    pub ingest: Arc<Ingest>,
    pub alerts: Arc<crate::alert::Statuses>,
    pub maintenance: Arc<crate::alert::Maintenance>,
    pub status: Arc<crate::status::Status>,
    /// The store's directory (its size for `/metrics`).
    pub data_dir: std::path::PathBuf,
    /// Where `POST /v1/backup` writes (`backup_dir`).
    pub backup_dir: Option<std::path::PathBuf>,
    /// Bytes a backup leaves free there (`limits.min_free_disk_mb`).
    pub backup_reserve: u64,
    /// The archive old results are read from.
    pub archive: Option<Arc<crate::archive::Archive>>,
    /// An ingest front end's way to the detector that answers fleet-wide requests.
    pub upstream: Option<Arc<crate::forward::Upstream>>,
}

/// Where the API takes its connections from.
pub enum ApiListener {
    Plain(tokio::net::TcpListener),
    /// TLS handshakes done by `listen::accept`.
    Tls(crate::listen::Incoming),
}

/// Serves the API on `listener` until `stop` resolves; with `tokens`, every route but
/// `/healthz` needs a bearer token.
pub async fn serve(
    listener: ApiListener,
    parts: Parts,
    tokens: Option<Arc<Tokens>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let backups = Arc::new(Backups {
        dir: parts.backup_dir,
        reserve: parts.backup_reserve,
        cancel: Arc::default(),
        state: std::sync::Mutex::new(BackupState::None),
    });
    let cancel = Arc::clone(&backups.cancel);
    let upstream = parts.upstream;
    let stop = async move {
        stop.await;
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let mut app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/events", get(events))
        .route("/v1/agents", get(agents))
        .route("/v1/results", get(results))
        .route("/v1/networks", get(networks))
        .route("/v1/alerts", get(alert_status))
        .route("/v1/maintenance", get(maintenance_list).post(maintenance_add))
        .route("/v1/maintenance/{id}", axum::routing::delete(maintenance_remove))
        .route("/v1/probe", axum::routing::post(probe))
        .route("/v1/backup", get(backup_status).post(backup_start))
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/v1/timeline", get(timeline))
        .route("/openapi.json", get(openapi))
        .route("/v1/export", get(export))
        .route("/v1/status", get(status))
        .route("/v1/blocks", get(blocks))
        .route("/metrics", get(metrics))
        .with_state(Api {
            store: parts.store,
            ingest: parts.ingest,
            exports: Arc::new(Semaphore::new(MAX_EXPORTS)),
            alerts: parts.alerts,
            maintenance: parts.maintenance,
            status: parts.status,
            data_dir: Arc::new(parts.data_dir),
            backups: Arc::clone(&backups),
            archive: parts.archive,
        });
    if let Some(up) = upstream {
        app = app.layer(axum::middleware::from_fn_with_state(up, crate::forward::forward));
    }
    if let Some(tokens) = tokens {
        app = app.layer(axum::middleware::from_fn_with_state(tokens, authorize));
    }
    let app = app.layer(axum::middleware::from_fn(same_origin));
    let app = app.layer(axum::middleware::from_fn_with_state(Arc::new(Semaphore::new(MAX_REQUESTS)), bounded));
    match listener {
        ApiListener::Plain(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
        ApiListener::Tls(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
    }
}

/// Bearer tokens: `read` for `GET`, `admin` for anything else; `/healthz` and `/readyz` are
/// open (for supervisors and load balancers).
/// A request that changes something (not `GET` / `HEAD`) sent by a browser on behalf of
/// another site is refused, so a page open on a machine that reaches an open API cannot start
/// probes, backups or maintenance windows: browsers say where a request comes from
/// (`Sec-Fetch-Site`, else `Origin` against `Host`); scripts and tools send neither and pass.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD) {
        return next.run(req).await;
    }
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let cross = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) => !matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => {
            let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            text("host") != Some(authority)
        }
        (None, None) => false,
    };
    if cross {
        return json_error(
            StatusCode::FORBIDDEN,
            format!("{} {} from another site's page is refused", req.method(), req.uri().path()),
        );
    }
    next.run(req).await
}

async fn authorize(
    State(tokens): State<Arc<Tokens>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The dashboard's page, script and style hold no data (what they show comes from the API,
    // with the token the page asks for).
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/" | "/dashboard.js" | "/dashboard.css") {
        return next.run(req).await;
    }
    let needs = match *req.method() {
        axum::http::Method::GET | axum::http::Method::HEAD => Role::Read,
        _ => Role::Admin,
    };
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match tokens.check(header, needs) {
        Verdict::Allowed(_) => next.run(req).await,
        Verdict::Unauthenticated(why) => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, why.to_string());
            r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            r
        }
        Verdict::Forbidden { name, role } => json_error(
            StatusCode::FORBIDDEN,
            format!("token {name:?} has role {role:?}; {} {} needs an admin token", req.method(), req.uri().path()),
        ),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ProbeQuery {
    target: String,
    region: String,
}

/// `POST /v1/probe`: asks the region's connected agents to probe the target now.
#[utoipa::path(post, path = "/v1/probe", tag = "agents", params(ProbeQuery),
    responses((status = 200, description = "how many connected agents were asked", body = Asked), (status = 400, body = ErrorBody)))]
async fn probe(
    State(api): State<Api>,
    query: Result<Query<ProbeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    for (key, v) in [("target", &q.target), ("region", &q.region)] {
        if let Err(rule) = blockwatch_proto::id::check(v) {
            return bad_request(format!("{key}: {rule}"));
        }
    }
    let asked = api.ingest.streams().probe_now(&q.target, &q.region, "requested through the API");
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&Asked { asked }).unwrap_or_default() + "\n")
        .into_response()
}

/// `POST /v1/backup` (admin): starts an online backup of the store into a new directory
/// under `backup_dir`, named by the time; ingest goes on meanwhile. Answers at once; `GET
/// /v1/backup` follows it.
#[utoipa::path(post, path = "/v1/backup", tag = "status",
    responses((status = 202, description = "the backup started", body = BackupState),
              (status = 409, description = "no backup_dir configured, or a backup is running", body = ErrorBody)))]
async fn backup_start(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    let Some(dir) = api.backups.dir.clone() else {
        return json_error(StatusCode::CONFLICT, "no backup_dir is configured".into());
    };
    let now = blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now());
    let path = dir.join(format!("backup-{}", now.replace(':', "")));
    let running = BackupState::Running { path: path.display().to_string(), started_at: now };
    {
        let Ok(mut state) = api.backups.state.lock() else {
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "backup state unavailable".into());
        };
        if let BackupState::Running { path, .. } = &*state {
            return json_error(StatusCode::CONFLICT, format!("a backup is running: {path}"));
        }
        *state = running.clone();
    }
    let (reader, backups, data_dir) = (api.store.clone(), Arc::clone(&api.backups), Arc::clone(&api.data_dir));
    tokio::task::spawn_blocking(move || {
        let shown = path.display().to_string();
        let done = match reader.backup(&path, crate::metrics::dir_bytes(&data_dir), backups.reserve, &backups.cancel) {
            Ok(backup) => {
                tracing::info!(path = %shown, last_result = backup.last_result, "backup done");
                BackupState::Done { path: shown, backup }
            }
            Err(e) => {
                tracing::error!(path = %shown, error = %e, "backup failed");
                BackupState::Failed { path: shown, error: e.to_string() }
            }
        };
        if let Ok(mut state) = backups.state.lock() {
            *state = done;
        }
    });
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&running).unwrap_or_default() + "\n",
    )
        .into_response()
}

/// `GET /v1/backup`: the last backup started through the API.
#[utoipa::path(get, path = "/v1/backup", tag = "status",
    responses((status = 200, description = "none, running, done (with its manifest) or failed", body = BackupState)))]
async fn backup_status(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    let state = api.backups.state.lock().map(|s| s.clone()).unwrap_or(BackupState::None);
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&state).unwrap_or_default() + "\n")
        .into_response()
}

/// At most `MAX_REQUESTS` at once, each answered within `REQUEST_TIMEOUT`.
async fn bounded(
    State(slots): State<Arc<Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_slot) = slots.try_acquire() else {
        return busy(format!("{MAX_REQUESTS} requests are being served; retry shortly"));
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

fn busy(why: String) -> Response {
    let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
    r
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    #[serde(default)]
    after: u64,
    kind: Option<String>,
    target: Option<String>,
    region: Option<String>,
    limit: Option<usize>,
    /// Only the newest N events of the log (then filtered).
    last: Option<u64>,
}

/// The fields filters look at.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    target: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    region: std::borrow::Cow<'a, str>,
}

impl EventQuery {
    fn matches(&self, line: &str) -> bool {
        if self.kind.is_none() && self.target.is_none() && self.region.is_none() {
            return true;
        }
        let Ok(h) = serde_json::from_str::<Head<'_>>(line) else { return false };
        let want = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        want(&self.kind, &h.kind) && want(&self.target, &h.target) && want(&self.region, &h.region)
    }
}

/// An optional RFC 3339 query parameter, in ms, or a message naming it.
fn time_param(name: &str, v: &Option<String>) -> Result<Option<i64>, String> {
    match v {
        None => Ok(None),
        Some(s) => blockwatch_proto::time::parse_rfc3339(s)
            .map(Some)
            .ok_or_else(|| format!("{name}={s:?}: an RFC 3339 time (2026-12-01T08:00:00Z)")),
    }
}

/// A query string as its struct, or what is wrong with it.
fn parsed<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, String> {
    query.map(|Query(q)| q).map_err(|e| format!("bad query: {}", e.body_text()))
}

fn bad_request(msg: String) -> Response {
    json_error(StatusCode::BAD_REQUEST, msg)
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, description = "the event log as JSON lines, oldest first, each with its seq", content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody)))]
async fn events(
    State(api): State<Api>,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return bad_request(format!("limit={limit}: must be 1..={MAX_LIMIT}"));
    }
    if let Some(kind) = q.kind.as_deref().filter(|k| EventKind::ALL.iter().all(|known| known.name() != *k)) {
        // A typo would otherwise answer an empty log, and a poller with it never fires.
        let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        return bad_request(format!("kind={kind}: unknown event kind (one of {})", known.join(", ")));
    }
    if q.last.is_some() && q.after != 0 {
        return bad_request("after= and last= exclude each other".into());
    }
    let store = api.store.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        let mut n = 0;
        let after = match q.last {
            Some(last) => store.last_event_seq()?.saturating_sub(last),
            None => q.after,
        };
        for item in store.events_after(after) {
            let (seq, line) = item?;
            if !q.matches(&line) {
                continue;
            }
            // Every stored line is a JSON object: put its sequence number first.
            body.push_str(&format!("{{\"seq\":{seq},"));
            body.push_str(line.strip_prefix('{').unwrap_or(&line));
            body.push('\n');
            n += 1;
            if n == limit {
                break;
            }
        }
        Ok::<_, crate::store::StoreError>(body)
    })
    .await;
    match body {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}\n")).into_response(),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ResultQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u64>,
    target: Option<String>,
    region: Option<String>,
    agent: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
}

/// Most results one filtered page holds.
const MAX_PAGE: u64 = 100_000;

impl ResultQuery {
    fn filtered(&self) -> bool {
        self.target.is_some()
            || self.region.is_some()
            || self.agent.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.cursor.is_some()
    }

    fn into_filter(self) -> Result<crate::export::Filtered, String> {
        for (name, v) in [("target", &self.target), ("region", &self.region), ("agent", &self.agent)] {
            if let Some(v) = v
                && let Err(rule) = blockwatch_proto::id::check(v)
            {
                return Err(format!("{name}={v:?}: {rule}"));
            }
        }
        if self.after != 0 {
            return Err("after= pages the unfiltered export; filtered results page with cursor=".into());
        }
        let (from, to) = (time_param("from", &self.from)?, time_param("to", &self.to)?);
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(
                crate::export::parse_cursor(c)
                    .ok_or_else(|| format!("cursor={c:?}: not a cursor this API gave (x-next-cursor)"))?,
            ),
        };
        let limit = self.limit.unwrap_or(1000);
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit={limit}: must be 1..={MAX_PAGE} with filters"));
        }
        Ok(crate::export::Filtered {
            target: self.target,
            region: self.region,
            agent: self.agent,
            from,
            to,
            cursor,
            limit: limit as usize,
        })
    }
}

/// Bytes buffered before a chunk of an export goes out.
const CHUNK: usize = 64 * 1024;

/// An `io::Write` that hands full chunks to the response body; fails once the client left.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
}

impl ChunkWriter {
    /// Hands the buffer on; waits for a slow client, up to `SEND_DEADLINE` without progress.
    fn send(&mut self) -> std::io::Result<()> {
        use tokio::sync::mpsc::error::TrySendError;
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut chunk = Ok(bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK))));
        let give_up = std::time::Instant::now() + SEND_DEADLINE;
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"));
                }
                Err(TrySendError::Full(back)) if std::time::Instant::now() < give_up => {
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("client read nothing for {SEND_DEADLINE:?}"),
                    ));
                }
            }
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[utoipa::path(get, path = "/v1/results", tag = "results", params(ResultQuery),
    responses((status = 200, description = "stored results in the trace format, one JSON object a line; a full filtered page carries x-next-cursor", content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn results(
    State(api): State<Api>,
    query: Result<Query<ResultQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let Ok(permit) = Arc::clone(&api.exports).try_acquire_owned() else {
        return busy(format!("{MAX_EXPORTS} result exports are running; retry shortly"));
    };
    if q.filtered() {
        let filter = match q.into_filter() {
            Ok(f) => f,
            Err(why) => return bad_request(why),
        };
        let store = api.store.clone();
        let page = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut body = Vec::new();
            crate::export::export_filtered(&store, &filter, &mut body).map(|(_, next)| (body, next))
        })
        .await;
        return match page {
            Ok(Ok((body, next))) => {
                let mut resp = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
                if let Some(next) = next.and_then(|n| axum::http::HeaderValue::from_str(&n).ok()) {
                    resp.headers_mut().insert("x-next-cursor", next);
                }
                resp
            }
            Ok(Err(e)) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = api.store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = ChunkWriter { buf: Vec::with_capacity(CHUNK), tx: tx.clone() };
        let limit = q.limit.unwrap_or(u64::MAX);
        if let Err(e) = crate::export::export_range(&store, crate::export::Format::Jsonl, q.after, limit, &mut out) {
            // The status is sent already: end the body with the error so the client sees a
            // broken transfer rather than a short, valid-looking export.
            tracing::warn!(error = %blockwatch_proto::error::chain(&e), "results export over the API stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    /// `results`, `blocks` or `events`.
    what: crate::research::What,
    /// `jsonl` (default), `csv`, `parquet`, or `ooni` (results only: OONI measurements).
    format: Option<crate::research::Format>,
    /// RFC 3339: rows at or after it.
    from: Option<String>,
    /// RFC 3339: rows before it.
    to: Option<String>,
    target: Option<String>,
    region: Option<String>,
}

/// `GET /v1/export`: results, blocks or events as JSONL, CSV or Parquet, streamed from a read
/// of the store while the collector runs.
#[utoipa::path(get, path = "/v1/export", tag = "results", params(ExportQuery),
    responses(
        (status = 200, description = "the export, streamed (JSONL, CSV, Parquet, or OONI measurements as JSONL)", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
            (String = "application/vnd.apache.parquet"),
        )),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
async fn export(
    State(api): State<Api>,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let format = q.format.unwrap_or(crate::research::Format::Jsonl);
    if let Err(why) = crate::research::supported(q.what, format) {
        return bad_request(why);
    }
    let filter = match crate::cmd::export_filter(q.from, q.to, q.target, q.region) {
        Ok(f) => f,
        Err(e) => return bad_request(e.to_string().replace("--", "")),
    };
    let Ok(permit) = Arc::clone(&api.exports).try_acquire_owned() else {
        return busy(format!("{MAX_EXPORTS} result exports are running; retry shortly"));
    };
    // Archived days are read from the archive (local copies for the export's time).
    let (archived, copies) = match (&api.archive, q.what) {
        (Some(a), crate::research::What::Results) => {
            let copies = match tempfile::Builder::new().prefix("export-").tempdir_in(&*api.data_dir) {
                Ok(d) => d,
                Err(e) => return busy(format!("cannot make a directory for archived files: {e}")),
            };
            match a.results_for(&api.store, &filter, copies.path()).await {
                Ok(archived) => (archived, Some(copies)),
                Err(e) => return busy(blockwatch_proto::error::chain(&e)),
            }
        }
        _ => (crate::research::Archived::none(), None),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let store = api.store.clone();
    let what = q.what;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _copies = copies;
        let out = ChunkWriter { buf: Vec::with_capacity(CHUNK), tx: tx.clone() };
        if let Err(e) =
            crate::research::export(&store, &archived, what, format, &filter, crate::research::Output::One(out))
        {
            tracing::warn!(error = %blockwatch_proto::error::chain(&e), "export over the API stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let noun = match what {
        crate::research::What::Results => "results",
        crate::research::What::Blocks => "blocks",
        crate::research::What::Events => "events",
    };
    let disposition = format!("attachment; filename=\"blockwatch-{noun}.{}\"", format.extension());
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, format.content_type().to_string()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response()
}

/// `GET /v1/alerts`: every notification sink's cursor, counts and pending retry.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerting",
    responses((status = 200, description = "every notification sink by name", body = std::collections::BTreeMap<String, crate::alert::SinkStatus>)))]
async fn alert_status(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    let body = serde_json::to_string(&api.alerts.snapshot()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}

/// `GET /v1/maintenance`: every maintenance window, the config's and the API's.
#[utoipa::path(get, path = "/v1/maintenance", tag = "alerting",
    responses((status = 200, description = "every maintenance window", body = Vec<crate::alert::Listed>)))]
async fn maintenance_list(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    let body = serde_json::to_string(&api.maintenance.list()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}

/// Longest `POST /v1/maintenance` body.
const MAX_WINDOW_BODY: usize = 64 * 1024;

/// `POST /v1/maintenance` (admin): adds a window; `201` with it and its id.
#[utoipa::path(post, path = "/v1/maintenance", tag = "alerting", request_body = crate::alert::Window,
    responses((status = 201, description = "the window, with its id", body = crate::alert::Listed), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn maintenance_add(State(api): State<Api>, body: axum::body::Bytes) -> Response {
    if body.len() > MAX_WINDOW_BODY {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("a window is at most {MAX_WINDOW_BODY} bytes"));
    }
    let new: crate::alert::Window = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return bad_request(format!("not a maintenance window: {e}")),
    };
    let m = Arc::clone(&api.maintenance);
    match tokio::task::spawn_blocking(move || m.add(new)).await {
        Ok(Ok(listed)) => {
            let body = serde_json::to_string(&listed).unwrap_or_default();
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
        }
        Ok(Err(e)) => maintenance_error(e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `DELETE /v1/maintenance/{id}` (admin): removes a window the API added.
#[utoipa::path(delete, path = "/v1/maintenance/{id}", tag = "alerting", params(("id" = String, Path, description = "a window's id, as POST gave it")),
    responses((status = 204, description = "removed"), (status = 404, body = ErrorBody)))]
async fn maintenance_remove(State(api): State<Api>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let m = Arc::clone(&api.maintenance);
    match tokio::task::spawn_blocking(move || m.remove(&id)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => maintenance_error(e),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn maintenance_error(e: crate::alert::MaintenanceError) -> Response {
    use crate::alert::MaintenanceError as E;
    let status = match e {
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Full => StatusCode::CONFLICT,
        E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    json_error(status, e.to_string())
}

/// The dashboard: static, embedded, no CDN. A strict policy: its own script and style only.
fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_page() -> Response {
    asset("text/html; charset=utf-8", include_str!("dashboard/index.html"))
}

async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("dashboard/dashboard.js"))
}

async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("dashboard/dashboard.css"))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TimelineQuery {
    target: String,
    region: Option<String>,
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// `GET /v1/timeline`: results per time bucket and outcome, for one target in one region or
/// across regions.
#[utoipa::path(get, path = "/v1/timeline", tag = "results", params(TimelineQuery),
    responses((status = 200, description = "results per bucket and outcome, by region", body = crate::timeline::Timeline), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn timeline(
    State(api): State<Api>,
    query: Result<Query<TimelineQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let now = blockwatch_proto::time::now();
    let (to, from) = match (time_param("to", &q.to), time_param("from", &q.from)) {
        (Ok(to), Ok(from)) => (to.unwrap_or(now), from.unwrap_or(now - 86_400_000)),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let step = match q.step.as_deref().map(humantime::parse_duration) {
        None => 900_000,
        Some(Ok(d)) if d.as_millis() >= 1000 => d.as_millis() as i64,
        Some(_) => {
            return bad_request(format!("step={:?}: a duration of at least 1s (15m, 1h)", q.step.unwrap_or_default()));
        }
    };
    if from >= to {
        return bad_request("from must be before to".into());
    }
    if (to - from) / step > crate::timeline::MAX_BUCKETS as i64 {
        return bad_request(format!("at most {} buckets: widen step or narrow from/to", crate::timeline::MAX_BUCKETS));
    }
    let Ok(permit) = Arc::clone(&api.exports).try_acquire_owned() else {
        return busy(format!("{MAX_EXPORTS} result scans are running; retry shortly"));
    };
    let store = api.store.clone();
    let asked = crate::timeline::Ask { target: q.target, region: q.region, from, to, step };
    match tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::timeline::build(&store, &asked)
    })
    .await
    {
        Ok(Ok(t)) => {
            ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&t).unwrap_or_default() + "\n")
                .into_response()
        }
        Ok(Err(e)) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /metrics`: Prometheus' text format.
/// `GET /readyz`: whether results sent now would be stored.
#[utoipa::path(get, path = "/readyz", tag = "status",
    responses((status = 200, description = "store open, ingest accepting", content_type = "text/plain", body = String),
              (status = 503, description = "not accepting results, and why", content_type = "text/plain", body = String)))]
async fn readyz(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    match api.ingest.readiness() {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics(State(api): State<Api>, Query(_): Query<NoQuery>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        crate::metrics::render(&crate::metrics::Scrape {
            ingest: &api.ingest,
            status: &api.status,
            alerts: &api.alerts,
            data_dir: &api.data_dir,
        })
    })
    .await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    target: Option<String>,
    region: Option<String>,
    state: Option<String>,
}

const STATES: [&str; 5] = ["blocked", "outage", "vantage_problem", "unknown", "reachable"];

/// `GET /v1/status`: every (target, region) and its state now.
#[utoipa::path(get, path = "/v1/status", tag = "status", params(StatusQuery),
    responses((status = 200, description = "every (target, region) and its state now", body = StatusAnswer), (status = 400, body = ErrorBody)))]
async fn status(
    State(api): State<Api>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    if let Some(st) = q.state.as_deref().filter(|s| !STATES.contains(s)) {
        return bad_request(format!("state={st:?}: one of {}", STATES.join(", ")));
    }
    let cells: Vec<crate::status::Cell> = api
        .status
        .cells()
        .into_iter()
        .filter(|c| q.target.as_deref().is_none_or(|t| t == c.target))
        .filter(|c| q.region.as_deref().is_none_or(|r| r == c.region))
        .filter(|c| q.state.as_deref().is_none_or(|s| s == c.state))
        .collect();
    let mut counts: BTreeMap<&str, usize> = STATES.iter().map(|s| (*s, 0)).collect();
    for c in &cells {
        *counts.entry(c.state).or_default() += 1;
    }
    let body = StatusAnswer {
        generated_at: blockwatch_proto::time::format_rfc3339(blockwatch_proto::time::now()),
        counts: counts.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        cells,
    };
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&body).unwrap_or_default() + "\n")
        .into_response()
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct BlocksQuery {
    target: Option<String>,
    region: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    open: Option<bool>,
}

/// `GET /v1/blocks`: the block history as blocks (a start and its end), oldest first.
#[utoipa::path(get, path = "/v1/blocks", tag = "status", params(BlocksQuery),
    responses((status = 200, description = "the block history as blocks, oldest first", body = crate::blocks::Page), (status = 400, body = ErrorBody)))]
async fn blocks(
    State(api): State<Api>,
    query: Result<Query<BlocksQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let (from, to) = match (time_param("from", &q.from), time_param("to", &q.to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 10_000 {
        return bad_request(format!("limit={limit}: must be 1..=10000"));
    }
    let filter = crate::blocks::Filter {
        target: q.target,
        region: q.region,
        from,
        to,
        after: q.after.unwrap_or(0),
        limit,
        open: q.open,
    };
    let store = api.store.clone();
    match tokio::task::spawn_blocking(move || crate::blocks::list(&store, &filter)).await {
        Ok(Ok(page)) => {
            ([(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&page).unwrap_or_default() + "\n")
                .into_response()
        }
        Ok(Err(e)) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/status`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct StatusAnswer {
    generated_at: String,
    /// Cells by state.
    counts: BTreeMap<String, usize>,
    cells: Vec<crate::status::Cell>,
}

/// What every error answer is.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    /// What is wrong, naming the parameter or value at fault.
    error: String,
}

/// `POST /v1/probe`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Asked {
    asked: usize,
}

/// The OpenAPI document of this API, generated from the handlers and types above.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "blockwatch collector API",
        description = "Queries, status, alerting and metrics of a blockwatch collector."
    ),
    paths(
        events,
        results,
        export,
        status,
        blocks,
        timeline,
        agents,
        networks,
        alert_status,
        maintenance_list,
        maintenance_add,
        maintenance_remove,
        probe,
        backup_start,
        backup_status,
        readyz,
        metrics
    ),
    components(schemas(ErrorBody, StatusAnswer, Asked, BackupState, crate::research::What, crate::research::Format))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
async fn openapi() -> Response {
    use utoipa::OpenApi;
    ([(header::CONTENT_TYPE, "application/json")], ApiDoc::openapi().to_pretty_json().unwrap_or_default())
        .into_response()
}

/// An error as JSON: `{"error": MESSAGE}` with its status.
pub(crate) fn json_error(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({"error": message}).to_string() + "\n")
        .into_response()
}

/// A route that takes no query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct NetworkQuery {
    by: Option<String>,
    target: Option<String>,
    region: Option<String>,
    asn: Option<u32>,
    country: Option<String>,
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    control: bool,
}

impl NetworkQuery {
    fn into_filter(self) -> Result<(crate::networks::Filter, Vec<crate::networks::By>), String> {
        use crate::networks::{By, Filter};
        let by = By::parse_list(self.by.as_deref().unwrap_or("region,asn"))?;
        let time = |key: &str, v: Option<String>| match v {
            None => Ok(None),
            Some(v) => blockwatch_proto::time::parse_rfc3339(&v)
                .map(Some)
                .ok_or_else(|| format!("{key}={v}: not an RFC 3339 time (2026-01-31T12:00:00Z)")),
        };
        let from = time("from", self.from)?;
        let to = time("to", self.to)?;
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err("from: must be before to".into());
        }
        Ok((
            Filter {
                target: self.target,
                region: self.region,
                asn: self.asn,
                country: self.country.map(|c| c.to_ascii_uppercase()),
                from,
                to,
                control: self.control,
            },
            by,
        ))
    }
}

/// `GET /v1/networks`: results summed by egress network (a scan of the store, so it takes
/// an export's slot).
#[utoipa::path(get, path = "/v1/networks", tag = "results", params(NetworkQuery),
    responses((status = 200, description = "results summed by egress network, JSON lines", content_type = "application/x-ndjson", body = String), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn networks(
    State(api): State<Api>,
    query: Result<Query<NetworkQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (filter, by) = match parsed(query).and_then(NetworkQuery::into_filter) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let Ok(permit) = Arc::clone(&api.exports).try_acquire_owned() else {
        return busy(format!("{MAX_EXPORTS} result scans are running; retry shortly"));
    };
    let store = api.store.clone();
    let groups = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        crate::networks::summarise(&store, &filter, &by)
    })
    .await;
    match groups {
        Ok(Ok(groups)) => {
            let mut body = String::new();
            for g in groups {
                body.push_str(&serde_json::to_string(&g).unwrap_or_default());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("query failed: {e}\n")).into_response(),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct AgentView {
    region: String,
    /// A Report stream is open now.
    connected: bool,
    /// Nothing heard (result or heartbeat) for three heartbeat intervals.
    silent: bool,
    /// It said goodbye (stopped cleanly) and has not registered since.
    stopped: bool,
    version: String,
    last_seen: String,
    spooled: u64,
    dropped_total: u64,
    refused_total: u64,
    /// The certificate it registered with (mutual TLS): serial, expiry, and whether it is
    /// within 30 days of it (time to issue a new one).
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertView>,
    /// The egress network its latest result named.
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<EgressView>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct EgressView {
    address: String,
    #[serde(skip_serializing_if = "is_zero")]
    asn: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    as_org: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    country: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, utoipa::ToSchema)]
struct CertView {
    serial: String,
    expires: String,
    expires_soon: bool,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AgentQuery {
    after: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(AgentQuery),
    responses((status = 200, description = "agents by id, a page at a time", body = BTreeMap<String, AgentView>), (status = 400, body = ErrorBody)))]
async fn agents(
    State(api): State<Api>,
    query: Result<Query<AgentQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match parsed(query) {
        Ok(q) => q,
        Err(why) => return bad_request(why),
    };
    let limit = q.limit.unwrap_or(DEFAULT_AGENTS);
    if limit == 0 || limit > MAX_AGENTS {
        return bad_request(format!("limit={limit}: must be 1..={MAX_AGENTS}"));
    }
    let connected = api.ingest.streams().connected();
    let now = blockwatch_proto::time::now();
    let mut all: Vec<_> = api.ingest.agents().into_iter().collect();
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let start = q.after.as_deref().map_or(0, |after| all.partition_point(|(id, _)| id.as_str() <= after));
    let view: BTreeMap<String, AgentView> = all
        .into_iter()
        .skip(start)
        .take(limit)
        .map(|(id, a)| {
            (
                id.clone(),
                AgentView {
                    connected: connected.contains(&id),
                    silent: api.ingest.is_silent(&a, now),
                    stopped: a.stopped,
                    region: a.region,
                    version: a.version,
                    last_seen: blockwatch_proto::time::format_rfc3339(a.last_seen),
                    spooled: a.spooled,
                    dropped_total: a.dropped_total,
                    refused_total: a.refused_total,
                    certificate: a.cert.as_ref().map(|c| CertView {
                        serial: c.serial.clone(),
                        expires: blockwatch_proto::time::format_rfc3339(c.not_after.saturating_mul(1000)),
                        expires_soon: crate::ingest::expires_soon(c, now),
                    }),
                    egress: a.egress.map(|(address, asn, as_org, country)| EgressView {
                        address,
                        asn,
                        as_org,
                        country,
                    }),
                },
            )
        })
        .collect();
    let body = serde_json::to_string_pretty(&view).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}
