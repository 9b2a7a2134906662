//! `hostshift sync`: copy the plan's config files, storage trees (and databases) from the old
//! host to the new one while the old host keeps serving; safe to run again.
//!
//! - Each **unit** (a file, a storage batch, a table) is journaled before and after it acts
//!   ([`crate::journal`]), moved as one framed stream ([`stream`]) — pulled by the new agent from the
//!   old one by default, or relayed through this process — and retried when the stream failed
//!   its integrity check or the connection broke. A refusal (permissions, bad names) is not
//!   retried.
//! - **Storage** is planned by the new agent from the old agent's manifest: only files missing or
//!   different on the new host travel, in batches; a rerun after an interruption sends only what
//!   is still missing and says how much it skipped.
//! - **Databases** are copied from one snapshot of the old database: roles and schema, table data
//!   in parallel pieces, indexes and constraints after the data, sequences, large objects; a
//!   rerun compares key-range fingerprints and copies only the ranges that differ ([`delta`]).
//! - The old host is only read. Grants given to the new agent for this run are revoked at the end.

pub(crate) mod database;
pub mod delta;
mod matviews;
pub mod reverse;
pub mod selection;
pub mod stream;
mod units;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hostshift_proto::v1::{CreateGrantRequest, Frame, InfoRequest, RevokeGrantRequest};
use hostshift_shared::framing::IntegrityError;
use serde::Serialize;

use crate::client::{self, Agent};
use crate::journal::{self, Journal};
use crate::phase::traced;
use crate::plan::{Plan, Side};
use crate::progress::{self, Progress};
use stream::PullSource;
pub use units::deferred_summary;
#[cfg(test)]
pub(crate) use units::report as unit_report;

/// What to sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Only {
    /// Databases.
    Db,
    /// Storage trees.
    Storage,
    /// Config files.
    Files,
}

/// A hook that may alter frames of relayed streams: `(unit, attempt, frame index, frame)`.
/// For tests that prove corruption is caught; the CLI never sets it.
pub type Tap = Arc<dyn Fn(u64, &mut Frame) + Send + Sync>;

/// A tap factory per unit and attempt (so a test can corrupt only the first attempt).
pub type TapFactory = Arc<dyn Fn(&str, u32) -> Option<Tap> + Send + Sync>;

/// How to sync.
pub struct SyncOptions {
    /// Restrict to one kind of resource.
    pub only: Option<Only>,
    /// Stream through this process instead of agent to agent.
    pub relay: bool,
    /// Progress output.
    pub progress: progress::Mode,
    /// Storage batches close at this many bytes...
    pub batch_bytes: u64,
    /// ...or this many files.
    pub batch_files: u64,
    /// Attempts per unit for retryable failures (integrity, connection).
    pub attempts: u32,
    /// Tests only: alter relayed frames.
    pub tap: Option<TapFactory>,
    /// Record every table's whole fingerprint on the old host at the start of a rerun (the
    /// cutover proves with it that the old host did not change during the freeze). Costs a scan
    /// of each big changed table that a plain rerun skips.
    pub baseline: bool,
    /// Overwrite the rows a rollback found written on the new host since the switch
    /// (`--discard-new-host-writes`); without it a database sync refuses while there are any.
    pub discard_new_host_writes: bool,
    /// Run by `hostshift follow start` (it stopped the followers itself): skip the refusal of
    /// databases being followed.
    pub following: bool,
    /// The cutover's delta for followed databases (plan name → the tables the follower does not
    /// carry, `schema.table`): only those tables are compared and copied; the follower brought
    /// the others up to the freeze position. Sequences and large objects are settled as usual.
    pub followed: std::collections::BTreeMap<String, Vec<String>>,
    /// Run the units (files, storage trees, databases) at once (the default) instead of one
    /// after the other. Each unit alone leaves part of the machines idle — a storage batch waits
    /// on the receiver's writes, a database's post-data step on its last index builds, the
    /// cutover's small units on round trips and walks — so at once the whole takes less than
    /// their sum: a first copy of the benchmark's reference host 15.4 s instead of 16.7 s
    /// (docs/BENCHMARKS.md, "Units at once"), and the freeze no longer lasts the sum of its
    /// delta's units. `sync --one-at-a-time` keeps them in turn: less load on a busy old host at
    /// any moment, one progress display at a time.
    pub concurrent: bool,
    /// Report through this reporter instead of a new one of mode `progress`: the cutover's,
    /// so that its steps' spinners and the delta's bars share the terminal.
    pub reporter: Option<Arc<Progress>>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            only: None,
            relay: false,
            progress: progress::Mode::Human,
            batch_bytes: 256 * 1024 * 1024,
            batch_files: 5_000,
            attempts: 3,
            tap: None,
            baseline: false,
            discard_new_host_writes: false,
            following: false,
            followed: Default::default(),
            concurrent: true,
            reporter: None,
        }
    }
}

