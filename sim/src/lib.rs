//! Synthetic labelled traces of every scenario family the detector must tell apart (regional
//! blocks of each kind, outages, dead vantages, flaky agents, rate limits, late arrivals,
//! lifted blocks), with the parameters varied (interval, agents per region, noise, jitter,
//! timing), and a scorer of the detector's events against the labels. Deterministic:
//! everything comes from a seeded splitmix64. The traces are in the project's trace format
//! (`docs/trace-format.md`).

#![allow(clippy::needless_range_loop)]

pub mod score;

use blockwatch_proto::time::format_rfc3339;

/// splitmix64: tiny, fast and good enough for simulation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

/// The scenario families of the samples. [`Family::Fleet`] is not among [`FAMILIES`]: a day of
/// half a million results is a test of its own, not a cell of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    GeoBlock,
    NetBlockRst,
    NetBlockBlackhole,
    NetBlockDns,
    GlobalOutage,
    VantageDown,
    Flaky,
    RatelimitBlips,
    SingleAgentIsp,
    LateArrival,
    LiftAndRollout,
    /// A region loses every provider at once, each its own way (resets, forged DNS, a black
    /// hole), while its agents' control target still answers: one block per target.
    CountryFirewall,
    /// A provider's origin fails (5xx) in every region but one, which gets the provider's
    /// location refusal from the same moment: a block there, an outage elsewhere.
    GeoDuringOutage,
    /// A geo block that begins while an outage hides it everywhere (the blocked region sees
    /// the same 5xx): it can be seen only once the outage ends (`visible`).
    HiddenUnderOutage,
    /// 40-65 % of one target's probes time out in one region for hours: one block.
    Throttling,
    /// The same (target, region) blocked for a stretch three times (nights): three blocks.
    Curfew,
    /// A network block while some agents' clocks are minutes ahead or behind.
    ClockSkew,
    /// A day of a big fleet: 30 regions (half with one agent, half with two), 7 targets and a
    /// control, with everything at once: geo, network and forged blocks, a country firewall,
    /// a throttle, two provider outages (timeouts, 5xx), two dead vantages, rate limits,
    /// blips and two flaky agents. Outages and vantage problems are labelled too.
    Fleet,
}

pub const FAMILIES: &[Family] = &[
    Family::GeoBlock,
    Family::NetBlockRst,
    Family::NetBlockBlackhole,
    Family::NetBlockDns,
    Family::GlobalOutage,
    Family::VantageDown,
    Family::Flaky,
    Family::RatelimitBlips,
    Family::SingleAgentIsp,
    Family::LateArrival,
    Family::LiftAndRollout,
    Family::CountryFirewall,
    Family::GeoDuringOutage,
    Family::HiddenUnderOutage,
    Family::Throttling,
    Family::Curfew,
    Family::ClockSkew,
];

/// The families of fleets in the world as it is (control targets, outages hiding blocks,
/// throttles, curfews, skewed clocks), held to their own goals in the grid: the last six of
/// [`FAMILIES`].
pub const REGIONAL: &[Family] = FAMILIES.split_at(FAMILIES.len() - 6).1;
const _: () = assert!(matches!(REGIONAL, [Family::CountryFirewall, .., Family::ClockSkew]));

/// Knobs of one generated trace.
#[derive(Debug, Clone)]
pub struct Params {
    pub family: Family,
    pub interval_ms: i64,
    pub agents_per_region: usize,
    pub regions: usize,
    pub targets: usize,
    /// Probes per (agent, target) over the whole trace.
    pub probes: usize,
    /// Background failure rate of an ordinary agent.
    pub noise: f64,
    /// Share of re-sent results.
    pub duplicates: f64,
    /// Blip length, in intervals (min, max).
    pub blip_intervals: (f64, f64),
    /// Every agent also probes a control target (id `control`, flagged `control`), which
    /// fails only when the agent's own network does.
    pub controls: bool,
    pub seed: u64,
}

