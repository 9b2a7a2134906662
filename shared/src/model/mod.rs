//! The database vocabulary both binaries compile against: a table's description
//! ([`TableInfo`]), a key range ([`KeyRange`]), a page range ([`PageRange`]), a table pattern
//! ([`TablePattern`]) and a content fingerprint ([`Fingerprint`]). The agent computes them, the
//! coordinator reasons about them, and the gRPC messages of `service Database` carry them; the
//! conversions between the messages and these types live here, once, so neither side knows the
//! other's field names.
//!
//! # Why a module of `hostshift-shared` and not a crate of its own
//! `hostshift-shared` already sits between the contract and both binaries and depends on
//! `hostshift-proto`; a separate `hostshift-model` crate would add a manifest and a build unit
//! for a few hundred lines with exactly the same dependents. If the model grows a dependency the
//! shared code must not have (it should not), it can move out without changing a caller's path
//! more than its first segment.
//!
//! # Malformed messages
//! Protobuf decodes a message with a missing field as that field's default — a range without a
//! bound would read as unbounded, a table with an unknown kind as the first kind. Every
//! conversion from a message here therefore checks what the message must say and refuses with a
//! [`Malformed`] error naming the field (`table.kind`, `ranges[3].lo`) instead of guessing.

mod fingerprint;
mod pages;
mod pattern;
mod range;
mod table;

pub use fingerprint::{DatabaseFingerprint, Fingerprint, LargeObjectFingerprint, SequencePosition};
pub use pages::PageRange;
pub use pattern::{PatternError, TablePattern, glob};
pub use range::KeyRange;
pub use table::{CopyFormat, TableInfo, TableKind, TableRef};

/// The largest `Follow.Changes` message a reader accepts (the new host's follower, the
/// coordinator's proof and rollback window). A decoded row travels whole in one message, and a
/// PostgreSQL row can be far bigger than gRPC's default limit of 4 MiB (a 5 MiB text value is
/// an ordinary upload kept in a column).
pub const MAX_CHANGES_MESSAGE: usize = 256 * 1024 * 1024;

/// A message from the other binary that lacks a field it must have, or holds a value this build
/// does not know. Names the message and the field, so the log tells which agent said what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed {message}: field `{field}` {problem} (are both agents and the CLI the same version?)"
)]
pub struct Malformed {
    /// What the message describes (`table description`, `key range`).
    pub message: &'static str,
    /// The field, as a path inside the message (`table.kind`, `ranges[3].lo`).
    pub field: String,
    /// What is wrong with it (`is missing`, `holds unknown value 7`).
    pub problem: String,
}

impl Malformed {
    pub(crate) fn missing(message: &'static str, field: &str) -> Self {
        Self {
            message,
            field: field.to_string(),
            problem: "is missing".to_string(),
        }
    }

    pub(crate) fn invalid(message: &'static str, field: &str, problem: impl Into<String>) -> Self {
        Self {
            message,
            field: field.to_string(),
            problem: problem.into(),
        }
    }

    /// The same error for a message nested at `prefix` (`ranges[2]`, `table`).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}
