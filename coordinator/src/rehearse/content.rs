//! What the rehearsal's old host holds besides its database: a storage tree of user artifacts
//! and the app's config files — deterministic, so two runs produce the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lab::seed::Scale;

/// Config files of the app: `(name in the agents' configs, path under the host folder)`.
pub const FILES: [(&str, &str); 3] = [
    ("backend-env", "app/backend/.env"),
    ("frontend-env", "app/frontend/.env"),
    ("ecosystem", "app/ecosystem.config.cjs"),
];

/// What was written into the storage tree.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StorageSummary {
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
    /// The user owning sub-folder [`NON_ROOT_DIR`] and everything in it (`nobody`), when the
    /// lab runs as root; `None` otherwise (only root can give files away).
    pub non_root_owner: Option<&'static str>,
}

/// The sub-folder of the storage tree owned by a non-root user, as an app's uploads are: the
/// sync must carry owner and group, and `verify` compares them.
pub const NON_ROOT_DIR: &str = "2024";

/// The user owning [`NON_ROOT_DIR`]; it exists on every Linux host (both lab hosts are this one).
const NON_ROOT_USER: &str = "nobody";

/// The storage tree's root under a host folder.
pub fn storage_dir(host: &Path) -> PathBuf {
    host.join("app/backend/storage/project-evaluations")
}

fn files_for(scale: Scale) -> u64 {
    match scale {
        Scale::Tiny => 60,
        Scale::Small => 600,
        Scale::Medium => 3_000,
        Scale::Large => 10_000,
    }
}

/// Writes the old host's storage tree and config files.
///
/// # Errors
/// I/O errors.
pub fn write_old_host(host: &Path, scale: Scale) -> std::io::Result<StorageSummary> {
    let root = storage_dir(host);
    let mut sum = StorageSummary::default();
    let n = files_for(scale);
    for i in 0..n {
        let dir = root.join(format!("{:04}/{:02}", 2026 - (i % 3), i % 12 + 1));
        std::fs::create_dir_all(&dir)?;
        let (name, body) = if i % 4 == 3 {
            // An incompressible artifact: a pseudo-random "zip".
            let len = 16 * 1024 + (i as usize % 7) * 4096;
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (format!("submission-{i}.zip"), bytes)
        } else {
            let json = format!(
                "{{\"evaluation\":{i},\"project\":{},\"score\":{:.2},\"feedback\":\"{}\"}}\n",
                i % 97,
                (i % 100) as f64 / 10.0,
                "Clear structure, tests pass. ".repeat(1 + (i as usize % 20))
            );
            (format!("evaluation-{i}.json"), json.into_bytes())
        };
        std::fs::File::create(dir.join(name))?.write_all(&body)?;
        sum.files += 1;
        sum.bytes += body.len() as u64;
    }
    sum.non_root_owner = give_away(&root.join(NON_ROOT_DIR))?;
    write(
        host,
        FILES[0].1,
        "# backend\nPORT=3666\nDATABASE_URL=postgres://app@localhost:5432/app\nJWT_SECRET=rehearsal-secret\nCORS_ORIGIN=https://old.app.example\nUSE_POSTGRES=true\n",
    )?;
    write(
        host,
        FILES[1].1,
        "# frontend\nVITE_API_URL=https://old.app.example\n",
    )?;
    write(
        host,
        FILES[2].1,
        "module.exports = {\n  apps: [\n    { name: 'backend', script: 'backend/server.js', env: { PORT: 3666 } },\n    { name: 'frontend', script: 'frontend/server.js', env: { PORT: 4666 } },\n  ],\n};\n",
    )?;
    Ok(sum)
}

/// Gives `dir` and everything in it to [`NON_ROOT_USER`] (and that user's group) when running
/// as root and the user exists; returns the user when it did.
fn give_away(dir: &Path) -> std::io::Result<Option<&'static str>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let Ok(Some(user)) = nix::unistd::User::from_name(NON_ROOT_USER) else {
        return Ok(None);
    };
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        if p.symlink_metadata()?.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(Some(NON_ROOT_USER))
}

/// Creates the new host's (empty) folders.
///
/// # Errors
/// I/O errors.
pub fn prepare_new_host(host: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(storage_dir(host))?;
    for (_, rel) in FILES {
        if let Some(parent) = host.join(rel).parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    Ok(())
}

fn write(host: &Path, rel: &str, text: &str) -> std::io::Result<()> {
    let p = host.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(p, text)
}
