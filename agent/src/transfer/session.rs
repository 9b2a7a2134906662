//! Storage sessions: the new agent compares its tree with the old agent's manifest without the
//! coordinator carrying that manifest.
//!
//! `PlanStorage` with a `source` peer fetches the old agent's manifest over the grant the sync
//! already holds (`Source.Read`, a framed stream verified chunk by chunk and by its trailer) into
//! `state_dir/storage-sessions/<session>/` on this host's disk, diffs it against this tree as a
//! merge-walk of the two sorted manifests ([`storage::diff_with`] over a [`ManifestStream`]) and
//! writes each batch of entries to send next to it. The coordinator receives counts, totals,
//! batch sizes and the first [`SHOW_PATHS`] paths; `Pull` reads the batch's entries from the
//! session; both `FinalizeStorage` calls diff against the same file; the final one removes the
//! session. Sessions a killed sync left behind are removed after [`EXPIRE_AFTER`].
//!
//! Every read of a manifest checks all of it first ([`ManifestStream::check`]: paths, order,
//! parents, owner names, the trailing SHA-256) and only then acts on its entries in a second
//! pass: nothing is deleted or planned from a manifest that turns out damaged at its end.
//!
//! Memory: the source's manifest is never whole in memory (one entry, its ancestors, and the
//! source's directories); this tree's own manifest is (it is this agent's walk and cache). The
//! `--relay` path, where the coordinator sends the manifest's bytes, runs the same code over
//! those bytes.

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use hostshift_proto::v1::source_client::SourceClient;
use hostshift_proto::v1::{
    ApplyHeader, CompareStorageResponse, ManifestRead, Peer, ReadRequest, StorageBatch,
    apply_header, read_request,
};
use hostshift_shared::framing::{Accepted, FrameDecoder};
use tokio::io::AsyncWriteExt;

use super::pull;
use crate::Ctx;
use crate::error::AgentError;
use crate::storage::stream::Summary;
use crate::storage::walkfile::WalkFile;
use crate::storage::{
    self, Delta, Entry, Kind, Manifest, ManifestStream, OwnerMap, RelPath, Seen, StorageError,
};

/// Paths listed in a plan or comparison for people (the counts are always complete).
pub const SHOW_PATHS: usize = 1000;
/// A session older than this is removed by the next plan (a sync killed before it finalized).
pub const EXPIRE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Buffer of a manifest file read as a stream.
const READ_BUFFER: usize = 256 * 1024;
/// The old agent's manifest in a session folder.
const MANIFEST_FILE: &str = "source.manifest";

/// Where a source manifest is: a session's copy on this host's disk, or the bytes the
/// coordinator sent (`--relay`).
#[derive(Clone)]
pub enum SourceManifest {
    /// A session's file.
    File(PathBuf),
    /// Sent inline.
    Bytes(Bytes),
}

impl SourceManifest {
    fn open(&self) -> Result<ManifestStream<Box<dyn Read + Send>>, AgentError> {
        let (r, origin): (Box<dyn Read + Send>, &str) = match self {
            Self::File(p) => {
                let f = std::fs::File::open(p).map_err(|e| AgentError::io("open", p, e))?;
                (
                    Box::new(BufReader::with_capacity(READ_BUFFER, f)),
                    "<the old agent's manifest>",
                )
            }
            Self::Bytes(b) => (Box::new(b.clone().reader()), "<source manifest>"),
        };
        ManifestStream::open(r, Path::new(origin)).map_err(malformed)
    }

    /// Reads it all once: sound, or an error naming what is wrong.
    fn check(&self) -> Result<Summary, AgentError> {
        self.open()?.check().map_err(malformed)
    }

    /// Its entries, checked, with owners turned into this host's.
    fn entries(
        &self,
        owners: OwnerMap,
    ) -> Result<impl Iterator<Item = Result<Entry, StorageError>>, AgentError> {
        Ok(self.open()?.map(move |r| {
            r.map(|mut e| {
                owners.localize(&mut e);
                e
            })
        }))
    }
}

/// A malformed manifest from the peer: say whose it is and what is wrong.
fn malformed(e: StorageError) -> AgentError {
    match e {
        StorageError::BadManifest { .. } => AgentError::InvalidArgument(format!(
            "the old agent sent a malformed storage manifest: {e}; nothing was changed \
             (check that both agents run the same hostshift version)"
        )),
        other => other.into(),
    }
}

