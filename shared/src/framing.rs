//! Integrity of every byte that crosses the network: the chunk-and-trailer framing.
//!
//! A data stream is a sequence of [`Frame`]s: chunks, each carrying the SHA-256 of its own bytes,
//! then exactly one trailer with the total length, the number of chunks and the SHA-256 over the
//! concatenated chunk digests. [`FrameEncoder`] builds them on the sending side;
//! [`FrameDecoder`] checks each chunk as it arrives (so a corrupt chunk is caught at once, before
//! its bytes are written anywhere) and the trailer at the end (so a dropped, duplicated or
//! reordered chunk, or a truncated stream, is caught before the receiver commits anything).
//!
//! The trailer hashes the chunk digests rather than the bytes again: every byte is then hashed
//! once per side (SHA-256 runs at ~1.3 GiB/s a core here), and the chain of digests still pins
//! down the exact content and order.

use bytes::Bytes;
use hostshift_proto::v1::{Chunk, Frame, Trailer, frame::Kind};
use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;

/// Bytes per chunk. Worst-case memory of one stream in flight is the gRPC window
/// ([`crate::tls::STREAM_WINDOW`]) plus the producer's queue depth times this.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// A stream that failed its integrity check. Never retried silently: the receiver discards what
/// it staged and the sender sends the whole stream again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// A chunk's bytes do not match its digest.
    #[error("chunk {index} is corrupt: its SHA-256 is {actual}, the sender said {claimed}")]
    Chunk {
        /// 0-based chunk number.
        index: u64,
        /// What the receiver computed.
        actual: String,
        /// What the frame claimed.
        claimed: String,
    },
    /// The trailer does not match what was received.
    #[error("stream does not match its trailer: received {got_len} bytes in {got_chunks} chunks, the sender sent {len} bytes in {chunks} chunks{}", if *.digest_mismatch { " (chunk digest chain differs)" } else { "" })]
    Trailer {
        /// Bytes received.
        got_len: u64,
        /// Chunks received.
        got_chunks: u64,
        /// Bytes the sender says it sent.
        len: u64,
        /// Chunks the sender says it sent.
        chunks: u64,
        /// The digest chain differs.
        digest_mismatch: bool,
    },
    /// The stream ended without a trailer (the sender died or the connection broke).
    #[error(
        "stream ended without its trailer after {got_len} bytes: the sender stopped or the connection broke"
    )]
    Truncated {
        /// Bytes received.
        got_len: u64,
    },
    /// A frame after the trailer, or an empty frame.
    #[error("malformed stream: {0}")]
    Malformed(&'static str),
}

/// Sending side: turns byte chunks into frames.
#[derive(Default)]
pub struct FrameEncoder {
    chain: Sha256,
    len: u64,
    chunks: u64,
}

impl FrameEncoder {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// A chunk frame for `data`.
    pub fn chunk(&mut self, data: Bytes) -> Frame {
        let d = Sha256Digest::of(&data);
        self.chain.update(d.as_bytes());
        self.len += data.len() as u64;
        self.chunks += 1;
        Frame {
            kind: Some(Kind::Chunk(Chunk {
                data,
                sha256: d.as_bytes().to_vec(),
            })),
        }
    }

    /// Bytes framed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The closing trailer, and the stream's digest (the chain digest).
    pub fn trailer(self) -> (Frame, Sha256Digest) {
        let digest = Sha256Digest::from_slice(&self.chain.finalize()).expect("SHA-256 is 32 bytes");
        let frame = Frame {
            kind: Some(Kind::Trailer(Trailer {
                length: self.len,
                chunks: self.chunks,
                sha256: digest.as_bytes().to_vec(),
            })),
        };
        (frame, digest)
    }
}

/// What [`FrameDecoder::accept`] found in a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Verified bytes of a chunk.
    Data(Bytes),
    /// The trailer matched: the stream is complete and intact.
    End {
        /// Total bytes.
        length: u64,
        /// The stream's digest (chain of chunk digests).
        digest: Sha256Digest,
    },
}

/// Receiving side: verifies frames one by one.
#[derive(Default)]
pub struct FrameDecoder {
    chain: Sha256,
    len: u64,
    chunks: u64,
    done: bool,
}

