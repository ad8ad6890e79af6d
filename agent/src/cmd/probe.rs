use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use blockwatch_proto::Outcome;
use blockwatch_proto::trace::TraceRecord;
use blockwatch_proto::v1::ProbeResult;

use crate::probe::{Catalogue, Engine, EngineConfig, ProbeSpec};

pub struct Args {
    pub url: String,
    pub provider: String,
    pub resolver: Option<String>,
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
    pub source: Option<std::net::IpAddr>,
    pub local: bool,
    pub json: bool,
}

/// One probe, printed; exit code 0 when the outcome is `ok`, 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<u8> {
    blockwatch_proto::plan::check_url(&args.url).map_err(|e| anyhow::anyhow!("url {:?}: {e}", args.url))?;
    let nameservers = match &args.resolver {
        Some(r) => vec![
            r.parse()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 53)))
                .with_context(|| format!("--resolver {r:?}: want ip or ip:port"))?,
        ],
        None => Vec::new(),
    };
    let extra_ca_pem = match &args.ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("--ca {}", p.display()))?),
        None => None,
    };
    let catalogue = Catalogue::builtin();
    let provider = crate::targets::provider_for(&catalogue, &args.provider, &args.url, &[]);
    let result = super::runtime()?.block_on(async {
        let engine = Engine::new(EngineConfig {
            nameservers,
            extra_ca_pem,
            poison: Vec::new(),
            body_cap: crate::BODY_CAP,
        })?;
        let spec = ProbeSpec {
            url: args.url.clone(),
            provider: provider.clone(),
            timeout: args.timeout,
            source_address: args.source,
            allow_private: args.local,
            credential: None,
        };
        let started_at = blockwatch_proto::time::now();
        let report = engine.probe(&spec).await;
        let mut r = ProbeResult {
            probe_id: format!("probe/{started_at}"),
            agent_id: "probe".into(),
            target_id: args.url.clone(),
            started_at: Some(blockwatch_proto::time::to_timestamp(started_at)),
            provider: provider.id().to_string(),
            ..Default::default()
        };
        report.fill(&mut r);
        anyhow::Ok(r)
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&TraceRecord::from_result(&result, None))?);
    } else {
        print_text(&result);
    }
    Ok(if result.outcome() == Outcome::Ok { 0 } else { 1 })
}

fn print_text(r: &ProbeResult) {
    let d = r.durations.unwrap_or_default();
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    println!("target      {}", r.target_id);
    println!("provider    {}", r.provider);
    if !r.resolved_addresses.is_empty() {
        println!("resolved    {}", r.resolved_addresses.join(", "));
    }
    println!("dns         {}", ms(d.dns_us));
    println!("connect     {}  {} -> {}", ms(d.connect_us), r.local_address, r.peer_address);
    println!("tls         {}", ms(d.tls_us));
    println!("http        ttfb {}, total {}", ms(d.http_ttfb_us), ms(d.http_us));
    println!("total       {}", ms(d.total_us));
    if r.http_status != 0 {
        println!("status      {}", r.http_status);
    }
    for (k, v) in &r.edge_headers {
        println!("header      {k}: {v}");
    }
    println!("outcome     {}", r.outcome().name());
    if !r.failure.is_empty() {
        println!("failure     {}", r.failure);
    }
    if !r.provider_code.is_empty() {
        println!("provider    code {}", r.provider_code);
    }
    if !r.detail.is_empty() {
        println!("detail      {}", r.detail);
    }
}
