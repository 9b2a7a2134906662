//! The full proof of a followed database, **outside** the freeze (docs/cutover.md, "The follow
//! path"). Inside the freeze only cheap checks run; the table-by-table comparison happens after
//! the switch, against a snapshot of the new host taken before traffic moved:
//!
//! 1. **In the freeze** ([`Cut::wal_quiet`], part of `prove`): the follower applied everything
//!    committed before the freeze position (the catch-up), and the old host's WAL holds **no
//!    data change** of a followed table after it: the slot is advanced to the freeze position
//!    (the follower applied up to it) and peeked; any INSERT, UPDATE, DELETE or TRUNCATE decoded
//!    there is a write the freeze did not stop, named by table. Tables outside the publication
//!    (no replica identity) are not in the WAL stream: the delta fingerprinted them on the old
//!    host, and the proof after the switch fingerprints them again ("did the old host change").
//!    Sequences, the schema, files and storage are compared in the freeze (`verify::
//!    run_in_freeze`; storage by manifest through the digest caches): sequence positions are not
//!    versioned, so no snapshot can show them as they were later, and a file tree has none.
//! 2. **Hold** ([`Cut::hold_snapshots`]): after the delta, before the switch, the new agent
//!    exports a snapshot of each followed database (`OpenSnapshot`, on a lease the coordinator
//!    renews). Nothing writes to the new host between the delta and the switch, so the snapshot
//!    shows exactly the state traffic moved onto — which, if the copy is right, is the frozen old
//!    host. `<state_dir>/new-host-at-switch.json` is written `pending` with the snapshot ids
//!    before traffic moves.
//! 3. **Switch**: the freeze window ends here.
//! 4. **Prove after the switch** ([`Cut::prove_after_switch`]): per followed database, the old
//!    host (frozen: its current state is the freeze state) fingerprinted now against the new
//!    host's tables, large objects (`FingerprintAt`) and materialized views under the held
//!    snapshot, while the new
//!    host serves; plus the old host's tables the delta fingerprinted, compared with the delta's
//!    fingerprints (the freeze held). The new host's fingerprints under the snapshot are the
//!    state at the switch: recorded as the rollback's baseline (no longer `pending`). Then the
//!    snapshots are released. A difference fails the step: traffic is switched back and the old
//!    host unfrozen (the usual undo), exit 1 naming the tables, and the writes the new host took
//!    meanwhile are named as a rollback names them (they are not copied back).
//!
//! # A crash between the switch and the proof
//! The journal then has `hold snapshots` done and `switch` started, and no `prove after switch`
//! done ([`super::state::State::proof_pending`]). The new host has served since, so a proof
//! against its current state proves nothing: the only valid proof is under the snapshot held at
//! the switch. The rule: `cutover --resume` runs the proof after the switch again **only if the
//! new agent still holds every snapshot** (its lease — 90 s without renewal — has not run out and
//! the agent did not restart); then the run finishes (or is undone) as usual. Otherwise it
//! changes nothing, exits 3 and says that the proof can no longer run and what to run: `hostshift
//! rollback --yes` to go back (the new host's writes since the switch are then unknown and `sync`
//! refuses until they are dealt with), or `hostshift cutover --resume --yes
//! --accept-unproven` to keep the new host without the proof (journaled as such).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hostshift_proto::v1::{
    ChangesRequest, CloseSnapshotRequest, DbReadRequest, OpenSnapshotRequest, OpenSnapshotsRequest,
    RenewSnapshotRequest,
};
use hostshift_shared::model::DatabaseFingerprint;

use super::cut::Cut;
use super::error::{self, CutoverError};
use super::new_writes::{self, Baseline};
use crate::client::{self, Agent};
use crate::journal::Step as JStep;
use crate::plan::{OnNew, Side};
use crate::sync::SyncReport;
use crate::sync::selection::Selections;
use crate::sync::verify::{self, RowStatus};

/// Longest a held snapshot may live, renewed or not (the proof after the switch of a large
/// database may take a while; the agent caps it at 6 h).
const HOLD_TTL_SECS: u64 = 3 * 3600;
/// Most decoded rows read after the freeze position: one is enough to know the freeze leaked.
const PEEK_ROWS: u32 = 1000;

/// A snapshot the new agent holds of one followed database.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The plan's database name.
    pub database: String,
    /// The snapshot id on the new host.
    pub snapshot: String,
}

