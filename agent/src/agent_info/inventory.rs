//! Sizes and exact row counts: what the preflight compares against the new host's free disk,
//! and the baseline counts an operator records before a move.

use std::path::Path;

use hostshift_proto::v1::{DatabaseInventory, FileInventory, StorageInventory, TableCount};

use crate::config::{DatabaseConfig, StorageConfig};
use crate::error::AgentError;
use crate::postgres::connect;

/// Size, tables and (optionally) exact row counts of one database.
pub async fn database(db: &DatabaseConfig, row_counts: bool) -> DatabaseInventory {
    match database_inner(db, row_counts).await {
        Ok(inv) => inv,
        Err(e) => DatabaseInventory {
            name: db.name.clone(),
            problem: e.to_string(),
            ..Default::default()
        },
    }
}

async fn database_inner(
    db: &DatabaseConfig,
    row_counts: bool,
) -> Result<DatabaseInventory, AgentError> {
    let client = connect::connect(db).await?;
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(|e| AgentError::db(&db.name, &e))?
        .get(0);
    // Ordinary and partitioned tables, not partitions (their rows and bytes count in the parent:
    // a partitioned table's own size is 0, its partitions hold the data).
    let rows = client
        .query(
            "SELECT n.nspname, c.relname,
                    CASE WHEN c.relkind = 'p' THEN
                        (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::int8
                           FROM pg_partition_tree(c.oid) t)
                    ELSE pg_total_relation_size(c.oid) END
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| AgentError::db(&db.name, &e))?;
    let mut tables = Vec::with_capacity(rows.len());
    for r in rows {
        let schema: String = r.get(0);
        let table: String = r.get(1);
        let size: i64 = r.get(2);
        let count = if row_counts {
            let q = format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            );
            client
                .query_one(&q, &[])
                .await
                .map_err(|e| AgentError::db(&db.name, &e))?
                .get::<_, i64>(0)
        } else {
            -1
        };
        tables.push(TableCount {
            schema,
            table,
            rows: count,
            size_bytes: size.max(0) as u64,
        });
    }
    Ok(DatabaseInventory {
        name: db.name.clone(),
        size_bytes: size.max(0) as u64,
        tables,
        problem: String::new(),
    })
}

/// Quotes an SQL identifier (`"a""b"`).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// File count and bytes of a storage tree (regular files; links are not followed).
pub async fn storage(s: &StorageConfig) -> StorageInventory {
    let path = s.path.clone();
    let walked = tokio::task::spawn_blocking(move || walk(&path)).await;
    let (files, bytes, problem) = match walked {
        Ok(Ok((f, b))) => (f, b, String::new()),
        Ok(Err(e)) => (0, 0, e.to_string()),
        Err(e) => (0, 0, format!("walk task failed: {e}")),
    };
    StorageInventory {
        name: s.name.clone(),
        path: s.path.display().to_string(),
        files,
        bytes,
        problem,
    }
}

fn walk(root: &Path) -> Result<(u64, u64), AgentError> {
    let mut stack = vec![root.to_path_buf()];
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| AgentError::io("list", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| AgentError::io("list", &dir, e))?;
            let ft = entry
                .file_type()
                .map_err(|e| AgentError::io("inspect", entry.path(), e))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                files += 1;
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    Ok((files, bytes))
}

/// Existence and size of a config file.
pub fn file(name: &str, path: &Path) -> FileInventory {
    let meta = std::fs::metadata(path).ok();
    FileInventory {
        name: name.to_string(),
        path: path.display().to_string(),
        exists: meta.is_some(),
        bytes: meta.map_or(0, |m| m.len()),
    }
}