/// Why a unit failed, classified for retry decisions and exit codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// A checksum did not match: nothing was committed; the stream is sent again.
    DataLoss,
    /// A connection or agent was unavailable; retrying may help.
    Unavailable,
    /// An agent refused (permissions, undeclared names): fix the config, not the network.
    Refused,
    /// Anything else.
    Other,
}

/// A failed unit.
#[derive(Clone, Debug, Serialize)]
pub struct UnitError {
    /// Classification.
    pub kind: ErrorKind,
    /// What happened and what to do.
    pub message: String,
}

impl UnitError {
    /// From a gRPC status.
    pub fn from_status(s: tonic::Status) -> Self {
        let kind = match s.code() {
            tonic::Code::DataLoss => ErrorKind::DataLoss,
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated => ErrorKind::Refused,
            _ => ErrorKind::Other,
        };
        Self {
            kind,
            message: client::explain_status(&s),
        }
    }

    /// From a failed integrity check on this side.
    pub fn integrity(e: IntegrityError) -> Self {
        Self {
            kind: ErrorKind::DataLoss,
            message: format!("integrity check failed: {e}"),
        }
    }

    /// Anything else.
    pub fn other(message: String) -> Self {
        Self {
            kind: ErrorKind::Other,
            message,
        }
    }

    /// Worth another attempt.
    pub fn retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::DataLoss | ErrorKind::Unavailable)
    }
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The result of one unit.
#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    /// `file`, `storage`, `table`...
    pub kind: String,
    /// Its name.
    pub name: String,
    /// `copied`, `unchanged`, `failed`.
    pub status: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Files moved.
    pub files: u64,
    /// Already equal, not sent again.
    pub skipped_files: u64,
    /// Bytes of those.
    pub skipped_bytes: u64,
    /// Wall time.
    pub ms: u64,
    /// Attempts it took (retries = attempts - 1).
    pub attempts: u32,
    /// Failures that were retried, in order.
    pub retried: Vec<UnitError>,
    /// Changes made by overrides (secrets redacted).
    pub changes: Vec<String>,
    /// Free text.
    pub detail: String,
    /// Databases: table pieces (whole tables or key ranges) copied.
    #[serde(default)]
    pub ranges: u64,
    /// Databases, on a rerun: the old host's fingerprint (`rows/digest`) of every table when the
    /// comparison began, on the sync's snapshot (the cutover checks the old host did not change
    /// during the freeze against these).
    #[serde(skip)]
    pub old_fingerprints: std::collections::BTreeMap<String, String>,
    /// Storage: files that changed or vanished on the old host while being read, left for the
    /// next pass (not committed; `verify` still reports them).
    #[serde(default)]
    pub deferred: u64,
    /// Storage: the names of the first ten of those.
    #[serde(default)]
    pub deferred_names: Vec<String>,
}

/// The whole sync.
#[derive(Clone, Debug, Serialize)]
pub struct SyncReport {
    /// Every unit succeeded.
    pub ok: bool,
    /// `pull` or `relay`.
    pub mode: String,
    /// Per unit.
    pub units: Vec<UnitReport>,
    /// Total bytes moved.
    pub bytes: u64,
    /// Total files moved.
    pub files: u64,
    /// Files skipped as already equal.
    pub skipped_files: u64,
    /// Wall time.
    pub ms: u64,
    /// The journal file.
    pub journal: String,
}

