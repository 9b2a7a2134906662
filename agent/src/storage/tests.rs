//! End-to-end tests of a tree sync on real directories: manifests → delta → pack through a real
//! bounded channel → unpack → commit, and what must never happen on the way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::testutil::{dir_mtime, link, manifest, put, raw_end, raw_entry, snapshot};
use super::*;

struct Synced {
    delta: Delta,
    packed: PackStats,
    committed: CommitStats,
    source: Manifest,
}

/// One sync of `src` onto `dst`, as the service does it (minus the network).
fn sync(src: &Path, dst: &Path, cache: Option<&Manifest>, delete_extraneous: bool) -> Synced {
    let cancel = CancellationToken::new();
    let source = build(src, cache, &cancel).unwrap();
    let target = build(dst, None, &cancel).unwrap();
    let delta = diff(&source, &target, delete_extraneous);
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (src_root, send) = (src.to_path_buf(), delta.send.clone());
    let producer = std::thread::spawn(move || {
        pack(
            &src_root,
            &send,
            ChannelWriter::new(tx),
            &CancellationToken::new(),
        )
    });
    let staged = unpack(
        dst,
        ".hostshift-staging-test",
        ChannelReader::new(rx),
        &delta.send,
        &cancel,
    )
    .unwrap();
    let packed = producer.join().unwrap().unwrap();
    let committed = commit(dst, staged, &delta.dirs, &delta.meta, &delta.delete).unwrap();
    Synced {
        delta,
        packed,
        committed,
        source,
    }
}

/// Bytes that do not compress or repeat (a cheap LCG).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect()
}

fn source_tree(root: &Path) -> String {
    put(
        root,
        "projects/p1/report.pdf",
        &noise(3 * CHUNK_SIZE + 17, 1),
        0o640,
        1_700_000_000,
        111_222_333,
    );
    put(root, "projects/p1/empty.txt", b"", 0o444, 1_700_000_001, 0);
    put(
        root,
        "projects/p1/run.sh",
        b"#!/bin/sh\necho hi\n",
        0o755,
        1_700_000_002,
        5,
    );
    let long_dir = "very-long-directory-name-".repeat(6);
    let long_file = format!("deep/{long_dir}/evaluation-with-a-long-name.json");
    put(root, &long_file, b"{\"score\": 9}", 0o600, 1_700_000_003, 0);
    std::fs::write(root.join(OsStr::from_bytes(b"caf\xe9.bin")), noise(1000, 2)).unwrap();
    link(root, "latest", "projects/p1/report.pdf");
    link(root, "projects/p1/up", "../../caf\u{e9}.bin");
    link(
        root,
        &format!("deep/{long_dir}/back"),
        &format!("../{long_dir}/evaluation-with-a-long-name.json"),
    );
    std::fs::create_dir(root.join("empty-dir")).unwrap();
    std::fs::set_permissions(
        root.join("empty-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for (d, t) in [
        ("projects/p1", 1_690_000_001),
        ("projects", 1_690_000_002),
        ("deep", 1_690_000_003),
    ] {
        dir_mtime(root, d, t);
    }
    long_file
}

#[test]
fn round_trip_preserves_bytes_modes_mtimes_and_symlinks_then_sends_only_changes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let long_file = source_tree(&src);

    let first = sync(&src, &dst, None, true);
    assert_eq!(manifest(&dst), manifest(&src));
    assert_eq!(
        std::fs::read(dst.join(&long_file)).unwrap(),
        b"{\"score\": 9}"
    );
    assert_eq!(
        std::fs::read(dst.join("projects/p1/report.pdf")).unwrap(),
        noise(3 * CHUNK_SIZE + 17, 1)
    );
    assert_eq!(
        std::fs::read_link(dst.join("latest")).unwrap(),
        Path::new("projects/p1/report.pdf")
    );
    assert_eq!((first.packed.files, first.packed.symlinks), (5, 3));
    assert_eq!(first.packed.content_bytes, first.delta.bytes_to_send);
    assert_eq!(first.committed.installed, 8);
    assert!(
        std::fs::read_dir(&dst).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .as_bytes()
            .starts_with(b".hostshift"))
    );

    // Second sync, with the first manifest as cache: only what changed travels.
    put(
        &src,
        "projects/p1/run.sh",
        b"#!/bin/sh\necho bye\n",
        0o755,
        1_700_000_100,
        0,
    );
    std::fs::set_permissions(
        src.join("projects/p1/report.pdf"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(src.join("projects/p1/empty.txt")).unwrap();
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    put(&src, "empty-dir", b"now a file", 0o644, 1_700_000_101, 0);
    put(&src, "projects/p2/new.json", b"{}", 0o644, 1_700_000_102, 0);
    dir_mtime(&src, "projects/p1", 1_690_000_011);
    put(&dst, "stray.tmp", b"only on the target", 0o644, 0, 0);

    let second = sync(&src, &dst, Some(&first.source), true);
    assert_eq!(manifest(&dst), manifest(&src));
    let sent: Vec<String> = second
        .delta
        .send
        .iter()
        .map(|e| e.path.to_string())
        .collect();
    assert_eq!(
        sent,
        ["empty-dir", "projects/p1/run.sh", "projects/p2/new.json"]
    );
    assert_eq!(second.packed.content_bytes, 10 + 19 + 2);
    assert_eq!(second.committed.meta_fixed, 1);
    assert_eq!(second.committed.deleted, 3);

    let third = sync(&src, &dst, Some(&second.source), true);
    assert!(third.delta.is_empty(), "{:?}", third.delta);
}

/// A file the receiver starts writing back in several pieces (`durable::start_writeback` every
/// `WRITEBACK_EVERY` bytes, then the rest) lands byte for byte.
#[test]
fn a_file_written_back_in_pieces_as_it_arrives_lands_byte_for_byte() {
    let t = tempfile::tempdir().expect("a temporary directory");
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&dst).expect("the target tree");
    let big = usize::try_from(2 * crate::storage::durable::WRITEBACK_EVERY)
        .expect("16 MiB fits a usize")
        + 5;
    let content = noise(big, 7);
    put(&src, "big.zip", &content, 0o644, 1_700_000_000, 0);
    let first = sync(&src, &dst, None, true);
    assert_eq!(first.packed.files, 1);
    assert!(
        std::fs::read(dst.join("big.zip")).expect("the copied file") == content,
        "content differs"
    );
    assert_eq!(manifest(&dst), manifest(&src));
}