impl Params {
    pub fn new(family: Family, interval_s: i64, agents: usize, seed: u64) -> Params {
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        if family == Family::Fleet {
            return Params {
                family,
                interval_ms: interval_s * 1000,
                agents_per_region: 2,
                regions: 30,
                targets: 7,
                probes: (86_400 / interval_s.max(1)) as usize,
                noise: rng.range(0.003, 0.02),
                duplicates: 0.005,
                blip_intervals: (2.5, 4.5),
                controls: true,
                seed,
            };
        }
        Params {
            family,
            interval_ms: interval_s * 1000,
            agents_per_region: agents,
            regions: 3 + rng.below(3),
            targets: 2 + rng.below(3),
            probes: 480,
            noise: rng.range(0.003, 0.03),
            duplicates: 0.005,
            blip_intervals: (2.5, 4.5),
            // Fleets with and without control targets, so both rules stay checked.
            controls: matches!(family, Family::CountryFirewall)
                || (family == Family::VantageDown && seed.is_multiple_of(2)),
            seed,
        }
    }
}

/// One result line.
#[derive(Debug, Clone)]
pub struct Record {
    pub probe_id: String,
    pub agent_id: String,
    pub region: String,
    pub target: String,
    pub started_at: i64,
    pub received_at: i64,
    pub outcome: &'static str,
    /// A result of the agent's control target.
    pub control: bool,
}

/// A labelled block.
#[derive(Debug, Clone)]
pub struct TruthBlock {
    pub target: String,
    pub region: String,
    pub start: i64,
    pub end: Option<i64>,
    /// When the block could first be seen, if an outage hid its start.
    pub visible: Option<i64>,
    /// `geo`, `rst`, `blackhole`, `dns`, or `throttle` (timeouts on part of the probes).
    pub signature: &'static str,
}

/// A generated trace with its labels.
pub struct Trace {
    pub name: String,
    pub interval_ms: i64,
    pub start: i64,
    pub end: i64,
    pub records: Vec<Record>,
    pub blocks: Vec<TruthBlock>,
    /// Labelled provider outages, where the family labels them: target and span.
    pub outages: Vec<(String, i64, i64)>,
    /// Labelled vantage problems, where the family labels them: agent id and span.
    pub vantages: Vec<(String, i64, i64)>,
}

const REGIONS: &[&str] = &[
    "eu-west",
    "hk",
    "cn-north",
    "us-east",
    "ir-tehran",
    "ru-central",
    "ap-southeast",
    "cn-south",
    "us-west",
    "eu-central",
    "eu-north",
    "uk-south",
    "ca-central",
    "br-south",
    "ar-central",
    "mx-central",
    "za-north",
    "ng-west",
    "eg-north",
    "tr-west",
    "ae-central",
    "sa-central",
    "in-west",
    "in-south",
    "pk-central",
    "id-java",
    "vn-north",
    "kr-central",
    "jp-east",
    "au-east",
];
const TARGETS: &[&str] = &["openai", "anthropic", "deepseek", "gemini", "mistral", "dashscope", "xai"];
const CONTROL: &str = "control";
const NOISE: &[&str] = &["tcp_timeout", "tcp_timeout", "dns_timeout", "tls_timeout", "tcp_reset", "http_server_error"];
const T0: i64 = 1_721_781_668_000;

/// A time-boxed change of outcomes for some (region, agent, target) set.
#[derive(Clone)]
struct Overlay {
    regions: Option<Vec<usize>>,
    agents: Option<Vec<usize>>,
    targets: Option<Vec<usize>>,
    start: i64,
    end: i64,
    /// Probability a probe in scope gets one of `outcomes`.
    rate: f64,
    outcomes: Vec<&'static str>,
}

impl Overlay {
    fn applies(&self, region: usize, agent: usize, target: usize, t: i64) -> bool {
        t >= self.start
            && t < self.end
            && self.regions.as_ref().is_none_or(|r| r.contains(&region))
            && self.agents.as_ref().is_none_or(|a| a.contains(&agent))
            && self.targets.as_ref().is_none_or(|x| x.contains(&target))
    }
}

