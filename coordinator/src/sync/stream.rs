//! Moving one framed stream: pulled by the target agent from the source agent (default), or
//! relayed through this coordinator (`--relay`). Also reading a framed stream into memory
//! (manifests), verified like any other.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hostshift_proto::v1::{
    ApplyHeader, ApplyMessage, ApplyResult, Frame, Peer, PullRequest, ReadRequest, apply_event,
    apply_message,
};
use hostshift_shared::framing::{Accepted, FrameDecoder};

use super::{Tap, UnitError};
use crate::client::Agent;

/// Reads a framed stream completely (small streams only: manifests), verifying it.
///
/// # Errors
/// [`UnitError`] from the source or from the integrity check.
pub async fn read_all(
    agent: &Agent,
    read: ReadRequest,
    limit: usize,
) -> Result<Vec<u8>, UnitError> {
    let mut stream = agent
        .source()
        .read(read)
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    loop {
        let frame = stream.message().await.map_err(UnitError::from_status)?;
        let Some(frame) = frame else {
            dec.check_complete().map_err(UnitError::integrity)?;
            return Ok(out);
        };
        match dec.accept(frame).map_err(UnitError::integrity)? {
            Accepted::Data(b) => {
                if out.len() + b.len() > limit {
                    return Err(UnitError::other(format!(
                        "stream larger than {limit} bytes"
                    )));
                }
                out.extend_from_slice(&b);
            }
            Accepted::End { .. } => return Ok(out),
        }
    }
}

/// Where a pull reads from: the source agent's address as the target sees it, and a grant.
#[derive(Clone, Debug)]
pub struct PullSource {
    /// `https://HOST:PORT` of the source agent.
    pub address: String,
    /// Name its certificate is verified against.
    pub tls_name: String,
    /// Token from `Grants.Create` on the source.
    pub grant: String,
}

/// The target pulls `read` from the source and applies it as `header` says; `progress` gets the
/// bytes received so far.
///
/// # Errors
/// [`UnitError`] classified for retry decisions.
pub async fn pull(
    target: &Agent,
    source: &PullSource,
    read: ReadRequest,
    header: ApplyHeader,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ApplyResult, UnitError> {
    let req = PullRequest {
        source: Some(Peer {
            address: source.address.clone(),
            tls_name: source.tls_name.clone(),
            grant: source.grant.clone(),
        }),
        read: Some(read),
        apply: Some(header),
    };
    let mut events = target
        .target()
        .pull(req)
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    while let Some(ev) = events.message().await.map_err(UnitError::from_status)? {
        match ev.kind {
            Some(apply_event::Kind::Progress(b)) => progress(b),
            Some(apply_event::Kind::Result(r)) => return Ok(r),
            None => {}
        }
    }
    Err(UnitError::other(
        "the target agent ended the pull without a result".into(),
    ))
}

/// Relays `read` from `source` to `target` through this process. `tap` (tests only) may alter
/// frames on the way, to prove the receiver catches it.
///
/// # Errors
/// [`UnitError`]: the source's error when the source failed, else the target's.
pub async fn relay(
    source: &Agent,
    target: &Agent,
    read: ReadRequest,
    header: ApplyHeader,
    tap: Option<Tap>,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<ApplyResult, UnitError> {
    let frames = source
        .source()
        .read(read)
        .await
        .map_err(UnitError::from_status)?
        .into_inner();
    let source_error: Arc<Mutex<Option<tonic::Status>>> = Arc::new(Mutex::new(None));
    let err_slot = source_error.clone();
    let mut index = 0u64;
    let mut moved = 0u64;
    let frames = frames
        .take_while(move |r| {
            let keep = match r {
                Ok(_) => true,
                Err(s) => {
                    if let Ok(mut e) = err_slot.lock() {
                        *e = Some(s.clone());
                    }
                    false
                }
            };
            futures::future::ready(keep)
        })
        .filter_map(|r| futures::future::ready(r.ok()))
        .map(move |mut f: Frame| {
            if let Some(t) = &tap {
                t(index, &mut f);
            }
            index += 1;
            if let Some(hostshift_proto::v1::frame::Kind::Chunk(c)) = &f.kind {
                moved += c.data.len() as u64;
                progress(moved);
            }
            ApplyMessage {
                kind: Some(apply_message::Kind::Frame(f)),
            }
        });
    let head = futures::stream::once(futures::future::ready(ApplyMessage {
        kind: Some(apply_message::Kind::Header(header)),
    }));
    let result = target.target().apply(head.chain(frames)).await;
    let upstream = source_error.lock().ok().and_then(|mut e| e.take());
    match (result, upstream) {
        (_, Some(s)) => Err(UnitError::from_status(s)),
        (Ok(r), None) => Ok(r.into_inner()),
        (Err(s), None) => Err(UnitError::from_status(s)),
    }
}
