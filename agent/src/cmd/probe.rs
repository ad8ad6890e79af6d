//! `blockwatch-agent probe URL`: one probe, every phase printed, for debugging by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use blockwatch_proto::Outcome;
use blockwatch_proto::outcome::Phase;
use blockwatch_proto::trace::TraceRecord;
use blockwatch_proto::v1::ProbeResult;
use serde::{Deserialize, Serialize};

use crate::probe::{Catalogue, Credential, Engine, EngineConfig, ProbeSpec, ProviderConfig};

/// `blockwatch-agent probe` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `https://host[:port]/path`, or `tcp://host:port` for a connect-only probe.
    pub url: String,
    /// Catalogue provider (default: by host, else generic).
    #[arg(long, default_value = "")]
    pub provider: String,
    /// DNS server `ip[:port]` (default: the system resolver).
    #[arg(long)]
    pub resolver: Option<String>,
    /// Extra CA certificate file (PEM).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Probe timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Local address to connect from.
    #[arg(long)]
    pub source: Option<std::net::IpAddr>,
    /// Private and loopback DNS answers are expected (not forged).
    #[arg(long)]
    pub local: bool,
    /// TOML file of `[[provider]]` tables added to the built-in catalogue (same id replaces).
    #[arg(long)]
    pub catalogue: Option<PathBuf>,
    /// Environment variable holding an API key to send (only to the provider's own hosts).
    #[arg(long)]
    pub credential_env: Option<String>,
    /// Agent id in the result (default: `BLOCKWATCH_AGENT_ID`, else `probe`).
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Region in the result (default: `BLOCKWATCH_REGION`, else `local`).
    #[arg(long)]
    pub region: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A `--catalogue` file: `[[provider]]` tables, as in the agent config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    #[serde(default, rename = "provider")]
    providers: Vec<ProviderConfig>,
}

fn catalogue(file: Option<&Path>) -> anyhow::Result<Catalogue> {
    let mut catalogue = Catalogue::builtin();
    if let Some(path) = file {
        let what = || format!("--catalogue {}", path.display());
        let text = std::fs::read_to_string(path).with_context(what)?;
        let parsed: CatalogueFile = toml::from_str(&text).with_context(what)?;
        catalogue.extend(parsed.providers).with_context(what)?;
    }
    Ok(catalogue)
}

/// `--flag`, else the environment variable the agent config also reads, else `default`.
fn label(flag: Option<String>, env: &str, default: &str) -> String {
    flag.or_else(|| std::env::var(env).ok()).unwrap_or_else(|| default.to_string())
}

/// One probe, printed; exit code 0 when the outcome is `ok`, 1 otherwise.
pub fn run(args: Args) -> anyhow::Result<u8> {
    crate::probe::check_url(&args.url).map_err(|e| anyhow::anyhow!("url {:?}: {e}", args.url))?;
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
    let credential = match &args.credential_env {
        Some(var) => Some(Credential::from_env(var).with_context(|| format!("--credential-env {var}"))?),
        None => None,
    };
    let catalogue = catalogue(args.catalogue.as_deref())?;
    if !args.provider.is_empty() {
        catalogue.named(&args.provider).map_err(|why| anyhow::anyhow!("--provider: {why}"))?;
    }
    let provider = crate::targets::provider_for(&catalogue, &args.provider, &args.url, &[]);
    let agent_id = label(args.agent_id, "BLOCKWATCH_AGENT_ID", "probe");
    let region = label(args.region, "BLOCKWATCH_REGION", "local");
    let result = blockwatch_proto::process::runtime(Some(2))?.block_on(async {
        let engine = Engine::new(EngineConfig {
            nameservers,
            extra_ca_pem,
            poison: Vec::new(),
            body_cap: crate::BODY_CAP,
            catalogue: std::sync::Arc::new(catalogue.clone()),
        })?;
        let spec = ProbeSpec {
            url: args.url.clone(),
            provider: provider.clone(),
            timeout: args.timeout,
            source_address: args.source,
            allow_private: args.local,
            credential,
        };
        let started_at = blockwatch_proto::time::now();
        let report = engine.probe(&spec).await;
        let mut r = ProbeResult {
            probe_id: format!("{agent_id}/probe/{started_at}"),
            agent_id,
            region,
            target_id: args.url.clone(),
            started_at: Some(blockwatch_proto::time::to_timestamp(started_at)),
            provider: provider.id().to_string(),
            ..Default::default()
        };
        report.fill(&mut r);
        anyhow::Ok(r)
    })?;
    if args.json {
        println!("{}", json(&result)?);
    } else {
        print_text(&result);
    }
    Ok(if result.outcome() == Outcome::Ok { 0 } else { 1 })
}

