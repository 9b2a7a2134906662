//! Why a cutover step, a gate or an undo failed: one [`CutoverError`] for the whole of
//! `cutover/`. The variants that decide what happens next stay apart — a journal that cannot be
//! written stops the run where it is ([`CutoverError::is_journal`]) instead of undoing on
//! unrecorded — and every message names the cause and what to do. [`StartError`] is a cutover
//! that could not start at all.

use std::path::PathBuf;

use crate::plan::{Plan, Side};

/// A failed cutover step, gate or undo.
#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The journal cannot be written: nothing more may be done without a record.
    #[error("cannot write the journal {}: {source}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// The write or fsync error.
        source: std::io::Error,
    },
    /// A file the cutover keeps beside its journal cannot be read or written.
    #[error("{what} {}: {reason}", path.display())]
    StateFile {
        /// `cannot write`, `cannot remove`, `damaged`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An agent could not be reached (each entry names the agent, its address and why).
    #[error(
        "{}: fix it and run `hostshift cutover --resume --yes` again (or `hostshift rollback --yes`)",
        .0.join("; ")
    )]
    Unreachable(Vec<String>),
    /// The agent of one side is not connected.
    #[error("the {0} agent is not connected")]
    NotConnected(Side),
    /// An agent refused or failed a request (the explanation says what to do).
    #[error("{0}")]
    Agent(String),
    /// PM2 apps did not reach the wanted state.
    #[error("pm2 {action} did not reach the wanted state: {}", .states.join(", "))]
    Pm2 {
        /// `start` or `stop`.
        action: String,
        /// `<app> <status>` for each app.
        states: Vec<String>,
    },
    /// The plan's `[switch]` cannot be used, or the switch failed.
    #[error("{0}")]
    Switch(String),
    /// A followed database's follower did not reach the old host's position inside the freeze.
    #[error(
        "the follower did not catch up inside the freeze ({0}): see `hostshift follow status`; fix the follower and cut over again, or run `hostshift follow cleanup` to cut over with the key-range delta (a longer freeze)"
    )]
    CatchUp(String),
    /// The delta sync failed.
    #[error("{0}")]
    Delta(String),
    /// The old database changed between the delta and the proof.
    #[error(
        "the old database changed during the freeze ({}): something still writes to it — a superuser session, or an app the freeze methods do not cover{}",
        .tables.join(", "),
        if .differ.is_empty() { String::new() } else { format!("; the hosts now differ in: {}", .differ.join("; ")) }
    )]
    OldDatabaseChanged {
        /// `<database> <schema.table>` that changed.
        tables: Vec<String>,
        /// What differs between the hosts now.
        differ: Vec<String>,
    },
    /// The old storage was written during the freeze (see [`super::STORAGE_WRITER`]).
    #[error("{}{}: an app or job the freeze methods do not stop", super::STORAGE_WRITER, .0)]
    StorageWritten(String),
    /// The hosts differ after the delta.
    #[error("the hosts differ after the delta: {}", .0.join("; "))]
    Differ(Vec<String>),
    /// The proof could not compare some items.
    #[error("the proof could not compare (no verdict, not a difference): {}", .0.join("; "))]
    CouldNotCompare(Vec<String>),
    /// The checks after the switch failed.
    #[error("after the switch: {}", .0.join("; "))]
    AfterSwitch(Vec<String>),
    /// The proof after the switch (the new host under the snapshot it held at the switch, against
    /// the frozen old host) found the hosts different.
    #[error(
        "the proof after the switch found the hosts different (the new host as it was when traffic moved, against the frozen old host): {}",
        .0.join("; ")
    )]
    DifferAfterSwitch(Vec<String>),
    /// A resumed cutover cannot run its proof after the switch any more: the snapshot of the new
    /// host at the switch is gone and the new host has served since.
    #[error("{0}")]
    ProofImpossible(String),
    /// A gate failed: what was found and what to do.
    #[error("{0}")]
    Gate(String),
    /// The plan moves the other way than the journal's cutover (see [`super::direction`]).
    #[error("{0}")]
    Reversed(String),
    /// A failure injected by a test (debug builds only).
    #[error("injected failure at {0} (HOSTSHIFT_TEST_FAIL_AT, debug builds only)")]
    Injected(String),
}

impl CutoverError {
    /// The journal could not be written: the run stops where it is.
    pub fn is_journal(&self) -> bool {
        matches!(self, CutoverError::Journal { .. })
    }
}

/// An agent's refusal, explained (`client::explain_status`), with what it was about.
pub fn agent(what: impl std::fmt::Display, s: &tonic::Status) -> CutoverError {
    CutoverError::Agent(format!("{what}: {}", crate::client::explain_status(s)))
}

/// An agent's refusal, explained, on its own.
pub fn status(s: &tonic::Status) -> CutoverError {
    CutoverError::Agent(crate::client::explain_status(s))
}

/// A cutover that could not start at all.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal cannot be written: nothing is done without one.
    #[error("cannot write the journal in {path}: {source}; nothing was done")]
    Journal {
        /// Its folder or file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl StartError {
    /// A journal failure before anything was done.
    pub(super) fn from_cutover(e: CutoverError, plan: &Plan) -> StartError {
        match e {
            CutoverError::Journal { path, source } => StartError::Journal {
                path: path.display().to_string(),
                source,
            },
            other => StartError::Journal {
                path: plan.state_dir().display().to_string(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}
