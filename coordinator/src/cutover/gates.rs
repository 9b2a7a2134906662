//! The gates: what must hold before the cutover touches anything. Each gate is checked and
//! reported (all of them, so one run shows every problem); the cutover goes on only when all pass.
//!
//! | gate | passes when |
//! |---|---|
//! | `agents` | both agents answer `Info` |
//! | `new apps` | every `[pm2] apps` entry is online on the new host |
//! | `health` | every `[[health]]` check passes where its `from` says |
//! | `verify fresh` | a `sync` finished, and after it a clean `verify`, within `verify_freshness_mins` — or, when every database is followed, a `sync` finished and every follower is following without error, its lag within `[freeze] budget_secs` (the app keeps writing) |
//! | `backup` | the old host has a complete backup younger than `backup_max_age_hours` (or `--skip-backup-check REASON`, journaled) |
//! | `schema` | every plan database has the same schema on both hosts |
//! | `switch` | the traffic switch is possible and points at the old host (EC2 `DryRun`, read access) |
//! | `freeze budget` | the predicted freeze fits `[freeze] budget_secs` |
//!
//! # The predicted freeze
//! Inside the freeze the cutover runs a delta sync, then compares everything (as `verify` does).
//! The journal has the duration of the last `sync` (run again right before the cutover, it is the
//! delta at today's write rate) and of the last `verify`; the prediction is their sum plus one
//! second per freeze method (stopping apps, reloading nginx). A first full copy as the last sync
//! makes the prediction large on purpose: run `hostshift sync` once more before the cutover.
//! When every database is followed the tables are neither copied nor compared inside the freeze:
//! see [`predicted_follow_ms`].

use std::time::Duration;

use hostshift_proto::v1::{InfoRequest, ListBackupsRequest, Pm2ListRequest};
use serde::Serialize;

use super::error::{self, CutoverError};
use super::state;
use crate::client::{self, Agent};
use crate::health::run_checks;
use crate::journal::Event;
use crate::plan::Plan;
use crate::report::now_ms;

/// One gate's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Gate {
    /// Its name (see the module table).
    pub name: String,
    /// Passed.
    pub ok: bool,
    /// What was found, and what to do when it failed.
    pub detail: String,
}

fn gate(name: &str, r: Result<String, CutoverError>) -> Gate {
    match r {
        Ok(detail) => Gate {
            name: name.into(),
            ok: true,
            detail,
        },
        Err(e) => Gate {
            name: name.into(),
            ok: false,
            detail: e.to_string(),
        },
    }
}

/// Everything the gates need from the caller.
pub struct Inputs<'a> {
    /// The plan.
    pub plan: &'a Plan,
    /// Connected agents (`None` when a connection failed: the error is in `connect_errors`).
    pub old: Option<&'a Agent>,
    /// The new host's agent.
    pub new: Option<&'a Agent>,
    /// Why connecting failed.
    pub connect_errors: Vec<String>,
    /// The journal so far.
    pub events: &'a [Event],
    /// `--skip-backup-check REASON`.
    pub skip_backup: Option<&'a str>,
    /// `rehearse --plan`: the gates about the freeze, the apps and the switch do not apply.
    pub rehearsal: bool,
}

/// Checks every gate; returns the verdicts and the predicted freeze in ms (when known).
pub async fn check(i: &Inputs<'_>) -> (Vec<Gate>, Option<u64>) {
    let mut gates = Vec::new();
    gates.push(gate("agents", agents(i).await));
    let (Some(old), Some(new)) = (i.old, i.new) else {
        return (gates, None);
    };
    // Every database followed: the follower's state is the freshness (a live app passes).
    let followed = if i.rehearsal {
        None
    } else {
        followed(i.plan, new).await
    };
    let fresh = |i: &Inputs<'_>| match &followed {
        Some(f) => follow_fresh(i, f),
        None => verify_fresh(i),
    };
    let predicted = match &followed {
        Some(f) => predicted_follow_ms(i, f),
        None => predicted_ms(i),
    };
    if i.rehearsal {
        gates.push(gate("verify fresh", fresh(i)));
        gates.push(gate("schema", schema(i.plan, old, new).await));
        let skipped = "rehearsal: not needed (nothing is frozen or switched)";
        for name in ["new apps", "health", "backup", "switch"] {
            gates.push(gate(name, Ok(skipped.into())));
        }
        gates.push(gate(
            "freeze budget",
            budget(i, predicted, followed.is_some()),
        ));
        return (gates, predicted);
    }
    gates.push(gate("new apps", new_apps(i.plan, new).await));
    gates.push(gate("health", health(i.plan).await));
    gates.push(gate("verify fresh", fresh(i)));
    gates.push(gate("backup", backup(i, old).await));
    gates.push(gate("schema", schema(i.plan, old, new).await));
    gates.push(gate("switch", switch(i.plan).await));
    gates.push(gate(
        "freeze budget",
        budget(i, predicted, followed.is_some()),
    ));
    (gates, predicted)
}

