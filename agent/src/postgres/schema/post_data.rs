//! Applying the post-data section the way `pg_restore -j` does: entry by entry, on
//! [`POST_DATA_PARALLELISM`] connections, in phases that respect what each kind of entry needs.
//!
//! 1. **Indexes and `PRIMARY KEY` / `UNIQUE` / `EXCLUDE` constraints** (`INDEX`, `CONSTRAINT`),
//!    in parallel, biggest table first (sizes read from the target, where the data already is).
//! 2. **Index attachments** (`INDEX ATTACH`, partitioned tables) in dump order: a partitioned
//!    unique index is valid only once every partition's index is attached, and foreign keys
//!    referencing it need it valid.
//! 3. **Foreign keys** (`FK CONSTRAINT`), in parallel: they need the unique indexes of phase 1.
//! 4. **Everything else** (triggers, rules, policies, comments, ACLs, statistics, materialized
//!    view refreshes, ...) in dump order on one connection.
//!
//! # Parts
//! A first copy applies the index and key-constraint entries of a big table as soon as its data
//! is in, while other tables still load (as `pgcopydb` does): [`PostDataPart::BuildOf`] runs only
//! the phase-1 entries of the tables it names, and [`PostDataPart::AllBut`] with the same tables
//! runs everything else afterwards — the two are exact complements, decided by the same test
//! ([`builds_of`]). An entry whose tables cannot be read from its text belongs to no table and
//! is left to `AllBut`.
//!
//! When the copy ends while such a build still runs (a big table loaded last; on the
//! benchmark's reference host ~2 s of one core), the other tables need not wait for it:
//! [`PostDataPart::BuildsAllBut`] runs the phase-1 entries of every other table beside it, and
//! [`PostDataPart::AfterBuilds`] the phases 2–4 of every table once all builds are done — a
//! foreign key can only be added once the unique index it references exists, and each entry is
//! its own transaction, so a lock alone would not hold it back. `BuildOf(a)`, `BuildOf(b)`,
//! `BuildsAllBut(a ∪ b)` and `AfterBuilds` together are the whole section, each entry once.
//!
//! Two entries never run at the same time when they would lock each other out: adding a
//! constraint takes a lock on its table (and a foreign key one on the referenced table too) that
//! conflicts with anything else on that table, while two `CREATE INDEX` on one table share theirs.
//! An entry whose tables cannot be read from its text runs alone.
//!
//! # Reruns
//! Each entry is its own transaction, so a sync killed halfway leaves some entries applied, each
//! whole. Applying the section again skips an entry whose object is already there — its first
//! statement fails with 42P07 (duplicate table: an index), 42710 (duplicate object: a constraint,
//! trigger, rule, policy...) or 42P16 (a second primary key) — and counts it in
//! [`SchemaApplied::already_present`]; entries that never ran are applied. Any other error stops
//! the apply and names the entry. What is not detected: an object that exists with another
//! definition (the source changed it since the first sync) is kept as it is; the cutover's
//! schema comparison catches that.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::toc::{self, TocEntry};
use crate::postgres::TableRef;
use crate::postgres::conn::Conn;
use crate::postgres::error::PgSyncError;

/// Connections the post-data section is applied on at once, like `pg_restore -j 2`. Two, because
/// the hosts this moves have two cores or more and index builds are CPU-bound on the target;
/// each connection may use up to the target server's own `maintenance_work_mem` while it builds
/// an index.
///
/// That setting is the server's, as `pg_restore` leaves it: hostshift used to raise it to
/// 256 MB per session, believing a bigger sort faster. Measured on the benchmark's data
/// (PostgreSQL 15, 2 cores; docs/BENCHMARKS.md), the default 64 MB rebuilt all 22 indexes of the
/// database with 8–13 % less CPU and time, and `pgbench_accounts`' key (5 M rows, two parallel
/// workers) with ~20 % less of both: one in-memory quicksort of the whole index loses to sorted
/// runs that fit the caches. An operator who tuned the target's `maintenance_work_mem` gets
/// what they chose (docs/sync.md says how to set it for the copy).
pub const POST_DATA_PARALLELISM: usize = 2;

