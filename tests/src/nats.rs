//! A NATS JetStream cluster on loopback for the clustered mode's tests and load figure.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::{Proc, free_port, wait_for};

/// One `nats-server` of the cluster, killed when dropped.
pub struct Nats {
    pub proc: Proc,
    pub client: SocketAddr,
}

/// Three `nats-server`s with JetStream, routed to each other as one cluster, their data in
/// `dir`; `None` (printed) when nats-server is not installed.
pub fn cluster(dir: &Path) -> Option<Vec<Nats>> {
    if std::process::Command::new("nats-server").arg("--version").output().is_err() {
        eprintln!("SKIPPED: nats-server is not installed (tests/run.sh installs Debian's)");
        return None;
    }
    let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes = (0..3)
        .map(|i| {
            let others: Vec<String> =
                (0..3).filter(|j| *j != i).map(|j| format!("\"nats-route://127.0.0.1:{}\"", routes[j])).collect();
            let conf = dir.join(format!("nats-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?}, max_memory_store: 64MB, \
                     max_file_store: 1GB }}\ncluster {{ name: blockwatch, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    clients[i],
                    dir.join(format!("nats-{i}")).display().to_string(),
                    routes[i],
                    others.join(", ")
                ),
            )
            .unwrap();
            let proc = Proc::start(
                Path::new("nats-server"),
                &["-c", conf.to_str().unwrap()],
                dir.join(format!("nats-{i}.log")),
            );
            Nats { proc, client: format!("127.0.0.1:{}", clients[i]).parse().unwrap() }
        })
        .collect::<Vec<_>>();
    for n in &nodes {
        wait_for("a NATS node", Duration::from_secs(20), || TcpStream::connect(n.client).ok());
    }
    Some(nodes)
}

/// A collector's `[jetstream]` section for the cluster `nodes` in `role`.
pub fn jetstream(nodes: &[Nats], role: &str) -> String {
    let servers: Vec<String> = nodes.iter().map(|n| format!("\"nats://{}\"", n.client)).collect();
    format!("[jetstream]\nservers = [{}]\nrole = \"{role}\"\n", servers.join(", "))
}
