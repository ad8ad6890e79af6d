//! Small MaxMind-format (`.mmdb`) databases written for tests, in the layouts the real
//! ones use (GeoLite2-ASN, GeoLite2-Country, IPinfo lite), IPv4-only or IPv6 with IPv4
//! under `::/96` as the published databases are.

use std::net::IpAddr;
use std::path::Path;

use maxminddb_writer::Database;
use maxminddb_writer::metadata::IpVersion;
use maxminddb_writer::paths::IpAddrWithMask;
use serde::Serialize;

/// GeoLite2-ASN / DB-IP ASN lite record.
#[derive(Serialize)]
pub struct Asn<'a> {
    pub autonomous_system_number: u32,
    pub autonomous_system_organization: &'a str,
}

/// GeoLite2-Country record (`country.iso_code`, `registered_country.iso_code`).
#[derive(Serialize)]
pub struct Country<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<IsoCode<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_country: Option<IsoCode<'a>>,
}

#[derive(Serialize)]
pub struct IsoCode<'a> {
    pub iso_code: &'a str,
}

/// IPinfo lite record: ASN as `"AS64500"`, and `country` a name, not a map.
#[derive(Serialize)]
pub struct IpinfoLite<'a> {
    pub asn: &'a str,
    pub as_name: &'a str,
    pub country: &'a str,
    pub country_code: &'a str,
}

/// Writes a database of `records` (`"192.0.2.0/24"`, record) to `path`.
pub fn write<T: Serialize>(path: &Path, v6: bool, database_type: &str, records: &[(&str, T)]) {
    let mut db = Database::default();
    db.metadata.ip_version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
    db.metadata.database_type = database_type.into();
    db.metadata.binary_format_major_version = 2;
    db.metadata.languages = vec!["en".into()];
    for (net, record) in records {
        let mut net: IpAddrWithMask = net.parse().expect("a network");
        if let (true, IpAddr::V4(v4)) = (v6, net.addr) {
            net = IpAddrWithMask::new(IpAddr::V6(v4.to_ipv6_compatible()), net.mask + 96);
        }
        let data = db.insert_value(record).expect("a record");
        db.insert_node(net, data);
    }
    let file = std::fs::File::create(path).expect("create the database");
    let mut out = db.write_to(std::io::BufWriter::new(file)).expect("write the database");
    std::io::Write::flush(&mut out).expect("write the database");
}
