//! An ingest front end's API answers the fleet-wide questions (events, blocks, results,
//! exports, status: what the dashboard asks) by forwarding them to the detector that holds the
//! lease, whose store has every result. Its own agents, probes, backups, health and metrics it
//! answers itself. The request goes on with its credentials (front ends and detectors share a
//! tokens file), marked as forwarded so a misrouted one is refused instead of looping.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::Response;
use tokio::sync::watch;

use crate::api::json_error;

/// The fleet-wide routes (and those under them).
const FORWARDED: &[&str] = &[
    "/v1/events",
    "/v1/results",
    "/v1/networks",
    "/v1/alerts",
    "/v1/maintenance",
    "/v1/timeline",
    "/v1/export",
    "/v1/status",
    "/v1/blocks",
];
/// Marks a request a front end forwarded.
const MARK: &str = "x-blockwatch-forwarded";
/// Largest request body forwarded (maintenance windows are small).
const MAX_BODY: usize = 1 << 20;
/// Headers that go on, each way.
const REQUEST_HEADERS: &[HeaderName] = &[header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE];
const RESPONSE_HEADERS: &[HeaderName] =
    &[header::CONTENT_TYPE, header::CONTENT_DISPOSITION, header::CACHE_CONTROL, header::RETRY_AFTER];

/// Where fleet-wide requests go: the API of the detector holding the lease, when one does.
pub struct Upstream {
    pub holder: watch::Receiver<Option<String>>,
    client: reqwest::Client,
}

impl Upstream {
    /// `roots` are the certificates a detector's HTTPS API may chain to.
    pub fn new(holder: watch::Receiver<Option<String>>, roots: rustls::RootCertStore) -> Result<Upstream, String> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("blockwatch-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Upstream { holder, client })
    }
}

/// Middleware: a fleet-wide request goes to the lease holder's API; the rest is served here.
pub async fn forward(
    axum::extract::State(up): axum::extract::State<Arc<Upstream>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let fleet_wide = FORWARDED.iter().any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
    if !fleet_wide {
        return next.run(req).await;
    }
    if req.headers().contains_key(MARK) {
        return json_error(
            StatusCode::LOOP_DETECTED,
            "forwarded to a collector that forwards it again: a detector's advertised API reaches an ingest front end"
                .into(),
        );
    }
    let Some(base) = up.holder.borrow().clone() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no detector holds the lease: the fleet-wide view is served by the detector, and none is running".into(),
        );
    };
    let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
    let url = format!("{}{target}", base.trim_end_matches('/'));
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("request bodies are at most {MAX_BODY} bytes"));
    };
    let mut request = up.client.request(parts.method, &url).header(MARK, "1").body(body);
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(name) {
            request = request.header(name, v);
        }
    }
    let mut answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                format!("the detector's API at {base}: {}", blockwatch_proto::error::chain(&e)),
            );
        }
    };
    let mut out = Response::builder().status(answer.status());
    for name in RESPONSE_HEADERS {
        if let Some(v) = answer.headers().get(name) {
            out = out.header(name, v);
        }
    }
    // Streamed as it comes (an export may be large).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        loop {
            let next = match answer.chunk().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => return,
                Err(e) => Err(std::io::Error::other(e)),
            };
            let failed = next.is_err();
            if tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    out.body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|e| json_error(StatusCode::BAD_GATEWAY, e.to_string()))
}