/// Which entries of the post-data section an apply runs (see the module doc's *Parts*).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PostDataPart {
    /// Every entry.
    #[default]
    Whole,
    /// Only the indexes and `PRIMARY KEY` / `UNIQUE` / `EXCLUDE` constraints of these tables
    /// (phase 1), in parallel as usual: run once their data is loaded.
    BuildOf(Vec<TableRef>),
    /// Every entry but those `BuildOf` the same tables runs.
    AllBut(Vec<TableRef>),
    /// Only the phase-1 entries (indexes and key constraints) that `BuildOf` the same tables does
    /// not run: the other tables' builds, beside a build of these still under way.
    BuildsAllBut(Vec<TableRef>),
    /// Every entry but the phase-1 ones (all built by the parts above): index attachments,
    /// foreign keys and the rest.
    AfterBuilds,
}

impl PostDataPart {
    fn keeps(&self, e: &TocEntry<'_>) -> bool {
        match self {
            Self::Whole => true,
            Self::BuildOf(tables) => builds_of(e, tables),
            Self::AllBut(tables) => !builds_of(e, tables),
            Self::BuildsAllBut(tables) => phase(&e.desc) == Phase::Build && !builds_of(e, tables),
            Self::AfterBuilds => phase(&e.desc) != Phase::Build,
        }
    }

    /// Whether this part runs only phase-1 entries: the statements before the first entry then
    /// belong to another part.
    fn builds_only(&self) -> bool {
        matches!(self, Self::BuildOf(_) | Self::BuildsAllBut(_))
    }
}

/// Whether `e` is a phase-1 entry (an index or key constraint) on one of `tables`.
fn builds_of(e: &TocEntry<'_>, tables: &[TableRef]) -> bool {
    phase(&e.desc) == Phase::Build
        && locks(e).is_some_and(|l| {
            l.tables
                .iter()
                .all(|t| match toc::name_parts(t).as_slice() {
                    [schema, table] => tables
                        .iter()
                        .any(|r| &r.schema == schema && &r.table == table),
                    _ => false,
                })
        })
}

/// SQLSTATEs that mean "this entry's object is already there".
const ALREADY_THERE: [&str; 3] = ["42P07", "42710", "42P16"];

/// What applying a schema section did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaApplied {
    /// TOC entries in the section (post-data; 0 for pre-data, which runs as a whole).
    pub entries: usize,
    /// Entries run now.
    pub applied: usize,
    /// Entries skipped because their object was already there (a rerun after an interruption),
    /// as `TYPE name (schema s)`.
    pub already_present: Vec<String>,
    /// Connections used.
    pub connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Applied,
    Present,
}

impl SchemaApplied {
    fn record(&mut self, e: &TocEntry<'_>, o: Outcome) {
        match o {
            Outcome::Applied => self.applied += 1,
            Outcome::Present => self.already_present.push(e.label()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Build,
    Attach,
    ForeignKey,
    Rest,
}

fn phase(desc: &str) -> Phase {
    match desc {
        "INDEX" | "CONSTRAINT" => Phase::Build,
        "INDEX ATTACH" => Phase::Attach,
        "FK CONSTRAINT" => Phase::ForeignKey,
        _ => Phase::Rest,
    }
}

/// The tables an entry locks, and whether its lock conflicts with any other on them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Locks {
    tables: Vec<String>,
    exclusive: bool,
}

/// `None` when the entry's text does not read as expected: it then runs alone.
fn locks(e: &TocEntry<'_>) -> Option<Locks> {
    let [stmt] = e.statements.as_slice() else {
        return None;
    };
    match e.desc.as_str() {
        "INDEX" => {
            let r = toc::keywords(stmt, &["CREATE"])?;
            let r = toc::keywords(toc::optional(r, "UNIQUE"), &["INDEX"])?;
            let (_, r) = toc::qualified_name(r)?;
            let r = toc::optional(toc::keywords(r, &["ON"])?, "ONLY");
            let (table, _) = toc::qualified_name(r)?;
            Some(Locks {
                tables: vec![table.to_string()],
                exclusive: false,
            })
        }
        "CONSTRAINT" | "FK CONSTRAINT" => {
            let r = toc::optional(toc::keywords(stmt, &["ALTER", "TABLE"])?, "ONLY");
            let (table, _) = toc::qualified_name(r)?;
            let mut tables = vec![table.to_string()];
            if e.desc == "FK CONSTRAINT" {
                let (referenced, _) = toc::qualified_name(toc::after_references(stmt)?)?;
                if referenced != table {
                    tables.push(referenced.to_string());
                }
            }
            Some(Locks {
                tables,
                exclusive: true,
            })
        }
        _ => None,
    }
}

fn conflict(a: Option<&Locks>, b: Option<&Locks>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            (a.exclusive || b.exclusive) && a.tables.iter().any(|t| b.tables.contains(t))
        }
        _ => true,
    }
}

