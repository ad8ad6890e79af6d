//! The blockwatch wire format (`blockwatch.v1`) and the few types that agent and collector
//! both need: the outcome taxonomy with its names, and the JSONL trace record.

pub mod config_file;
pub mod outcome;
pub mod plan;
pub mod time;
pub mod trace;

/// Generated prost messages and tonic client/server for `blockwatch.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("blockwatch.v1");
}

pub use v1::Outcome;