/// What `--json` prints: the trace record (format fields first), then `failure` when the
/// record left it out for being empty (so scripts need not tell "no failure" from "field
/// missing"), and whether a key was sent. Phases that ran have their `*_ms` (at least
/// 0.001); phases that did not run are left out.
#[derive(Serialize)]
struct JsonOutput<'a> {
    #[serde(flatten)]
    record: TraceRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a str>,
    keyed: bool,
}

fn json(r: &ProbeResult) -> anyhow::Result<String> {
    let record = TraceRecord::from_result(r, None);
    let failure = record.failure.is_empty().then_some("");
    Ok(serde_json::to_string(&JsonOutput { record, failure, keyed: r.keyed })?)
}

/// Where a probe stopped, for the text output; `None` when it went all the way.
fn phase_name(phase: Phase) -> Option<&'static str> {
    match phase {
        Phase::Dns => Some("dns"),
        Phase::Tcp => Some("connect"),
        Phase::Tls => Some("tls"),
        Phase::Http => Some("http"),
        Phase::Agent => Some("the agent"),
        Phase::Done => None,
    }
}

fn print_text(r: &ProbeResult) {
    let d = r.durations.unwrap_or_default();
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    // A phase that ran is timed at 1 µs or more; 0 means it did not run.
    let phase = |us: u64| if us == 0 { "-".to_string() } else { ms(us) };
    println!("target      {}", r.target_id);
    println!("provider    {}{}", r.provider, if r.keyed { " (keyed)" } else { "" });
    if !r.resolved_addresses.is_empty() {
        println!("resolved    {}", r.resolved_addresses.join(", "));
    }
    println!("dns         {}", phase(d.dns_us));
    if r.peer_address.is_empty() {
        println!("connect     {}", phase(d.connect_us));
    } else if r.local_address.is_empty() {
        println!("connect     {}  -> {} (not connected)", phase(d.connect_us), r.peer_address);
    } else {
        println!("connect     {}  {} -> {}", phase(d.connect_us), r.local_address, r.peer_address);
    }
    println!("tls         {}", phase(d.tls_us));
    if d.http_ttfb_us == 0 {
        println!("http        {}", phase(d.http_us));
    } else {
        println!("http        ttfb {}, total {}", ms(d.http_ttfb_us), ms(d.http_us));
    }
    println!("total       {}", ms(d.total_us));
    if r.http_status != 0 {
        println!("status      {}", r.http_status);
    }
    for (k, v) in &r.edge_headers {
        println!("header      {k}: {v}");
    }
    let outcome = r.outcome();
    match phase_name(outcome.phase()) {
        Some(p) => println!("outcome     {} (failed in {p})", outcome.name()),
        None => println!("outcome     {}", outcome.name()),
    }
    if !r.failure.is_empty() {
        println!("failure     {} (operation {})", r.failure, r.failed_operation);
    }
    if !r.provider_code.is_empty() {
        println!("code        {}", r.provider_code);
    }
    if !r.detail.is_empty() {
        println!("detail      {}", r.detail);
    }
}
