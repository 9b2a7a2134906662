//! The app's uploads during a sync: a background thread that keeps creating, overwriting and
//! deleting files in the OLD storage tree, in several folders, the way users of an app do, and
//! remembers every version it wrote.
//!
//! Each version's content is self-describing: a first line `upload <path> v<n> <len>` followed
//! by bytes derived from that line, so [`Uploader::check_copy`] can tell whether a copied file is
//! one consistent state the old host held — a whole version, or a prefix of one (an in-place
//! rewrite truncates first, then writes: a reader at that moment sees a prefix) — and never a
//! mix of two versions (a torn read).
//!
//! Overwrites go to the most recent uploads (users re-upload what they just sent), in place
//! (`truncate` + write, as an app saving over a file does), so a sync that reads them is likely
//! to see them change.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Pause between operations: about 20 a second (at least the 10 the issue measured with).
const PACE: Duration = Duration::from_millis(50);
/// It deletes (its oldest upload, every fourth operation) only while it holds more files than
/// this: a test that needs deletes during its work waits for `KEEPS + 2` files first.
pub const KEEPS: usize = 12;
/// Folders uploads go to (relative to the tree).
pub const FOLDERS: [&str; 3] = ["uploads/avatars", "uploads/reports", "uploads/2026/12"];

/// What the uploader did.
#[derive(Debug, Default, Clone)]
pub struct UploadStats {
    /// Files created.
    pub created: u64,
    /// Files overwritten in place.
    pub overwritten: u64,
    /// Files deleted.
    pub deleted: u64,
    /// Operations per second over its run.
    pub ops_per_sec: f64,
}

/// A running uploader; [`Uploader::stop`] ends it.
pub struct Uploader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<UploadStats>>,
    /// Every version written, per path relative to the tree.
    versions: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
}

/// The bytes of version `n` of `rel`.
pub fn content(rel: &str, n: u64) -> Vec<u8> {
    // 16 KiB to ~400 KiB: big enough that reading one takes a while, small enough to stay fast.
    let len = 16 * 1024 + (n * 7919 % 25) as usize * 16 * 1024;
    let head = format!("upload {rel} v{n} {len}\n");
    let mut out = head.clone().into_bytes();
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ rel.len() as u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Uploader {
    /// Starts uploading into `root` (the old host's tree).
    pub fn start(root: &Path) -> Uploader {
        let stop = Arc::new(AtomicBool::new(false));
        let versions: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
        let (root, flag, seen) = (root.to_path_buf(), stop.clone(), versions.clone());
        for f in FOLDERS {
            std::fs::create_dir_all(root.join(f)).expect("upload folder");
        }
        let thread = std::thread::spawn(move || run(&root, &flag, &seen));
        Uploader {
            stop,
            thread: Some(thread),
            versions,
        }
    }

    /// Stops it and says what it did.
    pub fn stop(&mut self) -> UploadStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().expect("uploader thread"))
            .unwrap_or_default()
    }

    /// Paths it ever wrote (relative to the tree).
    pub fn paths(&self) -> Vec<String> {
        self.versions
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect()
    }

    /// `None` when `bytes`, found at `rel` on the new host, is a state the old host held: a
    /// version the uploader wrote there, or a prefix of one (empty included). Otherwise why not.
    pub fn check_copy(&self, rel: &str, bytes: &[u8]) -> Option<String> {
        let versions = self.versions.lock().expect("lock");
        let Some(written) = versions.get(rel) else {
            return Some(format!("{rel}: the uploader never wrote it"));
        };
        if bytes.is_empty() {
            return None;
        }
        let matching = written.iter().any(|&n| {
            let full = content(rel, n);
            full.starts_with(bytes)
        });
        if matching {
            None
        } else {
            let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            Some(format!(
                "{rel}: {} bytes starting {head:?} are no version (nor a prefix of one) the old host held",
                bytes.len()
            ))
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    root: &Path,
    stop: &AtomicBool,
    versions: &Mutex<BTreeMap<String, Vec<u64>>>,
) -> UploadStats {
    let started = Instant::now();
    let mut stats = UploadStats::default();
    let mut live: VecDeque<String> = VecDeque::new();
    let mut n: u64 = 0;
    let write = |rel: &str, n: u64| {
        versions
            .lock()
            .expect("lock")
            .entry(rel.to_string())
            .or_default()
            .push(n);
        // In place: truncate, then write (what an app saving over a file does).
        std::fs::write(root.join(rel), content(rel, n)).expect("upload write");
    };
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        match n % 4 {
            // Two creations for each overwrite and deletion, so the tree keeps growing.
            0 | 1 => {
                let rel = format!("{}/up-{n}.bin", FOLDERS[(n % 3) as usize]);
                write(&rel, n);
                live.push_back(rel);
                stats.created += 1;
            }
            2 => {
                let recent = live.len().saturating_sub(1 + (n as usize / 4) % 3);
                if let Some(rel) = live.get(recent).cloned() {
                    write(&rel, n);
                    stats.overwritten += 1;
                }
            }
            _ => {
                if live.len() > KEEPS
                    && let Some(rel) = live.pop_front()
                {
                    std::fs::remove_file(root.join(&rel)).expect("upload delete");
                    stats.deleted += 1;
                }
            }
        }
        std::thread::sleep(PACE);
    }
    let ops = (stats.created + stats.overwritten + stats.deleted) as f64;
    stats.ops_per_sec = ops / started.elapsed().as_secs_f64().max(0.001);
    stats
}

/// Files under `root` (relative paths) in the upload folders.
pub fn uploaded_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for f in FOLDERS {
        let Ok(list) = std::fs::read_dir(root.join(f)) else {
            continue;
        };
        for e in list.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            out.push((format!("{f}/{name}"), e.path()));
        }
    }
    out.sort();
    out
}
