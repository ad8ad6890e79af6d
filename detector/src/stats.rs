//! What a result says about a block, and the log-likelihood ratios the change-point
//! statistics add up.

use blockwatch_proto::Outcome;

use super::config::DetectorConfig;

/// How a result counts as evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub(crate) enum Class {
    /// The target was reachable as expected.
    Ok = 0,
    /// A network failure (DNS, TCP, TLS): weak evidence, also what outages and dying
    /// vantages produce.
    Net = 1,
    /// The provider refused the caller's location: strong evidence.
    Geo = 2,
    /// Says nothing about the target: the agent's own errors.
    Neutral = 3,
    /// The provider answered but was unhappy (rate limit, overload, server error): never
    /// evidence of a block, and a failure run full of these is the provider's trouble.
    Busy = 4,
    /// An answer only interference gives: a DNS answer forged to a bogon address or a false
    /// NXDOMAIN for the provider's name, a certificate that does not verify for its host.
    /// Strong evidence like a geo refusal, but a network-level one: a vantage whose own
    /// network forges everything (a captive portal) is still a vantage problem.
    Forged = 5,
}

impl Class {
    pub(crate) fn of(o: Outcome) -> Class {
        if o == Outcome::Ok {
            Class::Ok
        } else if o.is_provider_noise() {
            Class::Busy
        } else if o.is_geo_signature() {
            Class::Geo
        } else if matches!(o, Outcome::AgentError | Outcome::Unspecified) {
            Class::Neutral
        } else if matches!(o, Outcome::DnsBogon | Outcome::DnsNxdomain | Outcome::TlsCertInvalid) {
            Class::Forged
        } else {
            Class::Net
        }
    }

    pub(crate) fn is_failure(self) -> bool {
        matches!(self, Class::Net | Class::Geo | Class::Forged)
    }
}

/// The family of a failure, as the truth labels name block signatures.
pub(crate) fn signature(o: Outcome) -> &'static str {
    match o {
        Outcome::HttpGeoBlocked | Outcome::HttpEdgeBlocked => "geo",
        Outcome::DnsBogon | Outcome::DnsNxdomain | Outcome::DnsNoAnswer | Outcome::TlsCertInvalid => "dns",
        Outcome::TcpReset
        | Outcome::TcpRefused
        | Outcome::TlsReset
        | Outcome::TlsAlert
        | Outcome::TlsEof
        | Outcome::HttpReset => "rst",
        Outcome::TcpTimeout | Outcome::TcpUnreachable | Outcome::TlsTimeout | Outcome::HttpTimeout => "blackhole",
        Outcome::DnsTimeout | Outcome::DnsServfail => "dns_timeout",
        _ => "other",
    }
}

/// Per-result log-likelihood ratios for one agent's current baseline.
///
/// `fail`/`ok`/`geo` weigh "blocked" (failure rate `p1`) against "as usual" (the agent's
/// baseline `p0`); the `rec_*` values weigh the reverse, for the end of a block.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Llr {
    pub fail: f64,
    pub ok: f64,
    pub geo: f64,
    pub rec_ok: f64,
    pub rec_fail: f64,
    pub rec_geo: f64,
    /// The baseline these were computed from.
    pub p0: f64,
    /// The failure rate "blocked" stands for.
    pub p1: f64,
    /// The geo baseline these were computed from.
    pub p_geo: f64,
}

impl Llr {
    pub(crate) fn new(p0: f64, p1: f64, p_geo: f64) -> Llr {
        let p1 = p1.clamp(0.05, 0.99);
        Llr {
            fail: (p1 / p0).ln(),
            ok: ((1.0 - p1) / (1.0 - p0)).ln(),
            geo: (p1 / p_geo).ln(),
            rec_ok: ((1.0 - p0) / (1.0 - p1)).ln(),
            rec_fail: (p0 / p1).ln(),
            rec_geo: (p_geo / p1).ln(),
            p0,
            p1,
            p_geo,
        }
    }

    /// The same baseline against another failure rate (one measured in a run).
    pub(crate) fn with_p1(&self, p1: f64) -> Llr {
        Llr::new(self.p0, p1, self.p_geo)
    }

    /// Evidence of a block in one result.
    pub(crate) fn onset(&self, c: Class) -> f64 {
        match c {
            Class::Ok => self.ok,
            Class::Net => self.fail,
            Class::Geo | Class::Forged => self.geo,
            Class::Neutral | Class::Busy => 0.0,
        }
    }

    /// Evidence of recovery in one result.
    pub(crate) fn recovery(&self, c: Class) -> f64 {
        match c {
            Class::Ok => self.rec_ok,
            Class::Net => self.rec_fail,
            Class::Geo | Class::Forged => self.rec_geo,
            Class::Neutral | Class::Busy => 0.0,
        }
    }
}

/// An agent's learned rate of non-geo failures: exponentially decayed counts plus a prior,
/// so a new agent starts at the prior and a flaky one earns a higher baseline (and so needs
/// more failures before they mean anything).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Baseline {
    fails: f64,
    total: f64,
    decay: f64,
    prior: f64,
    prior_weight: f64,
    min: f64,
    max: f64,
    p1: f64,
    p_geo: f64,
    since_refresh: u32,
    llr: Llr,
}

/// Results between recomputations of the ratios (two logarithms each).
const REFRESH_EVERY: u32 = 16;

impl Baseline {
    pub(crate) fn new(cfg: &DetectorConfig) -> Baseline {
        let half_life = cfg.baseline_half_life.max(1.0);
        let p0 = cfg.baseline_prior.clamp(cfg.baseline_min, cfg.baseline_max);
        Baseline {
            fails: 0.0,
            total: 0.0,
            decay: 0.5f64.powf(1.0 / half_life),
            prior: p0,
            prior_weight: cfg.baseline_prior_weight.max(0.0),
            min: cfg.baseline_min,
            max: cfg.baseline_max,
            p1: cfg.block_fail_rate,
            p_geo: cfg.geo_baseline.max(1e-9),
            since_refresh: 0,
            llr: Llr::new(p0, cfg.block_fail_rate, cfg.geo_baseline.max(1e-9)),
        }
    }

    /// Learns from one result of a lane that is not in a failure episode.
    pub(crate) fn learn(&mut self, failed: bool) {
        self.fails = self.fails * self.decay + f64::from(u8::from(failed));
        self.total = self.total * self.decay + 1.0;
        self.since_refresh += 1;
        if self.since_refresh >= REFRESH_EVERY {
            self.since_refresh = 0;
            self.llr = Llr::new(self.rate(), self.p1, self.p_geo);
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        let r = (self.fails + self.prior * self.prior_weight) / (self.total + self.prior_weight);
        r.clamp(self.min, self.max)
    }

    pub(crate) fn llr(&self) -> &Llr {
        &self.llr
    }
}
