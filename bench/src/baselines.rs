//! The baselines, as an operator would type them: the classic runbook (`pg_dump -Fc` +
//! `pg_restore`, `tar -czf` + `tar -xzf`) and the best standard tools (schema + binary `COPY`
//! of two tables at a time piped between two `psql`s + `pg_restore -j 2` of the post-data section;
//! `tar | tar`; `rsync -a --delete`). The scripts below are exactly what is timed; the commands
//! are printed in docs/BENCHMARKS.md. Each copy is checked before it is thrown away.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use hostshift::lab::pg::PgCluster;

use crate::sys::{self, Output};

/// Deadline of one baseline command.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Classic runbook, database: a custom-format dump to a file.
pub const CLASSIC_DUMP: &str = r#"pg_dump -Fc -f "$DUMP" -d "$OLD""#;
/// Classic runbook, database: restore it into an empty database.
pub const CLASSIC_RESTORE: &str = r#"pg_restore --exit-on-error -d "$NEW" "$DUMP""#;
/// Classic runbook, storage: a compressed archive.
pub const CLASSIC_TAR_C: &str = r#"tar -czf "$TGZ" -C "$SRC" ."#;
/// Classic runbook, storage: unpacked into an empty folder.
pub const CLASSIC_TAR_X: &str = r#"tar -xzf "$TGZ" -C "$DST""#;

/// Best standard tools, database: pre-data schema; every table as binary COPY piped from one
/// psql to another, biggest first, two at a time; sequence positions (`setval`; `pg_dump -t` leaves
/// identity sequences out) and large objects (the data section without table data); then the
/// post-data section (indexes, constraints, triggers) with two parallel jobs.
pub const BEST_DB: &str = r#"mark() { echo "$1 $(date +%s%N)" >>"$MARKS"; }
mark "pre-data schema"
pg_dump --section=pre-data -d "$OLD" | psql -X -q -v ON_ERROR_STOP=1 -d "$NEW" >/dev/null
mark "table data (2 COPY pipes)"
psql -X -At -d "$OLD" -c "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables ORDER BY pg_table_size(relid) DESC" |
  xargs -P 2 -I{} bash -c 'set -o pipefail; psql -X -q -d "$OLD" -c "\copy {} TO PSTDOUT (FORMAT binary)" | psql -X -q -v ON_ERROR_STOP=1 -d "$NEW" -c "\copy {} FROM PSTDIN (FORMAT binary)" >/dev/null'
mark "sequences + large objects"
psql -X -At -d "$OLD" -c "SELECT format('SELECT pg_catalog.setval(%L, %s);', quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value) FROM pg_sequences WHERE last_value IS NOT NULL" | psql -X -q -v ON_ERROR_STOP=1 -d "$NEW" >/dev/null
pg_dump --section=data --exclude-table-data='*' -d "$OLD" | psql -X -q -v ON_ERROR_STOP=1 -d "$NEW" >/dev/null
mark "post-data: pg_dump to a file"
pg_dump -Fc --section=post-data -f "$POST" -d "$OLD"
mark "post-data: pg_restore -j 2"
pg_restore -j 2 --exit-on-error -d "$NEW" "$POST"
mark end"#;
/// Best standard tools, storage: an uncompressed tar stream into a second tar.
pub const TAR_PIPE: &str = r#"tar -C "$SRC" -cf - . | tar -C "$DST" -xf -"#;
/// [`BEST_DB`] and [`TAR_PIPE`] at the same time (the database script in the background).
pub fn best_at_once() -> String {
    format!("(\n{BEST_DB}\n) &\ndb=$!\n{TAR_PIPE}\nwait \"$db\"")
}
/// What durability would add to the tar pipe: one syncfs of the target's file system (hostshift
/// ends every storage batch with one). Not part of the baseline; timed to explain the gap.
pub const SYNCFS: &str = r#"sync -f "$DST""#;
/// A yardstick for `verify`'s read of the new tree: every file of it read and hashed (two
/// processes), nothing compared.
pub const HASH_TREE: &str = r#"find "$DST" -type f -print0 | xargs -0 -n 500 -P 2 sha256sum >/dev/null"#;
/// Best standard tools, storage delta: rsync's quick check (size + mtime), only changed files sent.
pub const RSYNC: &str = r#"rsync -a --delete "$SRC/" "$DST/""#;

