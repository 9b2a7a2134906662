//! What a database holds beyond its rows, read by the test itself.

/// Every index, constraint and trigger of the public schema with its definition, sorted: equal
/// lists on both hosts mean each object is there exactly once.
pub async fn post_data_objects(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT 'index ' || indexname || ': ' || indexdef FROM pg_indexes \
               WHERE schemaname = 'public' \
             UNION ALL \
             SELECT 'constraint ' || conrelid::regclass || '.' || conname || ': ' \
                    || pg_get_constraintdef(oid) FROM pg_constraint \
               WHERE connamespace = 'public'::regnamespace AND contype IN ('p', 'u', 'f', 'x') \
             UNION ALL \
             SELECT 'trigger ' || tgrelid::regclass || '.' || tgname || ' ' || tgenabled::text \
               FROM pg_trigger WHERE NOT tgisinternal \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("list indexes, constraints and triggers");
    rows.iter().map(|r| r.get(0)).collect()
}
