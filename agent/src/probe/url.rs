//! Probe URLs: `https://host[:port]/path` for a full probe, `tcp://host:port` for a
//! connect-only one (a control target such as the collector's plaintext gRPC port). Read by
//! the project's one URL parser, `blockwatch_proto::url`, so config and plan checks accept
//! exactly what the engine can probe.

pub(crate) use blockwatch_proto::url::{Scheme, Url as ProbeUrl};

use super::failure::Failure;

/// Checks a probe URL the way the engine reads it; the error says what is wrong.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    blockwatch_proto::url::probe(url).map(|_| ())
}

/// Parses a probe URL; a bad one is the agent's own error (it should have been refused when
/// the config or plan was loaded).
pub(crate) fn parse_url(url: &str) -> Result<ProbeUrl, Failure> {
    blockwatch_proto::url::probe(url).map_err(|why| Failure::agent(format!("bad probe URL {url:?}: {why}")))
}