impl SyncReport {
    /// The failed units, as `kind name: why`, joined by `; ` (empty when none failed).
    pub fn failures(&self) -> String {
        self.units
            .iter()
            .filter(|u| u.status == "failed")
            .map(|u| format!("{} {}: {}", u.kind, u.name, u.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A sync that could not run at all (as opposed to a unit that failed).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An agent could not be reached or refused the coordinator.
    #[error("{0}")]
    Connect(String),
    /// A rollback found rows written on the new host since the switch; syncing the databases
    /// would overwrite them.
    #[error(
        "refusing to sync the databases: the last rollback found writes on the new host since the switch that were not copied back ({0}); a sync would overwrite them. Copy what you need to the old host first, then run `hostshift sync --discard-new-host-writes` to overwrite them"
    )]
    NewHostWrites(String),
    /// An agent speaks another protocol version than this coordinator: their streams would not
    /// be understood (storage batches fail their integrity check, an older agent would apply a
    /// whole post-data section or copy a whole table for each page piece), so nothing is
    /// started.
    #[error(
        "refusing to sync: the {side} agent at {address} speaks protocol {agent}, this coordinator {ours} — a mixed pair cannot move data (storage batches since protocol 3, page pieces and partial post-data since protocol 4, index builds beside a running one since 5: each side would misread the other); nothing was written. Install the same hostshift release on both hosts and the jump box, then run `hostshift check`"
    )]
    Protocol {
        /// `old` or `new`.
        side: Side,
        /// The agent's address.
        address: String,
        /// The version it reports.
        agent: u32,
        /// This coordinator's.
        ours: u32,
    },
    /// The new host is still frozen by an earlier cutover (it was that cutover's old host).
    #[error(
        "refusing to sync: the new host ({address}) is frozen by an earlier cutover — database(s) {databases} read-only with CONNECT revoked, and its nginx may show the maintenance page and its apps be stopped; nothing was written. If it really is the way back of a blue/green swap, lift the freeze with `hostshift unfreeze --host new --yes --plan {plan}`, then sync again (docs/cutover.md, Blue/green)"
    )]
    TargetFrozen {
        /// The new agent's address.
        address: String,
        /// The frozen databases.
        databases: String,
        /// The plan file.
        plan: String,
    },
    /// A follower keeps these databases current: a copy would fight it.
    #[error(
        "refusing to sync database(s) {0}: the new host follows them (`hostshift follow`), and a copy would fight the follower; nothing was written. Run `hostshift follow stop --plan {1}` first (or `hostshift follow status` to see where it stands)"
    )]
    Following(String, String),
    /// The plan moves the other way than the journal's cutover (see
    /// [`crate::cutover::direction`]).
    #[error("{0}")]
    Reversed(String),
    /// The journal could not be written: nothing is done without one.
    #[error("cannot write the journal in {path}: {source}")]
    Journal {
        /// Its folder.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Shared state of one sync run. `old` is the side read and `new` the side written: a rollback
/// within the window ([`reverse`]) swaps them.
pub(crate) struct Run<'a> {
    pub old: Agent,
    pub new: Agent,
    pub pull_source: Option<PullSource>,
    pub opts: &'a SyncOptions,
    pub journal: &'a Journal,
    pub progress: Arc<Progress>,
    /// The journal phase of the units: `sync`, or `rollback` for a carry-back.
    pub phase: &'static str,
    /// A carry-back: the rollback window's id, which the frozen old agent admits writes for
    /// (empty for a sync).
    pub window: String,
}

impl Run<'_> {
    /// The side read, for people: `old`, or `new` in a carry-back.
    pub fn read(&self) -> &'static str {
        if self.window.is_empty() { "old" } else { "new" }
    }

    /// The side written, for people.
    pub fn written(&self) -> &'static str {
        if self.window.is_empty() { "new" } else { "old" }
    }

    pub fn record(
        &self,
        unit: &str,
        status: &str,
        bytes: u64,
        files: u64,
        detail: &str,
    ) -> Result<(), UnitError> {
        // A sync's unit lines are noted and made durable by its closing line (see `journal`); a
        // carry-back's, inside the rollback, are recorded one by one like the rollback's steps.
        let written = if self.window.is_empty() {
            self.journal
                .note(self.phase, unit, status, bytes, files, detail)
        } else {
            self.journal
                .record(self.phase, unit, status, bytes, files, detail)
        };
        written.map_err(|e| {
            UnitError::other(format!(
                "cannot write the journal {}: {e}",
                self.journal.path().display()
            ))
        })
    }
}

