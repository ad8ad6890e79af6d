//! blockwatch collector: receives probe results from agents over gRPC, stores each once,
//! detects when a block starts and ends, and exports the history.

pub mod alert;
pub mod api;
pub mod api_auth;
pub mod archive;
pub mod blocks;
pub mod cmd;
pub mod config;
mod detect;
pub mod export;
pub mod fleet_ca;
mod forward;
pub mod ingest;
pub mod jetstream;
mod listen;
pub mod metrics;
pub mod networks;
pub mod ooni;
pub mod plan;
mod rebuild;
pub mod replay;
pub mod research;
pub mod retention;
pub mod server;
mod silence;
pub mod status;
pub mod store;
pub mod timeline;
pub mod tls;
