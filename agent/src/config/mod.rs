//! The agent's config file (`/etc/hostshift/agent.toml`): *what* this host has and *what* the
//! agent may do with it. Flags and environment only say *how* to run (which file, log format).
//!
//! Everything an agent touches is named here: databases, storage roots, config files, PM2 apps,
//! the nginx site, hooks. Requests refer to these by **name**, never by path or command, so a
//! caller can only reach what the host's owner declared. Destructive operations need an entry in
//! `[allow]`; the default allows nothing. `docs/agent-config.md` is the reference, and
//! `systemd/agent.example.toml` is parsed by a unit test so the example cannot rot.
//!
//! The folder: `types` and `policy` hold the file's shape (every field with its doc, as the
//! reference in `docs/agent-config.md` shows it); `validate` (with the small `checks`) checks what serde cannot (names,
//! references, absolute paths, users, TLS files, secret file modes); `overlaps` keeps storage
//! trees away from system folders, each other and the agent's own files. [`AgentConfig::load`]
//! runs them all and returns every problem, each naming the file, line and key.

mod checks;
mod overlaps;
mod policy;
mod types;
mod validate;

use std::path::Path;

use hostshift_shared::tomlpos::{Located, Problems};

pub use checks::{OpenSecretFile, private_file_mode};
pub use policy::MAX_KEEP_DAYS;
pub use policy::{AllowConfig, BackupConfig, BackupS3Config, LimitsConfig, ToolsConfig};
pub use types::{
    AgentConfig, DatabaseConfig, FileConfig, HookConfig, NginxConfig, Pm2Config, StorageConfig,
    SyncRole, TlsConfig,
};

/// Default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/hostshift/agent.toml";

impl AgentConfig {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// Every problem found, each naming the file, line and key.
    pub fn load(path: &Path) -> Result<Self, Problems> {
        let located = Located::read(path)?;
        let config: AgentConfig = located.parse()?;
        let mut problems = config.validate(&located);
        problems.extend(config.validate_overlaps(&located, path));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(dir: &Path) -> hostshift_shared::pki::PkiFiles {
        hostshift_shared::pki::init(&hostshift_shared::pki::PkiRequest {
            dir: dir.to_path_buf(),
            agents: vec![hostshift_shared::pki::AgentSpec::parse("old=127.0.0.2").expect("spec")],
            coordinator_name: "coordinator".into(),
            days: 1,
            force: false,
        })
        .expect("certs")
    }

    #[test]
    fn sync_role_either_is_an_explicit_opt_in_that_receives() {
        let parse = |v: &str| serde_json::from_str::<SyncRole>(&format!("\"{v}\""));
        assert_eq!(parse("either").expect("either"), SyncRole::Either);
        assert!(SyncRole::Either.receives() && SyncRole::Target.receives());
        assert!(!SyncRole::Source.receives() && !SyncRole::default().receives());
        assert!(parse("both").is_err(), "only the documented words");
    }

    /// The shipped example must parse and validate (with its TLS paths pointed at real files).
    #[test]
    fn example_config_parses_and_validates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = certs(tmp.path());
        let example = include_str!("../../../systemd/agent.example.toml")
            .replace(
                "/etc/hostshift/tls/agent.crt",
                &pki.agents[0].1.display().to_string(),
            )
            .replace(
                "/etc/hostshift/tls/agent.key",
                &pki.agents[0].2.display().to_string(),
            )
            .replace(
                "/etc/hostshift/tls/ca.crt",
                &pki.ca_cert.display().to_string(),
            )
            // The example names the `app` user; it need not exist on the machine running tests.
            .replace("user = \"app\"", "user = \"root\"");
        let path = tmp.path().join("agent.toml");
        std::fs::write(&path, example).expect("write");
        let c = AgentConfig::load(&path).unwrap_or_else(|e| panic!("example is invalid:\n{e}"));
        assert_eq!(c.role, "old");
        assert_eq!(c.sync_role, SyncRole::Source, "the example is an old host");
        assert!(
            c.allow.restore_databases.is_empty() && c.allow.freeze_databases.is_empty(),
            "example must allow nothing destructive"
        );
        assert!(!c.hooks.is_empty() && !c.databases.is_empty() && !c.storage.is_empty());
    }

    #[test]
    fn validation_names_file_line_and_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = certs(tmp.path());
        let src = format!(
            "listen = \"127.0.0.1:0\"\nrole = \"old\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n\n[[storage]]\nname = \"s\"\npath = \"relative/path\"\n\n[allow]\nrestore_databases = [\"nope\"]\nfreeze_databases = [\"gone\"]\n",
            pki.agents[0].1, pki.agents[0].2, pki.ca_cert
        );
        let path = tmp.path().join("agent.toml");
        std::fs::write(&path, src).expect("write");
        let err = AgentConfig::load(&path).expect_err("invalid");
        let text = err.to_string();
        assert!(
            text.contains("agent.toml:10: key `storage.0.path`"),
            "{text}"
        );
        assert!(text.contains("key `allow.restore_databases.0`"), "{text}");
        assert!(text.contains("\"nope\" is not declared"), "{text}");
        assert!(
            text.contains(
                "key `allow.freeze_databases.0`: \"gone\" is not declared in [[databases]]"
            ),
            "{text}"
        );
    }

    /// docs/agent-config.md sets every key; the real types must read and write exactly those.
    #[test]
    fn docs_reference_covers_every_key() {
        let md = include_str!("../../../docs/agent-config.md");
        hostshift_shared::tomlpos::check_reference_block::<AgentConfig>(md)
            .unwrap_or_else(|e| panic!("docs/agent-config.md is out of date: {e}"));
    }
}
