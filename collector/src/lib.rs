//! blockwatch collector: receives probe results from agents over gRPC, stores each once,
//! detects when a block starts and ends, and exports the history.

pub mod api;
pub mod cmd;
pub mod config;
pub mod export;
pub mod ingest;
pub mod plan;
pub mod replay;
pub mod server;
pub mod store;
