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
