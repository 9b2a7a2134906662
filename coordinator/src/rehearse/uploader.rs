//! The rehearsal's live uploads: about ten file operations a second in the old host's storage
//! tree — new files, overwrites, deletes — through the catch-up and right into the cutover's
//! write freeze, each remembered with the content it left, so the rehearsal can prove that every
//! acknowledged one is on the new host.
//!
//! # How the freeze refuses an upload
//! The rehearsal's plan freezes with `read-only` only: the storage tree itself is never made
//! read-only, and no app is stopped. What refuses an upload is what refuses it in the app this
//! lab models: its upload handler records each upload in the database, in the same transaction
//! as the file operation — `BEGIN`, the row (here: the uploader's own profile row), the file
//! written (to a temporary name, then renamed) or deleted, `COMMIT`. Once the freeze made the
//! database read-only the row is refused (`25006`) and the handler touches no file; a session
//! the freeze ends between the row and the commit leaves a file operation whose outcome is
//! unknown (the app would have answered with an error). An upload is *acknowledged* only when its
//! commit returned; every acknowledged one happened before the freeze began, so it must be on the
//! new host afterwards with the same content (a delete: absent). A writer that touches storage
//! without the database (a cron job) is not refused by `read-only`: docs/cutover.md, "What the
//! freeze does not stop".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

use super::session::{LiveAppError, session, sql};

/// The pause between two file operations (about ten a second).
const INTERVAL: Duration = Duration::from_millis(100);
/// Wait before connecting again after a broken connection.
const RECONNECT: Duration = Duration::from_millis(100);
/// The sub-folder of the storage tree the uploader owns.
pub const DIR: &str = "live-uploads";
/// The profile row each upload is recorded in.
pub const UPLOADER: &str = "live-uploader@example.com";

/// The last acknowledged state of one file: its content, or `None` (deleted).
type Last = Option<Vec<u8>>;

/// What the uploader saw so far.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Per file (relative to the storage tree): the state its last acknowledged operation left.
    pub files: BTreeMap<String, Last>,
    /// Files whose last operation's outcome is unknown (not checked).
    pub uncertain: std::collections::BTreeSet<String>,
    /// Acknowledged operations: new files, overwrites, deletes.
    pub created: u64,
    /// Acknowledged overwrites.
    pub overwritten: u64,
    /// Acknowledged deletes.
    pub deleted: u64,
    /// Uploads the read-only freeze refused (no file touched).
    pub refused: u64,
    /// Operations whose outcome is unknown.
    pub unknown: u64,
    /// Other failures (the last one in `last_error`).
    pub other: u64,
    /// The last other error.
    pub last_error: Option<String>,
}

impl Tally {
    /// Operations acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.created + self.overwritten + self.deleted
    }
}

/// The uploads, looked up on the new host after the cutover.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Operations acknowledged on the old host.
    pub acknowledged: u64,
    /// Of which new files, overwrites, deletes.
    pub created: u64,
    /// Overwrites.
    pub overwritten: u64,
    /// Deletes.
    pub deleted: u64,
    /// Uploads refused by the freeze (nothing written).
    pub refused: u64,
    /// Operations of unknown outcome (their files not checked).
    pub unknown: u64,
    /// Files checked on the new host.
    pub files_checked: u64,
    /// Acknowledged operations whose result is not on the new host (missing, other content, or
    /// a deleted file still there).
    pub lost: u64,
    /// The first few, described.
    pub lost_examples: Vec<String>,
}

/// The running uploader; [`LiveUploader::stop`] ends it and returns the tally.
pub struct LiveUploader {
    tally: Arc<Mutex<Tally>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LiveUploader {
    /// Starts uploading into `tree/live-uploads` (the old host's storage tree), recording each
    /// upload in the database at `conninfo`.
    ///
    /// # Errors
    /// The connection, the profile row or the folder could not be made.
    pub async fn start(conninfo: &str, tree: &Path) -> Result<Self, LiveAppError> {
        let client = connect(conninfo).await?;
        client
            .execute(
                "INSERT INTO users (email, display_name) VALUES ($1, 'uploads 0')
                 ON CONFLICT (email) DO NOTHING",
                &[&UPLOADER],
            )
            .await
            .map_err(sql("the live uploader's first insert"))?;
        let dir = tree.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|source| LiveAppError::Io {
            path: dir.clone(),
            source,
        })?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            conninfo.to_string(),
            Some(client),
            dir,
            Arc::clone(&tally),
            stopped,
        ));
        Ok(Self { tally, stop, task })
    }

    /// What the uploader saw so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until the uploader has had each kind of operation acknowledged at least once (a new
    /// file, an overwrite, a delete: the first delete comes with the fifth operation, about half
    /// a second in) or until `limit` passed; returns whether it had.
    ///
    /// The rehearsal waits for this before its cutover, so that the freeze always meets an
    /// uploader that has already overwritten and deleted files: a fast follow step once reached
    /// the freeze after four uploads, none of them a delete, and the proof that deletes reach
    /// the new host had nothing to look up.
    pub async fn each_kind_acknowledged(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let t = self.tally();
            if t.created > 0 && t.overwritten > 0 && t.deleted > 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the uploader (after its operation in flight) and returns what it saw.
    pub async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, LiveAppError> {
    session(conninfo, "the live uploader").await
}

/// The content of operation `n` on file `name`: distinct per operation, a few KiB.
fn content(name: &str, n: u64) -> Vec<u8> {
    let line = format!("{name} written by operation {n}\n");
    line.repeat(64).into_bytes()
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Overwrite,
    Delete,
}

fn file_op(dir: &Path, name: &str, op: Op, data: &[u8]) -> std::io::Result<()> {
    let path = dir.join(name);
    match op {
        Op::Delete => std::fs::remove_file(&path),
        Op::Create | Op::Overwrite => {
            // As an upload handler stores a file: a temporary name in the same folder, renamed.
            let tmp = dir.join(format!(".{name}.part"));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)
        }
    }
}

