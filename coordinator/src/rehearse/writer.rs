//! The rehearsal's live app: a writer that keeps signing users up and editing one profile on the
//! old database — through the catch-up sync and right into the cutover's write freeze — and
//! remembers exactly which writes the database acknowledged, so the rehearsal can prove that
//! every one of them reached the new host and count the ones the freeze refused.
//!
//! It connects like an app (a new connection after the freeze ends its session), commits each
//! write on its own, and sorts every outcome into one of three piles: acknowledged (the commit
//! returned), refused (`25006 read_only_sql_transaction`: the freeze held), or unknown (the
//! connection broke while the statement was in flight: it may or may not have committed, so it is
//! neither counted as lost nor as kept). Only acknowledged writes must be on the new host.
//!
//! It never pauses: the rehearsal follows the old database, so the cutover's gates take the
//! follower's lag, not a clean `verify` that a writing app could not give.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

use super::session::{LiveAppError, session, sql};

/// The pause between two writes (about 50 a second when the database answers at once).
const INTERVAL: Duration = Duration::from_millis(20);
/// Wait before connecting again after a broken connection.
const RECONNECT: Duration = Duration::from_millis(100);
/// Every this many writes, the edit of the writer's own profile row instead of a sign-up.
const EDIT_EVERY: u64 = 5;

/// The e-mail of sign-up `n` (the rows the writer owns: `live-<n>@example.com`).
pub fn email(n: u64) -> String {
    format!("live-{n}@example.com")
}

/// The e-mail of the one profile the writer edits over and over.
pub const EDITED: &str = "live-edited@example.com";

/// What the writer saw, so far.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Sign-ups the database acknowledged (their `n`).
    pub inserted: BTreeSet<u64>,
    /// Edits of the edited profile the database acknowledged.
    pub edits: u64,
    /// The last acknowledged value of the edited profile's `display_name`.
    pub last_edit: Option<String>,
    /// Values of edits whose outcome is unknown, written after the last acknowledged one: the
    /// new host may hold one of them instead.
    pub uncertain_edits: Vec<String>,
    /// Writes refused by the read-only freeze.
    pub refused: u64,
    /// Writes whose outcome is unknown (the connection broke while they were in flight).
    pub unknown: u64,
    /// Other failed writes.
    pub other: u64,
    /// The last other error.
    pub last_error: Option<String>,
}

impl Tally {
    /// Writes acknowledged: sign-ups plus edits.
    pub fn acknowledged(&self) -> u64 {
        self.inserted.len() as u64 + self.edits
    }
}

/// The running writer; [`LiveWriter::stop`] ends it and returns the tally.
pub struct LiveWriter {
    tally: Arc<Mutex<Tally>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LiveWriter {
    /// Starts writing to the database at `conninfo` (key=value, no TLS: the lab's unix socket).
    /// The edited profile is created first; an error there is returned (nothing runs).
    ///
    /// # Errors
    /// The connection or the first insert failed.
    pub async fn start(conninfo: &str) -> Result<Self, LiveAppError> {
        let client = connect(conninfo).await?;
        client
            .execute(
                "INSERT INTO users (email, display_name) VALUES ($1, 'live edit 0')
                 ON CONFLICT (email) DO NOTHING",
                &[&EDITED],
            )
            .await
            .map_err(sql("the live writer's first insert"))?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            conninfo.to_string(),
            Some(client),
            Arc::clone(&tally),
            stopped,
        ));
        Ok(Self { tally, stop, task })
    }

    /// What the writer saw so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Stops the writer (after its write in flight) and returns what it saw.
    pub async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, LiveAppError> {
    session(conninfo, "the live writer").await
}

/// [`session`] with its error as text: what `round_trip.rs` calls. That file belongs to another
/// change in flight; once it calls [`session`] itself this goes.
///
/// # Errors
/// The text of [`LiveAppError::Connect`].
pub(super) async fn connect_as(
    conninfo: &str,
    who: &'static str,
) -> Result<tokio_postgres::Client, String> {
    session(conninfo, who).await.map_err(|e| e.to_string())
}

