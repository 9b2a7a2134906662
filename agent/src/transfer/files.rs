//! Config files on the target: `.env` overrides from the plan, applied to verified bytes before
//! the atomic replace ([`crate::fsutil::write_atomic`]) keeps (or sets) mode and owner.

use hostshift_shared::dotenv::fingerprint;

use crate::envfile::edit;
use crate::error::AgentError;

/// Applies `overrides` (key → value) to `.env` text; returns the new text and the changes as
/// `KEY: old → new` lines where both values are digests ([`fingerprint`]): every `.env` value
/// is treated as a secret in what leaves the agent, whatever its key is called.
///
/// # Errors
/// `InvalidArgument` when the file is not UTF-8 text or a key is not a `.env` key.
pub fn apply_overrides(
    bytes: &[u8],
    overrides: &std::collections::HashMap<String, String>,
) -> Result<(Vec<u8>, Vec<String>), AgentError> {
    if overrides.is_empty() {
        return Ok((bytes.to_vec(), Vec::new()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        AgentError::InvalidArgument(
            "overrides apply to .env text files; this file is not UTF-8".into(),
        )
    })?;
    let mut ops: Vec<(String, Option<String>)> = overrides
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    ops.sort();
    let (new, changes) =
        edit::edit(text, &ops).map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
    let lines = changes
        .iter()
        .map(|c| {
            format!(
                "{}: {} → {}",
                c.key,
                fingerprint(c.old.as_deref()),
                fingerprint(c.new.as_deref())
            )
        })
        .collect();
    Ok((new.into_bytes(), lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_named_keys_and_redact_secrets() {
        let text = b"# c\nA=1\nJWT_SECRET=old\n";
        let o = [
            ("A".to_string(), "2".to_string()),
            ("JWT_SECRET".to_string(), "new".to_string()),
        ]
        .into_iter()
        .collect();
        let (new, changes) = apply_overrides(text, &o).expect("apply");
        assert_eq!(
            String::from_utf8(new).expect("utf8"),
            "# c\nA=2\nJWT_SECRET=new\n"
        );
        assert!(
            changes.contains(&format!(
                "A: {} → {}",
                fingerprint(Some("1")),
                fingerprint(Some("2"))
            )),
            "{changes:?}"
        );
        let secret = changes
            .iter()
            .find(|c| c.starts_with("JWT_SECRET:"))
            .expect("secret change listed");
        assert!(
            !secret.contains("old") && !secret.ends_with("new"),
            "{secret}"
        );
    }
}
