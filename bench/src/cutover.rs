//! The cutover round (issue 12): a live app moved with `hostshift follow` and `hostshift cutover`,
//! side by side with the freeze the classic runbook and the standard tools would need.
//!
//! On a copy of the reference data (the cache keeps its bytes: the app writes, and the cutover
//! leaves the old database frozen), with the old PostgreSQL at `wal_level = logical`:
//!
//! 1. first copy: `hostshift sync --only files`, `--only storage`, then `hostshift follow start`
//!    (a slot on the old host, the database copied from a snapshot taken at it);
//! 2. the app: a writer at ~100 transactions/s (inserts, updates spread over four tables,
//!    deletes) and ~10 file operations/s on the old storage tree (new files, overwrites, deletes),
//!    never paused, into the freeze (a write the freeze refuses ends its uploads too: an app whose
//!    database is read-only takes no uploads);
//! 3. a 1 % spread change while following (the delta rounds' rows, one transaction, plus 1 % of
//!    the files): the catch-up is the time from its commit until the new host shows it;
//! 4. `sync --only storage` and `--only files` with the uploads going on, then
//!    `hostshift cutover` (`[switch] method = "none"`): the freeze, step by step, from its JSON;
//! 5. every acknowledged write (rows and files) looked up on the new host: lost must be 0;
//! 6. the way back (issue 13): the cutover opened the rollback window (the new PostgreSQL runs at
//!    `wal_level = logical`); the app writes on the new host at ~100 transactions/s, then
//!    `hostshift rollback`: its freeze, step by step, every write the new host acknowledged looked
//!    up on the old host, and no slot left on either;
//! 7. the same final state moved by the classic runbook (`pg_dump -Fc` + `pg_restore`,
//!    `tar -czf` + `tar -xzf`) and by the standard tools (`pg_dump -Fc | pg_restore` streamed,
//!    `rsync -a --delete` of what changed since a pre-sync): with the app stopped for the whole
//!    of it, that is the freeze each would need.
//!
//! `--scale N` runs the round a second time with a database N × the reference (built once and
//! cached beside it), to show that the freeze does not grow with the database.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostshift::lab::pg::{PgCluster, WalLevel};
use hostshift::lab::seed;
use serde_json::json;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;

use crate::baselines::{self, Baselines};
use crate::dataset::{Dataset, OLD_IP};
use crate::hs::{self, HsLab, OldHost};
use crate::measure::round2;
use crate::{dbcheck, say, storage_tree, sys};

/// The writer's pace: one database transaction per tick of each connection (~100 a second in
/// all). One connection alone stays below that: a commit waits for its WAL flush (~10–17 ms
/// here), so the app writes on [`CONNECTIONS`] connections, as a real app's pool does.
const TICK: Duration = Duration::from_millis(20);
/// The app's connections. Connection `w` takes writes `n` with `n % CONNECTIONS == w`: with two,
/// one takes every sign-up, delete and file operation (even `n`), the other every update (odd
/// `n`), so no row is written by both and each row's last acknowledged value is well defined.
const CONNECTIONS: u64 = 2;
/// One file operation every this many writes (~10 a second).
const FILE_EVERY: u64 = 10;
/// How long the app keeps writing between the storage catch-up and the cutover.
const LEAD_IN: Duration = Duration::from_secs(5);
/// How long the app writes on the new host before the rollback starts.
const ROLLBACK_LEAD_IN: Duration = Duration::from_secs(10);
/// Longest wait for the 1 % change to show on the new host.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(300);
/// Freeze target of issue 12 (method none: first freeze action to "switch now").
pub const FREEZE_TARGET_S: f64 = 1.0;
/// Catch-up target after the 1 % change.
pub const CATCH_UP_TARGET_S: f64 = 2.0;

/// Streamed standard tools, database: a custom-format dump piped straight into pg_restore.
pub const STREAMED_DB: &str = r#"pg_dump -Fc -d "$OLD" | pg_restore --exit-on-error -d "$NEW""#;

/// The standard tools' pre-sync of the live tree: `rsync -a --delete`, its exit 24 (files
/// vanished while it ran) accepted.
const PRE_SYNC: &str = r#"rsync -a --delete "$SRC/" "$DST/" || test $? -eq 24"#;

/// The old host's PostgreSQL for the round: a copy of a cached cluster's data folder, started at
/// `wal_level = logical` (the lab's `PgCluster::start_existing` always starts at `minimal`), with
/// the lab's other settings.
pub struct LogicalPg {
    child: Option<tokio::process::Child>,
    pid: u32,
    port: u16,
    sock: PathBuf,
}

