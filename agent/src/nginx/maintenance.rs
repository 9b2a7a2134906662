//! Maintenance mode of the configured site: switch on, switch off, report — with all state on
//! disk, so an agent restarted in the middle carries on where it stopped.
//!
//! # State
//! In `[nginx] state_dir` (default `/var/lib/hostshift/nginx`, mode 0700):
//! - `site.original` — the original site file, byte for byte;
//! - `maintenance.json` — the site path, the original's SHA-256, mode and owner, the pass paths,
//!   `Retry-After`, and since when. **Maintenance is on exactly when this file exists.**
//!
//! The state is kept out of the site's folder on purpose: nginx commonly includes
//! `sites-enabled/*`, and a saved copy beside the site would be loaded as a second site.
//!
//! # Order of writes (each file is staged and renamed into place)
//! On: test the current config (refuse a broken one: we could not tell our error from one that
//! was there) → save `site.original` → write `maintenance.json` → write the maintenance site →
//! `nginx -t` → reload. A failing test or reload puts the original back, removes the state and
//! reports nginx's message. On while already on never touches the saved original: it regenerates
//! the maintenance site from it (new pass paths apply), and tests and reloads again (which also
//! heals a crash between writing and reloading).
//!
//! Off: verify the saved original against its SHA-256 (`DataLoss` otherwise: never restore a
//! damaged copy) → write it back with its mode and owner → test → reload → remove the state.
//! The state goes last, so a failed reload can simply be retried with another `off`.
//! A site file edited while maintenance was on (neither the original nor the generated page) is
//! kept as `site.edited-<unix time>` in the state folder first, and the outcome says so: the
//! restored original does not have those edits.
//! Off while not on changes nothing — unless the site file carries the maintenance marker
//! without any saved state, which is reported instead of guessed at.
//!
//! The site path is resolved through symlinks first (`sites-enabled/app` → `sites-available/app`)
//! so the link stays a link.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hostshift_shared::digest::Sha256Digest;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::control::{self, TestOutcome};
use super::site;
use crate::config::NginxConfig;
use crate::error::AgentError;
use crate::fsutil::write_atomic;

const ORIGINAL: &str = "site.original";
const STATE: &str = "maintenance.json";

/// What a maintenance request asks for.
#[derive(Clone, Debug, Default)]
pub struct OnRequest {
    /// Paths that still reach the app.
    pub pass_paths: Vec<String>,
    /// `Retry-After` seconds (0 = [`site::DEFAULT_RETRY_AFTER`]).
    pub retry_after_secs: u32,
    /// Generate and return the maintenance site; change nothing.
    pub dry_run: bool,
}

/// The state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    site: PathBuf,
    original_sha256: String,
    mode: u32,
    uid: u32,
    gid: u32,
    pass_paths: Vec<String>,
    retry_after_secs: u32,
    since_unix: i64,
}

/// Where maintenance stands after an operation.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Maintenance is on.
    pub on: bool,
    /// This call changed the site file.
    pub changed: bool,
    /// The site file (symlinks resolved).
    pub site: PathBuf,
    /// Where the original is kept while on.
    pub saved_original: PathBuf,
    /// SHA-256 of the original (empty when never on).
    pub original_sha256: String,
    /// SHA-256 of the site file now.
    pub site_sha256: String,
    /// Pass paths in effect.
    pub pass_paths: Vec<String>,
    /// `Retry-After` in effect.
    pub retry_after_secs: u32,
    /// What `nginx -t` said, when it ran.
    pub test_message: String,
    /// The generated site (dry runs).
    pub generated: String,
    /// Unix seconds since maintenance is on.
    pub since_unix: i64,
    /// Off: where the site file, edited while maintenance was on, was kept (its edits are not in
    /// the restored original); `None` when it was not edited.
    pub edited_copy: Option<PathBuf>,
}

struct Paths {
    site: PathBuf,
    original: PathBuf,
    state: PathBuf,
}

fn paths(cfg: &NginxConfig) -> Result<Paths, AgentError> {
    let site = std::fs::canonicalize(&cfg.site).map_err(|e| {
        AgentError::FailedPrecondition(format!(
            "the site file {} (key `site` in [nginx]) cannot be resolved: {e}",
            cfg.site.display()
        ))
    })?;
    Ok(Paths {
        site,
        original: cfg.state_dir.join(ORIGINAL),
        state: cfg.state_dir.join(STATE),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|e| AgentError::io("read", path, e))
}

fn load_state(p: &Paths) -> Result<Option<State>, AgentError> {
    match std::fs::read(&p.state) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read", &p.state, e)),
        Ok(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "the maintenance state {} is unreadable ({e}); the original site is in {} — compare it with the site file and remove the state by hand",
                p.state.display(),
                p.original.display()
            ))
        }),
    }
}