/// The folder of session `id` (checked: letters, digits, `-` and `_`, at most 64).
///
/// # Errors
/// `InvalidArgument` for an id that could name another path.
pub fn dir(ctx: &Ctx, id: &str) -> Result<PathBuf, AgentError> {
    check_id(id)?;
    Ok(sessions_root(ctx).join(id))
}

fn check_id(id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(AgentError::InvalidArgument(format!(
            "storage session {id:?}: use 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

fn sessions_root(ctx: &Ctx) -> PathBuf {
    ctx.config.state_dir.join("storage-sessions")
}

/// The session's copy of the old agent's manifest.
pub fn manifest_file(dir: &Path) -> SourceManifest {
    SourceManifest::File(dir.join(MANIFEST_FILE))
}

fn batch_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("batch-{index}.manifest"))
}

/// The encoded entries of batch `index` of session `id` (a pull's `expected`).
///
/// # Errors
/// `FailedPrecondition` when the session or batch is gone (the coordinator plans again).
pub fn batch(ctx: &Ctx, id: &str, index: u64) -> Result<Vec<u8>, AgentError> {
    let path = batch_file(&dir(ctx, id)?, index);
    std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            AgentError::FailedPrecondition(format!(
                "storage session {id} has no batch {index} ({}): it was finalized or expired; \
                 sync again to plan anew",
                path.display()
            ))
        } else {
            AgentError::io("read", &path, e)
        }
    })
}

/// For a pull of a session's batch (`StorageFilesApply` naming a session): fills the apply
/// header's `expected` and the read's `entries` from the batch file. Other pulls pass unchanged.
///
/// # Errors
/// As [`batch`]; `InvalidArgument` when the read is not of storage files.
pub fn fill_batch(
    ctx: &Ctx,
    read: &mut ReadRequest,
    mut header: ApplyHeader,
) -> Result<ApplyHeader, AgentError> {
    let Some(apply_header::What::StorageFiles(h)) = &mut header.what else {
        return Ok(header);
    };
    if h.session.is_empty() {
        return Ok(header);
    }
    let Some(read_request::What::StorageFiles(r)) = &mut read.what else {
        return Err(AgentError::InvalidArgument(
            "a storage batch of a session must be read as storage files".into(),
        ));
    };
    let entries = batch(ctx, &h.session, h.batch)?;
    r.entries = entries.clone();
    h.expected = entries;
    Ok(header)
}

/// Plans kept for the steps that follow them: session → (tree, the delta without `send`, how
/// many entries it sends). The prepare step acts on it (no second walk and diff); the final
/// step takes it and checks that every batch landed instead of walking the whole tree again
/// ([`landed`]) — unless the plan sent more files than the digest cache remembers as installed
/// ([`storage::cache::MAX_INSTALLED`]): then the final step's walk is what refreshes the cache
/// (without it the next sync's walk would read every file beyond that number again, the
/// benchmark's million-file second sync 6 s slower). In memory only: an agent restarted in
/// between walks and diffs again.
static PLANS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Kept>>> =
    std::sync::LazyLock::new(Default::default);

/// A kept plan: its tree, its delta without `send`, how many entries it sends.
type Kept = (String, Delta, u64);

/// Keeps a plan's delta (directories, attributes and deletions) and the number of entries it
/// sends for [`planned`].
pub fn remember_plan(session: &str, tree: &str, delta: &Delta, sent: u64) {
    let kept = Delta {
        send: Vec::new(),
        dirs: delta.dirs.clone(),
        meta: delta.meta.clone(),
        delete: delta.delete.clone(),
        bytes_to_send: 0,
    };
    if let Ok(mut p) = PLANS.lock() {
        p.insert(session.to_string(), (tree.to_string(), kept, sent));
    }
}

/// The delta [`remember_plan`] kept for this session and tree: a copy for the prepare step
/// (`last` false), or taken by the final step (`last` true: used once; `None` when the plan
/// sent more than [`storage::cache::MAX_INSTALLED`] entries, see [`PLANS`]).
pub fn planned(session: &str, tree: &str, last: bool) -> Option<Delta> {
    if session.is_empty() {
        return None;
    }
    let mut p = PLANS.lock().ok()?;
    if !last {
        return p
            .get(session)
            .filter(|(t, _, _)| t == tree)
            .map(|(_, d, _)| d.clone());
    }
    match p.remove(session) {
        Some((t, d, sent)) if t == tree && sent <= storage::cache::MAX_INSTALLED as u64 => Some(d),
        _ => None,
    }
}