/// The follow of every plan database when each has a follower configured on the new host
/// (running or not: a stopped or failed one fails the gate, naming why); `None` when at least
/// one database is not followed — then the clean-verify gate applies.
async fn followed(plan: &Plan, new: &Agent) -> Option<Vec<crate::follow::DbStatus>> {
    if plan.databases.is_empty() {
        return None;
    }
    // Cheap first: without any follower there is nothing to ask the old host.
    let running = crate::follow::following(plan, new).await.ok()?;
    if running.is_empty() {
        return None;
    }
    let all = crate::follow::status(plan).await.ok()?;
    all.iter()
        .all(|d| d.state != "not following")
        .then_some(all)
}

/// The lag (seconds) above which a follower is not fresh enough to cut over: the freeze would
/// wait for it. The freeze budget, at least 5 s.
fn follow_lag_bound(plan: &Plan) -> f64 {
    plan.freeze.budget_secs.max(5) as f64
}

/// `verify fresh` for followed databases: a sync finished (files and storage too), and every
/// follower is following, without an error, its lag within [`follow_lag_bound`]. No clean
/// verify is needed: the app may keep writing.
fn follow_fresh(i: &Inputs<'_>, f: &[crate::follow::DbStatus]) -> Result<String, CutoverError> {
    if state::last_finished(i.events, "sync", "sync").is_none() {
        return Err(CutoverError::Gate(
            "no finished `hostshift sync` in the journal: run `hostshift sync --only storage` and `--only files` (the follower keeps the databases current)".into(),
        ));
    }
    let bound = follow_lag_bound(i.plan);
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for d in f {
        if d.state != "following" || !d.error.is_empty() {
            bad.push(format!(
                "database {}: the follower is {}{} — see `hostshift follow status`; fix it and `hostshift follow start` again, or `hostshift follow cleanup` and sync + verify for the key-range delta",
                d.database,
                d.state,
                if d.error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.error)
                }
            ));
        } else if d.lag_seconds > bound {
            bad.push(format!(
                "database {}: the follower lags {:.1} s ({} bytes), more than {bound:.0} s ([freeze] budget_secs): wait until `hostshift follow status` shows it current",
                d.database, d.lag_seconds, d.lag_bytes
            ));
        } else {
            good.push(format!(
                "database {} followed, lag {:.1} s ({} bytes){}",
                d.database,
                d.lag_seconds,
                d.lag_bytes,
                not_followed_cost(d)
            ));
        }
    }
    if bad.is_empty() {
        Ok(good.join("; "))
    } else {
        Err(CutoverError::Gate(bad.join("; ")))
    }
}

/// What the freeze copies whole besides the stream, as a phrase (empty when every table is
/// followed): the tables without a replica identity, their size on the old host, and what
/// copying them costs at [`WHOLE_COPY_BYTES_PER_S`].
fn not_followed_cost(d: &crate::follow::DbStatus) -> String {
    if d.not_followed.is_empty() {
        return String::new();
    }
    let total: u64 = d.not_followed_bytes.iter().sum();
    let shown: Vec<String> = d
        .not_followed
        .iter()
        .enumerate()
        .take(5)
        .map(
            |(i, t)| match d.not_followed_bytes.get(i).filter(|b| **b > 0) {
                Some(b) => format!("{t} ({})", crate::output::bytes(*b)),
                None => t.clone(),
            },
        )
        .collect();
    let more = d.not_followed.len().saturating_sub(shown.len());
    format!(
        "; {} table(s) not followed, copied whole inside the freeze: {}{} — {} in all, about {} ms (give them a primary key, or list the database in the old agent's [allow] replica_identity_full, to follow them)",
        d.not_followed.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        },
        crate::output::bytes(total),
        whole_copy_ms(total)
    )
}