impl LogicalPg {
    /// Copies `from` (a stopped cluster's `data` folder) to `dir/data` and starts it.
    ///
    /// # Errors
    /// Copy, spawn, or a server not ready within 120 s.
    pub async fn copy_and_start(from: &Path, dir: &Path, bin: &Path) -> Result<LogicalPg> {
        sys::empty_dir(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let data = dir.join("data");
        sys::shell(
            "copy the cached cluster",
            r#"cp -a "$FROM" "$TO""#,
            &[("FROM", from.display().to_string()), ("TO", data.display().to_string())],
            Duration::from_secs(1800),
            false,
            false,
        )
        .await?;
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let user = nix::unistd::User::from_name("postgres")?.context("no `postgres` user: apt-get install -y postgresql-15")?;
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock)?;
        nix::unistd::chown(&sock, Some(user.uid), Some(user.gid))?;
        let port = std::net::TcpListener::bind((OLD_IP, 0))?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let mut cmd = tokio::process::Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&data).arg("-k").arg(&sock).arg("-p").arg(port.to_string());
        for s in [
            format!("listen_addresses={OLD_IP}"),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "max_connections=100".into(),
            "shared_buffers=64MB".into(),
            "max_wal_senders=4".into(),
            "wal_level=logical".into(),
        ] {
            cmd.arg("-c").arg(s);
        }
        cmd.uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .current_dir(dir)
            .env("PATH", "/usr/bin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().context("start postgres for the cutover round's old host")?;
        let pid = child.id().context("postgres exited at once")?;
        let pg = LogicalPg { child: Some(child), pid, port, sock };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if pg.connect("postgres").await.is_ok() {
                return Ok(pg);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                bail!("the cutover round's old PostgreSQL did not start within 120 s; its log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Key=value connection string over the socket.
    pub fn conninfo(&self, db: &str) -> String {
        format!("host='{}' port={} user=postgres dbname={db}", self.sock.display(), self.port)
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A connection (its driver runs on the runtime).
    ///
    /// # Errors
    /// Connection errors.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        connect(&self.conninfo(db)).await
    }

    /// Fast shutdown; a kill after 60 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGINT);
        if tokio::time::timeout(Duration::from_secs(60), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

impl Drop for LogicalPg {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

// ---------------------------------------------------------------------------------------------
// The app: a writer of rows and files.

/// The four tables the writer's updates spread over: `(table, key, column, is_text)`.
const UPDATED: [(&str, &str, &str, bool); 4] = [
    ("pgbench_accounts", "aid", "abalance", false),
    ("pgbench_tellers", "tid", "tbalance", false),
    ("pgbench_branches", "bid", "bbalance", false),
    ("users", "id", "display_name", true),
];

/// What the app saw: only acknowledged writes must be on the new host.
#[derive(Default, Clone)]
struct Tally {
    /// Sign-ups acknowledged and not deleted since (their `n`).
    inserted: BTreeSet<u64>,
    /// Sign-ups whose delete was acknowledged.
    deleted: BTreeSet<u64>,
    /// Rows whose fate is unknown (the connection broke in flight): not checked.
    uncertain_rows: BTreeSet<u64>,
    /// Per `(table index, key)`: the last acknowledged value and later values of unknown outcome.
    updates: BTreeMap<(usize, i64), (Option<i64>, Vec<i64>)>,
    /// Per file (relative path): its final content's generator (`None`: deleted).
    files: BTreeMap<String, Option<u64>>,
    acknowledged: u64,
    file_ops: u64,
    refused: u64,
    unknown: u64,
    failed: u64,
    /// The first write the freeze refused, seconds after the writer started.
    first_refusal_s: Option<f64>,
    last_error: Option<String>,
}

struct App {
    tally: Arc<Mutex<Tally>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Key ranges of the updated tables (1..=max), read before the writer starts.
async fn key_ranges(c: &tokio_postgres::Client) -> Result<[i64; 4]> {
    let mut out = [0i64; 4];
    for (i, (t, k, _, _)) in UPDATED.iter().enumerate() {
        out[i] = c.query_one(&format!("SELECT coalesce(max({k}), 0)::bigint FROM {t}"), &[]).await?.get(0);
        anyhow::ensure!(out[i] > 10, "{t} has no rows to update");
    }
    Ok(out)
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The bytes of upload `n` (10–200 KB, incompressible).
fn upload(n: u64) -> Vec<u8> {
    let len = 10_000 + (mix(n) % 190_000) as usize;
    let mut v = Vec::with_capacity(len + 8);
    let mut x = mix(n ^ 0xF11E) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A key of `range` for write `n`, never one the 1 % change touches (key % 100 = 7).
fn key(n: u64, range: i64) -> i64 {
    let k = 1 + (mix(n) % range as u64) as i64;
    if k % 100 == 7 { k - 1 } else { k }
}

/// Writes `body` as `root/rel` by a temporary file and a rename: the tree shares its files with
/// the cache by hard links, which a rename never modifies.
fn put_file(root: &Path, rel: &str, body: &[u8]) -> std::io::Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_file_name(format!(".{}.tmp", p.file_name().and_then(|f| f.to_str()).unwrap_or("upload")));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &p)
}

impl App {
    /// Starts the app on `conninfo`; with `storage`, it also uploads into that tree.
    fn start(conninfo: String, storage: Option<PathBuf>, ranges: [i64; 4]) -> App {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..CONNECTIONS)
            .map(|w| {
                let lane = Lane { first: w, storage: storage.clone().filter(|_| w == 0) };
                tokio::spawn(app_loop(conninfo.clone(), lane, ranges, Arc::clone(&tally), stopped.clone()))
            })
            .collect();
        App { tally, stop, tasks }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), join_all(self.tasks)).await;
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Waits for every task (a panicked one counts as ended).
async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// One connection of the app: which writes it takes, and the tree it uploads into (only the
/// connection whose writes include the file operations has one).
struct Lane {
    /// Its first write's `n`; it takes every [`CONNECTIONS`]-th after that.
    first: u64,
    storage: Option<PathBuf>,
}

#[allow(clippy::too_many_lines)]
async fn app_loop(conninfo: String, lane: Lane, ranges: [i64; 4], tally: Arc<Mutex<Tally>>, stopped: watch::Receiver<bool>) {
    let started = Instant::now();
    let storage = lane.storage;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut frozen = false;
    let mut n: u64 = lane.first;
    let mut own_files: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        if *stopped.borrow() {
            return;
        }
        n += CONNECTIONS;
        let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
            client = connect(&conninfo).await.ok();
            continue;
        };
        let slot = n % 10;
        let (result, what) = match slot {
            0 | 2 | 4 | 6 => (
                c.execute("INSERT INTO users (email, display_name) VALUES ($1, $2)", &[&format!("bench-live-{n}@example.com"), &format!("Live {n}")])
                    .await
                    .map(|_| Some(n)),
                "insert",
            ),
            8 => {
                let victim = tally.lock().ok().and_then(|t| t.inserted.iter().next().copied());
                match victim {
                    Some(v) => {
                        let r = c.execute("DELETE FROM users WHERE email = $1", &[&format!("bench-live-{v}@example.com")]).await;
                        (r.map(|_| Some(v)), "delete")
                    }
                    None => continue,
                }
            }
            _ => {
                let ti = ((n / 2) % 4) as usize;
                let (t, k, col, text) = UPDATED[ti];
                let kv = key(n, ranges[ti]);
                let r = if text {
                    c.execute(&format!("UPDATE {t} SET {col} = $1 WHERE {k} = $2"), &[&format!("v{n}"), &kv]).await
                } else {
                    // pgbench's keys and balances are int4; writes number far below 2^31.
                    c.execute(&format!("UPDATE {t} SET {col} = $1 WHERE {k} = $2::bigint"), &[&(n as i32), &kv]).await
                };
                // A key without a row (a gap) changed nothing: not a write to look for.
                (r.map(|rows| (rows > 0).then_some(((ti as u64) << 56) | kv as u64)), "update")
            }
        };
        let db_ok = result.is_ok();
        {
            let Ok(mut t) = tally.lock() else { return };
            match result {
                Ok(None) => t.acknowledged += 1,
                Ok(Some(x)) => {
                    t.acknowledged += 1;
                    match what {
                        "insert" => {
                            t.inserted.insert(n);
                        }
                        "delete" => {
                            t.inserted.remove(&x);
                            t.deleted.insert(x);
                        }
                        _ => {
                            let e = t.updates.entry(((x >> 56) as usize, (x & 0x00FF_FFFF_FFFF_FFFF) as i64)).or_default();
                            *e = (Some(n as i64), Vec::new());
                        }
                    }
                }
                Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                    t.refused += 1;
                    if !frozen {
                        frozen = true;
                        if t.first_refusal_s.is_none() {
                            t.first_refusal_s = Some(round2(started.elapsed().as_secs_f64()));
                        }
                    }
                }
                Err(e) if e.as_db_error().is_none() => {
                    // In flight when the connection broke: committed or not, nobody can say.
                    t.unknown += 1;
                    match what {
                        "insert" => {
                            t.uncertain_rows.insert(n);
                        }
                        "update" => {
                            let ti = ((n / 2) % 4) as usize;
                            t.updates.entry((ti, key(n, ranges[ti]))).or_default().1.push(n as i64);
                        }
                        _ => {
                            if let Some(v) = t.inserted.iter().next().copied() {
                                t.inserted.remove(&v);
                                t.uncertain_rows.insert(v);
                            }
                        }
                    }
                    drop(t);
                    client = None;
                }
                Err(e) => {
                    // The server said no (the freeze ended the session): not committed.
                    t.failed += 1;
                    t.last_error = Some(e.to_string());
                    drop(t);
                    client = None;
                }
            }
        }
        // ~10 file operations a second, each only after this tick's database write committed:
        // an upload handler records the upload in the database, so a frozen (read-only)
        // database, or a session the freeze ended, takes no upload. Done before the write, as
        // it was, uploads went on for the ticks between the freeze ending the app's session and
        // its next refused write — a writer the freeze did not stop, which the cutover's proof
        // rightly caught and refused (run 20261207T002719Z).
        if let Some(storage) = storage.as_deref().filter(|_| db_ok && n.is_multiple_of(FILE_EVERY) && !frozen) {
            let f = n / FILE_EVERY;
            let (rel, content) = match f % 4 {
                // New uploads, in their own folder and among the reference files.
                0 => (format!("live-uploads/{:02}/upload-{f:06}.bin", f % 50), Some(f)),
                1 => {
                    let i = mix(f) % storage_tree::FILES;
                    let i = if storage_tree::changed(i) { (i + 1) % storage_tree::FILES } else { i };
                    (storage_tree::rel_path(i).replace(".zip", &format!("-v{f}.zip")).replace(".json", &format!("-v{f}.json")), Some(f))
                }
                // Overwrite a reference file (never one of the 1 % change).
                2 => {
                    let i = mix(f ^ 0xAB) % storage_tree::FILES;
                    let i = if storage_tree::changed(i) { (i + 1) % storage_tree::FILES } else { i };
                    (storage_tree::rel_path(i), Some(f))
                }
                // Delete: every other time one of the app's own uploads, else a reference file.
                _ if f % 8 == 3 && !own_files.is_empty() => (own_files.remove(0), None),
                _ => {
                    let i = mix(f ^ 0xDE) % storage_tree::FILES;
                    let i = if storage_tree::changed(i) { (i + 1) % storage_tree::FILES } else { i };
                    (storage_tree::rel_path(i), None)
                }
            };
            let done = match content {
                Some(g) => put_file(storage, &rel, &upload(g)),
                None => match std::fs::remove_file(storage.join(&rel)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                },
            };
            let Ok(mut t) = tally.lock() else { return };
            match done {
                Ok(()) => {
                    if content.is_some() && f.is_multiple_of(4) {
                        own_files.push(rel.clone());
                    }
                    t.files.insert(rel, content);
                    t.file_ops += 1;
                    t.acknowledged += 1;
                }
                Err(e) => t.last_error = Some(format!("file {rel}: {e}")),
            }
        }
    }
}

/// Looks up every acknowledged write on the new host: returns `(lost, examples)`.
async fn check_writes(t: &Tally, new: &tokio_postgres::Client, new_storage: &Path) -> Result<(u64, Vec<String>)> {
    let mut lost = 0u64;
    let mut ex = Vec::new();
    let mut miss = |what: String| {
        lost += 1;
        if ex.len() < 8 {
            ex.push(what);
        }
    };
    let present: BTreeSet<String> = new
        .query("SELECT email FROM users WHERE email LIKE 'bench-live-%@example.com'", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &t.inserted {
        if !present.contains(&format!("bench-live-{n}@example.com")) {
            miss(format!("sign-up {n} missing"));
        }
    }
    for n in &t.deleted {
        if present.contains(&format!("bench-live-{n}@example.com")) && !t.uncertain_rows.contains(n) {
            miss(format!("sign-up {n} deleted on the old host, present on the new"));
        }
    }
    for (ti, (table, k, col, text)) in UPDATED.iter().enumerate() {
        let keys: Vec<i64> = t.updates.keys().filter(|(i, _)| *i == ti).map(|(_, k)| *k).collect();
        let sql = if *text {
            format!("SELECT {k}::bigint, substr({col}, 2)::bigint FROM {table} WHERE {k} = ANY($1::bigint[]) AND {col} ~ '^v[0-9]+$'")
        } else {
            format!("SELECT {k}::bigint, {col}::bigint FROM {table} WHERE {k} = ANY($1::bigint[])")
        };
        let got: BTreeMap<i64, i64> = new.query(&sql, &[&keys]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
        for kv in keys {
            let Some((Some(want), later)) = t.updates.get(&(ti, kv)) else { continue };
            let have = got.get(&kv).copied();
            if have != Some(*want) && !have.is_some_and(|h| later.contains(&h)) {
                miss(format!("{table} {k} = {kv}: new host has {col} {have:?}, last acknowledged {want}"));
            }
        }
    }
    for (rel, content) in &t.files {
        let p = new_storage.join(rel);
        match content {
            Some(g) => match std::fs::read(&p) {
                Ok(b) if b == upload(*g) => {}
                Ok(_) => miss(format!("file {rel}: other bytes on the new host")),
                Err(e) => miss(format!("file {rel}: {e}")),
            },
            None => {
                if p.exists() {
                    miss(format!("file {rel}: deleted on the old host, present on the new"));
                }
            }
        }
    }
    Ok((lost, ex))
}

// ---------------------------------------------------------------------------------------------
// The round.

/// Where the round's old host comes from.
pub struct Source<'a> {
    /// `data` folder of a stopped cached cluster.
    pub pg_data: PathBuf,
    /// PostgreSQL binaries.
    pub pg_bin: PathBuf,
    /// The reference data (storage tree, config files).
    pub data: &'a Dataset,
    /// Database size multiple (1 = the reference).
    pub scale: u32,
    /// `pg_database_size` of the source.
    pub db_bytes: i64,
}

/// One cutover round; returns its figures (JSON) and the text to print.
///
/// # Errors
/// Any step failing; the cutover failing; a lost write is reported, not an error.
pub async fn round(work: &Path, src: &Source<'_>, bin_dir: &Path, pids: &sys::PidsFile) -> Result<serde_json::Value> {
    let dir = work.join(format!("run-cutover-x{}", src.scale));
    sys::empty_dir(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let outcome = round_in(&dir, src, bin_dir, pids).await;
    match &outcome {
        // `HOSTSHIFT_BENCH_KEEP=1` keeps them after a success too: the agents' logs (with
        // `HOSTSHIFT_LOG=info,hostshift_agent=debug HOSTSHIFT_LOG_SPANS=1`, every RPC's time) and
        // the journal say where the freeze went.
        Ok(_) if std::env::var_os("HOSTSHIFT_BENCH_KEEP").is_some() => say(&format!("the cutover round's files are kept in {} (HOSTSHIFT_BENCH_KEEP)", dir.display())),
        Ok(_) => sys::remove_dir(&dir)?,
        Err(_) => say(&format!("the failed cutover round's files are left in {} for inspection", dir.display())),
    }
    outcome
}

#[allow(clippy::too_many_lines)]
async fn round_in(dir: &Path, src: &Source<'_>, bin_dir: &Path, pids: &sys::PidsFile) -> Result<serde_json::Value> {
    let x = src.scale;
    let load_before = sys::load();
    say(&format!(
        "cutover x{x}: copying the {:.2} GB database (logical WAL) and linking the storage tree (load average {:.2} {:.2} {:.2})",
        src.db_bytes as f64 / 1e9,
        load_before[0],
        load_before[1],
        load_before[2]
    ));
    let mut old_pg = LogicalPg::copy_and_start(&src.pg_data, &dir.join("pg-old"), &src.pg_bin).await?;
    pids.add("postmaster", old_pg.pid());
    // The old host's files: the cached tree by hard links (the app replaces files by rename and
    // deletes links: the cache keeps its bytes), the config files copied.
    let host = dir.join("old-host");
    let storage = host.join(src.data.storage.strip_prefix(&src.data.host).unwrap_or(Path::new("storage")));
    let mirror = dir.join("rsync-mirror");
    for (what, to) in [("link the storage tree", &storage), ("link the rsync mirror", &mirror)] {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        sys::shell(what, r#"cp -al "$FROM" "$TO""#, &[("FROM", src.data.storage.display().to_string()), ("TO", to.display().to_string())], Duration::from_secs(600), false, false)
            .await?;
    }
    let mut files = Vec::new();
    for (name, p) in &src.data.files {
        let to = host.join(p.strip_prefix(&src.data.host).unwrap_or(p));
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::copy(p, &to)?;
        files.push((name.clone(), to));
    }
    // At `wal_level = logical`: the cutover opens the rollback window (a slot on the new host).
    let mut new_pg = PgCluster::start_with(&dir.join("pg"), "new", hs::NEW_IP, WalLevel::Logical).await?;
    pids.add("postmaster", new_pg.pid());
    let outcome = with_hosts(dir, src, bin_dir, pids, &old_pg, &new_pg, &storage, &mirror, &host, files).await;
    old_pg.stop().await;
    let _ = new_pg.stop().await;
    let mut v = outcome?;
    v["load_before"] = json!(load_before);
    v["load_after"] = json!(sys::load());
    Ok(v)
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
async fn with_hosts(
    dir: &Path,
    src: &Source<'_>,
    bin_dir: &Path,
    pids: &sys::PidsFile,
    old_pg: &LogicalPg,
    new_pg: &PgCluster,
    storage: &Path,
    mirror: &Path,
    host: &Path,
    files: Vec<(String, PathBuf)>,
) -> Result<serde_json::Value> {
    let x = src.scale;
    let admin = new_pg.connect("postgres").await?;
    seed::ensure_roles(&admin).await?;
    new_pg.create_database("app", None).await?;
    drop(admin);
    let old_host = OldHost { conninfo: old_pg.conninfo("app"), storage: storage.to_path_buf(), host: host.to_path_buf(), files, follow: true };
    let lab = HsLab::start_for(&dir.join("hostshift"), &old_host, new_pg, bin_dir).await.context("start the agents")?;
    pids.add("agent", lab.old.pid());
    pids.add("agent", lab.new.pid());
    let mut v = json!({ "scale": x, "db_bytes": src.db_bytes });

    // 1. First copy.
    let t = Instant::now();
    let files_sync = lab.sync("--only files").await?;
    let storage_sync = lab.sync("--only storage").await?;
    v["first_copy_storage_s"] = json!(round2(storage_sync.wall_s + files_sync.wall_s));
    say(&format!("cutover x{x}: first copy of files and storage {:.1} s; hostshift follow start (slot, database copy)", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let (out, rep) = lab.json("follow start").await?;
    if out.code != Some(0) {
        bail!("hostshift follow start failed (exit {:?}): {}\n{}", out.code, rep, out.stderr);
    }
    v["follow_start_s"] = json!(round2(t.elapsed().as_secs_f64()));
    v["not_followed"] = rep["databases"][0]["not_followed"].clone();
    say(&format!("cutover x{x}: following after {:.1} s; not followed: {}", t.elapsed().as_secs_f64(), rep["databases"][0]["not_followed"]));

    // 2. The app.
    let old_client = old_pg.connect("app").await?;
    let ranges = key_ranges(&old_client).await?;
    let app = App::start(old_pg.conninfo("app"), Some(storage.to_path_buf()), ranges);
    let app_t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. The 1 % spread change, with a marker row in the same transaction.
    let new_client = new_pg.connect("app").await?;
    let marker = format!("bench-catchup-x{x}@example.com");
    old_client.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await?;
    let mut rows = 0u64;
    for (table, k, set) in crate::dataset::DB_CHANGES {
        rows += old_client.execute(&format!("UPDATE {table} SET {} WHERE {k} % 100 = 7", set.replace("{g}", "1")), &[]).await?;
    }
    old_client.execute("INSERT INTO users (email, display_name) VALUES ($1, 'catch-up marker')", &[&marker]).await?;
    old_client.batch_execute("COMMIT").await?;
    let committed = Instant::now();
    let catch_up_s = loop {
        let n: i64 = new_client.query_one("SELECT count(*) FROM users WHERE email = $1", &[&marker]).await?.get(0);
        if n == 1 {
            break committed.elapsed().as_secs_f64();
        }
        if committed.elapsed() > CATCH_UP_LIMIT {
            bail!("the 1% change ({rows} rows) did not reach the new host within {CATCH_UP_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let files_changed = {
        let s = storage.to_path_buf();
        tokio::task::spawn_blocking(move || storage_tree::rewrite_changed_by_rename(&s, 1)).await??
    };
    say(&format!("cutover x{x}: 1% change ({rows} rows in one transaction) applied on the new host {catch_up_s:.2} s after its commit; {files_changed} files rewritten"));
    v["change_rows"] = json!(rows);
    v["change_files"] = json!(files_changed);
    v["catch_up_s"] = json!(round2(catch_up_s));

    // 4. Storage catch-up with the uploads going on; rsync's pre-sync at the same moment.
    let t = Instant::now();
    let st = lab.sync("--only storage").await?;
    lab.sync("--only files").await?;
    v["storage_catch_up_s"] = json!(round2(st.wall_s));
    v["storage_catch_up_files"] = json!({ "files": st.report["files"], "skipped_files": st.report["skipped_files"], "deferred": st.report["deferred"] });
    let bl_src = Baselines { old_conninfo: old_pg.conninfo("app"), pg_bin: src.pg_bin.clone(), new: new_pg, src: storage.to_path_buf(), scratch: dir.join("scratch") };
    sys::empty_dir(&bl_src.scratch)?;
    // The app deletes files while rsync walks the tree: exit 24 ("some files vanished before
    // they could be transferred") is what a pre-sync of a live tree ends with, not a failure.
    bl_src.run("rsync (pre-sync)", PRE_SYNC, "-", mirror).await?;
    let (_, status) = lab.json("follow status").await?;
    v["lag_before_cutover"] = json!({ "bytes": status["databases"][0]["lag_bytes"], "seconds": status["databases"][0]["lag_seconds"] });
    say(&format!("cutover x{x}: storage synced again in {:.1} s with uploads going on; the app writes on for {} s", t.elapsed().as_secs_f64(), LEAD_IN.as_secs()));
    tokio::time::sleep(LEAD_IN).await;

    // 5. The cutover.
    let journal_at = std::fs::metadata(lab.journal()).map_or(0, |m| m.len());
    let t = Instant::now();
    let (out, rep) = lab.json("cutover --skip-backup-check bench").await?;
    let cutover_wall = t.elapsed().as_secs_f64();
    if out.code != Some(0) || rep["ok"] != json!(true) {
        let _ = app.stop().await;
        bail!("hostshift cutover failed (exit {:?}): {}\n{}", out.code, rep["error"], out.stderr);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally = app.stop().await;
    let app_s = app_t0.elapsed().as_secs_f64();
    let writing_s = tally.first_refusal_s.unwrap_or(app_s);
    let steps = steps_of(&rep);
    v["cutover_wall_s"] = json!(round2(cutover_wall));
    v["freeze_ms"] = rep["freeze_ms"].clone();
    v["predicted_freeze_ms"] = rep["predicted_freeze_ms"].clone();
    v["steps"] = json!(steps);
    v["follow"] = rep["follow"].clone();
    v["delta"] = rep["delta"].clone();
    v["delta_units"] = json!(delta_units(lab.journal(), journal_at));
    say(&format!("cutover x{x}: write freeze {} ms (predicted {} ms); cutover took {cutover_wall:.1} s", rep["freeze_ms"], rep["predicted_freeze_ms"]));

    // 6. Every acknowledged write on the new host.
    let (lost, examples) = check_writes(&tally, &new_client, &lab.new_storage).await?;
    v["writes"] = json!({
        "seconds": round2(app_s),
        // The rate while the app could write: until the freeze refused its first write (after
        // it, every tick is a refused attempt).
        "tx_per_s": round2((tally.acknowledged - tally.file_ops) as f64 / writing_s),
        "file_ops_per_s": round2(tally.file_ops as f64 / writing_s),
        "acknowledged": tally.acknowledged,
        "file_ops": tally.file_ops,
        "refused": tally.refused,
        "ended_by_freeze": tally.failed,
        "unknown": tally.unknown,
        "lost": lost,
        "lost_examples": examples,
        "first_refusal_s": tally.first_refusal_s,
        "last_error": tally.last_error,
    });
    say(&format!(
        "cutover x{x}: {} writes acknowledged ({} of them file operations; {:.0} transactions/s and {:.1} file operations/s until the freeze), {lost} lost; {} refused by the freeze",
        tally.acknowledged,
        tally.file_ops,
        (tally.acknowledged - tally.file_ops) as f64 / writing_s,
        tally.file_ops as f64 / writing_s,
        tally.refused
    ));
    // 7. The way back (issue 13): the app writes on the new host, then `hostshift rollback`.
    // The cutover's freeze ended the old host's sessions (this one too): a new one.
    drop(old_client);
    v["rollback"] = way_back(&lab, new_pg, old_pg, &new_client, x).await?;
    let old_client = old_pg.connect("app").await?;

    // hostshift's copy is no longer needed: room for the baselines' copies.
    drop(lab);
    let admin = new_pg.connect("postgres").await?;
    admin.batch_execute("DROP DATABASE IF EXISTS app WITH (FORCE)").await?;
    sys::remove_dir(&dir.join("hostshift/new-host"))?;

    // 8. Side by side: the freeze the runbook and the standard tools would need for the same
    //    final state (the old host is frozen: nothing moves under them).
    let shape = dbcheck::shape(&old_client).await?;
    let none = Path::new("/nonexistent");
    let bl = bl_src;
    say(&format!("cutover x{x}: the standard tools' window: pg_dump -Fc | pg_restore, rsync -a --delete"));
    bl.fresh_db("bl_std").await?;
    sys::settle();
    let std_db = bl.run("pg_dump | pg_restore", STREAMED_DB, "bl_std", none).await?.wall.as_secs_f64();
    dbcheck::check(&shape, &new_pg.connect("bl_std").await?, "the streamed pg_dump | pg_restore copy").await?;
    bl.drop_db("bl_std").await?;
    sys::settle();
    let rsync = bl.run("rsync (delta)", baselines::RSYNC, "-", mirror).await?.wall.as_secs_f64();
    storage_tree::check_copy(storage, mirror)?;
    sys::remove_dir(mirror)?;
    say(&format!("cutover x{x}: the runbook's window: pg_dump -Fc, pg_restore, tar -czf, tar -xzf"));
    bl.fresh_db("bl_classic").await?;
    sys::settle();
    let dump = bl.run("pg_dump -Fc", baselines::CLASSIC_DUMP, "-", none).await?.wall.as_secs_f64();
    let restore = bl.run("pg_restore", baselines::CLASSIC_RESTORE, "bl_classic", none).await?.wall.as_secs_f64();
    dbcheck::check(&shape, &new_pg.connect("bl_classic").await?, "the pg_dump/pg_restore copy").await?;
    bl.drop_db("bl_classic").await?;
    std::fs::remove_file(bl.scratch.join("app.dump"))?;
    let dst = bl.scratch.join("tar-gz");
    sys::empty_dir(&dst)?;
    sys::settle();
    let tar_c = bl.run("tar -czf", baselines::CLASSIC_TAR_C, "-", &dst).await?.wall.as_secs_f64();
    let tar_x = bl.run("tar -xzf", baselines::CLASSIC_TAR_X, "-", &dst).await?.wall.as_secs_f64();
    storage_tree::check_copy(storage, &dst)?;
    sys::remove_dir(&bl.scratch)?;
    v["standard_window"] = json!({ "pg_dump_pipe_pg_restore_s": round2(std_db), "rsync_delta_s": round2(rsync), "total_s": round2(std_db + rsync) });
    v["runbook_window"] = json!({
        "pg_dump_s": round2(dump), "pg_restore_s": round2(restore), "tar_czf_s": round2(tar_c), "tar_xzf_s": round2(tar_x),
        "total_s": round2(dump + restore + tar_c + tar_x)
    });
    say(&format!(
        "cutover x{x}: windows — hostshift freeze {:.2} s, standard tools {:.1} s, runbook {:.1} s",
        rep["freeze_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        std_db + rsync,
        dump + restore + tar_c + tar_x
    ));
    Ok(v)
}

/// The rollback within the window the cutover opened: a writer on the new host at ~100
/// transactions/s (rows only: the window carries the database back, and files the new host took
/// would be named as not carried back), then `hostshift rollback`; every write the new host
/// acknowledged is looked up on the old host.
async fn way_back(lab: &HsLab, new_pg: &PgCluster, old_pg: &LogicalPg, new: &tokio_postgres::Client, x: u32) -> Result<serde_json::Value> {
    let (_, window) = lab.json("window").await?;
    let ranges = key_ranges(new).await?;
    let app = App::start(new_pg.conninfo("app"), None, ranges);
    let app_t0 = Instant::now();
    tokio::time::sleep(ROLLBACK_LEAD_IN).await;
    let t = Instant::now();
    let (out, rep) = lab.json("rollback").await?;
    let wall = t.elapsed().as_secs_f64();
    if out.code != Some(0) || rep["ok"] != json!(true) {
        let _ = app.stop().await;
        bail!("hostshift rollback failed (exit {:?}): {}\n{}", out.code, rep["error"], out.stderr);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.tally().refused == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally = app.stop().await;
    let app_s = app_t0.elapsed().as_secs_f64();
    let writing_s = tally.first_refusal_s.unwrap_or(app_s);
    // The rollback's freeze of the new host ended its sessions, and the cutover's the old host's.
    let old = &old_pg.connect("app").await.context("connect to the old host after the rollback")?;
    let new = &new_pg.connect("app").await.context("connect to the new host after the rollback")?;
    let (lost, examples) = check_writes(&tally, old, Path::new("/nonexistent")).await?;
    let mut slots = 0i64;
    for c in [old, new] {
        slots += c.query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hostshift%'", &[]).await?.get::<_, i64>(0);
    }
    let steps = steps_of(&rep);
    say(&format!(
        "cutover x{x}: rollback freeze {} ms (rollback took {wall:.1} s); {} writes acknowledged by the new host ({:.0} transactions/s until its freeze), {lost} lost on the old host; {slots} slot(s) left",
        rep["freeze_ms"],
        tally.acknowledged,
        tally.acknowledged as f64 / writing_s
    ));
    Ok(json!({
        "window": window,
        "freeze_ms": rep["freeze_ms"],
        "rollback_wall_s": round2(wall),
        "steps": steps,
        "slots_left": slots,
        "writes": {
            "seconds": round2(app_s),
            "tx_per_s": round2(tally.acknowledged as f64 / writing_s),
            "acknowledged": tally.acknowledged,
            "refused": tally.refused,
            "ended_by_freeze": tally.failed,
            "unknown": tally.unknown,
            "lost": lost,
            "lost_examples": examples,
            "last_error": tally.last_error,
        },
    }))
}

/// A cutover's or rollback's steps from its `--json` report: `{step, ms, detail}`.
fn steps_of(rep: &serde_json::Value) -> Vec<serde_json::Value> {
    rep["steps"].as_array().into_iter().flatten().map(|s| json!({ "step": s["name"], "ms": s["ms"], "detail": s["detail"] })).collect()
}

/// The units of the freeze's delta step from the cutover's journal (written after byte
/// `offset`): `{unit, start_ms, end_ms}`, relative to the step's start, files left out — the
/// storage unit's planning ends where its first batch starts. Empty when the journal cannot be
/// read.
fn delta_units(journal: &Path, offset: u64) -> Vec<serde_json::Value> {
    use std::io::{BufRead, Seek};
    let Ok(mut f) = std::fs::File::open(journal) else { return Vec::new() };
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut t0 = None;
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines().map_while(std::result::Result::ok) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let (Some(phase), Some(unit), Some(status), Some(t)) = (e["phase"].as_str(), e["unit"].as_str(), e["status"].as_str(), e["time_ms"].as_u64()) else {
            continue;
        };
        match (phase, unit, t0) {
            ("cutover", "delta", None) if status == "started" => t0 = Some(t),
            ("cutover", "delta", Some(_)) => break,
            ("sync", u, Some(t0)) if u != "sync" && !u.starts_with("file ") => {
                let rel = t.saturating_sub(t0);
                if status == "started" {
                    open.insert(u.to_string(), rel);
                } else if let Some(start) = open.remove(u) {
                    out.push(json!({ "unit": u, "start_ms": start, "end_ms": rel, "status": status }));
                }
            }
            _ => {}
        }
    }
    out
}

/// One line per step of [`steps_of`].
fn print_steps(out: &mut String, steps: &serde_json::Value) {
    use std::fmt::Write as _;
    for st in steps.as_array().into_iter().flatten() {
        let _ = writeln!(out, "      {:<12} {:>8} ms  {}", st["step"].as_str().unwrap_or("?"), st["ms"], st["detail"].as_str().unwrap_or("").chars().take(110).collect::<String>());
    }
}

/// The text block of the cutover rounds for the printed summary.
pub fn summary(rounds: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if rounds.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nCUTOVER WITH A LIVE APP (~100 transactions/s + ~10 file operations/s into the freeze; method none)");
    let s = |r: &serde_json::Value, p: &str| r.pointer(p).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    for r in rounds {
        let _ = writeln!(out, "  database x{} ({:.2} GB):", r["scale"], s(r, "/db_bytes") / 1e9);
        let _ = writeln!(out, "    first copy: files + storage {:.1} s, follow start (slot + database) {:.1} s", s(r, "/first_copy_storage_s"), s(r, "/follow_start_s"));
        let _ = writeln!(
            out,
            "    catch-up after the 1% change ({} rows, one transaction): {:.2} s (target <= {CATCH_UP_TARGET_S} s: {})",
            r["change_rows"],
            s(r, "/catch_up_s"),
            if s(r, "/catch_up_s") <= CATCH_UP_TARGET_S { "MET" } else { "MISSED" }
        );
        let _ = writeln!(out, "    storage sync with uploads going on: {:.2} s", s(r, "/storage_catch_up_s"));
        let freeze = s(r, "/freeze_ms") / 1000.0;
        let _ = writeln!(
            out,
            "    write freeze: {freeze:.3} s (predicted {:.3} s; target <= {FREEZE_TARGET_S} s: {})",
            s(r, "/predicted_freeze_ms") / 1000.0,
            if freeze <= FREEZE_TARGET_S { "MET" } else { "MISSED" }
        );
        print_steps(&mut out, &r["steps"]);
        let units: Vec<String> = r["delta_units"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| format!("{} {}–{} ms", u["unit"].as_str().unwrap_or("?"), u["start_ms"], u["end_ms"]))
            .collect();
        if !units.is_empty() {
            let _ = writeln!(out, "      (delta step: {})", units.join(", "));
        }
        let _ = writeln!(
            out,
            "    writes: {} acknowledged ({} file operations; {:.0} transactions/s until the freeze), {} refused by the freeze, {} lost",
            r["writes"]["acknowledged"],
            r["writes"]["file_ops"],
            s(r, "/writes/tx_per_s"),
            r["writes"]["refused"],
            r["writes"]["lost"]
        );
        let _ = writeln!(
            out,
            "    rollback within the window: freeze {:.3} s (target <= {FREEZE_TARGET_S} s: {}); {} writes acknowledged by the new host ({:.0} transactions/s until its freeze), {} lost; {} slot(s) left",
            s(r, "/rollback/freeze_ms") / 1000.0,
            if s(r, "/rollback/freeze_ms") / 1000.0 <= FREEZE_TARGET_S { "MET" } else { "MISSED" },
            r["rollback"]["writes"]["acknowledged"],
            s(r, "/rollback/writes/tx_per_s"),
            r["rollback"]["writes"]["lost"],
            r["rollback"]["slots_left"]
        );
        print_steps(&mut out, &r["rollback"]["steps"]);
        let _ = writeln!(
            out,
            "    the freeze the others need: standard tools {:.1} s (pg_dump | pg_restore {:.1} s + rsync -a --delete {:.2} s), runbook {:.1} s (pg_dump -Fc {:.1} + pg_restore {:.1} + tar -czf {:.1} + tar -xzf {:.1})",
            s(r, "/standard_window/total_s"),
            s(r, "/standard_window/pg_dump_pipe_pg_restore_s"),
            s(r, "/standard_window/rsync_delta_s"),
            s(r, "/runbook_window/total_s"),
            s(r, "/runbook_window/pg_dump_s"),
            s(r, "/runbook_window/pg_restore_s"),
            s(r, "/runbook_window/tar_czf_s"),
            s(r, "/runbook_window/tar_xzf_s")
        );
        let _ = writeln!(out, "    load average (1 min) before {:.2}, after {:.2}", s(r, "/load_before/0"), s(r, "/load_after/0"));
    }
    out
}
