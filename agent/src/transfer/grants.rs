//! Grants: what a peer agent may read from this agent, for how long.
//!
//! A grant is created by the coordinator (`Grants.Create`), names the peer (its certificate
//! identity `agent:<peer>`), the scopes (`storage:<name>`, `file:<name>`, `database:<name>`) and
//! a deadline, and is identified by a random 256-bit token. A database scope carries the plan's
//! table selection: a peer reads only the user tables it selects ([`GrantStore::selection`]). It lives in memory only: an agent
//! restart revokes every grant, and the coordinator simply asks again.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hostshift_shared::identity::{Identity, Role};

use crate::error::AgentError;
use crate::postgres::Selection;

/// Longest grant the agent issues.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug)]
struct Grant {
    peer: String,
    scopes: Vec<String>,
    /// Database name → the tables the peer may read (absent: every user table).
    selections: HashMap<String, Selection>,
    expires: SystemTime,
}

/// The grants this agent issued.
#[derive(Default)]
pub struct GrantStore {
    grants: Mutex<HashMap<String, Grant>>,
}

fn token() -> Result<String, AgentError> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| AgentError::io("read", "/dev/urandom", e))?;
    Ok(hex::encode(b))
}

impl GrantStore {
    /// Issues a grant; returns the token and its expiry (seconds since the epoch).
    ///
    /// # Errors
    /// `InvalidArgument` for an empty peer or a malformed scope.
    pub fn create(
        &self,
        peer: &str,
        scopes: Vec<String>,
        selections: HashMap<String, Selection>,
        ttl: Duration,
    ) -> Result<(String, u64), AgentError> {
        if !hostshift_shared::identity::valid_name(peer) {
            return Err(AgentError::InvalidArgument(format!(
                "grant peer {peer:?} is not an agent name"
            )));
        }
        for s in &scopes {
            let ok = s.split_once(':').is_some_and(|(k, n)| {
                matches!(k, "storage" | "file" | "database") && !n.is_empty()
            });
            if !ok {
                return Err(AgentError::InvalidArgument(format!(
                    "grant scope {s:?}: use storage:<name>, file:<name> or database:<name>"
                )));
            }
        }
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_TTL);
        let expires = SystemTime::now() + ttl;
        let t = token()?;
        let mut g = self
            .grants
            .lock()
            .map_err(|_| AgentError::Internal("grant store poisoned".into()))?;
        g.retain(|_, v| v.expires > SystemTime::now());
        g.insert(
            t.clone(),
            Grant {
                peer: peer.to_string(),
                scopes,
                selections,
                expires,
            },
        );
        let unix = expires
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok((t, unix))
    }

    /// Revokes a grant (unknown tokens are ignored).
    pub fn revoke(&self, token: &str) {
        if let Ok(mut g) = self.grants.lock() {
            g.remove(token);
        }
    }

    /// May `caller` read `scope`? The coordinator always may; a peer agent needs a live grant
    /// for its own identity that covers the scope.
    ///
    /// # Errors
    /// `PermissionDenied` saying why.
    pub fn authorize(&self, caller: &Identity, token: &str, scope: &str) -> Result<(), AgentError> {
        if caller.role == Role::Coordinator {
            return Ok(());
        }
        let g = self
            .grants
            .lock()
            .map_err(|_| AgentError::Internal("grant store poisoned".into()))?;
        let Some(grant) = g.get(token) else {
            return Err(AgentError::PermissionDenied(format!(
                "{caller} presented no valid grant for {scope}: the coordinator must grant it (grants expire and do not survive an agent restart)"
            )));
        };
        if grant.expires <= SystemTime::now() {
            return Err(AgentError::PermissionDenied(format!(
                "the grant for {scope} has expired"
            )));
        }
        if grant.peer != caller.name {
            return Err(AgentError::PermissionDenied(format!(
                "{caller} presented a grant issued to agent:{}",
                grant.peer
            )));
        }
        if !grant.scopes.iter().any(|s| s == scope) {
            return Err(AgentError::PermissionDenied(format!(
                "{caller}'s grant does not cover {scope}"
            )));
        }
        Ok(())
    }

    /// The tables of `database` that `caller` may read: for the coordinator every user table;
    /// for a peer agent the selection its grant carries (every user table when the coordinator
    /// sent none). Call it after [`GrantStore::authorize`] accepted the grant for the database.
    ///
    /// # Errors
    /// `PermissionDenied` when the grant is gone.
    pub fn selection(
        &self,
        caller: &Identity,
        token: &str,
        database: &str,
    ) -> Result<Selection, AgentError> {
        if caller.role == Role::Coordinator {
            return Ok(Selection::all());
        }
        let g = self
            .grants
            .lock()
            .map_err(|_| AgentError::Internal("grant store poisoned".into()))?;
        let grant = g.get(token).ok_or_else(|| {
            AgentError::PermissionDenied(format!(
                "{caller} presented no valid grant for database:{database}"
            ))
        })?;
        Ok(grant
            .selections
            .get(database)
            .cloned()
            .unwrap_or_else(Selection::all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_bind_peer_scope_and_time() {
        let store = GrantStore::default();
        let (t, _) = store
            .create(
                "new",
                vec!["storage:evaluations".into()],
                HashMap::new(),
                Duration::from_secs(60),
            )
            .expect("grant");
        let new = Identity::new(Role::Agent, "new");
        let other = Identity::new(Role::Agent, "intruder");
        assert!(store.authorize(&new, &t, "storage:evaluations").is_ok());
        assert!(store.authorize(&new, &t, "database:app").is_err());
        assert!(store.authorize(&other, &t, "storage:evaluations").is_err());
        assert!(
            store
                .authorize(&new, "forged", "storage:evaluations")
                .is_err()
        );
        store.revoke(&t);
        assert!(store.authorize(&new, &t, "storage:evaluations").is_err());
        let coord = Identity::new(Role::Coordinator, "c");
        assert!(store.authorize(&coord, "", "storage:evaluations").is_ok());
        assert!(
            store
                .create(
                    "new",
                    vec!["root:/".into()],
                    HashMap::new(),
                    Duration::from_secs(1)
                )
                .is_err()
        );
    }
}