/// A provider outage of target `t` in `regions`: from `s` for `len`, each region's start up
/// to an interval apart, 97 % of probes failing with `outcomes`.
#[allow(clippy::too_many_arguments)]
fn outage(
    rng: &mut Rng,
    overlays: &mut Vec<Overlay>,
    regions: impl Iterator<Item = usize>,
    t: usize,
    s: i64,
    len: i64,
    iv: i64,
    outcomes: &[&'static str],
) {
    for r in regions {
        let skew = (rng.range(0.0, 1.0) * iv as f64) as i64;
        overlays.push(Overlay {
            regions: Some(vec![r]),
            agents: None,
            targets: Some(vec![t]),
            start: s + skew,
            end: s + skew + len,
            rate: 0.97,
            outcomes: outcomes.to_vec(),
        });
    }
}

/// A throttle of target `t` in region `r` from `s` to `e`: 40-65 % of probes time out.
fn throttle(
    rng: &mut Rng,
    overlays: &mut Vec<Overlay>,
    blocks: &mut Vec<TruthBlock>,
    r: usize,
    t: usize,
    s: i64,
    e: i64,
) {
    overlays.push(Overlay {
        regions: Some(vec![r]),
        agents: None,
        targets: Some(vec![t]),
        start: s,
        end: e,
        rate: rng.range(0.4, 0.65),
        outcomes: vec!["tcp_timeout", "tls_timeout"],
    });
    blocks.push(TruthBlock {
        target: TARGETS[t].into(),
        region: REGIONS[r].into(),
        start: s,
        end: Some(e),
        visible: None,
        signature: "throttle",
    });
}

fn signature_outcomes(sig: &str) -> Vec<&'static str> {
    match sig {
        "geo" => vec!["http_geo_blocked"],
        "rst" => vec!["tls_reset", "tls_reset", "tls_reset", "tcp_reset"],
        "blackhole" => vec!["tcp_timeout"],
        _ => vec!["dns_bogon", "dns_bogon", "tls_cert_invalid"],
    }
}

