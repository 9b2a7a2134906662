//! The rehearsal's way back: after the cutover (which opened the rollback window), an app writes
//! on the NEW host — sign-ups, edits of one profile, deletions of its own sign-ups — while
//! `rollback` freezes it, waits until the old host applied everything and moves back. Then every
//! write the new host acknowledged is looked up on the old host row by row (final values, deleted
//! rows gone), the old host must take a write again, and no slot of hostshift may remain.
//!
//! Like [`super::writer`], each write commits on its own and its outcome is sorted into
//! acknowledged, refused by the freeze (`25006`), unknown (the connection broke in flight) or
//! failed otherwise; only acknowledged writes must be on the old host.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;

use crate::plan::Plan;

/// The pause between two writes (about 50 a second).
const INTERVAL: Duration = Duration::from_millis(20);
/// Every this many writes, an edit of the edited profile.
const EDIT_EVERY: u64 = 5;
/// Every this many writes, the deletion of the oldest sign-up still there.
const DELETE_EVERY: u64 = 7;
/// How long the app writes on the new host before the rollback starts.
const BEFORE_ROLLBACK: Duration = Duration::from_secs(2);

/// The e-mail of the new host's sign-up `n`.
fn email(n: u64) -> String {
    format!("back-{n}@example.com")
}

/// The profile the new host's app edits over and over.
const EDITED: &str = "back-edited@example.com";

#[derive(Clone, Debug, Default)]
struct Tally {
    inserted: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
    /// Sign-ups whose deletion has an unknown outcome: present or absent are both fine.
    uncertain: BTreeSet<u64>,
    edits: u64,
    last_edit: Option<String>,
    uncertain_edits: Vec<String>,
    refused: u64,
    unknown: u64,
    other: u64,
}

/// What the round trip found, for the report and `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoundTrip {
    /// Writes the new host acknowledged (sign-ups, edits, deletions).
    pub acknowledged: u64,
    /// Of which deletions.
    pub deletes: u64,
    /// Writes refused by the rollback's freeze of the new host.
    pub refused: u64,
    /// Writes of unknown outcome (connection ended in flight).
    pub unknown: u64,
    /// Writes the server failed otherwise.
    pub failed: u64,
    /// Acknowledged writes of the new host not on the old host with their final value.
    pub lost: u64,
    /// The first few lost writes, described.
    pub lost_examples: Vec<String>,
    /// The rollback's write freeze (the new host frozen until traffic is back on the old one).
    pub rollback_freeze_ms: Option<u64>,
    /// The whole rollback.
    pub rollback_ms: u64,
    /// The old host took a write after the rollback.
    pub old_writable: bool,
    /// Slots of hostshift left on either host after the rollback.
    pub slots_left: i64,
    /// The rollback's steps, `name ms`.
    pub steps: Vec<String>,
    /// Config files, storage files and large objects of the new host the rollback named as not
    /// carried back (the lab's app changes none of them: empty).
    pub not_carried_back: Vec<String>,
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, String> {
    super::writer::connect_as(conninfo, "the rehearsal").await
}

async fn write_loop(conninfo: String, tally: Arc<Mutex<Tally>>, stopped: watch::Receiver<bool>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut n: u64 = 0;
    loop {
        if *stopped.borrow() {
            return;
        }
        tokio::time::sleep(INTERVAL).await;
        let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
            client = connect(&conninfo).await.ok();
            continue;
        };
        n += 1;
        let value = format!("back edit {n}");
        // The oldest acknowledged sign-up not yet deleted.
        let victim = if n.is_multiple_of(DELETE_EVERY) {
            tally.lock().ok().and_then(|t| {
                t.inserted
                    .iter()
                    .find(|i| !t.deleted.contains(i) && !t.uncertain.contains(i))
                    .copied()
            })
        } else {
            None
        };
        let edit = victim.is_none() && n.is_multiple_of(EDIT_EVERY);
        let result = if let Some(v) = victim {
            c.execute("DELETE FROM users WHERE email = $1", &[&email(v)])
                .await
        } else if edit {
            c.execute(
                "UPDATE users SET display_name = $1, updated_at = now() WHERE email = $2",
                &[&value, &EDITED],
            )
            .await
        } else {
            c.execute(
                "INSERT INTO users (email, display_name) VALUES ($1, $2)",
                &[&email(n), &format!("Back user {n}")],
            )
            .await
        };
        let Ok(mut t) = tally.lock() else { return };
        match result {
            Ok(_) => {
                if let Some(v) = victim {
                    t.deleted.insert(v);
                } else if edit {
                    t.edits += 1;
                    t.last_edit = Some(value);
                    t.uncertain_edits.clear();
                } else {
                    t.inserted.insert(n);
                }
            }
            Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => t.refused += 1,
            Err(e) => {
                if e.as_db_error().is_none() {
                    t.unknown += 1;
                    if let Some(v) = victim {
                        t.uncertain.insert(v);
                    } else if edit {
                        t.uncertain_edits.push(value);
                    }
                } else {
                    t.other += 1;
                }
                drop(t);
                client = None;
            }
        }
    }
}