/// `Info` (brief) of an agent: the first call on its connection, so a refused client
/// certificate shows here (TLS 1.3), explained.
async fn brief_info(agent: &Agent) -> Result<hostshift_proto::v1::InfoResponse, SyncError> {
    agent
        .info()
        .info(client::request(InfoRequest { brief: true }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| {
            SyncError::Connect(format!(
                "{} agent at {}: {}",
                agent.side,
                agent.address,
                client::explain_first_rpc(&s)
            ))
        })
}

/// Refuses an agent whose protocol version is not this coordinator's (see
/// [`SyncError::Protocol`]); `hostshift check` reports the same, but a sync must not depend on
/// it having been run.
fn same_protocol(side: Side, address: &str, agent: u32) -> Result<(), SyncError> {
    let ours = hostshift_proto::PROTOCOL_VERSION;
    if agent == ours {
        return Ok(());
    }
    Err(SyncError::Protocol {
        side,
        address: address.to_string(),
        agent,
        ours,
    })
}

fn scopes(plan: &Plan, only: Option<Only>) -> Vec<String> {
    let mut v = Vec::new();
    if only.is_none_or(|o| o == Only::Files) {
        v.extend(plan.files.iter().map(|f| format!("file:{}", f.name)));
    }
    if only.is_none_or(|o| o == Only::Storage) {
        v.extend(plan.storage.iter().map(|s| format!("storage:{}", s.name)));
    }
    if only.is_none_or(|o| o == Only::Db) {
        v.extend(
            plan.databases
                .iter()
                .map(|d| format!("database:{}", d.name)),
        );
    }
    v
}

/// The span of one sync unit (see [`crate::phase`]).
fn unit_span(kind: &'static str, name: &str) -> tracing::Span {
    tracing::info_span!("unit", kind = %kind, name = %name)
}

/// One unit's work, not started yet.
type UnitFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = UnitReport> + 'a>>;

/// Runs a sync.
///
/// # Errors
/// [`SyncError`] when it cannot start (agents unreachable, journal unwritable). Failed units are
/// reported in [`SyncReport`] with `ok: false`.
pub async fn run(plan: &Plan, opts: &SyncOptions) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let dir = plan.state_dir();
    let events = journal::read(&dir).unwrap_or_default();
    crate::cutover::direction::check(plan, &crate::cutover::state::of(&events))
        .map_err(|e| SyncError::Reversed(e.to_string()))?;
    if opts.only.is_none_or(|o| o == Only::Db) && !plan.databases.is_empty() {
        let pending = crate::cutover::new_writes::pending(plan);
        if !pending.is_empty() && !opts.discard_new_host_writes {
            return Err(SyncError::NewHostWrites(
                pending
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
    }
    let journal = Journal::open(&dir).map_err(|source| SyncError::Journal {
        path: dir.display().to_string(),
        source,
    })?;
    let progress = opts
        .reporter
        .clone()
        .unwrap_or_else(|| Arc::new(Progress::new(opts.progress)));
    let (old, new) = tokio::join!(
        client::connect(plan, Side::Old),
        client::connect(plan, Side::New)
    );
    let old = old.map_err(|e| SyncError::Connect(e.to_string()))?;
    let new = new.map_err(|e| SyncError::Connect(e.to_string()))?;
    // Before anything is written: both agents must speak this coordinator's protocol, and a
    // host an earlier cutover left frozen refuses every write (a sync would otherwise fail only
    // after some units went through).
    let (info, old_info) = tokio::join!(brief_info(&new), brief_info(&old));
    let info = info?;
    same_protocol(Side::New, &new.address, info.protocol_version)?;
    same_protocol(Side::Old, &old.address, old_info?.protocol_version)?;
    if !info.frozen_databases.is_empty() {
        return Err(SyncError::TargetFrozen {
            address: new.address.clone(),
            databases: info.frozen_databases.join(", "),
            plan: plan.path.display().to_string(),
        });
    }
    if opts.only.is_none_or(|o| o == Only::Db) && !plan.databases.is_empty() && !opts.following {
        let followed = crate::follow::following(plan, &new)
            .await
            .map_err(|e| SyncError::Connect(format!("new agent at {}: {e}", new.address)))?;
        if !followed.is_empty() {
            return Err(SyncError::Following(
                followed.join(", "),
                plan.path.display().to_string(),
            ));
        }
    }
    // Nothing is done unrecorded: a journal that cannot be written stops the sync here. Noted,
    // not fsynced: the closing line makes the run's lines durable (see `journal`).
    journal
        .note(
            "sync",
            "sync",
            "started",
            0,
            0,
            if opts.relay { "relay" } else { "pull" },
        )
        .map_err(|source| SyncError::Journal {
            path: journal.path().display().to_string(),
            source,
        })?;
    let mut grant_token = None;
    let pull_source = if opts.relay {
        None
    } else {
        let grant = old
            .grants()
            .create(client::request(CreateGrantRequest {
                peer: plan.new.agent.clone(),
                scopes: scopes(plan, opts.only),
                ttl_secs: 6 * 3600,
                // The old agent serves the new one only the tables the plan selects.
                selections: plan
                    .databases
                    .iter()
                    .map(|d| selection::Selections::of(d).old)
                    .collect(),
            }))
            .await
            .map_err(|s| {
                SyncError::Connect(format!(
                    "old agent at {}: {}",
                    old.address,
                    client::explain_first_rpc(&s)
                ))
            })?
            .into_inner();
        grant_token = Some(grant.token.clone());
        Some(PullSource {
            address: plan.old.address.clone(),
            tls_name: plan.old.server_name(),
            grant: grant.token,
        })
    };
    let run = Run {
        old,
        new,
        pull_source,
        opts,
        journal: &journal,
        progress,
        phase: "sync",
        window: String::new(),
    };

    let mut work: Vec<UnitFuture<'_>> = Vec::new();
    if opts.only.is_none_or(|o| o == Only::Files) {
        for f in &plan.files {
            work.push(Box::pin(traced(
                unit_span("file", &f.name),
                units::file(&run, f),
            )));
        }
    }
    if opts.only.is_none_or(|o| o == Only::Storage) {
        for s in &plan.storage {
            work.push(Box::pin(traced(
                unit_span("storage", &s.name),
                units::storage(&run, s),
            )));
        }
    }
    if opts.only.is_none_or(|o| o == Only::Db) {
        for d in &plan.databases {
            work.push(Box::pin(traced(
                unit_span("database", &d.name),
                database::database(&run, d),
            )));
        }
    }
    // The report keeps the plan's order either way.
    let units = if opts.concurrent {
        futures::future::join_all(work).await
    } else {
        let mut done = Vec::with_capacity(work.len());
        for w in work {
            done.push(w.await);
        }
        done
    };

    if let Some(token) = grant_token {
        let _ = run
            .old
            .grants()
            .revoke(client::request(RevokeGrantRequest { token }))
            .await;
    }
    let ok = units.iter().all(|u| u.status != "failed");
    let report = SyncReport {
        ok,
        mode: if opts.relay {
            "relay".into()
        } else {
            "pull".into()
        },
        bytes: units.iter().map(|u| u.bytes).sum(),
        files: units.iter().map(|u| u.files).sum(),
        skipped_files: units.iter().map(|u| u.skipped_files).sum(),
        ms: started.elapsed().as_millis() as u64,
        journal: run.journal.path().display().to_string(),
        units,
    };
    if ok && opts.discard_new_host_writes && opts.only.is_none_or(|o| o == Only::Db) {
        // Overwritten now: nothing left to protect.
        let _ = crate::cutover::new_writes::record_pending(plan, &[]);
    }
    // Unrecorded, the cutover's gates would not know this sync: said, not ignored.
    run.journal
        .record(
            "sync",
            "sync",
            if ok { "done" } else { "failed" },
            report.bytes,
            report.files,
            "",
        )
        .map_err(|source| SyncError::Journal {
            path: run.journal.path().display().to_string(),
            source,
        })?;
    Ok(report)
}

/// Backoff before attempt `n` (1-based) of a unit.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * u64::from(attempt.saturating_sub(1).min(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_of_another_protocol_is_refused_naming_it_and_what_to_do() {
        let ours = hostshift_proto::PROTOCOL_VERSION;
        assert!(same_protocol(Side::Old, "https://127.0.0.2:7443", ours).is_ok());
        let e = same_protocol(Side::New, "https://127.0.0.3:7443", ours - 1).unwrap_err();
        let msg = e.to_string();
        for want in [
            "new agent at https://127.0.0.3:7443",
            &format!("speaks protocol {}, this coordinator {ours}", ours - 1),
            "nothing was written",
            "same hostshift release",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
    }
}