/// Where the baselines work.
pub struct Baselines<'a> {
    /// Connection string of the old host's database `app`.
    pub old_conninfo: String,
    /// PostgreSQL client binaries.
    pub pg_bin: PathBuf,
    /// The new host's cluster (baselines use their own databases in it).
    pub new: &'a PgCluster,
    /// The old host's storage tree.
    pub src: PathBuf,
    /// Scratch folder for dumps, archives and target trees.
    pub scratch: PathBuf,
}

impl Baselines<'_> {
    fn env(&self, target_db: &str, dst: &Path) -> Vec<(&'static str, String)> {
        let bin = self.pg_bin.display().to_string();
        vec![
            ("PATH", format!("{bin}:/usr/local/bin:/usr/bin:/bin")),
            ("OLD", self.old_conninfo.clone()),
            ("NEW", self.new.conninfo(target_db)),
            ("DUMP", self.scratch.join("app.dump").display().to_string()),
            ("POST", self.scratch.join("post-data.dump").display().to_string()),
            ("TGZ", self.scratch.join("storage.tar.gz").display().to_string()),
            ("SRC", self.src.display().to_string()),
            ("DST", dst.display().to_string()),
            ("MARKS", self.scratch.join("marks").display().to_string()),
        ]
    }

    /// Runs one timed step.
    ///
    /// # Errors
    /// The command failing (with its stderr).
    pub async fn run(&self, what: &str, script: &str, target_db: &str, dst: &Path) -> Result<Output> {
        sys::shell(what, script, &self.env(target_db, dst), TIMEOUT, false, false).await
    }

    /// A new empty database `name` on the new cluster (dropped first if present).
    ///
    /// # Errors
    /// SQL errors.
    pub async fn fresh_db(&self, name: &str) -> Result<()> {
        self.drop_db(name).await?;
        self.new.create_database(name, None).await?;
        Ok(())
    }

    /// Drops database `name` on the new cluster if it exists.
    ///
    /// # Errors
    /// SQL errors.
    pub async fn drop_db(&self, name: &str) -> Result<()> {
        let c = self.new.connect("postgres").await?;
        c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
        Ok(())
    }

    /// Runs a script that calls `mark NAME` between its steps; returns its output and the
    /// steps' seconds as `[{phase, s}]` (the same shape as hostshift's phases).
    ///
    /// # Errors
    /// The command failing.
    pub async fn run_marked(&self, what: &str, script: &str, target_db: &str, dst: &Path) -> Result<(Output, serde_json::Value)> {
        let marks = self.scratch.join("marks");
        let _ = std::fs::remove_file(&marks);
        let out = self.run(what, script, target_db, dst).await?;
        let text = std::fs::read_to_string(&marks).unwrap_or_default();
        let points: Vec<(&str, f64)> = text
            .lines()
            .filter_map(|l| {
                let (name, ns) = l.rsplit_once(' ')?;
                Some((name, ns.parse::<f64>().ok()? / 1e9))
            })
            .collect();
        let phases: Vec<serde_json::Value> = points
            .windows(2)
            .map(|w| serde_json::json!({ "phase": w[0].0, "s": crate::measure::round2(w[1].1 - w[0].1) }))
            .collect();
        Ok((out, serde_json::Value::Array(phases)))
    }

    /// The size of a file in the scratch folder, if present.
    pub fn scratch_size(&self, name: &str) -> u64 {
        std::fs::metadata(self.scratch.join(name)).map_or(0, |m| m.len())
    }
}