#[test]
fn deletes_remove_only_what_the_delta_says() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    put(&src, "a/keep.txt", b"keep", 0o644, 1_000, 0);
    put(&dst, "a/keep.txt", b"keep", 0o644, 1_000, 0);
    put(&dst, "a/extra.txt", b"extra", 0o644, 1_000, 0);
    put(&dst, "old/deep/f", b"f", 0o644, 1_000, 0);
    put(&t.path().join("outside"), "marker", b"m", 0o644, 1_000, 0);
    dir_mtime(&src, "a", 5_000);
    let outside_before = snapshot(t.path(), &dst);

    let kept = sync(&src, &dst, None, false);
    assert_eq!(kept.committed.deleted, 0);
    assert!(dst.join("a/extra.txt").exists() && dst.join("old/deep/f").exists());

    let d = sync(&src, &dst, None, true);
    let deleted: Vec<String> = d.delta.delete.iter().map(|e| e.path.to_string()).collect();
    assert_eq!(deleted, ["old/deep/f", "old/deep", "old", "a/extra.txt"]);
    assert_eq!(d.committed.deleted, 4);
    assert_eq!(manifest(&dst), manifest(&src));
    assert_eq!(snapshot(t.path(), &dst), outside_before);
}

#[test]
fn a_tampered_byte_is_data_loss_and_the_target_is_left_as_it_was() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    put(&src, "f.bin", &noise(200_000, 3), 0o644, 2_000, 0);
    put(&src, "g.txt", b"second file", 0o644, 2_000, 0);
    put(&dst, "f.bin", b"old version", 0o644, 1_000, 0);
    let cancel = CancellationToken::new();
    let before = manifest(&dst);
    let delta = diff(&manifest(&src), &before, true);

    let mut stream = Vec::new();
    pack(&src, &delta.send, &mut stream, &cancel).unwrap();
    let mut tampered = stream.clone();
    tampered[512 + 100_000] ^= 0x01;
    let err = unpack(
        &dst,
        ".hostshift-staging-1",
        &tampered[..],
        &delta.send,
        &cancel,
    )
    .unwrap_err();
    assert!(
        matches!(&err, StorageError::DigestMismatch { path, .. } if path == Path::new("f.bin")),
        "{err}"
    );
    assert!(matches!(
        crate::error::AgentError::from(err),
        crate::error::AgentError::DataLoss(_)
    ));
    assert_eq!(manifest(&dst), before);
    assert_eq!(
        std::fs::read_dir(&dst).unwrap().count(),
        1,
        "staging directory left behind"
    );

    // A clean stream staged, then abandoned (say the trailer did not verify): nothing changes.
    let staged = unpack(
        &dst,
        ".hostshift-staging-2",
        &stream[..],
        &delta.send,
        &cancel,
    )
    .unwrap();
    assert_eq!((staged.len(), staged.bytes()), (2, 200_011));
    abort(&dst, staged).unwrap();
    assert_eq!(manifest(&dst), before);
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 1);
}

