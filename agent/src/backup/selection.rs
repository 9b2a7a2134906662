//! What a backup covers ([`Selection`], resolved against the config) and what it reports while
//! it runs ([`Progress`]). Shared by the writer ([`create`](super::create)) and the run around it
//! ([`flow`](super::flow)), so neither imports the other for them.

use std::path::Path;

use super::ArtifactKind;
use crate::config::{AgentConfig, DatabaseConfig, FileConfig, StorageConfig};
use crate::error::AgentError;

/// What to back up, resolved against the config (so every name is known before anything runs).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Databases.
    pub databases: Vec<DatabaseConfig>,
    /// Storage trees.
    pub storage: Vec<StorageConfig>,
    /// Config files.
    pub files: Vec<FileConfig>,
}

impl Selection {
    /// Everything the config declares.
    pub fn everything(c: &AgentConfig) -> Self {
        Self {
            databases: c.databases.clone(),
            storage: c.storage.clone(),
            files: c.files.clone(),
        }
    }

    /// The named things.
    ///
    /// # Errors
    /// `NotDeclared` for a name the config does not declare.
    pub fn named(
        c: &AgentConfig,
        config_path: &Path,
        databases: &[String],
        storage: &[String],
        files: &[String],
    ) -> Result<Self, AgentError> {
        fn pick<T: Clone>(
            all: &[T],
            names: &[String],
            name_of: fn(&T) -> &str,
            what: &'static str,
            config: &Path,
        ) -> Result<Vec<T>, AgentError> {
            names
                .iter()
                .map(|n| {
                    all.iter()
                        .find(|x| name_of(x) == n)
                        .cloned()
                        .ok_or_else(|| AgentError::NotDeclared {
                            what,
                            name: n.clone(),
                            config: config.display().to_string(),
                        })
                })
                .collect()
        }
        Ok(Self {
            databases: pick(
                &c.databases,
                databases,
                |d| &d.name,
                "database",
                config_path,
            )?,
            storage: pick(
                &c.storage,
                storage,
                |s| &s.name,
                "storage tree",
                config_path,
            )?,
            files: pick(&c.files, files, |f| &f.name, "file", config_path)?,
        })
    }

    /// Nothing selected.
    pub fn is_empty(&self) -> bool {
        self.databases.is_empty() && self.storage.is_empty() && self.files.is_empty()
    }
}

/// Progress of a backup.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Work on an artifact started.
    Started(ArtifactKind, String),
    /// An artifact is written: its size.
    Done(ArtifactKind, String, u64),
}
