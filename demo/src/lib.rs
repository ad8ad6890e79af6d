//! blockwatch on loopback. [`run`] is the demo: a collector, simulated providers and agents
//! in a few regions, one of them blocked part-way through. The same parts serve the tests:
//! [`faultkit`] holds local servers that misbehave the way networks and providers do (a DNS
//! server, resetting and silent TLS servers, HTTPS servers replaying providers' real answers,
//! a throwaway CA), and [`provider`] a simulated provider that refuses chosen source
//! addresses. Nothing here leaves 127.0.0.0/8.

pub mod faultkit;
pub mod provider;
pub mod receiver;
mod run;

pub use run::{BLOCKED_REGION, DemoReport, REGIONS, run};
