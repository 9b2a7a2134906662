//! SHA-256 digests as a type, so a digest can never be confused with another string or byte
//! buffer, and comparing two of them is the only way to "check" one.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Displayed and parsed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// A digest string that is not 64 hex characters.
#[derive(Debug, thiserror::Error)]
#[error("not a SHA-256 digest (want 64 hex characters): {0:?}")]
pub struct BadDigest(pub String);

impl Sha256Digest {
    /// Digest of one buffer.
    pub fn of(data: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(data);
        Self(h.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From raw bytes, as carried in protobuf `bytes` fields.
    ///
    /// # Errors
    /// When `bytes` is not exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, BadDigest> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| BadDigest(hex::encode(bytes)))
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    /// When `s` is not 64 hex characters.
    pub fn parse_hex(s: &str) -> Result<Self, BadDigest> {
        let v = hex::decode(s).map_err(|_| BadDigest(s.to_string()))?;
        Self::from_slice(&v).map_err(|_| BadDigest(s.to_string()))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Incremental hasher producing a [`Sha256Digest`] and counting the bytes it saw, so a stream's
/// trailer (length + digest) comes from one place.
#[derive(Clone, Default)]
pub struct StreamHasher {
    inner: Sha256,
    len: u64,
}

impl StreamHasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length and digest of everything fed.
    pub fn finish(self) -> (u64, Sha256Digest) {
        (self.len, Sha256Digest(self.inner.finalize().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_hex_round_trip() {
        let d = Sha256Digest::of(b"abc");
        assert_eq!(
            d.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256Digest::parse_hex(&d.to_string()).ok(), Some(d));
        assert!(Sha256Digest::parse_hex("abc").is_err());
    }

    #[test]
    fn stream_hasher_matches_one_shot_and_counts_bytes() {
        let mut h = StreamHasher::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), (3, Sha256Digest::of(b"abc")));
    }
}
