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