impl FrameDecoder {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one frame.
    ///
    /// # Errors
    /// [`IntegrityError`] on a corrupt chunk, a trailer mismatch, or a frame after the trailer.
    pub fn accept(&mut self, frame: Frame) -> Result<Accepted, IntegrityError> {
        if self.done {
            return Err(IntegrityError::Malformed("data after the trailer"));
        }
        match frame.kind {
            Some(Kind::Chunk(c)) => {
                let actual = Sha256Digest::of(&c.data);
                if actual.as_bytes().as_slice() != c.sha256.as_slice() {
                    return Err(IntegrityError::Chunk {
                        index: self.chunks,
                        actual: actual.to_string(),
                        claimed: hex::encode(&c.sha256),
                    });
                }
                self.chain.update(actual.as_bytes());
                self.len += c.data.len() as u64;
                self.chunks += 1;
                Ok(Accepted::Data(c.data))
            }
            Some(Kind::Trailer(t)) => {
                self.done = true;
                let digest = Sha256Digest::from_slice(&std::mem::take(&mut self.chain).finalize())
                    .expect("SHA-256 is 32 bytes");
                let digest_mismatch = digest.as_bytes().as_slice() != t.sha256.as_slice();
                if t.length != self.len || t.chunks != self.chunks || digest_mismatch {
                    return Err(IntegrityError::Trailer {
                        got_len: self.len,
                        got_chunks: self.chunks,
                        len: t.length,
                        chunks: t.chunks,
                        digest_mismatch,
                    });
                }
                Ok(Accepted::End {
                    length: self.len,
                    digest,
                })
            }
            None => Err(IntegrityError::Malformed("empty frame")),
        }
    }

    /// Bytes verified so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the trailer was seen and matched.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Call when the stream ended: an error unless the trailer was seen.
    ///
    /// # Errors
    /// [`IntegrityError::Truncated`].
    pub fn check_complete(&self) -> Result<(), IntegrityError> {
        if self.done {
            Ok(())
        } else {
            Err(IntegrityError::Truncated { got_len: self.len })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> (Vec<Frame>, Sha256Digest) {
        let mut e = FrameEncoder::new();
        let mut v: Vec<Frame> = parts
            .iter()
            .map(|p| e.chunk(Bytes::copy_from_slice(p)))
            .collect();
        let (t, d) = e.trailer();
        v.push(t);
        (v, d)
    }

    fn decode(v: Vec<Frame>) -> Result<(Vec<u8>, Sha256Digest), IntegrityError> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for f in v {
            match d.accept(f)? {
                Accepted::Data(b) => out.extend_from_slice(&b),
                Accepted::End { digest, .. } => return Ok((out, digest)),
            }
        }
        d.check_complete()?;
        unreachable!("check_complete fails without a trailer")
    }

    #[test]
    fn round_trip_verifies_and_yields_the_same_bytes() {
        let (v, d) = frames(&[b"hello ", b"world"]);
        let (bytes, digest) = decode(v).expect("intact");
        assert_eq!(bytes, b"hello world");
        assert_eq!(digest, d);
    }

    #[test]
    fn a_flipped_byte_in_a_chunk_is_caught_at_that_chunk() {
        let (mut v, _) = frames(&[b"aaaa", b"bbbb"]);
        if let Some(Kind::Chunk(c)) = &mut v[1].kind {
            let mut data = c.data.to_vec();
            data[0] ^= 1;
            c.data = data.into();
        }
        assert!(matches!(
            decode(v),
            Err(IntegrityError::Chunk { index: 1, .. })
        ));
    }

    #[test]
    fn a_dropped_or_reordered_chunk_is_caught_by_the_trailer() {
        let (mut v, _) = frames(&[b"aaaa", b"bbbb", b"cccc"]);
        v.remove(1);
        assert!(matches!(decode(v), Err(IntegrityError::Trailer { .. })));
        let (mut v, _) = frames(&[b"aaaa", b"bbbb"]);
        v.swap(0, 1);
        assert!(matches!(
            decode(v),
            Err(IntegrityError::Trailer {
                digest_mismatch: true,
                ..
            })
        ));
    }

    #[test]
    fn a_stream_without_trailer_is_truncated_not_accepted() {
        let (mut v, _) = frames(&[b"aaaa"]);
        v.pop();
        assert!(matches!(
            decode(v),
            Err(IntegrityError::Truncated { got_len: 4 })
        ));
    }
}