/// Generates one trace.
pub fn generate(p: &Params) -> Trace {
    let mut rng = Rng::new(p.seed);
    let iv = p.interval_ms;
    let duration = iv * p.probes as i64;
    let (start, end) = (T0, T0 + duration);
    let n_regions = p.regions.min(REGIONS.len());
    let n_targets = p.targets.min(TARGETS.len());
    let n_agents = n_regions * p.agents_per_region;
    let region_of = |a: usize| a / p.agents_per_region;

    let mut noise: Vec<f64> = (0..n_agents).map(|_| p.noise * rng.range(0.5, 1.5)).collect();
    let mut overlays: Vec<Overlay> = Vec::new();
    let mut blocks: Vec<TruthBlock> = Vec::new();
    let mut outages: Vec<(String, i64, i64)> = Vec::new();
    let mut vantages: Vec<(String, i64, i64)> = Vec::new();
    // Agents that do not exist (a fleet's regions with one agent only).
    let mut absent: Vec<bool> = vec![false; n_agents];
    // (agent, offline from, back at): results spooled and flushed late.
    let mut offline: Vec<(usize, i64, i64)> = Vec::new();
    // How far each agent's clock is off (its `started_at` minus the true time).
    let mut skew: Vec<i64> = vec![0; n_agents];
    let at = |frac: f64| start + (duration as f64 * frac) as i64;
    let block_rate = |rng: &mut Rng| if rng.chance(0.6) { 1.0 } else { rng.range(0.75, 0.95) };

    let add_block = |rng: &mut Rng,
                     overlays: &mut Vec<Overlay>,
                     blocks: &mut Vec<TruthBlock>,
                     r: usize,
                     t: usize,
                     s: i64,
                     e: Option<i64>,
                     sig: &'static str| {
        let rate = block_rate(rng);
        overlays.push(Overlay {
            regions: Some(vec![r]),
            agents: None,
            targets: Some(vec![t]),
            start: s,
            end: e.unwrap_or(i64::MAX),
            rate,
            outcomes: signature_outcomes(sig),
        });
        blocks.push(TruthBlock {
            target: TARGETS[t].into(),
            region: REGIONS[r].into(),
            start: s,
            end: e,
            visible: None,
            signature: sig,
        });
    };

    match p.family {
        Family::GeoBlock | Family::NetBlockRst | Family::NetBlockBlackhole | Family::NetBlockDns => {
            let sig = match p.family {
                Family::GeoBlock => "geo",
                Family::NetBlockRst => "rst",
                Family::NetBlockBlackhole => "blackhole",
                _ => "dns",
            };
            let t = rng.below(n_targets);
            let n_blocks = if p.family == Family::GeoBlock { 2 } else { 1 };
            let mut used = Vec::new();
            for _ in 0..n_blocks {
                let mut r = rng.below(n_regions);
                while used.contains(&r) {
                    r = (r + 1) % n_regions;
                }
                used.push(r);
                let s = at(rng.range(0.35, 0.8));
                let e = if rng.chance(0.4) { Some(s + (duration as f64 * rng.range(0.1, 0.15)) as i64) } else { None };
                add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, e, sig);
            }
        }
        Family::GlobalOutage => {
            for k in 0..2 {
                let t = (k + rng.below(n_targets)) % n_targets;
                let s = at(rng.range(0.2 + 0.4 * k as f64, 0.5 + 0.4 * k as f64));
                let len = (rng.range(15.0, 20.0) * iv as f64) as i64;
                let outcomes = if rng.chance(0.5) {
                    vec!["tcp_timeout", "tcp_timeout", "tls_timeout"]
                } else {
                    vec![
                        "http_server_error",
                        "http_server_error",
                        "http_server_error",
                        "http_server_error",
                        "tcp_timeout",
                    ]
                };
                outage(&mut rng, &mut overlays, 0..n_regions, t, s, len, iv, &outcomes);
            }
        }
        Family::VantageDown | Family::SingleAgentIsp => {
            let a = rng.below(n_agents);
            let s = at(rng.range(0.3, 0.6));
            overlays.push(Overlay {
                regions: None,
                agents: Some(vec![a]),
                targets: None,
                start: s,
                end: s + (120.0 * iv as f64) as i64,
                rate: 1.0,
                outcomes: vec!["tcp_timeout", "tcp_timeout", "dns_timeout"],
            });
            if p.family == Family::VantageDown {
                let r = (region_of(a) + 1) % n_regions;
                let s = at(rng.range(0.15, 0.25));
                overlays.push(Overlay {
                    regions: Some(vec![r]),
                    agents: None,
                    targets: None,
                    start: s,
                    end: s + (20.0 * iv as f64) as i64,
                    rate: 1.0,
                    outcomes: vec!["tcp_timeout", "tcp_timeout", "dns_timeout"],
                });
            }
        }
        Family::Flaky => {
            for n in noise.iter_mut() {
                if rng.chance(0.3) {
                    *n = rng.range(0.1, 0.3);
                }
            }
            // Flaky agents fail in short bursts too.
            for _ in 0..(n_agents.min(20) * 4) {
                let a = rng.below(n_agents);
                if noise[a] < 0.1 {
                    continue;
                }
                let s = at(rng.range(0.0, 0.95));
                overlays.push(Overlay {
                    regions: None,
                    agents: Some(vec![a]),
                    targets: Some(vec![rng.below(n_targets)]),
                    start: s,
                    end: s + (rng.range(2.0, 6.0) * iv as f64) as i64,
                    rate: 0.8,
                    outcomes: NOISE.to_vec(),
                });
            }
        }
        Family::RatelimitBlips => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let s = at(rng.range(0.4, 0.6));
            overlays.push(Overlay {
                regions: Some(vec![r]),
                agents: None,
                targets: Some(vec![t]),
                start: s,
                end: s + 30 * iv,
                rate: 0.9,
                outcomes: vec!["http_rate_limited"],
            });
            let t2 = (t + 1) % n_targets;
            for _ in 0..8 {
                let s = at(rng.range(0.2, 0.5));
                overlays.push(Overlay {
                    regions: None,
                    agents: Some(vec![rng.below(n_agents)]),
                    targets: Some(vec![t2]),
                    start: s,
                    end: s + (rng.range(2.0, 6.0) * iv as f64) as i64,
                    rate: 0.9,
                    outcomes: vec!["http_rate_limited"],
                });
            }
            for k in 0..3 {
                let s = at(0.1 + 0.25 * k as f64 + rng.range(0.0, 0.1));
                let len = (rng.range(p.blip_intervals.0, p.blip_intervals.1) * iv as f64) as i64;
                let sig = rng.pick(&["rst", "blackhole", "rst"]);
                overlays.push(Overlay {
                    regions: Some(vec![rng.below(n_regions)]),
                    agents: None,
                    targets: Some(vec![rng.below(n_targets)]),
                    start: s,
                    end: s + len,
                    rate: 1.0,
                    outcomes: signature_outcomes(sig),
                });
            }
        }
        Family::LateArrival => {
            let a = rng.below(n_agents);
            let r = region_of(a);
            let t = rng.below(n_targets);
            let off = at(rng.range(0.3, 0.4));
            let back = off + 60 * iv;
            let s = off + (rng.range(0.3, 0.6) * 60.0 * iv as f64) as i64;
            add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, None, "rst");
            offline.push((a, off, back));
        }
        Family::CountryFirewall => {
            let r = rng.below(n_regions);
            let s = at(rng.range(0.35, 0.6));
            let e = if rng.chance(0.5) { Some(s + (duration as f64 * rng.range(0.1, 0.2)) as i64) } else { None };
            let sigs = ["rst", "dns", "blackhole"];
            let first = rng.below(sigs.len());
            for t in 0..n_targets {
                add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, e, sigs[(first + t) % sigs.len()]);
            }
        }
        Family::GeoDuringOutage => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let s = at(rng.range(0.35, 0.6));
            let len = (rng.range(20.0, 40.0) * iv as f64) as i64;
            outage(&mut rng, &mut overlays, (0..n_regions).filter(|&o| o != r), t, s, len, iv, &["http_server_error"]);
            add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, None, "geo");
        }
        Family::HiddenUnderOutage => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let s = at(rng.range(0.35, 0.5));
            let len = (rng.range(15.0, 30.0) * iv as f64) as i64;
            overlays.push(Overlay {
                regions: None,
                agents: None,
                targets: Some(vec![t]),
                start: s,
                end: s + len,
                rate: 0.97,
                outcomes: vec!["http_server_error"],
            });
            // The block begins inside the outage and shows once it is over.
            let b = s + (len as f64 * rng.range(0.3, 0.7)) as i64;
            add_block(&mut rng, &mut overlays, &mut blocks, r, t, b, None, "geo");
            blocks.last_mut().expect("just added").visible = Some(s + len);
        }
        Family::Throttling => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let s = at(rng.range(0.2, 0.4));
            let e = s + (duration as f64 * rng.range(0.25, 0.4)) as i64;
            throttle(&mut rng, &mut overlays, &mut blocks, r, t, s, e);
        }
        Family::Curfew => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let sig = rng.pick(&["rst", "blackhole", "dns"]);
            let mut s = at(rng.range(0.05, 0.1));
            for _ in 0..3 {
                let e = s + (duration as f64 * rng.range(0.08, 0.12)) as i64;
                add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, Some(e), sig);
                s = e + (duration as f64 * rng.range(0.15, 0.2)) as i64;
            }
        }
        Family::ClockSkew => {
            let t = rng.below(n_targets);
            let r = rng.below(n_regions);
            let s = at(rng.range(0.4, 0.7));
            let sig = rng.pick(&["rst", "geo", "blackhole"]);
            add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, None, sig);
            // A third of the agents run minutes ahead or behind, one of them in the blocked
            // region.
            for (a, off) in skew.iter_mut().enumerate() {
                if region_of(a) == r && a % p.agents_per_region == 0 || rng.chance(0.33) {
                    let minutes = rng.range(2.0, 8.0);
                    let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
                    *off = (sign * minutes * 60_000.0) as i64;
                }
            }
        }
        Family::Fleet => {
            let agents = p.agents_per_region;
            for (a, gone) in absent.iter_mut().enumerate() {
                *gone = agents > 1 && region_of(a) % 2 == 0 && a % agents != 0;
            }
            // Each region plays one part; the rest are bystanders.
            let mut roles: Vec<usize> = (0..n_regions).collect();
            for i in (1..roles.len()).rev() {
                roles.swap(i, rng.below(i + 1));
            }
            let mut next = roles.into_iter();
            let mut region = || next.next().unwrap_or(0);
            let min = |m: f64| (m * iv as f64) as i64;
            // Two geo refusals of the first target (one lifted later), one block of each
            // network kind on targets of their own, a throttle.
            for k in 0..2 {
                let s = at(rng.range(0.1, 0.8));
                let e = (k == 0).then(|| s + (duration as f64 * rng.range(0.05, 0.1)) as i64);
                add_block(&mut rng, &mut overlays, &mut blocks, region(), 0, s, e, "geo");
            }
            for (t, sig) in [(1, "rst"), (2, "blackhole"), (3, "dns")] {
                let s = at(rng.range(0.1, 0.8));
                let e = rng.chance(0.5).then(|| s + (duration as f64 * rng.range(0.05, 0.15)) as i64);
                add_block(&mut rng, &mut overlays, &mut blocks, region(), t, s, e, sig);
            }
            let (r, s) = (region(), at(rng.range(0.1, 0.5)));
            let e = s + (duration as f64 * rng.range(0.15, 0.25)) as i64;
            throttle(&mut rng, &mut overlays, &mut blocks, r, 4, s, e);
            // A country firewall: every target of one region, each its own way.
            let (r, s) = (region(), at(rng.range(0.3, 0.5)));
            let e = rng.chance(0.5).then(|| s + (duration as f64 * rng.range(0.1, 0.2)) as i64);
            for t in 0..n_targets {
                add_block(&mut rng, &mut overlays, &mut blocks, r, t, s, e, ["rst", "dns", "blackhole"][t % 3]);
            }
            // Two provider outages everywhere, on the targets no block uses.
            for (k, (t, outcomes)) in
                [(5, vec!["tcp_timeout", "tcp_timeout", "tls_timeout"]), (6, vec!["http_server_error"])]
                    .into_iter()
                    .enumerate()
            {
                let s = at(rng.range(0.15 + 0.45 * k as f64, 0.35 + 0.45 * k as f64));
                let len = min(rng.range(15.0, 30.0));
                outage(&mut rng, &mut overlays, 0..n_regions, t, s, len, iv, &outcomes);
                outages.push((TARGETS[t].into(), s, s + len + iv));
                // A block of the target that begins under the outage, or too shortly before it
                // to be told from a blip (a network persistence, 5 intervals), fails like every
                // other region until the outage is over: only then can it be seen.
                let hidden = |b: &TruthBlock| b.target == TARGETS[t] && b.start >= s - 5 * iv && b.start < s + len + iv;
                for b in blocks.iter_mut().filter(|b| hidden(b)) {
                    b.visible = Some(s + len + iv);
                }
            }
            // Two dead vantages (their whole network, control included) in two-agent regions.
            for _ in 0..2 {
                let mut r = region();
                while agents > 1 && r % 2 == 0 {
                    r = region();
                }
                let a = r * agents + agents - 1;
                let s = at(rng.range(0.1, 0.8));
                let len = min(rng.range(60.0, 120.0));
                overlays.insert(
                    0,
                    Overlay {
                        regions: None,
                        agents: Some(vec![a]),
                        targets: None,
                        start: s,
                        end: s + len,
                        rate: 1.0,
                        outcomes: vec!["tcp_timeout", "tcp_timeout", "dns_timeout"],
                    },
                );
                vantages.push((format!("{}-{}", REGIONS[r], agents), s, s + len));
            }
            // Rate limits: a region for half an hour, agents for minutes; network blips.
            let (r, s) = (region(), at(rng.range(0.1, 0.9)));
            overlays.push(Overlay {
                regions: Some(vec![r]),
                agents: None,
                targets: Some(vec![rng.below(n_targets)]),
                start: s,
                end: s + min(30.0),
                rate: 0.9,
                outcomes: vec!["http_rate_limited"],
            });
            for _ in 0..10 {
                let s = at(rng.range(0.0, 0.95));
                overlays.push(Overlay {
                    regions: None,
                    agents: Some(vec![rng.below(n_agents)]),
                    targets: Some(vec![rng.below(n_targets)]),
                    start: s,
                    end: s + min(rng.range(2.0, 6.0)),
                    rate: 0.9,
                    outcomes: vec!["http_rate_limited"],
                });
                let s = at(rng.range(0.0, 0.95));
                overlays.push(Overlay {
                    regions: Some(vec![rng.below(n_regions)]),
                    agents: None,
                    targets: Some(vec![rng.below(n_targets)]),
                    start: s,
                    end: s + min(rng.range(p.blip_intervals.0, p.blip_intervals.1)),
                    rate: 1.0,
                    outcomes: signature_outcomes(rng.pick(&["rst", "blackhole", "rst"])),
                });
            }
            for _ in 0..2 {
                let r = region();
                noise[r * agents] = rng.range(0.1, 0.2);
            }
        }
        Family::LiftAndRollout => {
            let t1 = rng.below(n_targets);
            let r1 = rng.below(n_regions);
            let s1 = at(rng.range(0.08, 0.12));
            let e1 = s1 + (duration as f64 * 0.25) as i64;
            add_block(&mut rng, &mut overlays, &mut blocks, r1, t1, s1, Some(e1), "geo");
            let t2 = (t1 + 1) % n_targets;
            let mut s = at(rng.range(0.5, 0.55));
            for (k, sig) in ["blackhole", "rst", "geo"].iter().enumerate() {
                let r = (r1 + 1 + k) % n_regions;
                if blocks.iter().any(|b| b.region == REGIONS[r] && b.target == TARGETS[t2]) {
                    continue;
                }
                add_block(&mut rng, &mut overlays, &mut blocks, r, t2, s, None, sig);
                s += (rng.range(0.08, 0.12) * duration as f64) as i64;
            }
        }
    }

    let mut records = Vec::new();
    // The control target, when there is one, is the last: only overlays on every target (an
    // agent's own network) reach it.
    let probed = if p.controls { n_targets + 1 } else { n_targets };
    for a in (0..n_agents).filter(|&a| !absent[a]) {
        let r = region_of(a);
        let agent_id = format!("{}-{}", REGIONS[r], a % p.agents_per_region + 1);
        for t in 0..probed {
            let control = t == n_targets;
            let name = if control { CONTROL } else { TARGETS[t] };
            let mut ts = start + (rng.f64() * iv as f64) as i64;
            let mut seq = 0;
            while ts < end {
                seq += 1;
                let outcome =
                    match overlays.iter().find(|o| o.applies(r, a, t, ts) && (!control || o.targets.is_none())) {
                        Some(o) if rng.chance(o.rate) => rng.pick(&o.outcomes),
                        Some(_) => "ok",
                        None if rng.chance(noise[a]) => rng.pick(NOISE),
                        None => "ok",
                    };
                let took =
                    if outcome.ends_with("timeout") { rng.range(5000.0, 10000.0) } else { rng.range(150.0, 600.0) };
                let mut received = ts + took as i64 + rng.range(10.0, 300.0) as i64;
                if let Some(&(_, _, back)) =
                    offline.iter().find(|(oa, from, back)| *oa == a && ts >= *from && ts < *back)
                {
                    received = back + rng.range(0.0, 20_000.0) as i64;
                }
                let rec = Record {
                    probe_id: format!("{agent_id}/{name}/{seq}"),
                    agent_id: agent_id.clone(),
                    region: REGIONS[r].into(),
                    target: name.into(),
                    started_at: ts + skew[a],
                    received_at: received,
                    outcome,
                    control,
                };
                if rng.chance(p.duplicates) {
                    let mut dup = rec.clone();
                    dup.received_at += rng.range(1000.0, 60_000.0) as i64;
                    records.push(dup);
                }
                records.push(rec);
                ts += (iv as f64 * rng.range(0.5, 1.5)) as i64;
            }
        }
    }
    records.sort_by(|a, b| a.received_at.cmp(&b.received_at).then_with(|| a.probe_id.cmp(&b.probe_id)));
    let name = format!("{:?}-{}s-{}a-{}", p.family, p.interval_ms / 1000, p.agents_per_region, p.seed);
    Trace { name, interval_ms: iv, start, end, records, blocks, outages, vantages }
}