/// How many entries of the session's batches (in `dir`) are not in place under `root` as they
/// were sent — missing, another kind, size, mode, mtime or link target — leaving out the ones a
/// batch `deferred`. Blocking.
///
/// This is the final step's check that every batch landed, made on the entries the plan sent
/// (one `lstat` each) instead of a walk and diff of the whole tree: the rest of the tree was
/// equal when the plan walked it moments before, and only this agent writes into it during a
/// sync. Owners are not compared here (the commit set them; `verify` compares them).
///
/// # Errors
/// A batch file that cannot be read or decoded, or a path that cannot be joined under `root`.
pub fn landed(dir: &Path, root: &Path, deferred: &HashSet<Vec<u8>>) -> Result<u64, AgentError> {
    use std::os::unix::fs::MetadataExt;
    let mut differing = 0u64;
    for index in 0u64.. {
        let path = batch_file(dir, index);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(AgentError::io("read", &path, e)),
        };
        let batch = Manifest::decode(&bytes, &path).map_err(AgentError::from)?;
        for e in batch.entries() {
            if deferred.contains(e.path.as_bytes()) {
                continue;
            }
            let full = storage::join_under(root, &e.path).map_err(AgentError::from)?;
            let Ok(meta) = std::fs::symlink_metadata(&full) else {
                differing += 1;
                continue;
            };
            let mtime = storage::walk::mtime_ns(&meta);
            let same = match &e.kind {
                Kind::File => {
                    meta.is_file()
                        && (meta.size(), storage::walk::file_mode(&meta), mtime)
                            == (e.size, e.mode, e.mtime_ns)
                }
                Kind::Symlink { target } => {
                    meta.is_symlink()
                        && mtime == e.mtime_ns
                        && std::fs::read_link(&full).is_ok_and(|t| &t == target)
                }
                Kind::Dir => meta.is_dir(),
            };
            if !same {
                differing += 1;
            }
        }
    }
    Ok(differing)
}

/// Removes a session folder (missing is fine).
pub fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "storage session not removed");
    }
}

/// Removes sessions older than [`EXPIRE_AFTER`], and kept plans whose session is gone.
pub fn expire(ctx: &Ctx) {
    let root = sessions_root(ctx);
    if let Ok(mut p) = PLANS.lock() {
        p.retain(|id, _| root.join(id).is_dir());
    }
    let Ok(listing) = std::fs::read_dir(&root) else {
        return;
    };
    let now = SystemTime::now();
    for de in listing.filter_map(Result::ok) {
        let old = de
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > EXPIRE_AFTER);
        if old {
            tracing::info!(session = %de.path().display(), "expired storage session removed");
            remove(&de.path());
        }
    }
}

/// Fetches the old agent's manifest of `source_tree` from `peer` (over its grant) into a fresh
/// session folder `dir`, verified by the stream's framing, then checks it whole.
///
/// # Errors
/// The peer's refusal or failure, an integrity failure (`DataLoss`), a malformed manifest
/// (`InvalidArgument`), or I/O on this host.
pub async fn fetch(
    ctx: &Ctx,
    peer: &Peer,
    source_tree: &str,
    full: bool,
    dir: &Path,
) -> Result<Summary, AgentError> {
    remove(dir);
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("create", dir, e))?;
    let channel = pull::connect_peer(ctx, &peer.address, &peer.tls_name).await?;
    let read = ReadRequest {
        grant: peer.grant.clone(),
        what: Some(read_request::What::Manifest(ManifestRead {
            tree: source_tree.to_string(),
            full,
        })),
    };
    let mut stream = SourceClient::new(channel)
        .read(read)
        .await
        .map_err(super::guard::upstream)?
        .into_inner();
    let path = dir.join(MANIFEST_FILE);
    let file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| AgentError::io("create", &path, e))?;
    let mut out = tokio::io::BufWriter::with_capacity(READ_BUFFER, file);
    let mut dec = FrameDecoder::new();
    let cancel = ctx.shutdown.child_token();
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            () = cancel.cancelled() => return Err(AgentError::Cancelled),
        };
        let frame = match next.map_err(super::guard::upstream)? {
            Some(f) => f,
            None => {
                dec.check_complete()
                    .map_err(|e| AgentError::DataLoss(format!("the old agent's manifest: {e}")))?;
                break;
            }
        };
        match dec
            .accept(frame)
            .map_err(|e| AgentError::DataLoss(format!("the old agent's manifest: {e}")))?
        {
            Accepted::Data(b) => out
                .write_all(&b)
                .await
                .map_err(|e| AgentError::io("write", &path, e))?,
            Accepted::End { .. } => break,
        }
    }
    out.flush()
        .await
        .map_err(|e| AgentError::io("write", &path, e))?;
    drop(out);
    tracing::debug!(tree = source_tree, bytes = dec.len(), session = %dir.display(), "old agent's manifest fetched");
    let src = SourceManifest::File(path);
    tokio::task::spawn_blocking(move || src.check())
        .await
        .map_err(|e| AgentError::Internal(format!("manifest check task: {e}")))?
}

