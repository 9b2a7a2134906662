//! The rehearsal's phases that are one call into the library each: a sync, a verify, the
//! catch-up before a cutover, the follow while the app writes, the app's own writes, and the
//! last verify's check that it compared what makes the app work. Each returns the phase's
//! one-line detail or a [`PhaseError`].

use crate::output::bytes;
use crate::plan::Plan;
use crate::progress::Mode;
use crate::sync::{Only, SyncOptions};

use super::LocalLab;
use super::phase::PhaseError;
use super::writer::LiveWriter;

/// Rows the simulated app writes on the old host after the first copy.
const LATE_USERS: i32 = 25;

fn options(progress: Mode) -> SyncOptions {
    SyncOptions {
        progress,
        ..SyncOptions::default()
    }
}

/// A full sync, its streams added to the report.
pub(super) async fn sync(
    plan: &Plan,
    mode: Mode,
    rep: &mut crate::report::Builder,
) -> Result<String, PhaseError> {
    let r = crate::sync::run(plan, &options(mode)).await?;
    rep.add_sync(&r);
    if r.ok {
        Ok(format!("{} items, {} sent", r.files, bytes(r.bytes)))
    } else {
        Err(PhaseError::Units(r.failures()))
    }
}

/// A verify, its rows added to the report.
pub(super) async fn verify(
    plan: &Plan,
    rep: &mut crate::report::Builder,
) -> Result<String, PhaseError> {
    let v = crate::sync::verify::run(plan).await?;
    rep.add_verify(&v);
    if v.ok {
        Ok(format!("{} items equal", v.rows.len()))
    } else {
        Err(PhaseError::Differ(
            v.rows
                .iter()
                .filter(|r| !r.equal)
                .map(|r| format!("{} {}", r.kind, r.name))
                .collect(),
        ))
    }
}

/// A catch-up sync (only what changed travels) and a verify, as right before a cutover.
pub(super) async fn catch_up(plan: &Plan, mode: Mode) -> Result<String, PhaseError> {
    let s = crate::sync::run(plan, &options(mode)).await?;
    if !s.ok {
        return Err(PhaseError::CatchUpUnits(s.failures()));
    }
    let v = crate::sync::verify::run(plan).await?;
    if !v.ok {
        return Err(PhaseError::CatchUpDiffers);
    }
    let ranges: u64 = s.units.iter().map(|u| u.ranges).sum();
    Ok(format!(
        "{} sent ({ranges} table range(s), {} file(s)); {} items equal",
        bytes(s.bytes),
        s.files,
        v.rows.len()
    ))
}

/// While the app writes: `hostshift follow start` (a slot on the old database, a sync of the
/// database from a snapshot taken after it, then the new host applies every later change), and
/// a catch-up sync of the files and the storage tree. No pause and no verify: with every
/// database followed, the cutover's freshness gate is the follower's lag (issue 12.3).
pub(super) async fn follow(
    plan: &Plan,
    mode: Mode,
    writer: &LiveWriter,
) -> Result<String, PhaseError> {
    let started = crate::follow::start(plan, options(mode)).await?;
    let mut sent = 0;
    for only in [Only::Files, Only::Storage] {
        let s = crate::sync::run(
            plan,
            &SyncOptions {
                only: Some(only),
                ..options(mode)
            },
        )
        .await?;
        if !s.ok {
            return Err(PhaseError::CatchUpUnits(s.failures()));
        }
        sent += s.bytes;
    }
    let not_followed: Vec<String> = started
        .iter()
        .flat_map(|d| d.not_followed.iter().cloned())
        .collect();
    Ok(format!(
        "{} database(s) followed ({}); files and storage synced again ({}) while the app wrote; {} writes acknowledged so far{}",
        started.len(),
        started
            .iter()
            .map(|d| d.slot.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        bytes(sent),
        writer.tally().acknowledged(),
        if not_followed.is_empty() {
            String::new()
        } else {
            format!(
                "; not followed (settled in the freeze): {}",
                not_followed.join(", ")
            )
        }
    ))
}

/// What the app does while the copy runs: new sign-ups and edited profiles on the old host.
pub(super) async fn app_writes(lab: &LocalLab) -> Result<String, PhaseError> {
    let db = lab.old_pg.connect("app").await?;
    let inserted = db
        .execute(
            "INSERT INTO users (email, display_name)
             SELECT 'late' || g || '@example.com', 'Late user ' || g FROM generate_series(1, $1) g",
            &[&LATE_USERS],
        )
        .await
        .map_err(|source| PhaseError::Sql {
            what: "insert users",
            source,
        })?;
    let updated = db
        .execute(
            "UPDATE users SET display_name = display_name || ' (edited)' WHERE id % 97 = 1",
            &[],
        )
        .await
        .map_err(|source| PhaseError::Sql {
            what: "update users",
            source,
        })?;
    Ok(format!(
        "{inserted} users signed up, {updated} profiles edited"
    ))
}

/// The last verify passed; it must also have compared what makes the app work on the new host:
/// the materialized view populated on both, and the storage sub-folder still owned by its
/// non-root user there (verify compares owners; the lab checks the new host's folder too).
pub(super) fn final_verify_covers(
    lab: &LocalLab,
    v: &crate::sync::verify::Report,
) -> Result<String, PhaseError> {
    let view = crate::lab::seed::MATVIEW;
    let row = v
        .rows
        .iter()
        .find(|r| r.kind == "materialized view" && r.name.ends_with(view))
        .ok_or(PhaseError::ViewNotCompared { view })?;
    if !row.new.starts_with("populated") {
        return Err(PhaseError::ViewNotPopulated {
            view,
            state: row.new.clone(),
        });
    }
    let mut detail = format!(
        "{} items equal; materialized view {view} {} on both",
        v.rows.len(),
        row.new
    );
    if let Some(user) = lab.storage.non_root_owner {
        let dir = super::new_storage_dir(lab).join(super::NON_ROOT_DIR);
        let want = nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        let meta = std::fs::symlink_metadata(&dir).map_err(|source| PhaseError::Io {
            path: dir.clone(),
            source,
        })?;
        let got = std::os::unix::fs::MetadataExt::uid(&meta);
        if want != Some(got) {
            return Err(PhaseError::Owner {
                dir,
                uid: got,
                user,
            });
        }
        detail.push_str(&format!(
            "; storage owners compared, sub-folder {} owned by {user} on the new host",
            super::NON_ROOT_DIR
        ));
    }
    Ok(detail)
}
