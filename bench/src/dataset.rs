//! The reference data set of the old host, built once and cached (it takes minutes): a PostgreSQL
//! cluster holding `pgbench -i -s 50` plus the app schema seeded at Medium scale (~1.3 GB
//! together), a storage tree of 10,000 deterministic files in 500 folders (~2.9 GB), and the
//! app's three config files.
//!
//! The "1% change" of the delta runs is a *generation*: generation `g` sets, on 1% of the rows of
//! four tables and on 1% of the files, a value derived from `g`; generation 0 is the original
//! data. The current generation is written to `dataset.json` before it is applied, so a run that
//! dies half way is reverted by the next one: the cache always returns to the same bytes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostshift::lab::pg::PgCluster;
use hostshift::lab::seed::{self, Scale};
use serde::{Deserialize, Serialize};

use crate::storage_tree;
use crate::sys;

/// Bump when the generated data changes: a cache of another version is rebuilt.
const VERSION: u32 = 1;
/// `pgbench -i -s` (5 million accounts, ~750 MB with its index).
pub const PGBENCH_SCALE: u32 = 50;
/// The app schema's scale (~466 MB).
pub const APP_SCALE: Scale = Scale::Medium;
/// The old host's loopback address (as in the rehearsal).
pub const OLD_IP: Ipv4Addr = hostshift::rehearse::OLD_IP;

/// `(table, key column, SET clause for generation {g})`: the tables the 1% change touches, each on
/// the rows whose key is 7 modulo 100 — spread over the whole key range, so every key-range piece
/// of those tables changes. Generation 0 restores the seeded values exactly (the app's
/// `updated_at` triggers are off for these updates, see [`apply_db_generation`]).
pub const DB_CHANGES: [(&str, &str, &str); 4] = [
    ("pgbench_accounts", "aid", "abalance = {g}"),
    ("users", "id", "profile = CASE WHEN {g} = 0 THEN profile - 'bench_rev' ELSE (profile - 'bench_rev') || jsonb_build_object('bench_rev', {g}) END"),
    ("assessments", "id", "answer = CASE WHEN {g} = 0 THEN answer - 'bench_rev' ELSE (answer - 'bench_rev') || jsonb_build_object('bench_rev', {g}) END"),
    ("project_evaluation_runs", "id", "result = CASE WHEN {g} = 0 THEN result - 'bench_rev' ELSE (result - 'bench_rev') || jsonb_build_object('bench_rev', {g}) END"),
];

/// What the cache holds, and which generation of the 1% change is applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Generator version.
    pub version: u32,
    /// Everything was built.
    pub complete: bool,
    /// Storage: files, folders, bytes, and `(files, bytes)` per kind.
    pub storage: storage_tree::Summary,
    /// `pg_database_size('app')`.
    pub db_bytes: i64,
    /// Rows per table.
    pub rows: BTreeMap<String, i64>,
    /// Seconds the build took.
    pub build_s: f64,
    /// Applied generation of the 1% row change (0 = original).
    pub db_gen: u32,
    /// Applied generation of the 1% file change (0 = original).
    pub files_gen: u32,
}

/// The old host's data, its cluster running.
pub struct Dataset {
    /// The old host's PostgreSQL (database `app`).
    pub old: PgCluster,
    /// The old host's folder (config files and the storage tree are under it).
    pub host: PathBuf,
    /// The storage tree.
    pub storage: PathBuf,
    /// The config files: `(name in the agents' configs, path)`.
    pub files: Vec<(String, PathBuf)>,
    /// What it holds.
    pub meta: Meta,
    meta_path: PathBuf,
}

/// Config files of the app: `(name, path under the host folder, text)`.
const CONFIG_FILES: [(&str, &str, &str); 3] = [
    ("backend-env", "app/backend/.env", "PORT=3666\nDATABASE_URL=postgres://app@localhost:5432/app\nJWT_SECRET=bench-secret\nCORS_ORIGIN=https://old.app.example\n"),
    ("frontend-env", "app/frontend/.env", "VITE_API_URL=https://old.app.example\n"),
    ("ecosystem", "app/ecosystem.config.cjs", "module.exports = { apps: [{ name: 'backend', script: 'backend/server.js' }] };\n"),
];

fn paths(cache: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let host = cache.join("host");
    (cache.join("pg"), host.join("app/backend/storage/project-evaluations"), host)
}

/// The `data` folder of the cached cluster in `cache` (stopped, it can be copied).
pub fn pg_data(cache: &Path) -> PathBuf {
    paths(cache).0.join("old/data")
}

