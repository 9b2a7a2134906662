//! Large objects: their content, owner and ACL. The source lists them
//! ([`list_large_objects`]) and streams each one's content ([`read_large_object`], `lo_get` in
//! 1 MiB pieces inside a read-only transaction on the sync's snapshot); the target writes each
//! object in a transaction of its own ([`LargeObjectSink`]) that commits only when told.
//!
//! The schema sections carry no large objects (`pg_dump --schema-only` leaves them out), but a
//! target may already have one with the same OID — from an earlier, interrupted sync, or from a
//! dump made with `--section=pre-data` without `--schema-only`, which does emit `lo_create`,
//! owner and grants. [`LargeObjectSink::begin`] therefore unlinks an existing object of that OID
//! inside its transaction and creates it afresh, then sets the owner and the ACL: either way the
//! result is the source's object, and a rollback restores what was there.
//!
//! ACL: when the source's ACL is the default (`NULL`), nothing is granted. Otherwise the owner's
//! implicit rights are revoked and every entry granted again, so the target's ACL lists the same
//! entries (owner first, as on the source). Grants are recorded with the owner as grantor;
//! an entry granted by another role (through a grant option) gets the owner as grantor here.

use std::borrow::Borrow;

use bytes::Bytes;
use futures::Stream;

use super::conn::{Conn, SnapshotId};
use super::error::PgSyncError;
use super::sql;

/// Bytes per `lo_get`/`lo_put` call (the chunk size of [`read_large_object`]).
pub const LO_CHUNK_BYTES: i32 = 1024 * 1024;

/// One entry of a large object's ACL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoGrant {
    /// The role granted to; `None` for `PUBLIC`.
    pub grantee: Option<String>,
    /// `SELECT` or `UPDATE`.
    pub privilege: String,
    /// Granted `WITH GRANT OPTION`.
    pub grantable: bool,
}

/// A large object's identity and metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LargeObjectMeta {
    /// Its OID (kept: applications store it in their rows).
    pub oid: u32,
    /// The owning role.
    pub owner: String,
    /// The explicit ACL; `None` when it is the default (owner only).
    pub acl: Option<Vec<LoGrant>>,
}

/// Every large object of the source database with owner and ACL, by OID, in a read-only
/// transaction on `snapshot`. Memory: about a hundred bytes per object.
///
/// # Errors
/// [`PgSyncError::Query`] when the catalog cannot be read.
pub async fn list_large_objects(
    conn: &Conn,
    snapshot: Option<&SnapshotId>,
) -> Result<Vec<LargeObjectMeta>, PgSyncError> {
    conn.begin_read_only(snapshot).await?;
    let listed = list_in_tx(conn).await;
    conn.end_read_only().await?;
    listed
}

