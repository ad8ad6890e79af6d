use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::fleet_ca::{AGENT_DAYS, CA_DAYS, COLLECTOR_DAYS, FleetCa, IssuedCert};

/// `blockwatch-collector ca …`: the fleet CA that agents' certificates come from.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a fleet CA, the collector's server certificate and an empty revocation list.
    Init {
        /// The CA directory (made if absent; refused if it holds a CA already).
        #[arg(long, default_value = "fleet-ca")]
        dir: PathBuf,
        /// A DNS name or IP address agents use to reach the collector (repeat for several).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Lifetime of the CA, days.
        #[arg(long, default_value_t = CA_DAYS)]
        days: u32,
        /// Lifetime of the collector's certificate, days.
        #[arg(long, default_value_t = COLLECTOR_DAYS)]
        collector_days: u32,
    },
    /// Issue an agent certificate: writes agent.crt, agent.key and ca.crt for the agent.
    IssueAgent {
        #[arg(long, default_value = "fleet-ca")]
        dir: PathBuf,
        /// The agent id (its `agent_id`).
        #[arg(long)]
        id: String,
        /// The agent's region (its `region`).
        #[arg(long)]
        region: String,
        /// Lifetime, days.
        #[arg(long, default_value_t = AGENT_DAYS)]
        days: u32,
        /// Where to write the files. Default: DIR/agents/ID.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a new server certificate for the collector (renewal, or new names). The running
    /// collector picks it up for new connections.
    IssueCollector {
        #[arg(long, default_value = "fleet-ca")]
        dir: PathBuf,
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, default_value_t = COLLECTOR_DAYS)]
        days: u32,
    },
    /// Revoke an agent's certificates. A running collector applies it within seconds and closes
    /// the agent's open streams.
    Revoke {
        #[arg(long, default_value = "fleet-ca")]
        dir: PathBuf,
        /// Revoke every unrevoked certificate of this agent.
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        id: Option<String>,
        /// Revoke the certificate with this serial (hex, from `ca list`): after a rotation,
        /// the old one.
        #[arg(long)]
        serial: Option<String>,
    },
    /// List issued agent certificates: id, region, serial, expiry, revocation.
    List {
        #[arg(long, default_value = "fleet-ca")]
        dir: PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, names, days, collector_days } => {
            FleetCa::init(&dir, &names, days, collector_days)?;
            println!("fleet CA created in {}", dir.display());
            println!("collector: [tls] ca_dir = {:?}", dir.display().to_string());
            println!("next: blockwatch-collector ca issue-agent --dir {} --id ID --region REGION", dir.display());
        }
        CaCommand::IssueAgent { dir, id, region, days, out } => {
            let ca = FleetCa::open(&dir)?;
            let out = out.unwrap_or_else(|| dir.join("agents").join(&id));
            let cert = ca.issue_agent(&id, &region, days, &out)?;
            println!(
                "issued agent {} (region {}), serial {}, expires {}",
                cert.agent_id,
                cert.region,
                cert.serial,
                date(cert.not_after)
            );
            print_agent_tls(&out);
        }
        CaCommand::IssueCollector { dir, names, days } => {
            FleetCa::open(&dir)?.issue_collector(&names, days)?;
            println!("collector certificate for {} written to {}", names.join(", "), dir.display());
        }
        CaCommand::Revoke { dir, id, serial } => {
            for c in FleetCa::open(&dir)?.revoke(id.as_deref(), serial.as_deref())? {
                println!("revoked agent {} (region {}), serial {}", c.agent_id, c.region, c.serial);
            }
        }
        CaCommand::List { dir, json } => {
            let certs = FleetCa::open(&dir)?.list()?;
            if json {
                for c in &certs {
                    println!("{}", serde_json::to_string(c)?);
                }
            } else {
                print_table(&certs);
            }
        }
    }
    Ok(())
}

fn print_agent_tls(out: &Path) {
    println!("agent config:");
    println!("  [tls]");
    for (key, file) in [("ca_file", "ca.crt"), ("cert_file", "agent.crt"), ("key_file", "agent.key")] {
        println!("  {key} = {:?}", out.join(file).display().to_string());
    }
}

fn print_table(certs: &[IssuedCert]) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    println!("{:<24} {:<16} {:<32} {:<20} STATE", "AGENT", "REGION", "SERIAL", "EXPIRES");
    for c in certs {
        let state = match c.revoked_at {
            Some(t) => format!("revoked {}", date(t)),
            None if c.not_after < now => "expired".to_string(),
            None if c.not_after - now < crate::ingest::ROTATE_WARNING.as_secs() as i64 => "expires soon: rotate".into(),
            None => "valid".to_string(),
        };
        println!("{:<24} {:<16} {:<32} {:<20} {state}", c.agent_id, c.region, c.serial, date(c.not_after));
    }
}

fn date(unix: i64) -> String {
    blockwatch_proto::time::format_rfc3339(unix.saturating_mul(1000))
}