#[test]
fn a_symlinked_directory_in_the_target_cannot_redirect_writes_or_deletes_outside() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst, outside) = (
        t.path().join("src"),
        t.path().join("dst"),
        t.path().join("outside"),
    );
    put(&src, "uploads/x", b"payload", 0o644, 1_000, 0);
    put(&outside, "marker", b"do not touch", 0o644, 1_000, 0);
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::symlink("../outside", dst.join("uploads")).unwrap();
    let outside_before = snapshot(&outside, Path::new(""));
    let cancel = CancellationToken::new();
    let source = manifest(&src);
    let send: Vec<Entry> = source
        .entries()
        .iter()
        .filter(|e| e.is_file())
        .cloned()
        .collect();

    // A commit that would write through the link (e.g. a delta made before the link appeared).
    let mut stream = Vec::new();
    pack(&src, &send, &mut stream, &cancel).unwrap();
    let staged = unpack(&dst, ".hostshift-staging-1", &stream[..], &send, &cancel).unwrap();
    let err = commit(&dst, staged, &[], &[], &[]).unwrap_err();
    assert!(matches!(err, StorageError::SymlinkInPath { .. }), "{err}");
    // ... or delete through it.
    let staged = unpack(&dst, ".hostshift-staging-2", &[0u8; 1024][..], &[], &cancel).unwrap();
    let marker = Entry {
        path: RelPath::new("uploads/marker").unwrap(),
        ..send[0].clone()
    };
    let err = commit(&dst, staged, &[], &[], &[marker]).unwrap_err();
    assert!(matches!(err, StorageError::SymlinkInPath { .. }), "{err}");
    assert_eq!(snapshot(&outside, Path::new("")), outside_before);

    // A normal sync stops before writing anything: the target's manifest refuses the link.
    let err = build_full(&dst, &cancel).unwrap_err();
    assert!(
        matches!(&err, StorageError::NotPortable { path, .. } if path.ends_with("uploads")),
        "{err}"
    );

    // A link that stays inside the tree is replaced by the directory (the link is removed, not
    // what it points to).
    std::fs::remove_file(dst.join("uploads")).unwrap();
    put(&dst, "elsewhere/y", b"y", 0o644, 1_000, 0);
    std::os::unix::fs::symlink("elsewhere", dst.join("uploads")).unwrap();
    let synced = sync(&src, &dst, None, false);
    let deleted: Vec<&RelPath> = synced.delta.delete.iter().map(|e| &e.path).collect();
    assert_eq!(deleted, [&RelPath::new("uploads").unwrap()]);
    assert_eq!(std::fs::read(dst.join("elsewhere/y")).unwrap(), b"y");
    assert_eq!(std::fs::read(dst.join("uploads/x")).unwrap(), b"payload");
    assert_eq!(snapshot(&outside, Path::new("")), outside_before);
}

#[test]
fn stale_staging_directories_are_removed_and_nothing_else() {
    let t = tempfile::tempdir().unwrap();
    put(t.path(), ".hostshift-staging-old/0", b"half", 0o600, 0, 0);
    put(t.path(), "data/kept", b"kept", 0o644, 0, 0);
    let removed = remove_stale_staging(t.path()).unwrap();
    assert_eq!(removed, [t.path().join(".hostshift-staging-old")]);
    assert!(t.path().join("data/kept").exists());
}