/// Rate assumed for a table copied whole inside the freeze (delete + binary COPY between the
/// hosts, indexes kept): about what the first copy reaches on a 2-core host (docs/BENCHMARKS.md,
/// database unit ~60 MB/s), rounded down so that the prediction errs long.
const WHOLE_COPY_BYTES_PER_S: u64 = 50_000_000;

fn whole_copy_ms(bytes: u64) -> u64 {
    bytes.saturating_mul(1000) / WHOLE_COPY_BYTES_PER_S
}

/// The delta's own cost beyond walking the trees: connecting, the files, the database unit's
/// sequences and large objects, the journal, and sending what changed on the old host since the
/// last sync (seconds of uploads when that sync ran right before the cutover). Bench (journal of
/// a kept round, 2026-12-07): files 23 ms, the batch of 40 changed files 33 ms, the database unit
/// 29 ms, connecting and the journal the rest — 100 ms.
const FOLLOW_DELTA_FIXED_MS: u64 = 100;
/// The in-freeze proof: the WAL check, schema and sequences, the files and trees compared once
/// more through the digest caches (nothing re-read), beside the held snapshots and the window's
/// anchor (bench: 104–116 ms).
const FOLLOW_PROOF_FIXED_MS: u64 = 100;

/// What a freeze method itself takes inside the freeze: `read-only` is a transaction and the
/// sessions ended together (14–20 ms measured, counted 50 ms); an nginx reload or stopping the
/// apps is counted a second (not measured here).
fn method_ms(m: crate::plan::FreezeMethod) -> u64 {
    match m {
        crate::plan::FreezeMethod::ReadOnly => 50,
        crate::plan::FreezeMethod::MaintenancePage | crate::plan::FreezeMethod::StopApps => 1000,
    }
}

/// The predicted freeze when every database is followed, in the order the cutover runs it: the
/// freeze methods ([`method_ms`]); then the catch-up and the delta **at once** — the longer of
/// the two; then the proof ([`FOLLOW_PROOF_FIXED_MS`]). The full proof of the tables runs after
/// the switch (`held_proof`), so no table scan is predicted inside the freeze.
///
/// - **Catch-up: half the follower's lag.** A busy app's follower reads the old host's changes
///   peek after peek; its lag is the age of the last peek that reached the end of the WAL, so it
///   runs from ~0 to two peeks. The freeze's catch-up waits for the rest of the current peek and
///   one short one (the app is stopped): bench, lag 0.24–0.33 s read at the gate, waits 72–226 ms
///   (mean 0.48 × the lag) in five rounds.
/// - **Delta: the trees walked again, plus [`FOLLOW_DELTA_FIXED_MS`]**, plus the tables not
///   followed copied whole ([`whole_copy_ms`]). Each file and storage unit counts at its latest
///   finished sync (whichever run that was) from its start to its `done`, **without its
///   batches' transfer**: walking, comparing and finalizing a tree recur in the freeze whatever
///   changed; what the batches sent does not (the last sync may have carried a burst — the
///   bench's 1 % change — or a first copy). The freeze sends only what changed since that sync,
///   in the fixed part: run `hostshift sync` right before the cutover (the runbook does), or the
///   prediction misses a backlog of uploads.
///
/// Calibrated on `bench/run --only cutover` (docs/BENCHMARKS.md, "The prediction recalibrated"),
/// whose freezes it predicts within 10 % at 1 × and 4 × (the target is ±30 %).
fn predicted_follow_ms(i: &Inputs<'_>, f: &[crate::follow::DbStatus]) -> Option<u64> {
    i.events
        .iter()
        .rev()
        .find(|e| e.phase == "sync" && e.unit == "sync" && e.status == "done")?;
    let units: u64 = walk_ms(i.events).values().sum();
    let lag = f
        .iter()
        .map(|d| (d.lag_seconds * 1000.0) as u64)
        .max()
        .unwrap_or(0);
    let whole: u64 = f
        .iter()
        .map(|d| whole_copy_ms(d.not_followed_bytes.iter().sum()))
        .sum();
    let methods: u64 = i.plan.freeze.methods.iter().copied().map(method_ms).sum();
    let delta = units + whole + FOLLOW_DELTA_FIXED_MS;
    Some(methods + (lag / 2).max(delta) + FOLLOW_PROOF_FIXED_MS)
}