/// Renews the held snapshots' leases until dropped.
pub(super) struct Renewer(tokio::task::JoinHandle<()>);

impl Drop for Renewer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn renew(new: &Agent, held: &[Held], lease: Duration) -> Renewer {
    let mut client = new.database();
    let ids: Vec<String> = held.iter().map(|h| h.snapshot.clone()).collect();
    let every = (lease / 3).max(Duration::from_millis(500));
    Renewer(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            for id in &ids {
                let r = tokio::time::timeout(
                    every,
                    client.renew_snapshot(RenewSnapshotRequest {
                        snapshot: id.clone(),
                        lease_secs: lease.as_secs(),
                    }),
                )
                .await;
                match r {
                    Ok(Ok(r)) if r.get_ref().held => {}
                    Ok(Ok(_)) => {
                        tracing::warn!(snapshot = %id, "the new agent no longer holds the snapshot of the switch")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(snapshot = %id, error = %e, "snapshot lease not renewed")
                    }
                    Err(_) => tracing::warn!(snapshot = %id, "snapshot lease renewal timed out"),
                }
            }
        }
    }))
}

/// The tables with a data change decoded from the old host's slot after `lsn` (`schema.table`,
/// or the relation's OID when its description was not in the peek). Advances the slot to `lsn`
/// first: the follower applied everything before it (the catch-up waited for that) and is
/// stopped.
async fn changes_after(old: &Agent, database: &str, lsn: u64) -> Result<Vec<String>, CutoverError> {
    let what = format!("database {database}: reading the old host's WAL after the freeze position");
    let mut stream = old
        .follow()
        .changes(client::request(ChangesRequest {
            database: database.to_string(),
            token: String::new(),
            confirm_lsn: lsn,
            max_changes: PEEK_ROWS,
        }))
        .await
        .map_err(|s| error::agent(&what, &s))?
        .into_inner();
    let mut rows = Vec::new();
    while let Some(batch) = stream
        .message()
        .await
        .map_err(|s| error::agent(&what, &s))?
    {
        rows.extend(batch.rows.into_iter().map(|r| r.data));
        // The peek returns whole transactions, so it may overshoot: memory stays bounded, and
        // this many rows name the tables written well enough.
        if rows.len() >= 4 * PEEK_ROWS as usize {
            break;
        }
    }
    Ok(changed_tables(&rows, lsn))
}

