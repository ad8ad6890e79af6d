//! The network an egress address belongs to — its autonomous system (number and
//! organisation) and country — from MaxMind-format `.mmdb` files (GeoLite2 ASN / Country /
//! City, DB-IP lite, IPinfo lite all ship that format).
//!
//! The files are read at each look-up (hourly, when the egress address is refreshed) and
//! dropped after, so the agent holds none of their megabytes between look-ups and a file
//! replaced by a weekly update is used without a restart.
//!
//! Each file is read in the layouts the common databases use; the first file that names a
//! field gives it:
//! - ASN: `autonomous_system_number` / `autonomous_system_organization` (GeoLite2-ASN,
//!   DB-IP ASN lite, GeoIP2-ISP); or `asn` (`"AS64500"`) / `as_name` (IPinfo lite).
//! - Country: `country.iso_code`, else `registered_country.iso_code` (GeoLite2-Country and
//!   -City, DB-IP country lite); or `country_code` (IPinfo lite).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader};
use serde::Deserialize;

use blockwatch_proto::bounds::{FIELD_BYTES, cap};

/// What the databases say of one address; empty fields are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// Autonomous system number; 0 when unknown.
    pub asn: u32,
    /// The AS organisation's name (`Hetzner Online GmbH`), at most `FIELD_BYTES`.
    pub as_org: String,
    /// ISO 3166-1 alpha-2 country code, upper case (`DE`).
    pub country: String,
}

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("geoip_db {path}: {source}")]
    Open { path: PathBuf, source: maxminddb::MaxMindDbError },
    #[error("geoip_db {path}: looking up {ip}: {source}")]
    Lookup { path: PathBuf, ip: IpAddr, source: maxminddb::MaxMindDbError },
    #[error("geoip_db {path}: has neither ASN nor country data (database type {kind:?})")]
    NoFields { path: PathBuf, kind: String },
}

/// The `.mmdb` files to consult, in order.
#[derive(Debug, Clone, Default)]
pub struct GeoIp {
    paths: Vec<PathBuf>,
}

impl GeoIp {
    pub fn new(paths: Vec<PathBuf>) -> GeoIp {
        GeoIp { paths }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Opens every file once and checks it is a MaxMind DB: what `check-config` runs.
    pub fn check(&self) -> Vec<GeoIpError> {
        self.paths.iter().filter_map(|p| open(p).err()).collect()
    }

    /// The network of `ip` from every file (the first naming a field gives it). A file that
    /// cannot be read is an error; an address none of them knows is an empty `Network`.
    pub fn network(&self, ip: IpAddr) -> Result<Network, GeoIpError> {
        let mut net = Network::default();
        for path in &self.paths {
            let reader = open(path)?;
            fill(&reader, ip, &mut net).map_err(|source| GeoIpError::Lookup { path: path.clone(), ip, source })?;
        }
        Ok(net)
    }
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoIpError> {
    let reader = Reader::open_readfile(path).map_err(|source| GeoIpError::Open { path: path.to_owned(), source })?;
    let kind = &reader.metadata().database_type;
    // A City or Enterprise database carries the country too; anything whose type names none
    // of these may still use one of the layouts, so only refuse the plainly unrelated.
    if ["Anonymous-IP", "Connection-Type", "Domain"].iter().any(|t| kind.ends_with(t)) {
        return Err(GeoIpError::NoFields { path: path.to_owned(), kind: kind.clone() });
    }
    Ok(reader)
}

/// Fills the fields of `net` still unknown from `reader`'s record for `ip`.
fn fill(reader: &Reader<Vec<u8>>, ip: IpAddr, net: &mut Network) -> Result<(), maxminddb::MaxMindDbError> {
    let found = match reader.lookup(ip) {
        Ok(found) => found,
        // An IPv6 address in an IPv4-only database: simply not in it.
        Err(maxminddb::MaxMindDbError::InvalidInput { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !found.has_data() {
        return Ok(());
    }
    // A key holding another type than the layout expects (IPinfo's `country` is a name, not
    // a map) is not this layout: read as absent.
    let get = |path: &[PathElement<'_>]| -> Option<Field> { found.decode_path(path).ok().flatten() };
    if net.asn == 0 {
        net.asn = match get(&[PathElement::Key("autonomous_system_number")]) {
            Some(Field::Number(n)) => u32::try_from(n).unwrap_or(0),
            _ => match get(&[PathElement::Key("asn")]) {
                Some(Field::Text(t)) => parse_asn(&t),
                Some(Field::Number(n)) => u32::try_from(n).unwrap_or(0),
                _ => 0,
            },
        };
    }
    if net.as_org.is_empty() {
        let org =
            get(&[PathElement::Key("autonomous_system_organization")]).or_else(|| get(&[PathElement::Key("as_name")]));
        if let Some(Field::Text(mut org)) = org {
            org.retain(|c| !c.is_control());
            cap(&mut org, FIELD_BYTES);
            net.as_org = org;
        }
    }
    if net.country.is_empty() {
        let code = [
            &[PathElement::Key("country"), PathElement::Key("iso_code")][..],
            &[PathElement::Key("registered_country"), PathElement::Key("iso_code")],
            &[PathElement::Key("country_code")],
        ]
        .into_iter()
        .find_map(|p| match get(p) {
            Some(Field::Text(t)) => country_code(&t),
            _ => None,
        });
        net.country = code.unwrap_or_default();
    }
    Ok(())
}

/// A value read where either a number or a text may be.
#[derive(Deserialize)]
#[serde(untagged)]
enum Field {
    Number(u64),
    Text(String),
}

/// `AS64500` or `64500` → 64500; anything else → 0 (unknown).
fn parse_asn(t: &str) -> u32 {
    let digits = t.strip_prefix("AS").or_else(|| t.strip_prefix("as")).unwrap_or(t);
    digits.parse().unwrap_or(0)
}

/// Two ASCII letters, upper-cased; anything else is no country code.
fn country_code(t: &str) -> Option<String> {
    (t.len() == 2 && t.bytes().all(|b| b.is_ascii_alphabetic())).then(|| t.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asns_and_country_codes_are_read_strictly() {
        assert_eq!(parse_asn("AS64500"), 64500);
        assert_eq!(parse_asn("64501"), 64501);
        for bad in ["", "AS", "ASx", "AS-1", "AS99999999999", "AS 1"] {
            assert_eq!(parse_asn(bad), 0, "{bad:?}");
        }
        assert_eq!(country_code("de").as_deref(), Some("DE"));
        for bad in ["", "D", "DEU", "D1", "É"] {
            assert_eq!(country_code(bad), None, "{bad:?}");
        }
    }
}