#[test]
fn a_cancelled_pack_or_unpack_stops_with_cancelled_and_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    put(t.path(), "src/f", b"x", 0o644, 0, 0);
    std::fs::create_dir(t.path().join("dst")).unwrap();
    let m = manifest(&t.path().join("src"));
    let mut stream = Vec::new();
    pack(
        &t.path().join("src"),
        m.entries(),
        &mut stream,
        &CancellationToken::new(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let packed = pack(&t.path().join("src"), m.entries(), Vec::new(), &cancel);
    assert!(matches!(packed, Err(StorageError::Cancelled { .. })));
    let unpacked = unpack(
        &t.path().join("dst"),
        ".hostshift-staging-c",
        &stream[..],
        m.entries(),
        &cancel,
    );
    assert!(matches!(unpacked, Err(StorageError::Cancelled { .. })));
    assert_eq!(std::fs::read_dir(t.path().join("dst")).unwrap().count(), 0);
}

#[test]
fn a_delta_sent_in_batches_lands_with_prepare_commits_and_finalize() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    put(&src, "a", b"a file where a directory was", 0o644, 1_000, 0);
    for i in 0..5 {
        put(
            &src,
            &format!("d/e/{i}.bin"),
            &noise(10_000, i),
            0o600,
            2_000,
            0,
        );
    }
    dir_mtime(&src, "d/e", 3_000);
    dir_mtime(&src, "d", 3_001);
    put(&dst, "a/old", b"old", 0o644, 1_000, 0);
    put(&dst, "gone", b"extraneous", 0o644, 1_000, 0);
    let cancel = CancellationToken::new();
    let source = manifest(&src);
    let delta = diff(&source, &manifest(&dst), true);

    let prepared = prepare(&dst, &delta.dirs, &delta.delete).unwrap();
    assert_eq!(prepared.deleted, 3);
    for (n, batch) in delta.send.chunks(2).enumerate() {
        // Each batch travels as its own list of entries (no directories in it).
        let listed = Manifest::decode(
            &Manifest::new(batch.to_vec()).unwrap().encode(),
            Path::new("b"),
        )
        .unwrap();
        let mut stream = Vec::new();
        pack(&src, listed.entries(), &mut stream, &cancel).unwrap();
        let staging = staging_name(&format!("batch-{n}")).unwrap();
        let staged = unpack(&dst, &staging, &stream[..], listed.entries(), &cancel).unwrap();
        commit(&dst, staged, &[], &[], &[]).unwrap();
    }
    let done = finalize(&dst, &delta.dirs, &delta.meta, &delta.delete).unwrap();
    // Deleting again cannot remove the file that replaced the directory `a`.
    assert_eq!(done.deleted, 0, "prepare already deleted everything");
    assert_eq!(done.kept, [RelPath::new("a").unwrap()]);
    assert_eq!(manifest(&dst), source);
}

#[test]
fn finalize_flushes_only_when_it_changed_the_tree_and_commits_report_installed_stamps() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    put(&src, "d/a", b"alpha", 0o644, 1_000, 0);
    dir_mtime(&src, "d", 2_000);
    std::fs::create_dir_all(&dst).unwrap();
    let first = sync(&src, &dst, None, true);
    let (path, stamp) = &first.committed.stamps[0];
    assert_eq!(path, &RelPath::new("d/a").unwrap());
    let meta = std::fs::symlink_metadata(dst.join("d/a")).unwrap();
    assert!(stamp.same_file(&meta), "the stamp is the installed copy's");

    // The trees match: finalize has nothing to do, and flushes nothing.
    let delta = diff(&manifest(&src), &manifest(&dst), true);
    assert!(delta.is_empty(), "{delta:?}");
    let idle = finalize(&dst, &delta.dirs, &delta.meta, &delta.delete).unwrap();
    assert!(!idle.flushed, "{idle:?}");

    // A deletion (and the mtime of its directory) must survive a crash: flushed.
    std::fs::remove_file(src.join("d/a")).unwrap();
    dir_mtime(&src, "d", 2_000);
    let delta = diff(&manifest(&src), &manifest(&dst), true);
    let done = finalize(&dst, &delta.dirs, &delta.meta, &delta.delete).unwrap();
    assert_eq!((done.deleted, done.dirs_fixed, done.flushed), (1, 1, true));
    assert_eq!(manifest(&dst), manifest(&src));
}

#[test]
fn files_that_change_or_vanish_are_deferred_and_the_rest_of_the_batch_commits() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    for name in ["a", "b-rewritten", "c-removed", "d-grown", "e"] {
        put(&src, name, name.as_bytes(), 0o644, 1_000, 0);
    }
    let m = manifest(&src);
    // Same size and mtime: only the digest of what is read can tell (the entry goes out whole,
    // then its marker); the others are seen before anything of them is sent.
    put(&src, "b-rewritten", b"B-REWRITTEN", 0o644, 1_000, 0);
    std::fs::remove_file(src.join("c-removed")).unwrap();
    put(&src, "d-grown", b"d-grown and more", 0o644, 1_000, 0);
    let cancel = CancellationToken::new();
    let mut tar = Vec::new();
    let packed = pack_deferring(&src, m.entries(), &mut tar, &cancel, None).unwrap();
    let deferred: Vec<&str> = packed
        .deferred
        .iter()
        .map(|d| d.path.as_path().to_str().unwrap())
        .collect();
    assert_eq!(deferred, ["b-rewritten", "c-removed", "d-grown"]);
    assert_eq!(packed.files, 2);
    let staged = unpack(&dst, ".hostshift-staging-d", &tar[..], m.entries(), &cancel).unwrap();
    let named: Vec<(&str, &str)> = staged
        .deferred()
        .iter()
        .map(|d| (d.path.as_path().to_str().unwrap(), d.reason.as_str()))
        .collect();
    assert_eq!(named.len(), 3, "{named:?}");
    assert!(named[0].1.contains("digest"), "{named:?}");
    assert!(named[1].1.contains("removed"), "{named:?}");
    assert_eq!(staged.len(), 2);
    commit(&dst, staged, &[], &[], &[]).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["a", "e"], "only what was read whole and unchanged");
    assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"a");
}

