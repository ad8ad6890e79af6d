//! `GET /v1/networks`: stored results summed by the egress network they left from, so a
//! block keyed on IP ranges (a hosting network refused in a supported country) shows apart
//! from one keyed on countries.

use blockwatch_proto::Outcome;
use blockwatch_proto::time::now;
use blockwatch_proto::v1::ProbeResult;
use blockwatch_tests::session::{Session, plain_client, result};
use blockwatch_tests::*;

fn on(mut r: ProbeResult, asn: u32, org: &str, country: &str) -> ProbeResult {
    r.egress_address = "192.0.2.1".into();
    r.egress_asn = asn;
    r.egress_as_org = org.into();
    r.egress_country = country.into();
    r
}

fn lines(body: &str) -> Vec<serde_json::Value> {
    body.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn results_are_summed_by_egress_network() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProc::start_insecure(dir.path(), None, "");
    let t0 = now() - 60_000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Region us: a data-centre agent refused, a residential one fine, both in US.
        let mut dc = Session::open(plain_client(collector.addr).await, "us-dc", "us").await.unwrap();
        let mut home = Session::open(plain_client(collector.addr).await, "us-home", "us").await.unwrap();
        let mut dcs = Vec::new();
        let mut homes = Vec::new();
        for seq in 1..=6 {
            let at = t0 + seq as i64 * 1000;
            let outcome = if seq <= 4 { Outcome::HttpGeoBlocked } else { Outcome::Ok };
            dcs.push(on(result("us-dc", "us", seq, "openai", at, outcome), 64500, "Hosting Old Name", "US"));
            homes.push(on(result("us-home", "us", seq, "openai", at, Outcome::Ok), 64501, "Home Net", "US"));
        }
        // The organisation renamed: the latest result names it.
        dcs.push(on(result("us-dc", "us", 7, "openai", t0 + 7000, Outcome::HttpGeoBlocked), 64500, "Hosting", "US"));
        let mut control = result("us-dc", "us", 8, "control", t0 + 8000, Outcome::Ok);
        control.control = true;
        dcs.push(on(control, 64500, "Hosting", "US"));
        // An agent without a geoip_db: its network unknown.
        let mut plain = Session::open(plain_client(collector.addr).await, "eu-1", "eu").await.unwrap();
        let eu = vec![result("eu-1", "eu", 1, "openai", t0 + 1000, Outcome::Ok)];
        for (s, batch) in [(&mut dc, dcs), (&mut home, homes), (&mut plain, eu)] {
            let n = batch.len();
            let answer = s.send(batch).await;
            assert_eq!(answer.acked.len(), n, "{}", answer.reason);
        }
    });

    let (status, body) = http_get(collector.api, "/v1/networks");
    assert_eq!(status, 200, "{body}");
    let groups = lines(&body);
    let key = |g: &serde_json::Value| (g["region"].as_str().unwrap().to_string(), g["egress_asn"].as_u64().unwrap());
    let keys: Vec<_> = groups.iter().map(key).collect();
    assert_eq!(keys, [("eu".to_string(), 0), ("us".into(), 64500), ("us".into(), 64501)], "{body}");
    let dc = &groups[1];
    assert_eq!(dc["egress_as_org"], "Hosting");
    assert_eq!(dc["results"], 7, "the control target is not counted: {body}");
    assert_eq!(dc["outcomes"]["http_geo_blocked"], 5);
    assert_eq!(dc["outcomes"]["ok"], 2);
    assert!((dc["ok_ratio"].as_f64().unwrap() - 2.0 / 7.0).abs() < 1e-9);
    assert_eq!(groups[2]["ok_ratio"], 1.0);
    assert!(dc.get("egress_country").is_none(), "not grouped by country: {body}");

    // By country only: the US sums both networks; filters narrow it.
    let (_, body) = http_get(collector.api, "/v1/networks?by=country&region=us&control=true");
    let us = lines(&body);
    assert_eq!(us.len(), 1, "{body}");
    assert_eq!((us[0]["egress_country"].as_str(), us[0]["results"].as_u64()), (Some("US"), Some(14)));
    let (_, body) = http_get(collector.api, "/v1/networks?by=target,asn&asn=64501");
    assert_eq!(lines(&body).len(), 1, "{body}");
    assert_eq!(lines(&body)[0]["target"], "openai");
    let from = blockwatch_proto::time::format_rfc3339(t0 + 5000);
    let (_, body) = http_get(collector.api, &format!("/v1/networks?asn=64500&from={from}"));
    assert_eq!(lines(&body)[0]["results"], 3, "started at or after {from}: {body}");

    // Each bad query is named.
    for (query, says) in [
        ("by=region,as", "by=as: unknown key"),
        ("from=yesterday", "from=yesterday: not an RFC 3339 time"),
        ("asn=AS64500", "bad query"),
        ("regoin=us", "bad query"),
    ] {
        let (status, body) = http_get(collector.api, &format!("/v1/networks?{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }

    // The export carries each result's network too.
    let stored = stored(collector.api);
    let r = stored.iter().find(|r| r.agent_id == "us-dc").unwrap();
    assert_eq!((r.egress_asn, r.egress_country.as_str()), (64500, "US"));
}