impl Record {
    /// The detector's view of the record, with its outcome already looked up.
    pub fn observation(&self, outcome: blockwatch_proto::Outcome) -> blockwatch_detector::Observation<'_> {
        blockwatch_detector::Observation {
            probe_id: &self.probe_id,
            agent_id: &self.agent_id,
            region: &self.region,
            target: &self.target,
            started_at: self.started_at,
            received_at: self.received_at,
            outcome,
            control: self.control,
            confirmation: false,
            http_status: 0,
            provider_code: "",
        }
    }
}

impl Trace {
    /// The same trace `by_ms` later, with `prefix` before every probe id: the same fleet
    /// and targets, with fresh results.
    pub fn shifted(&self, by_ms: i64, prefix: &str) -> Trace {
        let records = self
            .records
            .iter()
            .map(|r| Record {
                probe_id: format!("{prefix}{}", r.probe_id),
                started_at: r.started_at + by_ms,
                received_at: r.received_at + by_ms,
                ..r.clone()
            })
            .collect();
        let blocks = self
            .blocks
            .iter()
            .map(|b| TruthBlock {
                start: b.start + by_ms,
                end: b.end.map(|e| e + by_ms),
                visible: b.visible.map(|v| v + by_ms),
                ..b.clone()
            })
            .collect();
        Trace {
            name: format!("{}+{by_ms}", self.name),
            start: self.start + by_ms,
            end: self.end + by_ms,
            records,
            blocks,
            outages: self.outages.iter().map(|(t, s, e)| (t.clone(), s + by_ms, e + by_ms)).collect(),
            vantages: self.vantages.iter().map(|(a, s, e)| (a.clone(), s + by_ms, e + by_ms)).collect(),
            ..*self
        }
    }