async fn run(
    conninfo: String,
    mut client: Option<tokio_postgres::Client>,
    dir: PathBuf,
    tally: Arc<Mutex<Tally>>,
    stopped: watch::Receiver<bool>,
) {
    let mut n: u64 = 0;
    // Files present (acknowledged or uncertain) that later operations may overwrite or delete.
    let mut live: Vec<String> = Vec::new();
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
        // Mostly new files; every third an overwrite, every fifth a delete, of an earlier one.
        let (op, name) = match (n.is_multiple_of(5), n.is_multiple_of(3), live.is_empty()) {
            (true, _, false) => (Op::Delete, live.remove((n as usize) % live.len())),
            (false, true, false) => (Op::Overwrite, live[(n as usize) % live.len()].clone()),
            _ => (Op::Create, format!("upload-{n}.bin")),
        };
        let data = content(&name, n);
        let outcome = upload(c, &dir, &name, op, &data, n).await;
        let Ok(mut t) = tally.lock() else { return };
        match &outcome {
            Step::Acknowledged => {
                match op {
                    Op::Create => t.created += 1,
                    Op::Overwrite => t.overwritten += 1,
                    Op::Delete => t.deleted += 1,
                }
                let last = match op {
                    Op::Delete => None,
                    _ => Some(data),
                };
                t.files.insert(name.clone(), last);
                t.uncertain.remove(&name);
            }
            Step::Refused => t.refused += 1,
            Step::Unknown => {
                t.unknown += 1;
                t.uncertain.insert(name.clone());
            }
            Step::Failed(e) => {
                t.other += 1;
                t.last_error = Some(e.clone());
            }
        }
        // A refused or failed create left no file; anything else may be there now.
        let exists = match (op, &outcome) {
            (Op::Delete, Step::Acknowledged) => false,
            (Op::Delete, _) => dir.join(&name).exists(),
            (_, Step::Acknowledged | Step::Unknown) => true,
            _ => dir.join(&name).exists(),
        };
        if exists && !live.contains(&name) {
            live.push(name);
        }
        drop(t);
        if matches!(outcome, Step::Unknown) {
            client = None;
        }
    }
}

enum Step {
    Acknowledged,
    Refused,
    Unknown,
    Failed(String),
}

fn refused(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
        || e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
}

/// One upload: the row, the file, the commit.
async fn upload(
    c: &tokio_postgres::Client,
    dir: &Path,
    name: &str,
    op: Op,
    data: &[u8],
    n: u64,
) -> Step {
    if let Err(e) = c.batch_execute("BEGIN").await {
        return if refused(&e) {
            Step::Refused
        } else {
            Step::Failed(e.to_string())
        };
    }
    let recorded = c
        .execute(
            "UPDATE users SET display_name = $1, updated_at = now() WHERE email = $2",
            &[&format!("uploads {n}"), &UPLOADER],
        )
        .await;
    if let Err(e) = recorded {
        let _ = c.batch_execute("ROLLBACK").await;
        return if refused(&e) {
            Step::Refused
        } else {
            Step::Failed(e.to_string())
        };
    }
    if let Err(e) = file_op(dir, name, op, data) {
        let _ = c.batch_execute("ROLLBACK").await;
        return Step::Failed(format!("{name}: {e}"));
    }
    match c.batch_execute("COMMIT").await {
        Ok(()) => Step::Acknowledged,
        // The file operation happened; whether the app's answer said so is unknown.
        Err(_) => Step::Unknown,
    }
}

/// Compares the tally with the new host's storage tree `tree`: every file's last acknowledged
/// state must be there (same content; a deleted file absent). Files whose last operation's
/// outcome is unknown are not checked.
pub fn check(tally: &Tally, tree: &Path) -> Outcome {
    let dir = tree.join(DIR);
    let mut out = Outcome {
        acknowledged: tally.acknowledged(),
        created: tally.created,
        overwritten: tally.overwritten,
        deleted: tally.deleted,
        refused: tally.refused,
        unknown: tally.unknown,
        ..Outcome::default()
    };
    for (name, want) in &tally.files {
        if tally.uncertain.contains(name) {
            continue;
        }
        out.files_checked += 1;
        let got = std::fs::read(dir.join(name)).ok();
        if &got != want {
            out.lost += 1;
            if out.lost_examples.len() < 5 {
                out.lost_examples.push(match (want, got) {
                    (None, Some(_)) => format!("{name}: deleted on the old host, still on the new"),
                    (Some(_), None) => format!("{name}: missing on the new host"),
                    _ => format!("{name}: other content on the new host"),
                });
            }
        }
    }
    out
}