struct Job<'e, 't> {
    entry: &'e TocEntry<'t>,
    locks: Option<Locks>,
    weight: i64,
}

/// Applies `part` of the post-data text (without `\restrict` lines) on `conns` (at least one;
/// the first also runs the serial phases). Every connection is `RESET ALL` afterwards.
///
/// # Errors
/// [`PgSyncError::InvalidInput`] for text the splitter cannot read (an unclosed literal);
/// [`PgSyncError::Query`] naming the entry whose statement failed for another reason than its
/// object being there already; entries applied before it stay applied.
pub(crate) async fn apply(
    database: &str,
    sql: &str,
    part: &PostDataPart,
    conns: &[Conn],
) -> Result<SchemaApplied, PgSyncError> {
    if conns.is_empty() {
        return Err(PgSyncError::InvalidInput {
            database: database.to_string(),
            what: "post-data schema".into(),
            reason: "no connection to apply it on".into(),
        });
    }
    let result = run(database, sql, part, conns).await;
    for c in conns {
        // Best effort: the extra connections are closed right after anyway.
        let _ = c.client().batch_execute("RESET ALL").await;
    }
    result
}

/// hostshift's own publication on the old host (`hostshift_<id>`, made by `follow start`) and
/// its table entries: not the app's, never carried to the new host (where creating it needs a
/// superuser or membership in its owner, and it would publish nothing anyone reads).
fn own_publication(e: &TocEntry<'_>) -> bool {
    e.desc.starts_with("PUBLICATION") && e.name.starts_with("hostshift_")
}

