//! The storage trees of the agent config against the system's folders, each other,
//! `backup.dir`, `state_dir` and the agent's own files, resolved as the filesystem would (`..`,
//! symlinks): a sync deletes what its source lacks, so no tree may contain another or anything
//! the agent or the system needs.

use std::path::{Path, PathBuf};

use hostshift_shared::tomlpos::{Located, Problem};

use super::types::{AgentConfig, StorageConfig};

impl AgentConfig {
    /// Storage trees against the system's folders, each other, `backup.dir`, `state_dir` and the
    /// agent's own files, all resolved as the filesystem would (`..`, symlinks): see
    /// [`crate::overlap`] for what each refusal protects.
    pub(super) fn validate_overlaps(&self, src: &Located, config_file: &Path) -> Vec<Problem> {
        use crate::overlap::{is_system_root, overlaps, resolve};
        let mut out = Vec::new();
        let trees: Vec<(usize, &StorageConfig, PathBuf)> = self
            .storage
            .iter()
            .enumerate()
            .filter(|(_, s)| s.path.is_absolute())
            .map(|(i, s)| (i, s, resolve(&s.path)))
            .collect();
        for (i, s, real) in &trees {
            let key = format!("storage.{i}.path");
            if is_system_root(real) {
                out.push(src.problem(
                    &key,
                    format!(
                        "{} is {} — the filesystem root or a system folder cannot be a storage tree (a sync deletes what the source lacks): name the app's own folder, e.g. /srv/app/storage",
                        s.path.display(),
                        real.display()
                    ),
                ));
            }
            for (j, other, other_real) in &trees {
                if j < i && overlaps(real, other_real) {
                    out.push(src.problem(
                        &key,
                        format!(
                            "{} ({}) overlaps storage tree {:?} ({}): a sync of one would delete the other's files; give each tree its own folder, neither inside the other",
                            s.path.display(),
                            real.display(),
                            other.name,
                            other_real.display()
                        ),
                    ));
                }
            }
        }
        let mut own: Vec<(&str, PathBuf)> = vec![
            ("backup.dir", self.backup.dir.clone()),
            ("state_dir", self.state_dir.clone()),
            ("tls.cert", self.tls.cert.clone()),
            ("tls.key", self.tls.key.clone()),
            ("tls.ca", self.tls.ca.clone()),
        ];
        if let Ok(abs) = std::path::absolute(config_file) {
            own.push(("the config file", abs));
        }
        if let Some(n) = &self.nginx {
            own.push(("nginx.state_dir", n.state_dir.clone()));
        }
        for d in &self.databases {
            own.extend(
                d.password_file
                    .iter()
                    .map(|p| ("a password_file", p.clone())),
            );
            own.extend(d.ca_file.iter().map(|p| ("a ca_file", p.clone())));
        }
        for (what, path) in own.iter().filter(|(_, p)| p.is_absolute()) {
            let real = resolve(path);
            for (i, s, tree) in &trees {
                if overlaps(&real, tree) {
                    out.push(src.problem(
                        &format!("storage.{i}.path"),
                        format!(
                            "storage tree {:?} ({}) overlaps {what} ({}): a sync or restore of the tree would delete or overwrite it; keep the agent's own files and folders outside every storage tree",
                            s.name,
                            tree.display(),
                            real.display()
                        ),
                    ));
                }
            }
        }
        out
    }
}