/// What [`plan`] found.
pub struct Planned {
    /// Batches (their entries inline, or in the session folder).
    pub batches: Vec<StorageBatch>,
    /// The delta without `send` (directories, metadata fixes, deletions).
    pub delta: Delta,
    /// Files and symlinks to send.
    pub to_send: u64,
    /// The first of their paths, for people.
    pub first_paths: Vec<String>,
    /// Source files already equal here, and their bytes.
    pub unchanged_files: u64,
    /// Bytes of those.
    pub unchanged_bytes: u64,
    /// The source's owner names this host lacks.
    pub unknown_owners: Vec<String>,
}

/// Batch limits.
#[derive(Clone, Copy)]
pub struct Limits {
    /// A batch closes at this many bytes...
    pub bytes: u64,
    /// ...or this many files.
    pub files: u64,
}

struct Batcher<'a> {
    /// Where batch files go; `None`: inline in the response (`--relay`).
    dir: Option<&'a Path>,
    limits: Limits,
    cur: Vec<Entry>,
    cur_bytes: u64,
    out: Vec<StorageBatch>,
    sent: u64,
    sent_files: u64,
    first_paths: Vec<String>,
}

impl Batcher<'_> {
    fn push(&mut self, e: &Entry) -> Result<(), StorageError> {
        self.sent += 1;
        if e.is_file() {
            self.sent_files += 1;
        }
        if self.first_paths.len() < SHOW_PATHS {
            self.first_paths
                .push(String::from_utf8_lossy(e.path.as_bytes()).into_owned());
        }
        self.cur_bytes += e.size;
        self.cur.push(e.clone());
        if self.cur_bytes >= self.limits.bytes || self.cur.len() as u64 >= self.limits.files {
            self.close()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), StorageError> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.cur);
        let files = entries.len() as u64;
        let encoded = Manifest::new(entries)?.encode();
        let (paths, expected) = match self.dir {
            Some(dir) => {
                let path = batch_file(dir, self.out.len() as u64);
                std::fs::File::create(&path)
                    .and_then(|mut f| f.write_all(&encoded))
                    .map_err(|e| StorageError::io("write", &path, e))?;
                (Vec::new(), Vec::new())
            }
            None => {
                let m = Manifest::decode(&encoded, Path::new("<batch>"))?;
                let paths = m
                    .entries()
                    .iter()
                    .map(|e| e.path.as_bytes().to_vec())
                    .collect();
                (paths, encoded)
            }
        };
        self.out.push(StorageBatch {
            paths,
            expected,
            bytes: self.cur_bytes,
            files,
        });
        self.cur_bytes = 0;
        Ok(())
    }
}