async fn run(
    database: &str,
    sql: &str,
    part: &PostDataPart,
    conns: &[Conn],
) -> Result<SchemaApplied, PgSyncError> {
    let mut toc = toc::split(sql).map_err(|e| PgSyncError::InvalidInput {
        database: database.to_string(),
        what: "post-data schema".into(),
        reason: e.to_string(),
    })?;
    toc.entries.retain(|e| !own_publication(e) && part.keeps(e));
    if part.builds_only() {
        // The statements before the first entry belong to the rest of the section.
        toc.leading.clear();
    }
    if !toc.session_preamble.is_empty() {
        futures::future::try_join_all(
            conns
                .iter()
                .map(|c| c.exec(&toc.session_preamble, None, "set up a post-data session")),
        )
        .await?;
    }
    let mut report = SchemaApplied {
        entries: toc.entries.len(),
        connections: conns.len(),
        ..SchemaApplied::default()
    };
    for stmt in &toc.leading {
        conns[0]
            .exec(stmt, None, "apply the post-data preamble")
            .await?;
    }
    let started = Instant::now();
    let by_phase = |p: Phase| toc.entries.iter().filter(move |e| phase(&e.desc) == p);

    let build: Vec<Job<'_, '_>> = by_phase(Phase::Build)
        .map(|entry| Job {
            entry,
            locks: locks(entry),
            weight: 0,
        })
        .collect();
    let fks: Vec<Job<'_, '_>> = by_phase(Phase::ForeignKey)
        .map(|entry| Job {
            entry,
            locks: locks(entry),
            weight: 0,
        })
        .collect();
    let mut tables: Vec<String> = build
        .iter()
        .chain(&fks)
        .filter_map(|j| j.locks.as_ref())
        .flat_map(|l| l.tables.iter().cloned())
        .collect();
    tables.sort();
    tables.dedup();
    let sizes = table_sizes(&conns[0], &tables).await;
    run_parallel(conns, weigh(build, &sizes), &mut report).await?;
    let built = started.elapsed();
    for e in by_phase(Phase::Attach) {
        report.record(e, apply_entry(&conns[0], e).await?);
    }
    run_parallel(conns, weigh(fks, &sizes), &mut report).await?;
    let keyed = started.elapsed();
    for e in by_phase(Phase::Rest) {
        report.record(e, apply_entry(&conns[0], e).await?);
    }
    tracing::info!(
        database,
        entries = report.entries,
        applied = report.applied,
        already_present = report.already_present.len(),
        connections = conns.len(),
        indexes_ms = built.as_millis() as u64,
        foreign_keys_ms = (keyed - built).as_millis() as u64,
        rest_ms = (started.elapsed() - keyed).as_millis() as u64,
        "post-data applied"
    );
    Ok(report)
}

/// Sets each job's weight (the heap size of its tables) and sorts the biggest first, so the
/// longest builds do not start last; stable, so ties keep the dump's order.
fn weigh<'e, 't>(mut jobs: Vec<Job<'e, 't>>, sizes: &HashMap<String, i64>) -> Vec<Job<'e, 't>> {
    for j in &mut jobs {
        j.weight = j.locks.as_ref().map_or(0, |l| {
            l.tables
                .iter()
                .map(|t| sizes.get(t).copied().unwrap_or(0))
                .sum()
        });
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.weight));
    jobs
}

/// Heap size of each table, for the order of the builds (an empty map when the query fails:
/// the dump's order is as correct, only slower).
async fn table_sizes(conn: &Conn, tables: &[String]) -> HashMap<String, i64> {
    if tables.is_empty() {
        return HashMap::new();
    }
    let sql = "SELECT t, coalesce(pg_catalog.pg_relation_size(pg_catalog.to_regclass(t)), 0)::int8 \
               FROM pg_catalog.unnest($1::text[]) AS t";
    match conn.client().query(sql, &[&tables]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "table sizes unavailable; indexes are built in dump order");
            HashMap::new()
        }
    }
}