/// The tables with an INSERT, UPDATE, DELETE or TRUNCATE in a transaction committed at or
/// after `lsn`, from pgoutput (protocol 1) messages in WAL order: `Begin` carries the commit
/// position, `Relation` the table's name (sent before its first change in the peek).
fn changed_tables(rows: &[Vec<u8>], lsn: u64) -> Vec<String> {
    let be32 = |d: &[u8], at: usize| {
        d.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut commit_lsn = 0u64;
    let mut oids: Vec<u32> = Vec::new();
    for d in rows {
        let d = d.as_slice();
        match d.first() {
            // Begin: the transaction's commit position.
            Some(b'B') => {
                commit_lsn = d
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
            }
            // Relation: OID, namespace, name (NUL-terminated).
            Some(b'R') => {
                if let Some(oid) = be32(d, 1) {
                    let mut parts = d.get(5..).unwrap_or_default().split(|b| *b == 0);
                    let ns = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    let rel = String::from_utf8_lossy(parts.next().unwrap_or_default());
                    names.insert(oid, format!("{ns}.{rel}"));
                }
            }
            Some(b'I' | b'U' | b'D') if commit_lsn >= lsn => oids.extend(be32(d, 1)),
            // Truncate: number of relations, options byte, OIDs.
            Some(b'T') if commit_lsn >= lsn => {
                let n = be32(d, 1).unwrap_or(0) as usize;
                oids.extend((0..n).filter_map(|i| be32(d, 6 + 4 * i)));
            }
            _ => {}
        }
    }
    let changed: BTreeSet<String> = oids
        .into_iter()
        .map(|o| {
            names
                .get(&o)
                .cloned()
                .unwrap_or_else(|| format!("relation OID {o}"))
        })
        .collect();
    changed.into_iter().collect()
}

impl Cut<'_> {
    /// Inside the freeze: no data change of a followed table reached the old host's WAL after
    /// the freeze position. Returns `<database> <schema.table> (...)` per table written.
    ///
    /// The peek decodes only flushed WAL, and a transaction committed with `synchronous_commit
    /// = off` is acknowledged before its WAL is flushed: the same barrier as the catch-up's
    /// (a synchronously committed logical message, which flushes every earlier commit) runs
    /// first, so every write acknowledged so far is in what the peek reads.
    pub(super) async fn wal_quiet(&self) -> Result<Vec<String>, CutoverError> {
        let old = self.old()?;
        let mut changed = Vec::new();
        for c in &self.out.follow {
            crate::follow::old_position(self.plan, old, &c.database)
                .await
                .map_err(|e| CutoverError::Agent(e.to_string()))?;
            for t in changes_after(old, &c.database, c.at).await? {
                changed.push(format!(
                    "{} {t} (written after the freeze position {})",
                    c.database, c.lsn
                ));
            }
        }
        Ok(changed)
    }

    /// Before the switch: the new agent holds a snapshot of each followed database (the state
    /// traffic moves onto); `new-host-at-switch.json` is written `pending` with their ids
    /// ([`Cut::hold_begin`], [`Cut::hold_work`], [`Cut::hold_end`], run beside the proof by
    /// `prove_hold_anchor`). Nothing is journaled when no database is followed (the proof then
    /// ran in the freeze).
    ///
    /// This part journals the step as started when it applies (followed databases, not a
    /// rehearsal).
    pub(super) fn hold_begin(&mut self) -> Result<Option<Instant>, CutoverError> {
        if self.followed.is_empty() || self.rehearsal {
            return Ok(None);
        }
        self.begin(JStep::HoldSnapshots).map(Some)
    }

    /// The snapshots themselves: only reads `self` (it runs beside the proof inside the
    /// freeze: nothing writes to the new host by then). Every snapshot opened is returned, also
    /// beside a failure, so that it is released.
    pub(super) async fn hold_work(&self) -> (Vec<Held>, Result<(), CutoverError>) {
        let mut held = Vec::new();
        let r = async {
            let new = self
                .new
                .clone()
                .ok_or(CutoverError::NotConnected(Side::New))?;
            let lease = crate::sync::database::snapshot_lease();
            for (db, _) in &self.followed {
                let d = self
                    .plan
                    .databases
                    .iter()
                    .find(|d| &d.name == db)
                    .ok_or_else(|| {
                        CutoverError::Agent(format!("database {db} is not in the plan"))
                    })?;
                let id = new
                    .database()
                    .open_snapshot(client::request(OpenSnapshotRequest {
                        database: d.on_new().to_string(),
                        ttl_secs: HOLD_TTL_SECS,
                        lease_secs: lease.as_secs(),
                    }))
                    .await
                    .map_err(|s| {
                        error::agent(format!("database {db}: a snapshot of the new host"), &s)
                    })?
                    .into_inner()
                    .snapshot;
                held.push(Held {
                    database: db.clone(),
                    snapshot: id,
                });
            }
            Ok(())
        }
        .await;
        (held, r)
    }

    /// Keeps the snapshots (renewed from now on, released by an undo), records the baseline
    /// `pending` and journals the step. After a failed proof (`proved` false) the snapshots are
    /// kept only to be released by the undo: no baseline is written.
    pub(super) fn hold_end(
        &mut self,
        t: Instant,
        ended: Instant,
        delta: &SyncReport,
        (held, r): (Vec<Held>, Result<(), CutoverError>),
        proved: bool,
    ) -> Result<(), CutoverError> {
        if let Some(new) = self.new.clone()
            && !held.is_empty()
        {
            self.held = held;
            self.renewer = Some(renew(
                &new,
                &self.held,
                crate::sync::database::snapshot_lease(),
            ));
        }
        let r = r.and_then(|()| {
            if !proved {
                return Err(CutoverError::Agent(
                    "not kept: the proof inside the freeze failed".into(),
                ));
            }
            // The old host's fingerprints the delta took of the tables the follower does not
            // carry: the proof after the switch checks the old host did not change.
            for (db, only) in &self.followed {
                if let Some(u) = delta
                    .units
                    .iter()
                    .find(|u| u.kind == "database" && &u.name == db)
                {
                    let fps: BTreeMap<String, String> = u
                        .old_fingerprints
                        .iter()
                        .filter(|(t, _)| only.contains(t))
                        .map(|(t, f)| (t.clone(), f.clone()))
                        .collect();
                    self.old_at_delta.insert(db.clone(), fps);
                }
            }
            new_writes::record_baseline(
                self.plan,
                &Baseline {
                    run: self.out.run.clone(),
                    databases: self.new_at_proof.clone(),
                    pending: true,
                    snapshots: self
                        .held
                        .iter()
                        .map(|h| (h.database.clone(), h.snapshot.clone()))
                        .collect(),
                    old_at_delta: self.old_at_delta.clone(),
                },
            )?;
            self.baseline_pending = true;
            super::injected("hold snapshots")?;
            Ok(self
                .held
                .iter()
                .map(|h| format!("database {}: snapshot {}", h.database, h.snapshot))
                .collect::<Vec<_>>()
                .join("; "))
        });
        self.end_at(JStep::HoldSnapshots, t, ended, r).map(|_| ())
    }

    /// After the switch: every table (and large object) of each followed database, the new host
    /// under its held snapshot against the frozen old host now; the old host's tables outside
    /// the stream against the delta's fingerprints. Records the baseline, releases the snapshots.
    pub(super) async fn prove_after_switch(&mut self) -> Result<(), CutoverError> {
        if self.held.is_empty() {
            return Ok(());
        }
        super::paused("prove after switch").await;
        let t = self.begin(JStep::ProveAfterSwitch)?;
        self.proof_after_switch_started = true;
        let r = self.prove_held().await;
        self.release_snapshots().await;
        let r = r.and_then(|d| super::injected("prove after switch").map(|()| d));
        self.end(JStep::ProveAfterSwitch, t, r).map(|_| ())
    }

    async fn prove_held(&mut self) -> Result<String, CutoverError> {
        let started = Instant::now();
        let old = self.old()?.clone();
        let new = self
            .new
            .clone()
            .ok_or(CutoverError::NotConnected(Side::New))?;
        let mut rows = Vec::new();
        let mut old_tables = BTreeMap::new();
        let mut new_tables = BTreeMap::new();
        let mut changed = Vec::new();
        for h in self.held.clone() {
            let Some(d) = self.plan.databases.iter().find(|d| d.name == h.database) else {
                continue;
            };
            let sel = Selections::of(d);
            let (mut a, mut b) = (old.database(), new.database());
            let (fo, fnew) = tokio::join!(
                a.fingerprint(sel.old.clone()),
                b.fingerprint_at(DbReadRequest {
                    selection: Some(sel.new.clone()),
                    snapshot: h.snapshot.clone(),
                })
            );
            let checked = |r: Result<
                tonic::Response<hostshift_proto::v1::FingerprintResponse>,
                tonic::Status,
            >,
                           host: &str| {
                r.map_err(|s| format!("the {host} host: {}", client::explain_status(&s)))
                    .and_then(|r| {
                        DatabaseFingerprint::from_proto(r.into_inner())
                            .map_err(|e| format!("the {host} agent's fingerprints: {e}"))
                    })
            };
            let (fo, fnew) = match (checked(fo, "old"), checked(fnew, "new")) {
                (Ok(a), Ok(b)) => (a, b),
                (a, b) => {
                    let e = a.err().or(b.err()).unwrap_or_default();
                    rows.push(verify::Row {
                        kind: "database".into(),
                        name: h.database.clone(),
                        equal: false,
                        status: RowStatus::CouldNotRun,
                        old: String::new(),
                        new: String::new(),
                        detail: format!(
                            "cannot fingerprint (the new host under snapshot {}): {e}",
                            h.snapshot
                        ),
                    });
                    continue;
                }
            };
            let text = |f: &DatabaseFingerprint| -> BTreeMap<String, String> {
                f.tables
                    .iter()
                    .map(|(t, fp)| (t.to_string(), fp.to_string()))
                    .collect()
            };
            let (to, tn) = (text(&fo), text(&fnew));
            // The freeze held for the tables outside the stream: as the delta saw them.
            if let Some(at_delta) = self.old_at_delta.get(&h.database) {
                for (table, fp) in at_delta {
                    if to.get(table) != Some(fp) {
                        changed.push(format!("{} {table}", h.database));
                    }
                }
            }
            rows.extend(verify::table_rows(&h.database, &fo, &fnew));
            rows.extend(verify::large_objects_row(&h.database, &fo, &fnew));
            rows.extend(verify::matview_rows(&old, &new, d, &h.snapshot).await);
            old_tables.insert(h.database.clone(), to);
            new_tables.insert(h.database.clone(), tn);
        }
        // The state traffic moved onto: what a rollback compares the new host with.
        let complete = !rows.iter().any(|r| r.status == RowStatus::CouldNotRun);
        if complete {
            self.new_at_proof.extend(new_tables.clone());
            new_writes::record_baseline(
                self.plan,
                &Baseline {
                    run: self.out.run.clone(),
                    databases: self.new_at_proof.clone(),
                    ..Baseline::default()
                },
            )?;
            self.baseline_pending = false;
        }
        let report = verify::Report {
            ok: rows.iter().all(|r| r.equal),
            rows: rows.clone(),
            ms: started.elapsed().as_millis() as u64,
            old_tables,
            new_tables,
        };
        self.rep.add_verify(&report);
        self.out.verification.extend(rows.iter().cloned());
        let of = |s: RowStatus| -> Vec<String> {
            rows.iter()
                .filter(|r| r.status == s)
                .map(|r| format!("{} {}: {}", r.kind, r.name, r.detail))
                .collect()
        };
        let (differ, not_run) = (of(RowStatus::Differs), of(RowStatus::CouldNotRun));
        if !changed.is_empty() {
            return Err(CutoverError::OldDatabaseChanged {
                tables: changed,
                differ,
            });
        }
        if !differ.is_empty() {
            return Err(CutoverError::DifferAfterSwitch(differ));
        }
        if !not_run.is_empty() {
            return Err(CutoverError::CouldNotCompare(not_run));
        }
        Ok(format!(
            "{} item(s) equal: the new host as traffic moved onto it (under its snapshot) against the frozen old host, in {} ms",
            rows.len(),
            started.elapsed().as_millis()
        ))
    }

    /// Releases the held snapshots (best effort: the lease closes them anyway).
    pub(super) async fn release_snapshots(&mut self) {
        self.renewer = None;
        let held = std::mem::take(&mut self.held);
        if let Some(new) = &self.new {
            for h in held {
                let _ = new
                    .database()
                    .close_snapshot(client::request(CloseSnapshotRequest {
                        snapshot: h.snapshot,
                    }))
                    .await;
            }
        }
    }

    /// A failed run that held snapshots: release them, and when traffic never moved, the
    /// baseline is complete (the new host never served, so nothing was written there).
    pub(super) async fn held_after_failure(&mut self) {
        self.release_snapshots().await;
        if self.baseline_pending && !self.switched {
            let _ = new_writes::record_baseline(
                self.plan,
                &Baseline {
                    run: self.out.run.clone(),
                    databases: self.new_at_proof.clone(),
                    ..Baseline::default()
                },
            );
            self.baseline_pending = false;
        }
    }

    /// `cutover --resume` of a run that switched and did not finish its proof after the switch
    /// (see the module docs for the rule): proves now when the new agent still holds every
    /// snapshot of the switch; otherwise [`CutoverError::ProofImpossible`].
    pub(super) async fn resume_held_proof(&mut self) -> Result<(), CutoverError> {
        let new = self
            .new
            .clone()
            .ok_or(CutoverError::NotConnected(Side::New))?;
        let base = new_writes::baseline(self.plan)?.filter(|b| b.pending);
        let plan_arg = self.plan.path.display().to_string();
        let gone = |why: String| {
            CutoverError::ProofImpossible(format!(
                "the proof after the switch cannot run any more: {why}. The new host has served since the switch, so comparing it now proves nothing. Traffic stays on the new host and the old host stays frozen until you decide: `hostshift rollback --yes --plan {plan_arg}` goes back to the old host (the new host's writes since the switch are not copied back, and cannot be named), or `hostshift cutover --resume --yes --accept-unproven --plan {plan_arg}` keeps the new host without the proof"
            ))
        };
        let Some(base) = base.filter(|b| !b.snapshots.is_empty()) else {
            return Err(gone(format!(
                "{} does not name the snapshots held at the switch",
                new_writes::BASELINE_FILE
            )));
        };
        let open: BTreeSet<String> = new
            .database()
            .open_snapshots(client::request(OpenSnapshotsRequest {}))
            .await
            .map_err(|s| error::agent("the new agent's held snapshots", &s))?
            .into_inner()
            .snapshots
            .into_iter()
            .map(|s| s.snapshot)
            .collect();
        let missing: Vec<String> = base
            .snapshots
            .iter()
            .filter(|(_, id)| !open.contains(*id))
            .map(|(db, id)| format!("database {db} (snapshot {id})"))
            .collect();
        if !missing.is_empty() {
            return Err(gone(format!(
                "the new agent no longer holds the snapshot of {} taken before traffic moved (its lease ran out or the agent restarted)",
                missing.join(", ")
            )));
        }
        self.held = base
            .snapshots
            .iter()
            .map(|(db, id)| Held {
                database: db.clone(),
                snapshot: id.clone(),
            })
            .collect();
        self.renewer = Some(renew(
            &new,
            &self.held,
            crate::sync::database::snapshot_lease(),
        ));
        self.old_at_delta = base.old_at_delta.clone();
        self.new_at_proof = base.databases.clone();
        self.baseline_pending = true;
        self.prove_after_switch().await
    }

    /// A resumed run whose proof after the switch can no longer run: nothing is undone (the
    /// new host has served; undoing would drop its writes unasked), the journal keeps the
    /// cutover unfinished, exit 3 with both ways out.
    pub(super) fn unproven(&mut self, cause: &CutoverError) {
        let plan_arg = self.plan.path.display().to_string();
        self.progress.say(&format!("cutover stopped: {cause}"));
        self.out.error = Some(cause.to_string());
        self.out.outcome = super::Outcome::Unproven;
        self.out.ok = false;
        self.out.undo_instructions = vec![
            format!("to go back to the old host: hostshift rollback --yes --plan {plan_arg}"),
            format!(
                "to keep the new host without the proof: hostshift cutover --resume --yes --accept-unproven --plan {plan_arg}"
            ),
        ];
        if let Err(e) = self.record(
            JStep::Cutover,
            crate::journal::Mark::Stopped,
            "the proof after the switch cannot run: the operator decides",
        ) {
            self.journal_failed_at_the_end(&e);
        }
    }

    /// `--accept-unproven`: the operator keeps the new host without the proof after the
    /// switch; journaled as skipped with that reason. The snapshots still held are released.
    pub(super) async fn accept_unproven(&mut self) -> Result<(), CutoverError> {
        if let Ok(Some(base)) = new_writes::baseline(self.plan) {
            self.held = base
                .snapshots
                .iter()
                .map(|(db, id)| Held {
                    database: db.clone(),
                    snapshot: id.clone(),
                })
                .collect();
        }
        self.release_snapshots().await;
        self.skipped(
            JStep::ProveAfterSwitch,
            "not run: the operator kept the new host without the proof after the switch (--accept-unproven)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(commit: u64) -> Vec<u8> {
        let mut m = vec![b'B'];
        m.extend(commit.to_be_bytes());
        m.extend(0u64.to_be_bytes());
        m.extend(7u32.to_be_bytes());
        m
    }

    fn relation(oid: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(oid.to_be_bytes());
        m.extend(ns.as_bytes());
        m.push(0);
        m.extend(name.as_bytes());
        m.push(0);
        m.extend([b'd', 0, 0]);
        m
    }

    fn change(kind: u8, oid: u32) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend(oid.to_be_bytes());
        m.extend([b'N', 0, 0]);
        m
    }

    #[test]
    fn changes_committed_after_the_freeze_position_name_their_tables() {
        let commit = |c: u64| {
            let mut m = vec![b'C', 0];
            m.extend(c.to_be_bytes());
            m
        };
        let mut truncate = vec![b'T'];
        truncate.extend(2u32.to_be_bytes());
        truncate.push(0);
        truncate.extend(16401u32.to_be_bytes());
        truncate.extend(16999u32.to_be_bytes());
        let rows = vec![
            // Committed before the position: applied by the follower already.
            begin(100),
            relation(16400, "public", "users"),
            change(b'I', 16400),
            commit(100),
            // After it: the freeze leaked.
            begin(300),
            relation(16401, "public", "questions"),
            change(b'U', 16401),
            change(b'D', 16401),
            commit(300),
            begin(400),
            truncate,
            commit(400),
        ];
        assert_eq!(
            changed_tables(&rows, 200),
            vec![
                "public.questions".to_string(),
                "relation OID 16999".to_string()
            ]
        );
        assert!(changed_tables(&rows, 500).is_empty());
        // Only hostshift's own barrier (no change message): nothing.
        assert!(changed_tables(&[begin(300), commit(300)], 200).is_empty());
    }
}