#[test]
fn a_digest_mismatch_is_forgiven_only_by_the_marker_of_that_very_file() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    put(&src, "a", b"alpha", 0o644, 1_000, 0);
    put(&src, "b", b"bravo", 0o644, 1_000, 0);
    let m = manifest(&src);
    let cancel = CancellationToken::new();
    // `a` with the wrong content, followed by a marker naming `b`: refused.
    let mut tar = Vec::new();
    raw_entry(&mut tar, b"a", tar::EntryType::Regular, b"ALPHA", b"");
    raw_entry(
        &mut tar,
        b".hostshift-staging-deferred/b",
        tar::EntryType::Regular,
        b"why",
        b"",
    );
    raw_end(&mut tar);
    let err = unpack(&dst, ".hostshift-staging-x", &tar[..], m.entries(), &cancel).unwrap_err();
    assert!(
        matches!(&err, StorageError::DigestMismatch { path, .. } if path.ends_with("a")),
        "{err}"
    );
    // A marker for something not asked for, or for a file staged earlier: refused.
    for (entries, marker) in [
        (&b"a"[..], &b".hostshift-staging-deferred/zzz"[..]),
        (&b"ab"[..], &b".hostshift-staging-deferred/a"[..]),
    ] {
        let mut tar = Vec::new();
        for name in entries {
            let content: &[u8] = if *name == b'a' { b"alpha" } else { b"bravo" };
            raw_entry(&mut tar, &[*name], tar::EntryType::Regular, content, b"");
        }
        raw_entry(&mut tar, marker, tar::EntryType::Regular, b"", b"");
        raw_end(&mut tar);
        let err = unpack(&dst, ".hostshift-staging-y", &tar[..], m.entries(), &cancel).unwrap_err();
        assert!(matches!(&err, StorageError::Refused { .. }), "{err}");
    }
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0, "nothing left");
}

#[test]
fn every_byte_of_a_stream_is_proved_by_its_file_digest_or_by_the_envelope() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    let long = format!("{}/long-named", "n".repeat(120));
    put(&src, "a", b"alpha", 0o644, 1_000, 0);
    put(&src, &long, &noise(700, 7), 0o600, 2_000, 5);
    put(&src, "empty", b"", 0o644, 1_000, 0);
    put(&src, "removed", b"gone", 0o644, 1_000, 0);
    link(&src, "l", "a");
    let m = manifest(&src);
    std::fs::remove_file(src.join("removed")).unwrap();
    let files: Vec<Entry> = m
        .entries()
        .iter()
        .filter(|e| e.kind != Kind::Dir)
        .cloned()
        .collect();
    let cancel = CancellationToken::new();
    let mut tar = Vec::new();
    // Headers, a GNU long name, padding, a symlink, an empty file, a deferral marker.
    let packed = pack_deferring(&src, &files, &mut tar, &cancel, None).unwrap();
    assert_eq!(packed.deferred.len(), 1);
    let sent = packed.envelope.expect("a finished stream has its envelope");
    let staged = unpack(&dst, ".hostshift-staging-ok", &tar[..], &files, &cancel).unwrap();
    assert_eq!(
        staged.envelope(),
        Some(sent),
        "both sides hash the same bytes"
    );
    abort(&dst, staged).unwrap();

    // Flip each byte in turn: unpack refuses (a file's digest, a size, the tar checksum...) or
    // the envelope it computed differs from the sender's, which a sync compares. Never both
    // accepted and equal.
    let mut caught_by_envelope_only = 0;
    for i in 0..tar.len() {
        let mut bad = tar.clone();
        bad[i] ^= 0x04;
        let name = format!(".hostshift-staging-{i}");
        if let Ok(staged) = unpack(&dst, &name, &bad[..], &files, &cancel) {
            let got = staged.envelope();
            abort(&dst, staged).unwrap();
            assert_ne!(
                got,
                Some(sent),
                "byte {i} of {} flipped unnoticed",
                tar.len()
            );
            caught_by_envelope_only += 1;
        }
    }
    // Padding, mode and mtime fields, the marker's reason: only the envelope sees those.
    assert!(caught_by_envelope_only > 0);
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0, "nothing left");
}