async fn run(
    conninfo: String,
    mut client: Option<tokio_postgres::Client>,
    tally: Arc<Mutex<Tally>>,
    stopped: watch::Receiver<bool>,
) {
    let mut n: u64 = 0;
    loop {
        if *stopped.borrow() {
            return;
        }
        tokio::time::sleep(INTERVAL).await;
        let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
            client = connect(&conninfo).await.ok();
            if client.is_none() {
                tokio::time::sleep(RECONNECT).await;
            }
            continue;
        };
        n += 1;
        let edit = n.is_multiple_of(EDIT_EVERY);
        let value = format!("live edit {n}");
        let result = if edit {
            c.execute(
                "UPDATE users SET display_name = $1, updated_at = now() WHERE email = $2",
                &[&value, &EDITED],
            )
            .await
        } else {
            c.execute(
                "INSERT INTO users (email, display_name) VALUES ($1, $2)",
                &[&email(n), &format!("Live user {n}")],
            )
            .await
        };
        let Ok(mut t) = tally.lock() else { return };
        match result {
            Ok(_) if edit => {
                t.edits += 1;
                t.last_edit = Some(value);
                t.uncertain_edits.clear();
            }
            Ok(_) => {
                t.inserted.insert(n);
            }
            Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => t.refused += 1,
            Err(e) if e.as_db_error().is_none() => {
                // The connection broke in flight: committed or not, nobody can say.
                t.unknown += 1;
                if edit {
                    t.uncertain_edits.push(value);
                }
                drop(t);
                client = None;
            }
            Err(e) => {
                // The server said no (the freeze ended the session: 57P01, or anything else): the
                // statement did not commit.
                t.other += 1;
                t.last_error = Some(e.to_string());
                drop(t);
                client = None;
            }
        }
    }
}

/// What the new host holds of the writer's acknowledged writes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// Writes the old database acknowledged.
    pub acknowledged: u64,
    /// Writes the freeze refused (read-only).
    pub refused: u64,
    /// Writes whose outcome the writer could not know (connection ended in flight).
    pub unknown: u64,
    /// Writes the server failed otherwise (e.g. the session the freeze ended): not committed.
    pub failed: u64,
    /// Acknowledged writes missing on the new host, or with another value there.
    pub lost: u64,
    /// The first few lost writes, described.
    pub lost_examples: Vec<String>,
}

/// Compares the tally with the new database (at `conninfo`): every acknowledged sign-up must be
/// there, and the edited profile must hold the last acknowledged edit (or a later edit whose
/// outcome was unknown).
///
/// # Errors
/// The new database could not be read.
pub async fn check(tally: &Tally, conninfo: &str) -> Result<Outcome, LiveAppError> {
    let client = connect(conninfo).await?;
    let rows = client
        .query(
            "SELECT email FROM users WHERE email LIKE 'live-%@example.com'",
            &[],
        )
        .await
        .map_err(sql("read the new host's users"))?;
    let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut lost_examples = Vec::new();
    let mut lost = 0u64;
    for n in &tally.inserted {
        if !present.contains(&email(*n)) {
            lost += 1;
            if lost_examples.len() < 5 {
                lost_examples.push(format!("sign-up {}", email(*n)));
            }
        }
    }
    if let Some(want) = &tally.last_edit {
        let got: Option<String> = client
            .query_opt(
                "SELECT display_name FROM users WHERE email = $1",
                &[&EDITED],
            )
            .await
            .map_err(sql("read the new host's edited profile"))?
            .map(|r| r.get(0));
        let fine = got
            .as_ref()
            .is_some_and(|g| g == want || tally.uncertain_edits.iter().any(|u| u == g));
        if !fine {
            lost += 1;
            lost_examples.push(format!(
                "edit of {EDITED}: new host has {got:?}, last acknowledged {want:?}"
            ));
        }
    }
    Ok(Outcome {
        acknowledged: tally.acknowledged(),
        refused: tally.refused,
        unknown: tally.unknown,
        failed: tally.other,
        lost,
        lost_examples,
    })
}