/// The saved original, verified against the SHA-256 recorded when it was saved.
fn saved_original(p: &Paths, st: &State) -> Result<Vec<u8>, AgentError> {
    let bytes = read(&p.original)?;
    let actual = Sha256Digest::of(&bytes).to_string();
    if actual != st.original_sha256 {
        return Err(AgentError::DataLoss(format!(
            "the saved original site {} has SHA-256 {actual}, but {} was saved; it is not restored — restore the site by hand",
            p.original.display(),
            st.original_sha256
        )));
    }
    Ok(bytes)
}

fn remove_state(p: &Paths) -> Result<(), AgentError> {
    for f in [&p.state, &p.original] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AgentError::io("remove", f, e)),
        }
    }
    Ok(())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn text<'a>(bytes: &'a [u8], site: &Path) -> Result<&'a str, AgentError> {
    std::str::from_utf8(bytes).map_err(|_| {
        AgentError::FailedPrecondition(format!(
            "the site file {} is not UTF-8 text; hostshift does not generate a maintenance version of it",
            site.display()
        ))
    })
}

fn outcome(p: &Paths, st: Option<&State>, site_bytes: &[u8]) -> Outcome {
    Outcome {
        on: st.is_some(),
        site: p.site.clone(),
        saved_original: p.original.clone(),
        original_sha256: st.map(|s| s.original_sha256.clone()).unwrap_or_default(),
        site_sha256: Sha256Digest::of(site_bytes).to_string(),
        pass_paths: st.map(|s| s.pass_paths.clone()).unwrap_or_default(),
        retry_after_secs: st.map_or(0, |s| s.retry_after_secs),
        since_unix: st.map_or(0, |s| s.since_unix),
        ..Outcome::default()
    }
}

fn retry_after(requested: u32) -> Result<u32, AgentError> {
    match requested {
        0 => Ok(site::DEFAULT_RETRY_AFTER),
        s if s > site::MAX_RETRY_AFTER => Err(AgentError::InvalidArgument(format!(
            "retry_after_secs {s} is more than a day"
        ))),
        s => Ok(s),
    }
}

/// Whether maintenance is on, from the state on disk.
///
/// # Errors
/// An unresolvable site file or unreadable state.
pub fn status(cfg: &NginxConfig) -> Result<Outcome, AgentError> {
    let p = paths(cfg)?;
    let st = load_state(&p)?;
    let current = read(&p.site)?;
    Ok(outcome(&p, st.as_ref(), &current))
}

/// Switches maintenance on (see the module doc for the order of writes).
///
/// # Errors
/// `InvalidArgument` for bad pass paths; `FailedPrecondition` when the current config fails
/// `nginx -t`, the site cannot be turned into a maintenance version, the generated version fails
/// the test or the reload fails (the original is back in place in each case); `DataLoss` when the
/// saved original does not match its digest; I/O errors.
pub async fn on(
    cfg: &NginxConfig,
    req: OnRequest,
    cancel: &CancellationToken,
) -> Result<Outcome, AgentError> {
    let pass = site::pass_paths(&req.pass_paths)
        .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
    let retry = retry_after(req.retry_after_secs)?;
    let p = paths(cfg)?;
    let current = read(&p.site)?;
    let existing = load_state(&p)?;

    // Already on: the saved original is the source; it is never replaced.
    if let Some(mut st) = existing {
        let original = saved_original(&p, &st)?;
        let generated = site::generate(text(&original, &p.site)?, &pass, retry, &p.original)
            .map_err(|e| AgentError::FailedPrecondition(format!("{}: {e}", p.site.display())))?;
        if req.dry_run {
            let mut o = outcome(&p, Some(&st), &current);
            o.generated = generated;
            return Ok(o);
        }
        let changed = current != generated.as_bytes();
        if changed {
            write_atomic(
                &p.site,
                generated.as_bytes(),
                st.mode,
                Some((st.uid, st.gid)),
            )?;
        }
        let t = match control::test_or_refuse(cfg, cancel, "maintenance not updated").await {
            Ok(t) => t,
            Err(e) => {
                if changed {
                    write_atomic(&p.site, &current, st.mode, Some((st.uid, st.gid)))?;
                }
                return Err(e);
            }
        };
        control::signal_reload(cfg, cancel).await?;
        st.pass_paths = pass;
        st.retry_after_secs = retry;
        write_state(cfg, &p, &st)?;
        let mut o = outcome(&p, Some(&st), generated.as_bytes());
        o.changed = changed;
        o.test_message = t.message;
        tracing::info!(site = %p.site.display(), changed, "maintenance already on; nginx reloaded");
        return Ok(o);
    }

    if site::is_generated(&current) {
        return Err(AgentError::FailedPrecondition(format!(
            "{} already holds a hostshift maintenance page, but no saved original exists in {}: put the original site back by hand (it is not generated again from a maintenance version)",
            p.site.display(),
            cfg.state_dir.display()
        )));
    }
    let generated =
        site::generate(text(&current, &p.site)?, &pass, retry, &p.original).map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "cannot generate a maintenance version of {}: {e}",
                p.site.display()
            ))
        })?;
    if req.dry_run {
        let mut o = outcome(&p, None, &current);
        o.generated = generated;
        o.pass_paths = pass;
        o.retry_after_secs = retry;
        return Ok(o);
    }
    control::test_or_refuse(
        cfg,
        cancel,
        "maintenance not switched on: the current configuration must pass first",
    )
    .await?;

    let meta = std::fs::metadata(&p.site).map_err(|e| AgentError::io("stat", &p.site, e))?;
    let st = State {
        site: p.site.clone(),
        original_sha256: Sha256Digest::of(&current).to_string(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        pass_paths: pass,
        retry_after_secs: retry,
        since_unix: now_unix(),
    };
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| AgentError::io("create", &cfg.state_dir, e))?;
    let _ = std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700));
    write_atomic(&p.original, &current, 0o600, None)?;
    write_state(cfg, &p, &st)?;
    let owner = Some((st.uid, st.gid));

    // From here on, a failure puts the original back and forgets the state.
    let undo = |e: AgentError| -> AgentError {
        match write_atomic(&p.site, &current, st.mode, owner).and_then(|()| remove_state(&p)) {
            Ok(()) => e,
            Err(undo) => AgentError::FailedPrecondition(format!(
                "{e}; putting the original back failed too ({undo}): copy {} over {} by hand",
                p.original.display(),
                p.site.display()
            )),
        }
    };
    if let Err(e) = write_atomic(&p.site, generated.as_bytes(), st.mode, owner) {
        return Err(undo(e));
    }
    let t: TestOutcome = match control::test_or_refuse(
        cfg,
        cancel,
        "maintenance not switched on (the original site is back in place)",
    )
    .await
    {
        Ok(t) => t,
        Err(e) => return Err(undo(e)),
    };
    if let Err(e) = control::signal_reload(cfg, cancel).await {
        let e = undo(e);
        // The master may have applied the maintenance version after all (new workers started,
        // old ones slow to quiet down): reload once more so it runs what is on disk again.
        if let Err(again) = control::signal_reload(cfg, cancel).await {
            tracing::warn!(error = %again, "reloading the restored original failed too");
        }
        return Err(e);
    }
    tracing::info!(site = %p.site.display(), pass = ?st.pass_paths, "maintenance on");
    let mut o = outcome(&p, Some(&st), generated.as_bytes());
    o.changed = true;
    o.test_message = t.message;
    Ok(o)
}

