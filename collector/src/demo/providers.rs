//! The simulated providers' answers, copied from what the real APIs send.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Canned, Handler};

/// OpenAI's keyless answer: the API is reachable.
pub const OPENAI_401: &str = r#"{"error":{"message":"You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).","type":"invalid_request_error","param":null,"code":null}}"#;
/// OpenAI's refusal of the caller's location.
pub const OPENAI_GEO_403: &str = r#"{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}"#;
/// Anthropic's keyless answer.
pub const ANTHROPIC_401: &str =
    r#"{"type":"error","error":{"type":"authentication_error","message":"x-api-key header is required"}}"#;

/// OpenAI, refusing `blocked` source addresses once `blocking` is set.
pub fn openai(blocking: Arc<AtomicBool>, blocked: Vec<IpAddr>) -> Handler {
    Arc::new(move |peer, _req| {
        if blocking.load(Ordering::SeqCst) && blocked.contains(&peer.ip()) {
            Canned::json(403, OPENAI_GEO_403)
        } else {
            Canned::json(401, OPENAI_401)
        }
        .with_header("server", "cloudflare")
    })
}

/// Anthropic, always reachable.
pub fn anthropic() -> Handler {
    Arc::new(|_peer, _req| Canned::json(401, ANTHROPIC_401))
}
