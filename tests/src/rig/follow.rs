//! What `hostshift follow` leaves in the catalogs, read by the test itself.

use super::Sandbox;

/// hostshift's logical slots and publications in the sandbox's old database, and the
/// replication origins named `origin` in its new database: all zero after a cleanup.
pub async fn follow_leftovers(sb: &Sandbox, origin: &str) -> (i64, i64, i64) {
    let old = sb.world.old_pg.connect(&sb.old_db).await;
    let slots: i64 = old
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'hostshift_%' AND database = current_database()",
            &[],
        )
        .await
        .expect("slots")
        .get(0);
    let pubs: i64 = old
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'hostshift_%'",
            &[],
        )
        .await
        .expect("publications")
        .get(0);
    let new = sb.world.new_pg.connect(&sb.new_db).await;
    let origins: i64 = new
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = $1",
            &[&origin],
        )
        .await
        .expect("origins")
        .get(0);
    (slots, pubs, origins)
}

/// Every row of `table` in database `db` of `pg`, as sorted JSON texts (for a row-by-row
/// comparison of two hosts).
pub async fn table_rows(pg: &super::PgInfo, db: &str, table: &str) -> Vec<String> {
    let c = pg.connect(db).await;
    let mut v: Vec<String> = c
        .query(
            &format!("SELECT row_to_json(r.*)::text FROM {table} r"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read {table} on port {}: {e:?}", pg.port))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// The cutover's two calls, as the test's own check: the old host's position for the plan's
/// database `database`, then a wait (30 s at most) until the new host's follower applied it.
pub async fn wait_caught_up(sb: &Sandbox, database: &str, why: &str) {
    use hostshift::plan::{Plan, Side};
    let plan = Plan::load(&sb.plan_path()).expect("plan");
    let (old, new) = (
        hostshift::client::connect(&plan, Side::Old)
            .await
            .expect("old agent"),
        hostshift::client::connect(&plan, Side::New)
            .await
            .expect("new agent"),
    );
    let pos = hostshift::follow::old_position(&plan, &old, database)
        .await
        .expect("old position");
    hostshift::follow::wait_applied(&new, database, pos, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// The app on the old host while a test follows it: runs `round(i)` for i = `from`, `from`+1, …
/// every `pause` until stopped. Each round is a list of SQL batches run one after the other (a
/// transaction is one `BEGIN; …; COMMIT;` batch); a failed batch is kept with its round number
/// (and rolled back) and the round goes on.
pub struct RoundWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl RoundWriter {
    /// Starts writing on the sandbox's old database.
    pub async fn start(
        sb: &Sandbox,
        from: i64,
        pause: std::time::Duration,
        round: impl Fn(i64) -> Vec<String> + Send + 'static,
    ) -> RoundWriter {
        use std::sync::atomic::Ordering;
        let client = sb.world.old_pg.connect(&sb.old_db).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut i = from;
            while !s.load(Ordering::SeqCst) {
                for sql in round(i) {
                    if let Err(e) = client.batch_execute(&sql).await {
                        errors.push(format!("round {i}: {sql}: {e:?}"));
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                i += 1;
                tokio::time::sleep(pause).await;
            }
            errors
        });
        RoundWriter { stop, rounds, task }
    }

    /// Waits (30 s at most) until `n` more rounds ran.
    pub async fn wait_rounds(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let start = self.rounds.load(Ordering::SeqCst);
        super::eventually(
            std::time::Duration::from_secs(30),
            "writer rounds",
            || async { (self.rounds.load(Ordering::SeqCst) >= start + n).then_some(()) },
        )
        .await;
    }

    /// Stops it (after the round in flight) and returns the failed batches.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(std::time::Duration::from_secs(20), self.task)
            .await
            .expect("writer stops")
            .expect("writer task")
    }
}
