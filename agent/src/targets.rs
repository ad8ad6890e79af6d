//! Glue between a planned target and the catalogue: which provider entry a target probes
//! with, including a per-target override of what "reachable" means.

use std::sync::Arc;

use crate::probe::{Catalogue, Provider};

/// The provider entry for a target: the named one, else the one owning the URL's host, else
/// `generic`; with `expect_status` (when given) replacing the reachable statuses.
pub fn provider_for(catalogue: &Catalogue, provider: &str, url: &str, expect_status: &[u16]) -> Arc<Provider> {
    let base = if provider.is_empty() {
        catalogue.for_host(&host_of(url))
    } else {
        catalogue.get(provider).unwrap_or_else(|| catalogue.for_host(&host_of(url)))
    };
    if expect_status.is_empty() {
        return base;
    }
    let mut cfg = base.config().clone();
    cfg.reachable = expect_status.to_vec();
    Provider::new(cfg).map(Arc::new).unwrap_or(base)
}

/// The host of an `https://host[:port]/path` or `tcp://host:port` URL (brackets kept off
/// IPv6 literals); empty for a URL that is not a probe URL (no provider owns it; the URL
/// itself is refused where it was configured).
pub fn host_of(url: &str) -> String {
    blockwatch_proto::url::probe(url).map(|u| u.host).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://api.openai.com/v1/models"), "api.openai.com");
        assert_eq!(host_of("https://127.0.0.1:8443/v1/models"), "127.0.0.1");
        assert_eq!(host_of("https://[::1]:8443/x"), "::1");
        assert_eq!(host_of("tcp://collector:7400"), "collector");
        assert_eq!(host_of("https://a:b:c/"), "");
    }

    #[test]
    fn named_provider_and_override() {
        let c = Catalogue::builtin();
        let p = provider_for(&c, "", "https://api.openai.com/v1/models", &[]);
        assert_eq!(p.id(), "openai");
        let p = provider_for(&c, "openai", "https://127.0.0.1:1/v1/models", &[200]);
        assert_eq!(p.id(), "openai");
        assert_eq!(p.config().reachable, vec![200]);
    }
}
