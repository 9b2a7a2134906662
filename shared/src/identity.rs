//! Who a certificate belongs to.
//!
//! Every certificate that `hostshift certs init` issues carries one URI subject-alternative name of
//! the form `spiffe://hostshift/<role>/<name>` — `coordinator` for the CLI's client certificate,
//! `agent` for an agent's (which is both its server certificate and the client certificate it uses
//! to pull data from a peer agent). Agents decide what a caller may do from this identity, read
//! from the certificate chain that mutual TLS already verified against the migration CA — never
//! from a password or a header.

use std::fmt;

/// The URI prefix of every hostshift identity.
pub const URI_PREFIX: &str = "spiffe://hostshift/";

/// The role a certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The coordinator CLI: may control an agent.
    Coordinator,
    /// A peer agent: may only read data streams it was granted.
    Agent,
}

impl Role {
    /// The role's word in the URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Agent => "agent",
        }
    }
}

/// A verified caller identity: role plus name (e.g. `agent:new`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What the certificate may do.
    pub role: Role,
    /// The name given at `certs init` (`old`, `new`, `coordinator`, ...).
    pub name: String,
}

impl Identity {
    /// An identity from its parts.
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Self {
            role,
            name: name.into(),
        }
    }

    /// The URI SAN that encodes this identity.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role.as_str(), self.name)
    }

    /// Parses `spiffe://hostshift/<role>/<name>`; `None` for any other URI.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "coordinator" => Role::Coordinator,
            "agent" => Role::Agent,
            _ => return None,
        };
        valid_name(name).then(|| Self::new(role, name))
    }

    /// Reads the identity from a DER certificate (the leaf of a verified chain).
    ///
    /// # Errors
    /// When the certificate cannot be parsed or carries no hostshift URI SAN.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::prelude::*;
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let subject = cert.subject().to_string();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name
                    && let Some(id) = Self::from_uri(uri)
                {
                    return Ok(id);
                }
            }
        }
        Err(IdentityError::NoIdentity { subject })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role.as_str(), self.name)
    }
}

/// Names are short labels: ASCII letters, digits, `-`, `_`, `.`; 1–63 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A certificate that does not say who it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("cannot parse the peer certificate: {0}")]
    Parse(String),
    /// Parsed, but no `spiffe://hostshift/...` URI SAN.
    #[error(
        "certificate {subject:?} carries no hostshift identity (a URI SAN spiffe://hostshift/<role>/<name>); issue it with `hostshift certs init`"
    )]
    NoIdentity {
        /// The certificate's subject, to say which one.
        subject: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_rejects_foreign_uris() {
        let id = Identity::new(Role::Agent, "old");
        assert_eq!(id.uri(), "spiffe://hostshift/agent/old");
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        assert_eq!(Identity::from_uri("spiffe://other/agent/old"), None);
        assert_eq!(Identity::from_uri("spiffe://hostshift/root/x"), None);
        assert_eq!(Identity::from_uri("spiffe://hostshift/agent/a/b"), None);
    }
}