/// Runs the app on the new host, then `rollback` within the window, then the row-by-row check
/// on the old host. `Err` only when the flow could not run at all; a lost write, a slot left or
/// an old host still read-only is in the result (the caller fails the phase on it).
///
/// # Errors
/// A database could not be reached or the rollback did not start.
pub async fn run(
    plan: &Plan,
    old_conninfo: &str,
    new_conninfo: &str,
    mode: crate::progress::Mode,
) -> Result<RoundTrip, String> {
    let setup = connect(new_conninfo)
        .await
        .map_err(|e| format!("the new host's database: {e}"))?;
    setup
        .execute(
            "INSERT INTO users (email, display_name) VALUES ($1, 'back edit 0')
             ON CONFLICT (email) DO NOTHING",
            &[&EDITED],
        )
        .await
        .map_err(|e| format!("the new host took no write after the cutover: {e}"))?;
    drop(setup);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(write_loop(
        new_conninfo.to_string(),
        Arc::clone(&tally),
        stopped,
    ));
    tokio::time::sleep(BEFORE_ROLLBACK).await;

    let t = Instant::now();
    let rolled = crate::cutover::rollback(plan, mode).await;
    let rollback_ms = t.elapsed().as_millis() as u64;
    // The new host stays frozen after the rollback: let the app meet the freeze once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tally.lock().map(|t| t.refused == 0).unwrap_or(false) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let tally = tally.lock().map(|t| t.clone()).unwrap_or_default();
    let report = rolled.map_err(|e| format!("rollback: {e}"))?;
    if !report.ok {
        return Err(format!(
            "rollback: {}: {}",
            report.outcome.as_str(),
            report.error.unwrap_or_else(|| "see its report".into())
        ));
    }

    let old = connect(old_conninfo)
        .await
        .map_err(|e| format!("the old host's database: {e}"))?;
    let rows = old
        .query(
            "SELECT email FROM users WHERE email LIKE 'back-%@example.com'",
            &[],
        )
        .await
        .map_err(|e| format!("read the old host's users: {e}"))?;
    let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut out = RoundTrip {
        acknowledged: tally.inserted.len() as u64 + tally.edits + tally.deleted.len() as u64,
        deletes: tally.deleted.len() as u64,
        refused: tally.refused,
        unknown: tally.unknown,
        failed: tally.other,
        rollback_freeze_ms: report.freeze_ms,
        rollback_ms,
        steps: report
            .steps
            .iter()
            .map(|s| format!("{} {} ms", s.name, s.ms))
            .collect(),
        not_carried_back: report.not_carried_back.clone(),
        ..RoundTrip::default()
    };
    let mut lose = |what: String| {
        out.lost += 1;
        if out.lost_examples.len() < 5 {
            out.lost_examples.push(what);
        }
    };
    for n in &tally.inserted {
        let e = email(*n);
        if tally.uncertain.contains(n) {
            continue;
        }
        match (tally.deleted.contains(n), present.contains(&e)) {
            (false, false) => lose(format!("sign-up {e} is not on the old host")),
            (true, true) => lose(format!("deletion of {e} did not reach the old host")),
            _ => {}
        }
    }
    if let Some(want) = &tally.last_edit {
        let got: Option<String> = old
            .query_opt(
                "SELECT display_name FROM users WHERE email = $1",
                &[&EDITED],
            )
            .await
            .map_err(|e| format!("read the old host's edited profile: {e}"))?
            .map(|r| r.get(0));
        let fine = got
            .as_ref()
            .is_some_and(|g| g == want || tally.uncertain_edits.iter().any(|u| u == g));
        if !fine {
            lose(format!(
                "edit of {EDITED}: old host has {got:?}, last acknowledged {want:?}"
            ));
        }
    }
    // The old host takes writes again (the rollback unfroze it).
    out.old_writable = old
        .execute(
            "INSERT INTO users (email, display_name) VALUES ('back-check@example.com', 'check')",
            &[],
        )
        .await
        .is_ok();
    let _ = old
        .execute(
            "DELETE FROM users WHERE email = 'back-check@example.com'",
            &[],
        )
        .await;
    for c in [old_conninfo, new_conninfo] {
        let db = connect(c).await?;
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hostshift%'",
                &[],
            )
            .await
            .map_err(|e| format!("count the slots: {e}"))?
            .get(0);
        out.slots_left += n;
    }
    Ok(out)
}

/// The phase's line: `Ok` when nothing was lost, the old host writable and no slot left.
pub fn verdict(r: &RoundTrip) -> Result<String, String> {
    let line = format!(
        "{} writes acknowledged by the new host ({} deletions), {} lost; rollback freeze {} ms (rollback {} ms); {} refused by the freeze, {} of unknown outcome; old host writable: {}; slots left: {}; steps: {}",
        r.acknowledged,
        r.deletes,
        r.lost,
        r.rollback_freeze_ms
            .map_or_else(|| "?".to_string(), |m| m.to_string()),
        r.rollback_ms,
        r.refused,
        r.unknown,
        if r.old_writable { "yes" } else { "NO" },
        r.slots_left,
        r.steps.join(", ")
    );
    if !r.not_carried_back.is_empty() {
        Err(format!(
            "{line}; NOT carried back: {}",
            r.not_carried_back.join("; ")
        ))
    } else if r.lost == 0 && r.old_writable && r.slots_left == 0 && r.acknowledged > 0 {
        Ok(line)
    } else if r.lost > 0 {
        Err(format!("{line}; lost: {}", r.lost_examples.join("; ")))
    } else {
        Err(line)
    }
}
