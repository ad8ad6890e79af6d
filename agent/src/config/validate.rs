//! Every problem in an agent config that serde cannot see, reported together, each naming
//! its key.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blockwatch_proto::id;

use super::AgentConfig;
use crate::probe::Provider;

impl AgentConfig {
    /// Every problem serde cannot see, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut p = Vec::new();
        let required = |key: &str, env: &str, value: &str, p: &mut Vec<String>| {
            let present = !value.is_empty();
            if !present {
                p.push(format!("{key}: missing (set it in the file or in {env})"));
            }
            present
        };
        if required("agent_id", "BLOCKWATCH_AGENT_ID", &self.agent_id, &mut p)
            && let Err(rule) = id::check(&self.agent_id)
        {
            p.push(format!("agent_id {:?}: {rule}", self.agent_id));
        }
        if required("region", "BLOCKWATCH_REGION", &self.region, &mut p)
            && let Err(rule) = id::check(&self.region)
        {
            p.push(format!("region {:?}: {rule}", self.region));
        }
        let has_collector = required("collector", "BLOCKWATCH_COLLECTOR", &self.collector, &mut p);
        if self.failover.len() > 16 {
            p.push(format!("failover: {} endpoints, at most 16", self.failover.len()));
        }
        let endpoints = has_collector.then_some(&self.collector).into_iter().chain(self.failover.iter().take(16));
        for c in endpoints {
            use blockwatch_proto::url::Scheme;
            match blockwatch_proto::url::endpoint(c) {
                Err(why) => p.push(format!("collector {c:?}: {why}")),
                Ok(u) => match (u.scheme, &self.tls, self.insecure) {
                    (Scheme::Https, Some(_), false) | (Scheme::Http, None, true) => {}
                    (Scheme::Https, _, true) => {
                        p.push(format!("collector {c:?}: insecure = true is for http:// collectors only"))
                    }
                    (Scheme::Https, None, false) => p.push(format!(
                        "collector {c:?}: needs [tls] ca_file, cert_file and key_file (from `blockwatch-collector \
                         ca issue-agent`)"
                    )),
                    (Scheme::Http, Some(_), _) => {
                        p.push(format!("collector {c:?}: [tls] is set, so the collector URL must be https://"))
                    }
                    _ => p.push(format!(
                        "collector {c:?}: plaintext, and the collector could not tell this agent from an impostor: \
                         use https:// with [tls], or set insecure = true on a network you trust"
                    )),
                },
            }
        }
        if self.interval < Duration::from_secs(1) {
            p.push("interval: must be at least 1s".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(120) {
            p.push("timeout: must be 100ms..=120s".into());
        }
        if self.spool_max_mb == 0 {
            p.push("spool_max_mb: must be at least 1".into());
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            p.push("concurrency: must be 1..=1024".into());
        }
        if self.upload_rate == 0 || self.upload_rate > 100_000 {
            p.push(format!("upload_rate = {}: must be 1..=100000 results per second", self.upload_rate));
        }
        if self.confirm.min_delay > self.confirm.max_delay {
            p.push("confirm.min_delay: must not exceed confirm.max_delay".into());
        }
        for ns in &self.nameservers {
            if parse_nameserver(ns).is_none() {
                p.push(format!("nameservers: {ns:?} is not an ip or ip:port"));
            }
        }
        if !self.targets.is_empty() {
            p.extend(blockwatch_proto::plan::problems(&self.local_plan(0)));
        }
        // Without `control` the control target is the collector's, checked above.
        if self.control.is_some()
            && let Err(why) = self.control_url()
        {
            p.push(why);
        }
        if let Some(url) = &self.egress_echo_url
            && let Err(why) = blockwatch_proto::url::target(url)
        {
            p.push(format!("egress_echo_url {url:?}: {why}"));
        }
        if !self.geoip_db.is_empty() {
            if self.egress_echo_url.is_none() {
                p.push("geoip_db: needs egress_echo_url (the address it looks up)".into());
            }
            let dbs = crate::probe::geoip::GeoIp::new(self.geoip_db.clone());
            p.extend(dbs.check().into_iter().map(|e| e.to_string()));
        }
        self.provider_problems(&mut p);
        self.credential_problems(&mut p);
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    fn provider_problems(&self, p: &mut Vec<String>) {
        let mut ids = HashSet::new();
        for (i, c) in self.providers.iter().enumerate() {
            if !ids.insert(c.id.as_str()) {
                p.push(format!("provider[{i}] {:?}: duplicate id", c.id));
            }
            if let Err(e) = Provider::new(c.clone()) {
                p.push(format!("provider[{i}]: {e}"));
            }
        }
    }

    /// Targets' providers (each must be known) and credentials.
    fn credential_problems(&self, p: &mut Vec<String>) {
        // With a broken [[provider]] the hosts a key may go to are unknown; that problem is
        // reported above.
        let catalogue = self.catalogue().ok();
        for t in &self.targets {
            let what = format!("target {:?}", t.id);
            if let Some(catalogue) = &catalogue
                && !t.provider.is_empty()
                && let Err(why) = catalogue.named(&t.provider)
            {
                p.push(format!("{what}: {why}"));
                continue;
            }
            if t.credential_env.is_some() && t.credential_file.is_some() {
                p.push(format!("{what}: credential_env and credential_file exclude each other"));
            }
            if t.credential_env.as_deref().is_some_and(str::is_empty) {
                p.push(format!("{what}: credential_env is empty"));
            }
            let (Some(catalogue), Some(_)) = (&catalogue, t.credential_source()) else { continue };
            // The engine withholds a key from any host its provider does not own; a target
            // that could never use its key is a config mistake, so say so now.
            let provider = crate::targets::provider_for(catalogue, &t.provider, &t.url, &t.expect_status);
            let host = crate::targets::host_of(&t.url);
            if !provider.owns_host(&host) {
                p.push(format!(
                    "{what}: credential would never be sent: {host} is not a host of provider {:?}",
                    provider.id()
                ));
            }
        }
    }
}

/// `ip` or `ip:port` (port 53 when none is given).
pub(super) fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}