/// Diffs the source manifest against `target` (this tree) and cuts what must travel into
/// batches: files in `batches_dir` (a session) or inline. Blocking.
///
/// # Errors
/// A malformed source manifest, or I/O writing the batches.
pub fn plan(
    src: &SourceManifest,
    target: &WalkFile,
    delete_extraneous: bool,
    limits: Limits,
    batches_dir: Option<&Path>,
) -> Result<Planned, AgentError> {
    let summary = src.check()?;
    let (owners, unknown_owners) = OwnerMap::new(&summary.names, storage::carries_owners());
    let mut b = Batcher {
        dir: batches_dir,
        limits: Limits {
            bytes: limits.bytes.max(1),
            files: limits.files.max(1),
        },
        cur: Vec::new(),
        cur_bytes: 0,
        out: Vec::new(),
        sent: 0,
        sent_files: 0,
        first_paths: Vec::new(),
    };
    let delta = storage::diff_with(
        src.entries(owners)?,
        own_entries(target),
        delete_extraneous,
        |seen, travels| {
            if travels {
                b.push(seen.source())
            } else {
                Ok(())
            }
        },
    )
    .map_err(malformed)?;
    b.close().map_err(AgentError::from)?;
    Ok(Planned {
        to_send: b.sent,
        first_paths: b.first_paths,
        batches: b.out,
        unchanged_files: summary.files.saturating_sub(b.sent_files),
        unchanged_bytes: summary.file_bytes.saturating_sub(delta.bytes_to_send),
        delta,
        unknown_owners,
    })
}

/// What finalize must do: the delta (without `send`) and how many entries still differ that
/// the batches did not defer. Blocking.
///
/// # Errors
/// A malformed source manifest.
pub fn finalize_delta(
    src: &SourceManifest,
    target: &WalkFile,
    delete_extraneous: bool,
    deferred: &HashSet<Vec<u8>>,
) -> Result<(Delta, u64), AgentError> {
    let summary = src.check()?;
    let (owners, _) = OwnerMap::new(&summary.names, storage::carries_owners());
    let mut undeferred = 0u64;
    let delta = storage::diff_with(
        src.entries(owners)?,
        own_entries(target),
        delete_extraneous,
        |seen, travels| {
            if travels && !deferred.contains(seen.source().path.as_bytes()) {
                undeferred += 1;
            }
            Ok(())
        },
    )
    .map_err(malformed)?;
    Ok((delta, undeferred))
}

/// A capped list of paths for people, with the full count.
#[derive(Default)]
struct Shown {
    paths: Vec<String>,
    count: u64,
}

impl Shown {
    fn push(&mut self, p: &RelPath) {
        self.count += 1;
        if self.paths.len() < SHOW_PATHS {
            self.paths
                .push(String::from_utf8_lossy(p.as_bytes()).into_owned());
        }
    }
}

/// The differences between the source manifest and `target` (this tree), for people: what is
/// missing here, what differs in content, what only this side has, what differs only in mode
/// or mtime, and whose owner differs — at most [`SHOW_PATHS`] paths each, with full counts.
/// Blocking.
///
/// # Errors
/// A malformed source manifest.
pub fn compare(
    src: &SourceManifest,
    target: &WalkFile,
) -> Result<CompareStorageResponse, AgentError> {
    let summary = src.check()?;
    let (owners, unknown_owners) = OwnerMap::new(&summary.names, storage::carries_owners());
    let (mut missing, mut changed, mut owner) =
        (Shown::default(), Shown::default(), Shown::default());
    let mut owner_rows = Vec::new();
    let mut dir_modes = Vec::new();
    let delta = storage::diff_with(
        src.entries(owners)?,
        own_entries(target),
        true,
        |seen, travels| {
            let (s, t) = match seen {
                Seen::New(s) => {
                    missing.push(&s.path);
                    return Ok(());
                }
                Seen::Both(s, t) => (s, t),
            };
            if travels {
                changed.push(&s.path);
            }
            // A directory's mtime moves whenever an entry is added or removed in it, and its
            // listing is compared entry by entry anyway: for directories only the mode counts.
            if s.kind == Kind::Dir && t.kind == Kind::Dir && s.mode != t.mode {
                dir_modes.push(s.path.clone());
            }
            if let (Some(want), Some(have)) = (s.owner, t.owner)
                && want != have
            {
                owner.count += 1;
                if owner_rows.len() < SHOW_PATHS {
                    owner_rows.push(format!(
                        "{} (old {}, new {})",
                        String::from_utf8_lossy(s.path.as_bytes()),
                        owner_name(want),
                        owner_name(have)
                    ));
                }
            }
            Ok(())
        },
    )
    .map_err(malformed)?;
    let mut extra = Shown::default();
    for e in &delta.delete {
        extra.push(&e.path);
    }
    let mut metadata = Vec::new();
    let mut metadata_count = 0u64;
    for p in delta.meta.iter().map(|m| &m.path).chain(dir_modes.iter()) {
        metadata_count += 1;
        if metadata.len() < SHOW_PATHS {
            metadata.push(String::from_utf8_lossy(p.as_bytes()).into_owned());
        }
    }
    metadata.sort();
    owner.paths = owner_rows;
    let own = target.summary();
    let manifest_sha256 = target
        .network_sha256()
        .map_err(|e| AgentError::Internal(format!("reading this tree's walk file: {e}")))?;
    Ok(CompareStorageResponse {
        missing: missing.paths,
        changed: changed.paths,
        extra: extra.paths,
        metadata,
        files: own.files,
        bytes: own.file_bytes,
        manifest_sha256: manifest_sha256.to_string(),
        source_files: summary.files,
        source_bytes: summary.file_bytes,
        owner: owner.paths,
        unknown_owners,
        missing_count: missing.count,
        changed_count: changed.count,
        extra_count: extra.count,
        metadata_count,
        owner_count: owner.count,
    })
}

