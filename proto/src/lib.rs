//! The blockwatch wire format (`blockwatch.v1`) and the few types that agent and collector
//! both need: the outcome taxonomy with its names, and the JSONL trace record.
//!
//! Without the `grpc` feature this is plain data (prost messages, serde), so the pure
//! detector can depend on it without pulling in an async runtime.

pub mod bounds;
pub mod config_env;
pub mod config_file;
pub mod error;
pub mod id;
pub mod outcome;
#[cfg(feature = "grpc")]
pub mod pace;
pub mod plan;
#[cfg(feature = "grpc")]
pub mod process;
pub mod time;
pub mod trace;
pub mod url;

/// Generated prost messages (and, with `grpc`, the tonic client and server) for `blockwatch.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/blockwatch.v1.rs"));
}

pub use v1::Outcome;