/// Runs `pending` on the connections, each entry on a free connection as soon as no running
/// entry conflicts with it. After a failure nothing new starts; the running entries finish and
/// the first error is returned.
async fn run_parallel(
    conns: &[Conn],
    mut pending: Vec<Job<'_, '_>>,
    report: &mut SchemaApplied,
) -> Result<(), PgSyncError> {
    let mut free: Vec<usize> = (0..conns.len()).rev().collect();
    let mut running: Vec<(usize, Option<Locks>)> = Vec::new();
    let mut inflight = FuturesUnordered::new();
    let mut failure: Option<PgSyncError> = None;
    loop {
        while failure.is_none() && !free.is_empty() {
            let Some(pos) = pending.iter().position(|j| {
                running
                    .iter()
                    .all(|(_, l)| !conflict(j.locks.as_ref(), l.as_ref()))
            }) else {
                break;
            };
            let job = pending.remove(pos);
            let Some(c) = free.pop() else { break };
            running.push((c, job.locks));
            let (conn, entry) = (&conns[c], job.entry);
            inflight.push(async move { (c, entry, apply_entry(conn, entry).await) });
        }
        let Some((c, entry, result)) = inflight.next().await else {
            break;
        };
        free.push(c);
        running.retain(|(rc, _)| *rc != c);
        match result {
            Ok(o) => report.record(entry, o),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

fn already_there(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| ALREADY_THERE.contains(&d.code().code()))
}

/// Runs one entry in its own transaction, with the session settings of its place in the dump.
/// Only its first statement may find its object already there: if a later one did, the entry
/// was not applied before (its first object was missing), and that is an error.
async fn apply_entry(conn: &Conn, e: &TocEntry<'_>) -> Result<Outcome, PgSyncError> {
    let started = Instant::now();
    let outcome = run_entry(conn, e).await;
    tracing::debug!(
        entry = %e.label(),
        ms = started.elapsed().as_millis() as u64,
        outcome = ?outcome.as_ref().ok(),
        "post-data entry"
    );
    outcome
}

async fn run_entry(conn: &Conn, e: &TocEntry<'_>) -> Result<Outcome, PgSyncError> {
    let what = || format!("apply the post-data entry {}", e.label());
    let Some((first, rest)) = e.statements.split_first() else {
        return Ok(Outcome::Applied);
    };
    let client = conn.client();
    if rest.is_empty() {
        // One statement: the simple query protocol runs it in an implicit transaction.
        return match client.batch_execute(&format!("{}{first}", e.session)).await {
            Ok(()) => Ok(Outcome::Applied),
            Err(err) if already_there(&err) => Ok(Outcome::Present),
            Err(err) => Err(conn.err(None, &what(), &err)),
        };
    }
    let head = format!("BEGIN;\n{}{first}", e.session);
    if let Err(err) = client.batch_execute(&head).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return if already_there(&err) {
            Ok(Outcome::Present)
        } else {
            Err(conn.err(None, &what(), &err))
        };
    }
    let tail = format!("{}\nCOMMIT;", rest.join("\n"));
    if let Err(err) = client.batch_execute(&tail).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(conn.err(None, &what(), &err));
    }
    Ok(Outcome::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(desc: &str, stmt: &'a str) -> TocEntry<'a> {
        TocEntry {
            name: "n".into(),
            desc: desc.into(),
            schema: "public".into(),
            statements: vec![stmt],
            session: String::new(),
        }
    }

    #[test]
    fn only_hostshifts_own_publication_is_left_out() {
        let named = |desc: &str, name: &str| TocEntry {
            name: name.into(),
            ..entry(desc, "CREATE PUBLICATION x;")
        };
        assert!(own_publication(&named("PUBLICATION", "hostshift_main")));
        assert!(own_publication(&named(
            "PUBLICATION TABLE",
            "hostshift_main users"
        )));
        assert!(!own_publication(&named("PUBLICATION", "app_pub")));
        assert!(!own_publication(&named("INDEX", "hostshift_main")));
    }

    #[test]
    fn entries_are_phased_by_type() {
        assert_eq!(phase("INDEX"), Phase::Build);
        assert_eq!(phase("CONSTRAINT"), Phase::Build);
        assert_eq!(phase("INDEX ATTACH"), Phase::Attach);
        assert_eq!(phase("FK CONSTRAINT"), Phase::ForeignKey);
        for other in [
            "CHECK CONSTRAINT",
            "TRIGGER",
            "COMMENT",
            "ACL",
            "RULE",
            "POLICY",
        ] {
            assert_eq!(phase(other), Phase::Rest, "{other}");
        }
    }

    #[test]
    fn locks_are_read_from_the_statements_and_decide_what_may_run_together() {
        let idx = entry(
            "INDEX",
            "CREATE UNIQUE INDEX \"i x\" ON ONLY public.users USING btree (lower(email));",
        );
        let idx2 = entry("INDEX", "CREATE INDEX j ON public.users USING gin (tags);");
        let pk = entry(
            "CONSTRAINT",
            "ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
        );
        let fk = entry(
            "FK CONSTRAINT",
            "ALTER TABLE ONLY public.runs\n    ADD CONSTRAINT runs_user_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;",
        );
        let other = entry("FK CONSTRAINT", "ALTER TABLE x ADD garbage;");
        let (l_idx, l_idx2, l_pk, l_fk) = (locks(&idx), locks(&idx2), locks(&pk), locks(&fk));
        assert_eq!(
            l_idx,
            Some(Locks {
                tables: vec!["public.users".into()],
                exclusive: false
            })
        );
        assert_eq!(
            l_fk.as_ref().map(|l| l.tables.clone()),
            Some(vec!["public.runs".to_string(), "public.users".to_string()])
        );
        assert_eq!(locks(&other), None);
        // Two index builds on one table share their lock; a constraint does not.
        assert!(!conflict(l_idx.as_ref(), l_idx2.as_ref()));
        assert!(conflict(l_idx.as_ref(), l_pk.as_ref()));
        assert!(conflict(l_fk.as_ref(), l_pk.as_ref()));
        let elsewhere = entry(
            "CONSTRAINT",
            "ALTER TABLE ONLY public.questions ADD CONSTRAINT q_pkey PRIMARY KEY (id);",
        );
        assert!(!conflict(l_pk.as_ref(), locks(&elsewhere).as_ref()));
        // Unknown text runs alone.
        assert!(conflict(None, l_idx.as_ref()));
    }

    #[test]
    fn a_part_builds_the_indexes_and_keys_of_its_tables_and_its_complement_the_rest() {
        let users = TableRef::new("public", "users");
        let odd = TableRef::new("My Schema", "T\"x");
        let entries = [
            entry("INDEX", "CREATE INDEX j ON public.users USING gin (tags);"),
            entry(
                "CONSTRAINT",
                "ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
            ),
            entry(
                "INDEX",
                "CREATE INDEX k ON \"My Schema\".\"T\"\"x\" USING btree (a);",
            ),
            entry(
                "CONSTRAINT",
                "ALTER TABLE ONLY public.questions ADD CONSTRAINT q_pkey PRIMARY KEY (id);",
            ),
            entry(
                "FK CONSTRAINT",
                "ALTER TABLE ONLY public.users ADD CONSTRAINT u_fk FOREIGN KEY (a) REFERENCES public.users(id);",
            ),
            entry(
                "TRIGGER",
                "CREATE TRIGGER t AFTER INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION f();",
            ),
            entry("INDEX", "CREATE INDEX garbled"),
        ];
        let tables = vec![users, odd];
        let build = PostDataPart::BuildOf(tables.clone());
        let rest = PostDataPart::AllBut(tables.clone());
        let kept: Vec<bool> = entries.iter().map(|e| build.keeps(e)).collect();
        // The users index and key, and the quoted table's index; not another table's key, not a
        // foreign key (it needs the referenced table's key), not a trigger, not unreadable text.
        assert_eq!(kept, [true, true, true, false, false, false, false]);
        let others = PostDataPart::BuildsAllBut(tables);
        let after = PostDataPart::AfterBuilds;
        for e in &entries {
            assert_ne!(
                build.keeps(e),
                rest.keeps(e),
                "exact complements: {}",
                e.statements[0]
            );
            assert!(PostDataPart::Whole.keeps(e));
            // The three-part split of `rest` while a build is still under way.
            let split = [&build, &others, &after].map(|p| p.keeps(e));
            assert_eq!(
                split.iter().filter(|k| **k).count(),
                1,
                "each entry in exactly one of build / other builds / after: {}",
                e.statements[0]
            );
            assert_eq!(rest.keeps(e), others.keeps(e) || after.keeps(e));
        }
        // The other table's key and the unreadable index are the other builds; the foreign key
        // and the trigger wait for every build.
        let other_builds: Vec<bool> = entries.iter().map(|e| others.keeps(e)).collect();
        assert_eq!(
            other_builds,
            [false, false, false, true, false, false, true]
        );
        let later: Vec<bool> = entries.iter().map(|e| after.keeps(e)).collect();
        assert_eq!(later, [false, false, false, false, true, true, false]);
    }
}
