//! Stored results summed by the network they left from — the agents' egress ASN and country
//! (from their `geoip_db`) — and by region and target: what tells a block keyed on IP
//! ranges (data-centre networks refused in a supported country) from one keyed on countries.

use std::collections::BTreeMap;

use blockwatch_proto::Outcome;
use blockwatch_proto::time::{Millis, format_rfc3339, from_timestamp};
use serde::Serialize;

use crate::store::{Reader, StoreError};

/// What a group is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum By {
    Region,
    Target,
    Asn,
    Country,
}

impl By {
    pub const ALL: [By; 4] = [By::Region, By::Target, By::Asn, By::Country];

    pub fn name(self) -> &'static str {
        match self {
            By::Region => "region",
            By::Target => "target",
            By::Asn => "asn",
            By::Country => "country",
        }
    }

    /// `region,asn` → the keys, or the word that is none.
    pub fn parse_list(s: &str) -> Result<Vec<By>, String> {
        let mut keys = Vec::new();
        for word in s.split(',').map(str::trim) {
            let Some(key) = By::ALL.into_iter().find(|k| k.name() == word) else {
                let known: Vec<&str> = By::ALL.iter().map(|k| k.name()).collect();
                return Err(format!("by={word}: unknown key (any of {})", known.join(", ")));
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// Which results to sum, and how to group them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub target: Option<String>,
    pub region: Option<String>,
    pub asn: Option<u32>,
    pub country: Option<String>,
    /// `started_at` at or after (ms since the epoch).
    pub from: Option<Millis>,
    /// `started_at` before.
    pub to: Option<Millis>,
    /// Also sum the control target's results (off: they say nothing of a provider).
    pub control: bool,
}

/// One group's sums. A key not grouped by is absent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// 0: results whose network is unknown (no `geoip_db`, or an address it does not hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_asn: Option<u32>,
    /// The AS organisation as the latest result of the group names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_as_org: Option<String>,
    /// Empty: unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_country: Option<String>,
    pub results: u64,
    /// Results per outcome (`ok`, `http_geo_blocked`, …).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Share of results that were `ok`.
    pub ok_ratio: f64,
    pub first_started: String,
    pub last_started: String,
}

type Key = (Option<String>, Option<String>, Option<u32>, Option<String>);

#[derive(Default)]
struct Sums {
    results: u64,
    outcomes: BTreeMap<&'static str, u64>,
    first: Millis,
    last: Millis,
    as_org: String,
}

/// Sums every stored result `filter` admits by the keys in `by`, in key order.
pub fn summarise(store: &Reader, filter: &Filter, by: &[By]) -> Result<Vec<Group>, StoreError> {
    let mut groups: BTreeMap<Key, Sums> = BTreeMap::new();
    for stored in store.results() {
        let stored = stored?;
        let Some(r) = stored.result.as_ref() else { continue };
        let started = r.started_at.as_ref().map_or(0, from_timestamp);
        let admitted = (filter.control || !r.control)
            && filter.target.as_deref().is_none_or(|t| t == r.target_id)
            && filter.region.as_deref().is_none_or(|g| g == r.region)
            && filter.asn.is_none_or(|a| a == r.egress_asn)
            && filter.country.as_deref().is_none_or(|c| c == r.egress_country)
            && filter.from.is_none_or(|f| started >= f)
            && filter.to.is_none_or(|t| started < t);
        if !admitted {
            continue;
        }
        let has = |k: By| by.contains(&k);
        let key: Key = (
            has(By::Region).then(|| r.region.clone()),
            has(By::Target).then(|| r.target_id.clone()),
            has(By::Asn).then_some(r.egress_asn),
            has(By::Country).then(|| r.egress_country.clone()),
        );
        let g = groups.entry(key).or_default();
        if g.results == 0 || started < g.first {
            g.first = started;
        }
        if started >= g.last {
            g.last = started;
            if !r.egress_as_org.is_empty() {
                g.as_org.clone_from(&r.egress_as_org);
            }
        }
        g.results += 1;
        *g.outcomes.entry(r.outcome().name()).or_default() += 1;
    }
    Ok(groups
        .into_iter()
        .map(|((region, target, asn, country), s)| {
            let ok = s.outcomes.get(Outcome::Ok.name()).copied().unwrap_or(0);
            Group {
                region,
                target,
                egress_as_org: asn.map(|_| s.as_org),
                egress_asn: asn,
                egress_country: country,
                results: s.results,
                ok_ratio: ok as f64 / s.results as f64,
                outcomes: s.outcomes,
                first_started: format_rfc3339(s.first),
                last_started: format_rfc3339(s.last),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_are_parsed_and_unknown_ones_named() {
        assert_eq!(By::parse_list("region, asn,asn").unwrap(), [By::Region, By::Asn]);
        let e = By::parse_list("region,as").unwrap_err();
        assert!(e.contains("by=as: unknown key (any of region, target, asn, country)"), "{e}");
        assert!(By::parse_list("").is_err());
    }
}