/// Each file and storage unit's cost at its latest finished sync, without its batches'
/// transfer (see [`predicted_follow_ms`]): from the unit's first `started` to its last `done`
/// in that run, less the time any of its batches was streaming (two run at once: their union).
fn walk_ms(events: &[Event]) -> std::collections::HashMap<&str, u64> {
    use std::collections::HashMap;
    #[derive(Default)]
    struct Unit<'a> {
        first: Option<u64>,
        last: u64,
        open: HashMap<&'a str, u64>,
        batches: Vec<(u64, u64)>,
    }
    let mut units: HashMap<(&str, &str), Unit<'_>> = HashMap::new();
    let mut latest: HashMap<&str, &str> = HashMap::new();
    for e in events {
        let name = e.unit.as_str();
        if e.phase != "sync" || !(name.starts_with("file ") || name.starts_with("storage ")) {
            continue;
        }
        let (root, batch) = match name.split_once(" batch ") {
            Some((root, _)) => (root, true),
            None => (name, false),
        };
        let u = units.entry((e.run.as_str(), root)).or_default();
        match e.status.as_str() {
            "started" => {
                u.first.get_or_insert(e.time_ms);
                if batch {
                    u.open.insert(name, e.time_ms);
                }
            }
            "done" => {
                u.first.get_or_insert(e.time_ms);
                u.last = u.last.max(e.time_ms);
                if batch {
                    if let Some(s) = u.open.remove(name) {
                        u.batches.push((s, e.time_ms));
                    }
                } else {
                    latest.insert(root, e.run.as_str());
                }
            }
            _ => {}
        }
    }
    latest
        .into_iter()
        .filter_map(|(root, run)| {
            let u = units.get(&(run, root))?;
            let span = u.last.saturating_sub(u.first.unwrap_or(u.last));
            Some((root, span.saturating_sub(union_ms(&u.batches))))
        })
        .collect()
}

