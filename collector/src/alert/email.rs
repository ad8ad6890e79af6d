//! E-mail over SMTP (lettre): `smtp://host:port` upgrades with STARTTLS and refuses a server
//! that will not (no credentials or message go in the clear), `smtps://host:port` speaks TLS
//! from the start. One plain-text message per notification: the subject says what happened
//! where, the body lists each event with its evidence and a link.

use std::time::Duration;

use lettre::address::Envelope;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Attempt, EventView, Sink, SinkConfig};

/// Most recipients one sink sends to.
pub const MAX_RECIPIENTS: usize = 50;

/// The server, how to reach it, and who the mail is from and to.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    envelope: Envelope,
    timeout: Duration,
}

/// `(implicit TLS, host, port)` of an `smtp://` or `smtps://` URL.
fn server(url: &str) -> Result<(bool, String, u16), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    let wrapped = match u.scheme() {
        "smtp" => false,
        "smtps" => true,
        _ => return Err(format!("url {url:?}: an smtp:// (STARTTLS) or smtps:// URL")),
    };
    let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("url {url:?}: no host"))?;
    if !u.path().trim_matches('/').is_empty() || u.query().is_some() || !u.username().is_empty() {
        return Err(format!("url {url:?}: only smtp[s]://host[:port] (the user goes in `username`)"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((wrapped, host, u.port().unwrap_or(if wrapped { 465 } else { 587 })))
}

/// What is wrong with an e-mail sink's config.
pub fn problems(cfg: &SinkConfig) -> Vec<String> {
    let mut p = Vec::new();
    if let Err(e) = server(&cfg.url) {
        p.push(e);
    }
    match cfg.from.as_deref().map(str::parse::<Mailbox>) {
        None => p.push("from: the sender's address is needed".into()),
        Some(Err(e)) => p.push(format!("from: {e}")),
        Some(Ok(_)) => {}
    }
    if cfg.to.is_empty() || cfg.to.len() > MAX_RECIPIENTS {
        p.push(format!("to: between 1 and {MAX_RECIPIENTS} recipients"));
    }
    for t in &cfg.to {
        if let Err(e) = t.parse::<Mailbox>() {
            p.push(format!("to: {t:?}: {e}"));
        }
    }
    if cfg.username.is_some() != (cfg.secret_env.is_some() || cfg.secret_file.is_some()) {
        p.push("username and a password (secret_env or secret_file) go together".into());
    }
    p
}

impl Mailer {
    pub fn new(cfg: &SinkConfig, password: Option<&str>) -> Result<Mailer, String> {
        let problems = problems(cfg);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let (wrapped, host, port) = server(&cfg.url)?;
        let mut params = TlsParameters::builder(host.clone());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build_rustls().map_err(|e| format!("TLS: {e}"))?;
        let tls = if wrapped { Tls::Wrapper(params) } else { Tls::Required(params) };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(cfg.timeout));
        if let (Some(user), Some(pass)) = (&cfg.username, password) {
            b = b.credentials(Credentials::new(user.clone(), pass.to_string()));
        }
        let parse = |s: &str| s.parse::<Mailbox>().map_err(|e| format!("{s:?}: {e}"));
        let from = parse(cfg.from.as_deref().unwrap_or_default())?;
        let to = cfg.to.iter().map(|t| parse(t)).collect::<Result<Vec<_>, _>>()?;
        let envelope = Envelope::new(Some(from.email.clone()), to.iter().map(|m| m.email.clone()).collect())
            .map_err(|e| e.to_string())?;
        Ok(Mailer { transport: b.build(), from, to, envelope, timeout: cfg.timeout })
    }

    /// One attempt at handing the message to the server.
    pub async fn send(&self, message: &[u8]) -> Attempt {
        // The per-command timeout bounds each step; this bounds the whole exchange.
        let sent = tokio::time::timeout(self.timeout * 4, self.transport.send_raw(&self.envelope, message)).await;
        match sent {
            Err(_) => Attempt::Retry { status: None, error: "the SMTP exchange timed out".into() },
            Ok(Ok(resp)) => Attempt::Delivered(code(&resp.code().to_string()).unwrap_or(250)),
            Ok(Err(e)) => {
                let status = e.status().and_then(|c| code(&c.to_string()));
                let error = blockwatch_proto::error::chain(&e);
                match status {
                    // A login refused (530, 534, 535, 538) is the config's fault, not the
                    // message's: retried until someone fixes it.
                    Some(530 | 534 | 535 | 538) => Attempt::Retry { status, error },
                    // Another 5xx: the server's last word on this message.
                    Some(s) if e.is_permanent() => Attempt::Refused { status: s, error },
                    _ => Attempt::Retry { status, error },
                }
            }
        }
    }
}

fn code(s: &str) -> Option<u16> {
    s.parse().ok()
}

/// The message for a group of events, formatted (RFC 5322), ready to send at each attempt.
pub fn message(sink: &Sink, events: &[EventView]) -> Result<Vec<u8>, String> {
    let super::Transport::Smtp(m) = &sink.transport else { return Err("not an e-mail sink".into()) };
    let first = &events[0];
    let summary = super::group::summary(events);
    let test = if first.raw.get("test").is_some() { "[test] " } else { "" };
    // What the network put in a summary stays out of the headers' structure.
    let subject: String = format!("{test}[blockwatch] {summary}")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let mut body = format!("{summary}\n\n");
    for e in events {
        body.push_str(&format!("{} in {}\n", e.kind, if e.region.is_empty() { "-" } else { &e.region }));
        body.push_str(&format!("  {}\n", e.summary));
        body.push_str(&format!("  since {}, detected {}\n", e.onset, e.detected_at));
        if let Some(ev) = e.raw.get("evidence").filter(|v| v.is_object()) {
            let get = |k: &str| ev.get(k).filter(|v| !v.is_null()).map(|v| v.to_string().trim_matches('"').to_string());
            for k in ["signature", "dominant_outcome", "http_status", "provider_code", "failing", "ok", "agents"] {
                if let Some(v) = get(k).filter(|v| !v.is_empty() && v != "[]") {
                    body.push_str(&format!("  {k}: {v}\n"));
                }
            }
        }
        body.push_str(&format!("  {}\n\n", sink.link(e)));
    }
    body.push_str(&format!("-- \nblockwatch collector, sink {:?}; notification {}\n", sink.cfg.name, first.seq));
    let mut b = Message::builder().from(m.from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
    for to in &m.to {
        b = b.to(to.clone());
    }
    let msg = b.body(body).map_err(|e| format!("the message: {e}"))?;
    Ok(msg.formatted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_say_how_to_connect() {
        assert_eq!(server("smtp://mail.example.com").unwrap(), (false, "mail.example.com".into(), 587));
        assert_eq!(server("smtps://mail.example.com").unwrap(), (true, "mail.example.com".into(), 465));
        assert_eq!(server("smtp://127.0.0.1:2525").unwrap(), (false, "127.0.0.1".into(), 2525));
        assert_eq!(server("smtp://[::1]:25").unwrap(), (false, "::1".into(), 25));
        for bad in ["http://x", "smtp://", "smtp://u@h", "smtp://h/path", "nonsense"] {
            assert!(server(bad).is_err(), "{bad}");
        }
    }
}
