//! One file per command. Each parses its own flags (clap derive), does its work through the
//! library (plan, preflight, client...), and prints its result: a table for people, JSON with
//! `--json`.

pub mod backup;
pub mod certs;
pub mod check;
pub mod db;
pub mod env;
pub mod health;
pub mod hook;
pub mod nginx;
pub mod plan;
pub mod pm2;
pub mod rehearse;
pub mod sync;
pub mod verify;

use crate::error::{CliError, usage};
use crate::plan::Plan;

/// Loads a plan, turning its problems into a usage error (exit 2) that lists each one.
///
/// # Errors
/// A [`CliError::Usage`] listing every problem with file, line and key.
pub fn load_plan(path: &std::path::Path) -> Result<Plan, CliError> {
    Plan::load(path).map_err(|p| usage(anyhow::anyhow!("the plan is invalid:\n{p}")))
}