    /// The records as trace-format records, with their receive times.
    pub fn trace_records(&self) -> Vec<blockwatch_proto::trace::TraceRecord> {
        self.records
            .iter()
            .map(|r| blockwatch_proto::trace::TraceRecord {
                probe_id: r.probe_id.clone(),
                agent_id: r.agent_id.clone(),
                region: r.region.clone(),
                target: r.target.clone(),
                started_at: format_rfc3339(r.started_at),
                received_at: Some(format_rfc3339(r.received_at)),
                outcome: r.outcome.to_string(),
                control: r.control,
                ..Default::default()
            })
            .collect()
    }

    /// The trace as JSONL in the trace format, written by the format's own record.
    pub fn to_jsonl(&self) -> String {
        let mut s = String::new();
        for r in self.trace_records() {
            s.push_str(&serde_json::to_string(&r).expect("a trace record serialises"));
            s.push('\n');
        }
        s
    }

    /// The labels as a `*.truth.json` document.
    pub fn truth_json(&self) -> String {
        let blocks: Vec<String> = self
            .blocks
            .iter()
            .map(|b| {
                format!(
                    r#"{{"target":"{}","region":"{}","start":"{}","end":{},"signature":"{}"{}}}"#,
                    b.target,
                    b.region,
                    format_rfc3339(b.start),
                    b.end.map_or("null".to_string(), |e| format!("\"{}\"", format_rfc3339(e))),
                    b.signature,
                    b.visible.map_or(String::new(), |v| format!(r#","visible":"{}""#, format_rfc3339(v)))
                )
            })
            .collect();
        format!(
            r#"{{"scenario":"{}","interval_s":{},"start":"{}","end":"{}","blocks":[{}]}}"#,
            self.name,
            self.interval_ms / 1000,
            format_rfc3339(self.start),
            format_rfc3339(self.end),
            blocks.join(",")
        )
    }
}