/// Milliseconds covered by at least one of `spans` (`(start, end)`).
fn union_ms(spans: &[(u64, u64)]) -> u64 {
    let mut s = spans.to_vec();
    s.sort_unstable();
    let (mut total, mut reach) = (0, 0);
    for (a, b) in s {
        let a = a.max(reach);
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

async fn agents(i: &Inputs<'_>) -> Result<String, CutoverError> {
    if !i.connect_errors.is_empty() {
        return Err(CutoverError::Gate(i.connect_errors.join("; ")));
    }
    let mut seen = Vec::new();
    for (side, a) in [("old", i.old), ("new", i.new)] {
        let Some(a) = a else { continue };
        let info = a
            .info()
            .info(client::request(InfoRequest { brief: false }))
            .await
            .map_err(|s| {
                CutoverError::Agent(format!("{side} agent: {}", client::explain_first_rpc(&s)))
            })?
            .into_inner();
        seen.push(format!(
            "{side} = {} (agent {})",
            info.hostname, info.agent_version
        ));
    }
    Ok(seen.join(", "))
}

async fn new_apps(plan: &Plan, new: &Agent) -> Result<String, CutoverError> {
    if plan.pm2.apps.is_empty() {
        return Ok("no [pm2] apps in the plan".into());
    }
    let list = new
        .pm2()
        .list(client::request(Pm2ListRequest {}))
        .await
        .map_err(|s| error::status(&s))?
        .into_inner();
    let not_online: Vec<String> = plan
        .pm2
        .apps
        .iter()
        .filter(|app| {
            !list
                .processes
                .iter()
                .any(|p| &p.name == *app && p.status == "online")
        })
        .cloned()
        .collect();
    if not_online.is_empty() {
        Ok(format!("online: {}", plan.pm2.apps.join(", ")))
    } else {
        Err(CutoverError::Gate(format!(
            "not online on the new host: {} — start them first (hostshift pm2 start --host new)",
            not_online.join(", ")
        )))
    }
}

async fn health(plan: &Plan) -> Result<String, CutoverError> {
    if plan.health.is_empty() {
        return Ok("no [[health]] checks in the plan".into());
    }
    let results = run_checks(plan, None, &[]).await;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.result.ok)
        .map(|r| {
            format!(
                "{} (from {}): {}",
                r.result.name,
                r.from.as_str(),
                r.result.detail
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(format!("{} check(s) pass", results.len()))
    } else {
        Err(CutoverError::Gate(failed.join("; ")))
    }
}

fn ago(ms: u64) -> String {
    let secs = now_ms().saturating_sub(ms) / 1000;
    if secs < 120 {
        format!("{secs} s ago")
    } else {
        format!("{} min ago", secs / 60)
    }
}

fn verify_fresh(i: &Inputs<'_>) -> Result<String, CutoverError> {
    let Some((_, sync_done, _)) = state::last_finished(i.events, "sync", "sync") else {
        return Err(CutoverError::Gate(
            "no finished `hostshift sync` in the journal: run sync, then verify".into(),
        ));
    };
    let last_verify = i
        .events
        .iter()
        .rev()
        .find(|e| e.phase == "verify" && e.unit == "verify" && e.status != "started");
    let Some(v) = last_verify else {
        return Err(CutoverError::Gate(
            "no `hostshift verify` in the journal: run it after the last sync".into(),
        ));
    };
    if v.status != "done" {
        // A verify that could not compare (an unreachable database) is no verdict either way.
        let could_not_run = v.detail.contains(" 0 differ,") || !v.detail.contains(" differ");
        return Err(CutoverError::Gate(if could_not_run {
            format!(
                "the last verify ({}) could not compare everything ({}): fix what it named (run `hostshift verify` to see it), then verify again",
                ago(v.time_ms),
                v.detail
            )
        } else {
            format!(
                "the last verify ({}) found differences: sync again, then verify",
                ago(v.time_ms)
            )
        }));
    }
    if v.time_ms < sync_done {
        return Err(CutoverError::Gate(
            "the last verify is older than the last sync: run verify again".into(),
        ));
    }
    let limit = i.plan.cutover.verify_freshness_mins * 60_000;
    if now_ms().saturating_sub(v.time_ms) > limit {
        return Err(CutoverError::Gate(format!(
            "the last clean verify was {}, more than [cutover] verify_freshness_mins = {}: sync and verify again",
            ago(v.time_ms),
            i.plan.cutover.verify_freshness_mins
        )));
    }
    Ok(format!("clean verify {}", ago(v.time_ms)))
}

async fn backup(i: &Inputs<'_>, old: &Agent) -> Result<String, CutoverError> {
    if let Some(reason) = i.skip_backup {
        return Ok(format!("skipped with --skip-backup-check: {reason}"));
    }
    let list = old
        .backup()
        .list(client::request(ListBackupsRequest {}))
        .await
        .map_err(|s| {
            CutoverError::Gate(format!(
                "cannot list the old host's backups: {} (or pass --skip-backup-check REASON)",
                client::explain_status(&s)
            ))
        })?
        .into_inner();
    let newest = list.backups.iter().find(|b| b.state == "complete");
    let Some(b) = newest else {
        return Err(CutoverError::Gate("the old host has no complete backup: run `hostshift backup --host old` (or pass --skip-backup-check REASON)".into()));
    };
    let created = time::OffsetDateTime::parse(
        &b.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| {
        CutoverError::Gate(format!(
            "backup {}: unreadable time {:?}: {e}",
            b.id, b.created_at
        ))
    })?;
    let age = time::OffsetDateTime::now_utc() - created;
    let max = Duration::from_secs(i.plan.cutover.backup_max_age_hours * 3600);
    if age.whole_seconds() > max.as_secs() as i64 {
        return Err(CutoverError::Gate(format!(
            "the newest backup ({}) is {} h old, more than [cutover] backup_max_age_hours = {}: run `hostshift backup --host old`",
            b.id,
            age.whole_hours(),
            i.plan.cutover.backup_max_age_hours
        )));
    }
    Ok(format!(
        "backup {} from {} min ago",
        b.id,
        age.whole_minutes()
    ))
}

async fn schema(plan: &Plan, old: &Agent, new: &Agent) -> Result<String, CutoverError> {
    let mut problems = Vec::new();
    for d in &plan.databases {
        let sel = crate::sync::selection::Selections::of(d);
        match crate::sync::database::schema_differences(old, new, &sel).await {
            Ok(diff) if diff.is_empty() => {}
            Ok(diff) => problems.push(format!(
                "{}: {} — apply the same change on the new host, then sync and verify",
                d.name,
                diff.join(", ")
            )),
            Err(e) => problems.push(format!("{}: {e}", d.name)),
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} database(s) with the same schema",
            plan.databases.len()
        ))
    } else {
        Err(CutoverError::Gate(problems.join("; ")))
    }
}

async fn switch(plan: &Plan) -> Result<String, CutoverError> {
    let Some(s) = super::traffic::switcher(plan).await? else {
        return Ok("method none: you move traffic when the cutover says so".into());
    };
    let p = s
        .preflight()
        .await
        .map_err(|e| CutoverError::Switch(e.to_string()))?;
    if p.pointing != hostshift_switch::Pointing::Old {
        return Err(CutoverError::Gate(format!(
            "traffic points at the {} now, not at the old host: {}",
            p.pointing, p.detail
        )));
    }
    Ok(p.detail)
}

/// The predicted freeze in ms (see the module docs), when the journal has a sync and a verify.
fn predicted_ms(i: &Inputs<'_>) -> Option<u64> {
    let (s0, s1, _) = state::last_finished(i.events, "sync", "sync")?;
    let (v0, v1, _) = state::last_finished(i.events, "verify", "verify")?;
    Some((s1 - s0) + (v1 - v0) + 1000 * i.plan.freeze.methods.len() as u64)
}

/// A followed prediction leaves out what changed in the storage since the last sync (see
/// [`predicted_follow_ms`]); past this age of that sync the gate says so.
const STALE_SYNC_MS: u64 = 10 * 60 * 1000;

fn budget(i: &Inputs<'_>, predicted: Option<u64>, followed: bool) -> Result<String, CutoverError> {
    let plan = i.plan;
    let budget = plan.freeze.budget_secs * 1000;
    let Some(p) = predicted else {
        return Err(CutoverError::Gate(
            "no sync and verify durations in the journal to predict the freeze from".into(),
        ));
    };
    let how = if followed {
        "freeze methods + the longer of half the follower's lag and the trees' walk, + the proof"
    } else {
        "last sync + last verify + 1 s per freeze method"
    };
    if p > budget {
        return Err(CutoverError::Gate(format!(
            "predicted freeze {:.1} s ({how}) is over [freeze] budget_secs = {}: run `hostshift sync` again right before the cutover (its time is the delta), or raise the budget",
            p as f64 / 1000.0,
            plan.freeze.budget_secs
        )));
    }
    let mut detail = format!(
        "predicted {:.1} s of {} s",
        p as f64 / 1000.0,
        plan.freeze.budget_secs
    );
    let last = state::last_finished(i.events, "sync", "sync").map(|(_, done, _)| done);
    if let Some(age) = last.map(|t| now_ms().saturating_sub(t))
        && followed
        && age > STALE_SYNC_MS
    {
        detail.push_str(&format!(
            "; the last sync finished {} min ago: files and storage changed since are sent inside the freeze and are not in this prediction — run `hostshift sync` right before the cutover",
            age / 60_000
        ));
    }
    Ok(detail)
}

#[cfg(test)]
mod follow_tests {
    use super::*;
    use crate::follow::DbStatus;

    fn plan() -> Plan {
        toml::from_str(
            "[migration]\nname = \"m\"\n[old]\naddress = \"https://127.0.0.2:7443\"\nagent = \"old\"\n\
             [new]\naddress = \"https://127.0.0.3:7443\"\nagent = \"new\"\n\
             [tls]\nca = \"ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n[switch]\nmethod = \"none\"\n\
             [freeze]\nmethods = [\"read-only\"]\nbudget_secs = 10\n",
        )
        .expect("plan")
    }

    fn sync(time_ms: u64, status: &str) -> Event {
        Event {
            time_ms,
            run: "1".into(),
            phase: "sync".into(),
            unit: "sync".into(),
            status: status.into(),
            bytes: 0,
            files: 0,
            detail: String::new(),
            step: None,
        }
    }

    /// A journal line of unit `name` in run 1.
    fn unit(name: &str, time_ms: u64, status: &str) -> Event {
        Event {
            unit: name.into(),
            ..sync(time_ms, status)
        }
    }

    /// The followed prediction from `events`, the follower `lag` seconds behind.
    fn predicted(events: &[Event], lag: f64) -> Option<u64> {
        let plan = plan();
        predicted_follow_ms(&inputs(&plan, events), &[db("following", lag, "")])
    }

    fn db(state: &str, lag: f64, error: &str) -> DbStatus {
        DbStatus {
            database: "app".into(),
            state: state.into(),
            lag_seconds: lag,
            lag_bytes: 42,
            error: error.into(),
            ..DbStatus::default()
        }
    }

    /// The gates' inputs without agents: the plan and the journal only.
    fn inputs<'a>(plan: &'a Plan, events: &'a [Event]) -> Inputs<'a> {
        Inputs {
            plan,
            old: None,
            new: None,
            connect_errors: vec![],
            events,
            skip_backup: None,
            rehearsal: false,
        }
    }

    fn fresh(events: &[Event], f: &[DbStatus]) -> Result<String, String> {
        let plan = plan();
        let i = inputs(&plan, events);
        follow_fresh(&i, f).map_err(|e| e.to_string())
    }

    #[test]
    fn a_current_follower_passes_without_a_clean_verify() {
        let events = [sync(1_000, "started"), sync(5_000, "done")];
        let ok = fresh(&events, &[db("following", 0.4, "")]).expect("passes");
        assert!(ok.contains("database app followed, lag 0.4 s"), "{ok}");
    }

    #[test]
    fn a_failed_lagging_or_unsynced_follow_fails_the_gate_naming_what_to_do() {
        let events = [sync(1_000, "started"), sync(5_000, "done")];
        let e = fresh(&events, &[db("failed", 0.0, "table public.t changed")]).unwrap_err();
        assert!(
            e.contains("the follower is failed (table public.t changed)")
                && e.contains("hostshift follow status"),
            "{e}"
        );
        let e = fresh(&events, &[db("following", 11.0, "")]).unwrap_err();
        assert!(
            e.contains("lags 11.0 s") && e.contains("budget_secs"),
            "{e}"
        );
        let e = fresh(&[], &[db("following", 0.0, "")]).unwrap_err();
        assert!(e.contains("no finished `hostshift sync`"), "{e}");
    }

    #[test]
    fn the_prediction_takes_the_longer_of_lag_and_delta_then_the_proof_and_the_freeze_methods() {
        // The database's copy is not predicted inside the freeze: the follower carries it and
        // its proof runs after the switch.
        let events = [
            sync(1_000, "started"),
            unit("database app", 1_000, "started"),
            unit("database app", 4_000, "done"),
            unit("storage uploads", 4_000, "started"),
            unit("storage uploads", 4_300, "done"),
            sync(5_000, "done"),
        ];
        // read-only 50 + max(half the lag of 2,500, storage 300 + fixed) + proof 100: the
        // catch-up waits for the rest of the follower's peek, not its whole lag.
        assert_eq!(predicted(&events, 2.5), Some(50 + 1_250 + 100));
        // A follower at the position: the delta is the longer one.
        assert_eq!(
            predicted(&events, 0.1),
            Some(50 + (300 + FOLLOW_DELTA_FIXED_MS) + 100)
        );
    }

    #[test]
    fn the_prediction_counts_a_tree_without_its_batches_transfer_once_for_batches_at_once() {
        // Planned from 900, two batches in flight together (1,000–1,200 and 1,100–1,300 ms:
        // 300 ms of transfer, not 400), the tree done at 1,350: 450 ms of unit, 150 of it
        // walking, comparing and finalizing — what recurs in the freeze.
        let events = [
            sync(900, "started"),
            unit("storage uploads", 900, "started"),
            unit("storage uploads batch 1/2", 1_000, "started"),
            unit("storage uploads batch 2/2", 1_100, "started"),
            unit("storage uploads batch 1/2", 1_200, "done"),
            unit("storage uploads batch 2/2", 1_300, "done"),
            unit("storage uploads", 1_350, "done"),
            sync(1_400, "done"),
        ];
        assert_eq!(
            predicted(&events, 0.1),
            Some(50 + (150 + FOLLOW_DELTA_FIXED_MS) + FOLLOW_PROOF_FIXED_MS)
        );
    }

    #[test]
    fn the_prediction_counts_each_unit_at_its_latest_sync_when_the_last_run_synced_only_some() {
        let unit = |run: &str, name: &str, time_ms: u64, status: &str| Event {
            run: run.into(),
            unit: name.into(),
            ..sync(time_ms, status)
        };
        let run = |run: &str, time_ms: u64, status: &str| Event {
            run: run.into(),
            ..sync(time_ms, status)
        };
        // Run 1 synced everything (storage: planned 950–1,000, two batches 1,000–1,300; a file
        // 40 ms; a table, which the follower carries); run 2 only the file (50 ms).
        let events = [
            run("1", 950, "started"),
            unit("1", "storage uploads", 950, "started"),
            unit("1", "storage uploads batch 1/2", 1_000, "started"),
            unit("1", "storage uploads batch 1/2", 1_200, "done"),
            unit("1", "storage uploads batch 2/2", 1_200, "started"),
            unit("1", "storage uploads batch 2/2", 1_300, "done"),
            unit("1", "storage uploads", 1_300, "done"),
            unit("1", "file env", 1_300, "started"),
            unit("1", "file env", 1_340, "done"),
            unit("1", "table public.t", 1_340, "started"),
            unit("1", "table public.t", 9_000, "done"),
            run("1", 9_000, "done"),
            run("2", 9_000, "started"),
            unit("2", "file env", 9_000, "started"),
            unit("2", "file env", 9_050, "done"),
            run("2", 9_100, "done"),
        ];
        // The freeze's delta walks the storage too: read-only 50 + (storage 50 + file 50 +
        // fixed) + proof 100.
        assert_eq!(
            predicted(&events, 0.1),
            Some(50 + (100 + FOLLOW_DELTA_FIXED_MS) + 100)
        );
    }

    #[test]
    fn overlapping_batches_count_once() {
        assert_eq!(union_ms(&[]), 0);
        assert_eq!(union_ms(&[(10, 20), (15, 30), (40, 50), (42, 45)]), 30);
        assert_eq!(union_ms(&[(40, 50), (10, 20)]), 20);
    }

    #[test]
    fn a_followed_prediction_says_when_the_last_sync_is_too_old_to_cover_the_storage() {
        let plan = plan();
        let ago = |min: u64| now_ms() - min * 60_000;
        let events = [sync(ago(21), "started"), sync(ago(20), "done")];
        let ok = budget(&inputs(&plan, &events), Some(500), true).expect("fits");
        assert!(
            ok.starts_with("predicted 0.5 s of 10 s; the last sync finished 20 min ago")
                && ok.contains("run `hostshift sync` right before the cutover"),
            "{ok}"
        );
        let events = [sync(ago(3), "started"), sync(ago(2), "done")];
        let ok = budget(&inputs(&plan, &events), Some(500), true).expect("fits");
        assert_eq!(ok, "predicted 0.5 s of 10 s");
        let e = budget(&inputs(&plan, &events), Some(20_000), true).unwrap_err();
        assert!(e.to_string().contains("half the follower's lag"), "{e}");
    }
}
