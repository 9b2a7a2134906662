//! The gRPC contract of hostshift, generated from `proto/hostshift/v1/*.proto`.
//!
//! The package is versioned: `hostshift.v1`. A breaking change gets a new package (`v2`) and
//! bumps [`PROTOCOL_VERSION`]; additive changes (new fields, new RPCs) keep it. The coordinator
//! refuses agents whose protocol major version differs from its own (`hostshift check`).
//! Before the first release (0.x) a breaking change bumps [`PROTOCOL_VERSION`] only and keeps the
//! package name: nobody runs two 0.x builds side by side on purpose, and the number is what makes
//! `check` refuse a mixed pair. History: 2 = typed fingerprints (`FingerprintResponse` fields
//! renumbered, row digests by `hashtextextended`), storage sessions (the new agent fetches the
//! manifest; `PlanStorage`/`CompareStorage`/`FinalizeStorage` carry no manifest), `Follow`;
//! 3 = storage batches framed without chunk digests (an older receiver would refuse them);
//! 4 = post-data applied in parts (`DbSchema.build_of` / `all_but`: an older receiver would apply
//! the whole section while tables still load), a first copy's pieces by heap pages
//! (`DbTable.pages`: an older source would copy the whole table for each piece);
//! 5 = the other tables' index builds beside a big table's still under way
//! (`DbSchema.builds_only` / `after_builds`: an older receiver would apply every foreign key
//! before the key it references exists).
//!
//! Services (one per concern, each served by one folder of the agent):
//! - `Agent` — identity, tools, disk and database reachability (`Info`), sizes and row counts
//!   (`Inventory`). Coordinator only.
//! - `Hooks` — runs a hook *named in the agent's config* and streams its output. Coordinator only.
//! - `Pm2`, `EnvFiles`, `Nginx`, `Health`, `DbStats` — host control. Coordinator only.
//! - `Grants`, `Source`, `Target`, `Database` — the data path of `sync`/`verify`: framed streams
//!   (chunk digests + trailer; storage batches without chunk digests), grants for
//!   agent-to-agent pulls. `Source` also accepts a peer agent presenting a grant.
//! - `Backup` — backups made on the host, verified, restored where allowed, uploaded to S3.

#![allow(missing_docs)] // generated code carries the .proto comments, not `///` on every item.

/// Protocol major version spoken by this build. Agents report it in `Info`.
pub const PROTOCOL_VERSION: u32 = 5;

/// Generated types and services of package `hostshift.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("hostshift.v1");
}
