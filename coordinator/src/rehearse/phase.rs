//! One phase of a rehearsal as the report and the summary show it ([`Phase`]), why a phase
//! failed ([`PhaseError`]), and what the cutover phase measured ([`Measured`]). A phase passes
//! with a one-line detail or fails with a `PhaseError`, whose text becomes the detail.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::LiveAppError;
use crate::sync::SyncError;

/// One row of the rehearsal's summary.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// `lab`, `check`, `backup`, `sync`, ...
    pub phase: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub status: &'static str,
    /// Its wall time.
    pub ms: u128,
    /// What it did, or why it failed.
    pub detail: String,
}

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// Failed checks of the preflight.
    #[error("{failed} of {total} checks failed")]
    Checks {
        /// Failed checks.
        failed: usize,
        /// All checks.
        total: usize,
    },
    /// An agent could not be reached.
    #[error(transparent)]
    Connect(crate::client::ConnectError),
    /// The backup of the old host.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// A sync or verify could not run.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A sync ran, some units failed (their failures).
    #[error("{0}")]
    Units(String),
    /// The catch-up sync ran, some units failed.
    #[error("the catch-up sync failed: {0}")]
    CatchUpUnits(String),
    /// Items that differ between the hosts (`kind name`).
    #[error("differ: {}", .0.join(", "))]
    Differ(Vec<String>),
    /// The verify after the catch-up found differences.
    #[error("verify after the catch-up found differences")]
    CatchUpDiffers,
    /// The last verify found differences.
    #[error("the hosts differ after the cutover")]
    DifferAfterCutover,
    /// `follow start` failed.
    #[error(transparent)]
    Follow(#[from] crate::follow::FollowError),
    /// The cutover could not start.
    #[error(transparent)]
    CutoverStart(#[from] crate::cutover::StartError),
    /// The cutover ran and did not succeed.
    #[error("{outcome}: {}", .error.as_deref().unwrap_or("see the cutover report"))]
    Cutover {
        /// Its outcome's name.
        outcome: &'static str,
        /// Its error, if it gave one.
        error: Option<String>,
    },
    /// The simulated app could not start or its writes could not be looked up.
    #[error(transparent)]
    LiveApp(#[from] LiveAppError),
    /// Writes (or uploads) the old host acknowledged that the new host lacks.
    #[error("{lost} of {acknowledged} acknowledged {what} are not on the new host: {}", .examples.join("; "))]
    Lost {
        /// `writes` or `uploads`.
        what: &'static str,
        /// How many are missing.
        lost: u64,
        /// How many were acknowledged.
        acknowledged: u64,
        /// A few of them.
        examples: Vec<String>,
    },
    /// The last verify did not compare the lab's materialized view.
    #[error("the final verify did not compare the materialized view {view}")]
    ViewNotCompared {
        /// The view.
        view: &'static str,
    },
    /// The lab's materialized view is not populated on the new host.
    #[error("materialized view {view} on the new host: {state}")]
    ViewNotPopulated {
        /// The view.
        view: &'static str,
        /// What verify saw on the new host.
        state: String,
    },
    /// The storage sub-folder lost its owner on the new host.
    #[error("{} on the new host belongs to uid {uid}, not {user}", .dir.display())]
    Owner {
        /// The folder.
        dir: PathBuf,
        /// Its owner there.
        uid: u32,
        /// The user it should belong to.
        user: &'static str,
    },
    /// A file of the lab could not be inspected.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The lab's database could not be reached.
    #[error("connect to the old database: {0}")]
    Lab(#[from] crate::lab::LabError),
    /// A statement of the simulated app failed.
    #[error("{what}: {source}")]
    Sql {
        /// What it was for.
        what: &'static str,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// The round trip (rollback within the window) failed: its own explanation.
    #[error("{0}")]
    RoundTrip(String),
}

/// What the cutover phase measured, for the summary.
#[derive(Default)]
pub struct Measured {
    /// The cutover's write freeze.
    pub freeze_ms: Option<u64>,
    /// The live writer's writes, looked up on the new host.
    pub live_writes: Option<super::writer::Outcome>,
    /// The live uploads, looked up on the new host.
    pub live_uploads: Option<super::uploader::Outcome>,
    /// The rollback within the window and the new host's writes, looked up on the old host.
    pub round_trip: Option<super::round_trip::RoundTrip>,
}

/// Records a phase that began at `t`; returns whether it passed.
pub fn push(
    phases: &mut Vec<Phase>,
    phase: &'static str,
    t: Instant,
    r: Result<String, PhaseError>,
) -> bool {
    let ok = r.is_ok();
    phases.push(Phase {
        phase,
        status: if ok { "ok" } else { "failed" },
        ms: t.elapsed().as_millis(),
        detail: r.unwrap_or_else(|e| e.to_string()),
    });
    ok
}

/// The phases into the report, one step each.
pub fn record(rep: &mut crate::report::Builder, phases: &[Phase]) {
    for p in phases {
        rep.then(
            p.phase,
            p.ms as u64,
            p.status.parse().unwrap_or(crate::report::Status::Failed),
            p.detail.clone(),
        );
    }
}

/// `phase: detail` of the first failed phase (empty when none failed).
pub fn first_failure(phases: &[Phase]) -> String {
    phases
        .iter()
        .find(|p| p.status == "failed")
        .map_or_else(String::new, |p| format!("{}: {}", p.phase, p.detail))
}

/// Progress lines for people, or none with `-q`.
pub fn mode(quiet: bool) -> crate::progress::Mode {
    if quiet {
        crate::progress::Mode::Quiet
    } else {
        crate::progress::Mode::Human
    }
}
