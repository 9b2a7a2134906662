//! Putting a report on disk: `<reports dir>/<UTC timestamp>-<kind>/` with `report.json`,
//! `report.md` and `report.html`, all or nothing.
//!
//! The three files are written and fsynced in a hidden staging folder next to the final one,
//! which is then renamed into place: a reader (or a crash) never sees a half-written report.
//! Two reports started in the same second get `-2`, `-3`… instead of overwriting each other.
//! Everything is rendered from [`Report::scrubbed`], never from the report as given.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::fmt::dir_timestamp;
use super::{Report, html, markdown};
use crate::plan::Plan;

/// A report that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A folder or file could not be created, written or renamed.
    #[error("cannot write the report at {path}: {source}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The report could not be encoded (a bug).
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a plan's reports go: `<state_dir>/reports`.
pub fn reports_dir(plan: &Plan) -> PathBuf {
    plan.state_dir().join("reports")
}

fn put(path: &Path, text: &str) -> Result<(), ReportError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes `report` (scrubbed) as a new folder under `dir` (created if missing) and returns that
/// folder.
///
/// # Errors
/// [`ReportError::Io`] naming the path that could not be created, written or renamed.
pub fn write(dir: &Path, report: &Report) -> Result<PathBuf, ReportError> {
    let clean = report.scrubbed();
    let json = serde_json::to_string_pretty(&clean)? + "\n";
    let md = markdown::render(&clean);
    let page = html::render(&clean);

    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let base = format!("{}-{}", dir_timestamp(clean.started), clean.kind.as_str());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .tempdir_in(dir)
        .map_err(io(dir))?;
    put(&staging.path().join("report.json"), &json)?;
    put(&staging.path().join("report.md"), &md)?;
    put(&staging.path().join("report.html"), &page)?;

    let mut n = 1u32;
    let target = loop {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let target = dir.join(name);
        // rename(2) would replace an empty folder of that name: never reuse one.
        if !target.exists() {
            match std::fs::rename(staging.path(), &target) {
                Ok(()) => break target,
                // Another report took the name between the check and the rename.
                Err(e)
                    if n < 1000
                        && matches!(
                            e.kind(),
                            ErrorKind::AlreadyExists | ErrorKind::DirectoryNotEmpty
                        ) => {}
                Err(e) => return Err(io(&target)(e)),
            }
        }
        n += 1;
    };
    // The staging folder is now the report: nothing left to clean up.
    let _ = staging.keep();
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}

/// Writes the report of a command on `plan` and prints `Report: <folder>/report.html` on stderr
/// (unless `quiet`). A report that cannot be written is a warning, never a failure of the
/// command it describes: returns the folder when it was written.
pub fn publish(plan: &Plan, report: &Report, quiet: bool) -> Option<PathBuf> {
    match write(&reports_dir(plan), report) {
        Ok(dir) => {
            if !quiet {
                eprintln!("Report: {}", dir.join("report.html").display());
            }
            Some(dir)
        }
        Err(e) => {
            eprintln!("hostshift: warning: no report was written: {e}");
            None
        }
    }
}
