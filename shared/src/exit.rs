//! Process exit codes, documented in `docs/exit-codes.md` and relied on by scripts.
//!
//! The coordinator uses 0–5; the agent additionally uses 78 (`EX_CONFIG` from `sysexits.h`)
//! for a bad config, which the systemd unit lists in `RestartPreventExitStatus` so that a broken
//! config does not restart-loop.

/// Everything asked for was done.
pub const OK: u8 = 0;
/// The operation failed; the old host is untouched (or was restored to how it was).
pub const FAILED: u8 = 1;
/// Usage, plan or config error: nothing was done.
pub const USAGE: u8 = 2;
/// Operator action needed: hostshift could not finish *and* could not undo by itself; the message
/// says exactly what to do.
pub const OPERATOR_ACTION: u8 = 3;
/// Nothing to do: the command found its work already done (e.g. `cutover` after a finished
/// cutover). Not a success, so that a script cannot take it for one.
pub const NOTHING_TO_DO: u8 = 4;
/// A comparison could not run (`verify`, the cutover's proof): an agent could not read or reach
/// what it compares — e.g. its database is down or its `ca_file` is wrong. Not "differs": there
/// is no verdict until the cause is fixed.
pub const COULD_NOT_COMPARE: u8 = 5;
/// The agent's config file is invalid (`EX_CONFIG`).
pub const CONFIG: u8 = 78;