/// This host's entries of a tree, from its walk file, for [`storage::diff_with`]. A damaged
/// walk file is an I/O error of this host, not a malformed manifest of the old agent's.
fn own_entries(target: &WalkFile) -> impl Iterator<Item = Result<Entry, StorageError>> + '_ {
    target.entries().map(|r| {
        r.map(|(e, _)| e).map_err(|e| match e {
            StorageError::BadManifest { path, reason } => {
                StorageError::io("read", &path, std::io::Error::other(reason))
            }
            other => other,
        })
    })
}

/// `user:group` of this host's ids, by name where it has one.
fn owner_name(o: storage::Owner) -> String {
    use nix::unistd::{Gid, Group, Uid, User};
    let user = User::from_uid(Uid::from_raw(o.uid))
        .ok()
        .flatten()
        .map_or_else(|| o.uid.to_string(), |u| u.name);
    let group = Group::from_gid(Gid::from_raw(o.gid))
        .ok()
        .flatten()
        .map_or_else(|| o.gid.to_string(), |g| g.name);
    format!("{user}:{group}")
}

#[cfg(test)]
mod tests {
    use hostshift_shared::digest::Sha256Digest;

    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        let file = kind == Kind::File;
        Entry {
            path: RelPath::new(path).unwrap(),
            kind,
            size: if file { 3 } else { 0 },
            mode: if file { 0o644 } else { 0o755 },
            mtime_ns: 1,
            sha256: file.then(|| Sha256Digest::of(path.as_bytes())),
            owner: None,
        }
    }

    /// `m` as this host's walk file (open; its folder is gone already).
    fn own(m: &Manifest) -> WalkFile {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("tree.manifest");
        m.save(&path).unwrap();
        WalkFile::open(&path).unwrap()
    }

    fn source(files: usize) -> SourceManifest {
        let mut v = vec![entry("d", Kind::Dir)];
        v.extend((0..files).map(|i| entry(&format!("d/f{i:05}"), Kind::File)));
        SourceManifest::Bytes(Manifest::new(v).unwrap().encode().into())
    }

    #[test]
    fn a_session_id_cannot_name_another_path() {
        assert!(check_id("sync-evaluations-12-1a2b").is_ok());
        for bad in ["", "../x", "a/b", ".", "x y", &"a".repeat(65)] {
            assert!(
                matches!(check_id(bad), Err(AgentError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_plan_writes_its_batches_to_the_session_and_lists_at_most_show_paths() {
        let t = tempfile::tempdir().unwrap();
        let src = source(2500);
        let target =
            own(
                &Manifest::new(vec![entry("d", Kind::Dir), entry("d/f00000", Kind::File)]).unwrap(),
            );
        let limits = Limits {
            bytes: u64::MAX,
            files: 1000,
        };
        let p = plan(&src, &target, true, limits, Some(t.path())).unwrap();
        assert_eq!(p.to_send, 2499);
        assert_eq!((p.unchanged_files, p.unchanged_bytes), (1, 3));
        assert_eq!(p.first_paths.len(), SHOW_PATHS);
        assert_eq!(p.first_paths[0], "d/f00001");
        let files: Vec<u64> = p.batches.iter().map(|b| b.files).collect();
        assert_eq!(files, [1000, 1000, 499]);
        assert!(
            p.batches
                .iter()
                .all(|b| b.expected.is_empty() && b.paths.is_empty())
        );
        let last = Manifest::decode(
            &std::fs::read(batch_file(t.path(), 2)).unwrap(),
            Path::new("<batch>"),
        )
        .unwrap();
        assert_eq!(last.entries().len(), 499);
        // Inline (relay): the entries travel in the response instead.
        let p = plan(&src, &target, true, limits, None).unwrap();
        assert_eq!(p.batches[0].paths.len(), 1000);
        assert!(!p.batches[0].expected.is_empty());
    }

    #[test]
    fn the_final_check_counts_each_sent_entry_not_in_place_unless_deferred() {
        let (tree, session) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = tree.path();
        std::fs::create_dir(root.join("d")).unwrap();
        for f in ["a", "b", "c", "d/e"] {
            std::fs::write(root.join(f), f.repeat(10)).unwrap();
        }
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let walked = storage::walk::build_full(root, &cancel).unwrap();
        // As a plan against an empty tree: every entry sent, in batches of two.
        let src = SourceManifest::Bytes(walked.encode().into());
        let limits = Limits {
            bytes: u64::MAX,
            files: 2,
        };
        plan(
            &src,
            &own(&Manifest::default()),
            true,
            limits,
            Some(session.path()),
        )
        .unwrap();
        let none = HashSet::new();
        assert_eq!(landed(session.path(), root, &none).unwrap(), 0);

        // Another size, a file gone, a link pointing elsewhere, a file with only its mtime moved.
        std::fs::write(root.join("a"), "longer content").unwrap();
        std::fs::remove_file(root.join("d/e")).unwrap();
        std::fs::remove_file(root.join("link")).unwrap();
        std::os::unix::fs::symlink("b", root.join("link")).unwrap();
        let c = root.join("c");
        filetime::set_file_mtime(&c, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
        assert_eq!(landed(session.path(), root, &none).unwrap(), 4);
        // A deferred file is not expected in place.
        let deferred: HashSet<Vec<u8>> = [b"d/e".to_vec()].into_iter().collect();
        assert_eq!(landed(session.path(), root, &deferred).unwrap(), 3);
    }

    #[test]
    fn a_kept_plan_serves_the_prepare_step_and_once_the_final_step_unless_it_sent_too_many() {
        let delta = Delta {
            dirs: vec![storage::MetaFix {
                path: RelPath::new("d").unwrap(),
                mode: 0o755,
                mtime_ns: 1,
                owner: None,
            }],
            ..Delta::default()
        };
        remember_plan("kept-small", "t", &delta, 10);
        assert_eq!(planned("kept-small", "other tree", false), None);
        assert_eq!(planned("kept-small", "t", false).as_ref(), Some(&delta));
        assert_eq!(planned("kept-small", "t", true).as_ref(), Some(&delta));
        assert_eq!(planned("kept-small", "t", true), None, "used once");
        // More sent files than the cache remembers as installed: the final step walks (and so
        // refreshes the cache), the prepare step still uses the plan.
        let many = storage::cache::MAX_INSTALLED as u64 + 1;
        remember_plan("kept-big", "t", &delta, many);
        assert!(planned("kept-big", "t", false).is_some());
        assert_eq!(planned("kept-big", "t", true), None);
    }

    #[test]
    fn a_comparison_caps_its_lists_but_counts_everything() {
        let c = compare(&source(1500), &own(&Manifest::default())).unwrap();
        assert_eq!(c.missing_count, 1501);
        assert_eq!(c.missing.len(), SHOW_PATHS);
        assert_eq!((c.source_files, c.source_bytes), (1500, 4500));
        assert_eq!((c.files, c.changed_count, c.extra_count), (0, 0, 0));
    }

    #[test]
    fn a_malformed_manifest_is_refused_before_anything_is_planned() {
        let SourceManifest::Bytes(good) = source(3) else {
            unreachable!()
        };
        let mut bad = good.to_vec();
        let n = bad.len();
        bad[n - 40] ^= 1;
        let err = plan(
            &SourceManifest::Bytes(bad.into()),
            &own(&Manifest::default()),
            true,
            Limits { bytes: 1, files: 1 },
            None,
        )
        .err()
        .expect("refused");
        let msg = err.to_string();
        assert!(
            matches!(err, AgentError::InvalidArgument(_))
                && msg.contains("the old agent sent a malformed storage manifest"),
            "{msg}"
        );
    }
}
