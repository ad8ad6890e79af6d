//! A NATS JetStream cluster on loopback for the clustered mode's tests and load figure.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Proc, free_port};

/// One `nats-server` of the cluster, killed when dropped.
pub struct Nats {
    pub proc: Proc,
    pub client: SocketAddr,
    /// Its HTTP monitoring endpoint (`/jsz`).
    pub monitor: SocketAddr,
}

/// Three `nats-server`s with JetStream, routed to each other as one cluster, their data in
/// `dir`; `None` (printed) when nats-server is not installed. Ports come from [`free_port`],
/// so another test may take one before a node binds it: a cluster whose node exits or does
/// not answer is stopped and started again on new ports (three tries).
pub fn cluster(dir: &Path) -> Option<Vec<Nats>> {
    if std::process::Command::new("nats-server").arg("--version").output().is_err() {
        eprintln!("SKIPPED: nats-server is not installed (tests/run.sh installs Debian's)");
        return None;
    }
    for attempt in 1..=3 {
        let mut nodes = start(dir, attempt);
        match nodes.iter_mut().position(|n| !answers(n)) {
            None => return Some(nodes),
            Some(i) => eprintln!(
                "NATS node {i} did not come up (try {attempt} of 3); its log:\n{}",
                std::fs::read_to_string(&nodes[i].proc.log).unwrap_or_default()
            ),
        }
    }
    panic!("the NATS cluster did not come up in three tries");
}

/// Starts the three nodes of try `attempt`, each with its own files.
fn start(dir: &Path, attempt: u32) -> Vec<Nats> {
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let monitors: Vec<u16> = (0..3).map(|_| free_port()).collect();
    (0..3)
        .map(|i| {
            let others: Vec<String> =
                (0..3).filter(|j| *j != i).map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j])).collect();
            let name = if attempt == 1 { format!("nats-{i}") } else { format!("nats-{i}-try{attempt}") };
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: {:?}, max_memory_store: 64MB, \
                     max_file_store: 1GB }}\ncluster {{ name: blockwatch, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    clients[i],
                    monitors[i],
                    dir.join(&name).display().to_string(),
                    routes[i],
                    others.join(", ")
                ),
            )
            .unwrap();
            let proc = Proc::start(Path::new("nats-server"), &["-c", conf.to_str().unwrap()], dir.join(format!("{name}.log")));
            let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            Nats { proc, client: at(clients[i]), monitor: at(monitors[i]) }
        })
        .collect()
}

/// Whether node `n` accepts clients within 20 s (false at once if it exited).
fn answers(n: &mut Nats) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if TcpStream::connect(n.client).is_ok() {
            return true;
        }
        if matches!(n.proc.child.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// How many messages the stream `name` holds, as the node's monitoring endpoint reports it.
pub fn stream_messages(node: &Nats, name: &str) -> Option<u64> {
    let (status, body) = crate::http_get(node.monitor, "/jsz?streams=true");
    let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    v["account_details"]
        .as_array()?
        .iter()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find_map(|s| (s["name"] == name).then(|| s["state"]["messages"].as_u64()).flatten())
}

/// The value under `key` in the cluster's key-value bucket `bucket`, read through `node`;
/// `None` when there is none or the node does not answer within 5 s.
pub fn kv_value(node: &Nats, bucket: &str, key: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = async {
        let client = async_nats::connect(node.client.to_string()).await.ok()?;
        let kv = async_nats::jetstream::new(client).get_key_value(bucket).await.ok()?;
        let v = kv.get(key).await.ok()??;
        String::from_utf8(v.to_vec()).ok()
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten() })
}

/// A collector's `[jetstream]` section for the cluster `nodes` in `role`.
pub fn jetstream(nodes: &[Nats], role: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"nats://{}\"", n.client)).collect();
    format!("[jetstream]\nservers = [{}]\nrole = \"{role}\"\n", servers.join(", "))
}