async fn list_in_tx(conn: &Conn) -> Result<Vec<LargeObjectMeta>, PgSyncError> {
    let what = "list the large objects";
    let metas = conn
        .client()
        .query(
            "SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner)::text, m.lomacl IS NULL
             FROM pg_catalog.pg_largeobject_metadata m ORDER BY m.oid",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, what, &e))?;
    let grants = conn
        .client()
        .query(
            "SELECT m.oid,
                    CASE WHEN a.grantee = 0 THEN NULL
                         ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
                    a.privilege_type, a.is_grantable
             FROM pg_catalog.pg_largeobject_metadata m,
                  LATERAL pg_catalog.aclexplode(m.lomacl) WITH ORDINALITY AS a
             ORDER BY m.oid, a.ordinality",
            &[],
        )
        .await
        .map_err(|e| conn.err(None, what, &e))?;
    let mut out: Vec<LargeObjectMeta> = metas
        .iter()
        .map(|r| LargeObjectMeta {
            oid: r.get(0),
            owner: r.get(1),
            acl: if r.get::<_, bool>(2) {
                None
            } else {
                Some(Vec::new())
            },
        })
        .collect();
    let mut i = 0;
    for g in &grants {
        let oid: u32 = g.get(0);
        while i < out.len() && out[i].oid < oid {
            i += 1;
        }
        if let Some(acl) = out
            .get_mut(i)
            .filter(|m| m.oid == oid)
            .and_then(|m| m.acl.as_mut())
        {
            acl.push(LoGrant {
                grantee: g.get(1),
                privilege: g.get(2),
                grantable: g.get(3),
            });
        }
    }
    Ok(out)
}

/// Streams the content of large object `oid` in chunks of [`LO_CHUNK_BYTES`], inside a read-only
/// transaction on `snapshot`. An empty object yields no chunk. Use one connection per concurrent
/// read; after an error, drop it.
///
/// # Errors
/// Each item: [`PgSyncError::Query`] when the object does not exist (in the snapshot) or cannot
/// be read.
pub fn read_large_object<C>(
    conn: C,
    oid: u32,
    snapshot: Option<SnapshotId>,
) -> impl Stream<Item = Result<Bytes, PgSyncError>> + Send + use<C>
where
    C: Borrow<Conn> + Send,
{
    let label = format!("large object {oid}");
    futures::stream::try_unfold(Some((conn, 0i64)), move |state| {
        let snapshot = snapshot.clone();
        let label = label.clone();
        async move {
            let Some((conn, offset)) = state else {
                return Ok(None);
            };
            let c: &Conn = conn.borrow();
            if offset == 0 {
                c.begin_read_only(snapshot.as_ref()).await?;
            }
            let row = c
                .client()
                .query_one(
                    "SELECT pg_catalog.lo_get($1, $2, $3)",
                    &[&oid, &offset, &LO_CHUNK_BYTES],
                )
                .await
                .map_err(|e| c.err(Some(&label), "read the large object", &e))?;
            let data: Vec<u8> = row.get(0);
            if data.len() < LO_CHUNK_BYTES as usize {
                c.end_read_only().await?;
                return Ok((!data.is_empty()).then(|| (Bytes::from(data), None)));
            }
            let next = offset + data.len() as i64;
            Ok(Some((Bytes::from(data), Some((conn, next)))))
        }
    })
}

/// One large object being written on the target, committed only by [`LargeObjectSink::commit`].
pub struct LargeObjectSink {
    conn: Conn,
    oid: u32,
    label: String,
    offset: i64,
}

impl LargeObjectSink {
    /// Opens the object's transaction on `conn` (which the sink owns until it ends): replaces any
    /// object of that OID, sets owner and ACL. The caller must have checked that this database may
    /// be written (`[allow] restore_databases`).
    ///
    /// # Errors
    /// [`PgSyncError::InvalidInput`] for a privilege other than `SELECT`/`UPDATE`;
    /// [`PgSyncError::Query`] when the owner or a grantee role does not exist on the target (sync
    /// the globals first). The connection is closed then.
    pub async fn begin(conn: Conn, meta: &LargeObjectMeta) -> Result<Self, PgSyncError> {
        let oid = meta.oid;
        let label = format!("large object {oid}");
        // READ WRITE: a rollback within the window writes into the frozen old host, whose
        // database defaults to read-only transactions (only the agent's role still connects).
        let mut sql = format!(
            "BEGIN READ WRITE; \
             SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = {oid}; \
             SELECT pg_catalog.lo_create({oid}); \
             ALTER LARGE OBJECT {oid} OWNER TO {};",
            sql::ident(&meta.owner)
        );
        if let Some(acl) = &meta.acl {
            sql.push_str(&format!(
                "REVOKE ALL ON LARGE OBJECT {oid} FROM {};",
                sql::ident(&meta.owner)
            ));
            for g in acl {
                let privilege = match g.privilege.as_str() {
                    p @ ("SELECT" | "UPDATE") => p,
                    other => {
                        return Err(PgSyncError::InvalidInput {
                            database: conn.database().to_string(),
                            what: label,
                            reason: format!("privilege {other:?} is not one of SELECT, UPDATE"),
                        });
                    }
                };
                let grantee = g.grantee.as_deref().map_or("PUBLIC".into(), sql::ident);
                let option = if g.grantable {
                    " WITH GRANT OPTION"
                } else {
                    ""
                };
                sql.push_str(&format!(
                    "GRANT {privilege} ON LARGE OBJECT {oid} TO {grantee}{option};"
                ));
            }
        }
        conn.exec(&sql, Some(&label), "create the large object")
            .await?;
        Ok(Self {
            conn,
            oid,
            label,
            offset: 0,
        })
    }

    /// Appends one chunk.
    ///
    /// # Errors
    /// [`PgSyncError::Query`] when the server refused it; drop the sink.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), PgSyncError> {
        self.conn
            .client()
            .execute(
                "SELECT pg_catalog.lo_put($1, $2, $3)",
                &[&self.oid, &self.offset, &chunk],
            )
            .await
            .map_err(|e| {
                self.conn
                    .err(Some(&self.label), "write the large object", &e)
            })?;
        self.offset += chunk.len() as i64;
        Ok(())
    }

    /// Commits: call only after the stream was verified. Returns the connection and the size.
    ///
    /// # Errors
    /// [`PgSyncError::Query`] when the commit failed (nothing of the object changed then).
    pub async fn commit(self) -> Result<(Conn, u64), PgSyncError> {
        self.conn
            .exec("COMMIT", Some(&self.label), "commit the large object")
            .await?;
        Ok((self.conn, self.offset as u64))
    }

    /// Abandons the object: whatever the target had under this OID stays.
    ///
    /// # Errors
    /// When the connection broke (the server then rolls back by itself).
    pub async fn rollback(self) -> Result<Conn, PgSyncError> {
        self.conn
            .exec("ROLLBACK", Some(&self.label), "roll back the large object")
            .await?;
        Ok(self.conn)
    }
}

/// Unlinks those of `oids` that exist, in one read-write transaction (see
/// [`LargeObjectSink::begin`] for why read-write); returns how many existed. The caller must have
/// checked that this database may be written.
///
/// # Errors
/// [`PgSyncError::Query`] when the server refused (nothing was unlinked then).
pub async fn remove_large_objects(conn: &Conn, oids: &[u32]) -> Result<u64, PgSyncError> {
    if oids.is_empty() {
        return Ok(0);
    }
    let what = "unlink the large objects";
    conn.exec("BEGIN READ WRITE", None, what).await?;
    let r = conn
        .client()
        .execute(
            "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata \
             WHERE oid = ANY($1::oid[])",
            &[&oids],
        )
        .await;
    match r {
        Ok(n) => {
            conn.exec("COMMIT", None, what).await?;
            Ok(n)
        }
        Err(e) => {
            let _ = conn.client().batch_execute("ROLLBACK").await;
            Err(conn.err(None, what, &e))
        }
    }
}
