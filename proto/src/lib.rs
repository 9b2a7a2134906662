//! The gRPC contract of hostshift, generated from `proto/hostshift/v1/*.proto`.
//!
//! The package is versioned: `hostshift.v1`. A breaking change gets a new package (`v2`) and
//! bumps [`PROTOCOL_VERSION`]; additive changes (new fields, new RPCs) keep it. The coordinator
//! refuses agents whose protocol major version differs from its own.
//!
//! Services (one per concern, each served by one folder of the agent):
//! - `Agent` — identity, tools, disk and database reachability (`Info`), sizes and row counts
//!   (`Inventory`). Coordinator only.
//! - `Hooks` — runs a hook *named in the agent's config* and streams its output. Coordinator only.

#![allow(missing_docs)] // generated code carries the .proto comments, not `///` on every item.

/// Protocol major version spoken by this build. Agents report it in `Info`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Generated types and services of package `hostshift.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("hostshift.v1");
}