/// A database `n` × the reference size for the cutover round's `--scale`, built once and cached
/// in `work/cache-x<n>` (database only: the round takes the storage tree from the reference).
/// The reference is `pgbench -s 50` (~750 MB) plus the app schema at Medium (~470 MB, about 31
/// pgbench scale units); the scaled one keeps the app schema and grows pgbench to
/// `50 n + 31 (n − 1)`. Returns the stopped cluster's `data` folder and the database's size.
///
/// # Errors
/// Cluster, seed, `pgbench` or file errors; not enough disk.
pub async fn scaled_db(work: &Path, n: u32, say: &dyn Fn(&str)) -> Result<(PathBuf, i64)> {
    #[derive(Serialize, Deserialize)]
    struct Scaled {
        version: u32,
        pgbench_scale: u32,
        db_bytes: i64,
        build_s: f64,
    }
    let cache = work.join(format!("cache-x{n}"));
    let meta = cache.join("scaled.json");
    let pgbench_scale = PGBENCH_SCALE * n + 31 * (n - 1);
    let data = cache.join("pg/old/data");
    if let Some(m) = std::fs::read(&meta).ok().and_then(|b| serde_json::from_slice::<Scaled>(&b).ok())
        && m.version == VERSION
        && m.pgbench_scale == pgbench_scale
    {
        say(&format!("database x{n}: cached in {} (pgbench -s {pgbench_scale}, {:.2} GB)", cache.display(), m.db_bytes as f64 / 1e9));
        return Ok((data, m.db_bytes));
    }
    let need = u64::from(n) * 2 * 1024 * 1024 * 1024 + 10 * 1024 * 1024 * 1024;
    let free = sys::free_bytes(work)?;
    if free < need {
        bail!(
            "not enough free disk for the x{n} database at {}: {:.1} GiB free, {:.1} GiB needed (10 GiB kept free); use a smaller --scale or --work on a bigger disk",
            work.display(),
            free as f64 / (1u64 << 30) as f64,
            need as f64 / (1u64 << 30) as f64
        );
    }
    say(&format!("database x{n}: building in {} (app schema at {APP_SCALE} + pgbench -s {pgbench_scale}; minutes, once)", cache.display()));
    sys::remove_dir(&cache)?;
    std::fs::create_dir_all(&cache)?;
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let started = Instant::now();
    let mut old = PgCluster::start(&cache.join("pg"), "old", OLD_IP).await?;
    old.create_database("app", None).await?;
    let client = old.connect("app").await?;
    seed::seed(&client, APP_SCALE).await?;
    let pgbench = old.bin_dir().join("pgbench");
    sys::shell(
        "pgbench -i",
        &format!("'{}' -i -q -s {pgbench_scale} -d \"$DB\"", pgbench.display()),
        &[("DB", old.conninfo("app"))],
        Duration::from_secs(3600),
        false,
        false,
    )
    .await?;
    for sql in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
        client.batch_execute(sql).await.with_context(|| format!("{sql} the x{n} database"))?;
    }
    let db_bytes: i64 = client.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
    drop(client);
    old.stop().await?;
    let m = Scaled { version: VERSION, pgbench_scale, db_bytes, build_s: crate::measure::round2(started.elapsed().as_secs_f64()) };
    std::fs::write(&meta, serde_json::to_vec_pretty(&m)?)?;
    say(&format!("database x{n}: {:.2} GB built in {:.0} s", db_bytes as f64 / 1e9, m.build_s));
    Ok((data, db_bytes))
}

/// What a build needs on disk (cluster + tree, with slack for WAL and index builds).
pub const BUILD_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// True when `cache` holds a complete data set of this version.
pub fn is_cached(cache: &Path) -> bool {
    read_meta(&cache.join("dataset.json")).is_some_and(|m| m.complete && m.version == VERSION)
}

