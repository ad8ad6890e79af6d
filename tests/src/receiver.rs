//! A notification receiver on loopback: plain HTTP/1.1, records every request (headers and
//! body) and answers with the statuses it is told, or not at all.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    got: Vec<Received>,
    /// Statuses for the next requests, in order; then `default`.
    next: VecDeque<u16>,
    default: u16,
    /// Never answer (hold the connection open).
    hang: bool,
}

/// A running receiver (its thread ends with the test process).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listens on 127.0.0.1, answering 200 unless told otherwise.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(Mutex::new(State { default: 200, ..Default::default() }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(conn, state));
            }
        });
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these statuses.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().next.extend(statuses);
    }

    /// Every later request gets `status`.
    pub fn answer_always(&self, status: u16) {
        let mut s = self.state.lock().unwrap();
        s.next.clear();
        s.default = status;
    }

    /// Holds every later request unanswered.
    pub fn hang(&self) {
        self.state.lock().unwrap().hang = true;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, hang) = {
            let mut s = state.lock().unwrap();
            let status = s.next.pop_front().unwrap_or(s.default);
            let hang = s.hang;
            s.got.push(Received { method, path, headers, body, status, at: Instant::now() });
            (status, hang)
        };
        if hang {
            std::thread::sleep(Duration::from_secs(3600));
            return;
        }
        let reply = format!("HTTP/1.1 {status} Answer\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok");
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