fn write_state(cfg: &NginxConfig, p: &Paths, st: &State) -> Result<(), AgentError> {
    let json = serde_json::to_vec_pretty(st)
        .map_err(|e| AgentError::Internal(format!("encoding the maintenance state: {e}")))?;
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| AgentError::io("create", &cfg.state_dir, e))?;
    write_atomic(&p.state, &json, 0o600, None)
}

/// Switches maintenance off: the saved original goes back byte for byte, then test and reload.
///
/// # Errors
/// `DataLoss` when the saved original does not match its digest; `FailedPrecondition` when the
/// site carries the maintenance marker without saved state, or the restored config fails the test
/// or the reload (the original stays in place and the state is kept, so `off` can be retried);
/// I/O errors.
pub async fn off(cfg: &NginxConfig, cancel: &CancellationToken) -> Result<Outcome, AgentError> {
    let p = paths(cfg)?;
    let current = read(&p.site)?;
    let Some(st) = load_state(&p)? else {
        if site::is_generated(&current) {
            return Err(AgentError::FailedPrecondition(format!(
                "{} holds a hostshift maintenance page, but no saved original exists in {}: put the original site back by hand",
                p.site.display(),
                cfg.state_dir.display()
            )));
        }
        return Ok(outcome(&p, None, &current));
    };
    let original = saved_original(&p, &st)?;
    let changed = current != original;
    // Edited while on: neither the original nor the maintenance page generated from it. The
    // restore discards those edits, so keep the file and say so.
    let edited = changed
        && site::generate(
            text(&original, &p.site)?,
            &st.pass_paths,
            st.retry_after_secs,
            &p.original,
        )
        .is_ok_and(|g| g.as_bytes() != current.as_slice());
    let edited_copy = if edited {
        let copy = cfg.state_dir.join(format!("site.edited-{}", now_unix()));
        write_atomic(&copy, &current, 0o600, None)?;
        tracing::warn!(site = %p.site.display(), kept = %copy.display(), "the site was edited during maintenance; the edits are not in the restored original");
        Some(copy)
    } else {
        None
    };
    if changed {
        write_atomic(&p.site, &original, st.mode, Some((st.uid, st.gid)))?;
    }
    let t = control::test_or_refuse(
        cfg,
        cancel,
        "the original site file is back byte for byte, but nginx still serves the maintenance page",
    )
    .await?;
    control::signal_reload(cfg, cancel).await?;
    remove_state(&p)?;
    tracing::info!(site = %p.site.display(), "maintenance off; original site restored");
    let mut o = outcome(&p, None, &original);
    o.changed = changed;
    o.original_sha256 = st.original_sha256;
    o.test_message = t.message;
    o.edited_copy = edited_copy;
    Ok(o)
}