fn read_meta(path: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

impl Dataset {
    /// Opens the cached data set in `cache` (reverting a 1% change a killed run left), or builds
    /// it there when it is missing, of another version, or `fresh` is asked for.
    ///
    /// # Errors
    /// Cluster, seed, `pgbench` or file errors.
    pub async fn open_or_build(cache: &Path, fresh: bool, say: &dyn Fn(&str)) -> Result<Dataset> {
        let meta_path = cache.join("dataset.json");
        let (pg_root, storage, host) = paths(cache);
        let files = CONFIG_FILES.iter().map(|(n, rel, _)| (n.to_string(), host.join(rel))).collect();
        if !fresh && is_cached(cache) {
            let meta = read_meta(&meta_path).context("dataset.json vanished")?;
            say(&format!("reference data: cached in {} (built in {:.0} s; --fresh rebuilds it)", cache.display(), meta.build_s));
            let old = PgCluster::start_existing(&pg_root, "old", OLD_IP).await?;
            let mut d = Dataset { old, host, storage, files, meta, meta_path };
            if d.meta.db_gen != 0 || d.meta.files_gen != 0 {
                say("reference data: reverting the 1% change an interrupted run left");
                d.set_db_generation(0).await?;
                d.set_files_generation(0)?;
            }
            return Ok(d);
        }
        say(&format!("reference data: building in {} (a few minutes, once)", cache.display()));
        sys::remove_dir(cache)?;
        std::fs::create_dir_all(cache).with_context(|| format!("create {}", cache.display()))?;
        std::fs::set_permissions(cache, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let started = Instant::now();
        let old = PgCluster::start(&pg_root, "old", OLD_IP).await?;
        old.create_database("app", None).await?;
        let client = old.connect("app").await?;
        say(&format!("reference data: app schema at {APP_SCALE} scale"));
        seed::seed(&client, APP_SCALE).await?;
        say(&format!("reference data: pgbench -i -s {PGBENCH_SCALE}"));
        let pgbench = old.bin_dir().join("pgbench");
        sys::shell(
            "pgbench -i",
            &format!("'{}' -i -q -s {PGBENCH_SCALE} -d \"$DB\"", pgbench.display()),
            &[("DB", old.conninfo("app"))],
            Duration::from_secs(1800),
            false,
            false,
        )
        .await?;
        // A database that has been running is vacuumed and analyzed: the planner's row estimates
        // (which decide how tables are split into pieces) are then what they would be.
        for sql in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
            client.batch_execute(sql).await.with_context(|| format!("{sql} the reference database"))?;
        }
        say("reference data: storage tree (10,000 files, ~2.9 GB)");
        let tree = storage.clone();
        let summary = tokio::task::spawn_blocking(move || storage_tree::generate(&tree)).await??;
        for (_, rel, text) in CONFIG_FILES {
            let p = host.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, text)?;
        }
        let (db_bytes, rows) = db_summary(&client).await?;
        let meta = Meta {
            version: VERSION,
            complete: true,
            storage: summary,
            db_bytes,
            rows,
            build_s: crate::measure::round2(started.elapsed().as_secs_f64()),
            db_gen: 0,
            files_gen: 0,
        };
        let d = Dataset { old, host, storage, files, meta, meta_path };
        d.save()?;
        say(&format!("reference data: built in {:.0} s", d.meta.build_s));
        Ok(d)
    }

    fn save(&self) -> Result<()> {
        let tmp = self.meta_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.meta)?)?;
        std::fs::rename(&tmp, &self.meta_path)?;
        Ok(())
    }

    /// Applies generation `g` of the 1% row change; returns the rows updated.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn set_db_generation(&mut self, g: u32) -> Result<u64> {
        // Recorded first: if this dies half way, the next run reverts to 0.
        self.meta.db_gen = g.max(self.meta.db_gen);
        self.save()?;
        let client = self.old.connect("app").await?;
        let rows = apply_db_generation(&client, g).await?;
        if g == 0 {
            let tables: Vec<&str> = DB_CHANGES.iter().map(|c| c.0).collect();
            client.batch_execute(&format!("VACUUM (ANALYZE) {}", tables.join(", "))).await?;
        }
        self.meta.db_gen = g;
        self.save()?;
        Ok(rows)
    }

    /// Applies generation `g` of the 1% file change; returns the files rewritten.
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_files_generation(&mut self, g: u32) -> Result<u64> {
        self.meta.files_gen = g.max(self.meta.files_gen);
        self.save()?;
        let n = storage_tree::rewrite_changed(&self.storage, g)?;
        self.meta.files_gen = g;
        self.save()?;
        Ok(n)
    }
}

/// Updates 1% of the rows of [`DB_CHANGES`]' tables to generation `g`, in one transaction with
/// triggers off (`session_replication_role = replica`), as a superuser.
async fn apply_db_generation(client: &tokio_postgres::Client, g: u32) -> Result<u64> {
    client.batch_execute("BEGIN; SET LOCAL session_replication_role = replica").await?;
    let mut rows = 0;
    for (table, key, set) in DB_CHANGES {
        let sql = format!("UPDATE {table} SET {} WHERE {key} % 100 = 7", set.replace("{g}", &g.to_string()));
        match client.execute(&sql, &[]).await {
            Ok(n) => rows += n,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                bail!("{sql}: {e}");
            }
        }
    }
    client.batch_execute("COMMIT").await?;
    Ok(rows)
}

/// `pg_database_size` and the exact row count of every table.
///
/// # Errors
/// SQL errors.
pub async fn db_summary(client: &tokio_postgres::Client) -> Result<(i64, BTreeMap<String, i64>)> {
    let size: i64 = client.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
    let mut rows = BTreeMap::new();
    for t in user_tables(client).await? {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await?.get(0);
        rows.insert(t, n);
    }
    Ok((size, rows))
}

/// Every user table as a quoted `schema.table`, biggest first.
///
/// # Errors
/// SQL errors.
pub async fn user_tables(client: &tokio_postgres::Client) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables \
             ORDER BY pg_table_size(relid) DESC, 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
