//! Checks of the agent config that serde cannot make: valid and unique names, references
//! between sections (an `[allow]` entry must name a declared resource), absolute paths, existing
//! users, readable TLS files whose certificate is an agent's, and secret files only their owner
//! can read. Each problem names the file, line and key.

use std::path::Path;

use hostshift_shared::identity::valid_name;
use hostshift_shared::tomlpos::{Located, Problem};

use super::checks::{absolute, conninfo_problems, names, private_file_mode, user_exists};
use super::policy::MAX_KEEP_DAYS;
use super::types::AgentConfig;

impl AgentConfig {
    /// Checks what serde cannot: names, uniqueness, absolute paths, references, users, TLS files.
    pub(super) fn validate(&self, src: &Located) -> Vec<Problem> {
        let mut out = Vec::new();
        if !valid_name(&self.role) {
            out.push(src.problem("role", "a short label such as \"old\" or \"new\""));
        }
        for (key, path) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.ca", &self.tls.ca),
        ] {
            if let Err(e) = std::fs::metadata(path) {
                out.push(src.problem(
                    key,
                    format!(
                        "cannot read {}: {e} (create certificates with `hostshift certs init`)",
                        path.display()
                    ),
                ));
            }
        }
        if out.iter().all(|p| p.key != "tls.key")
            && let Err(e) = hostshift_shared::tls::check_key_mode(&self.tls.key)
        {
            out.push(src.problem("tls.key", e.to_string()));
        }
        if out.iter().all(|p| !p.key.starts_with("tls.")) {
            match self.tls.files().own_identity() {
                Ok(id) if id.role == hostshift_shared::identity::Role::Agent => {}
                Ok(id) => out.push(src.problem(
                    "tls.cert",
                    format!("this is the certificate of {id}; an agent needs an agent certificate (agent-<name>.crt)"),
                )),
                Err(e) => out.push(src.problem("tls.cert", e.to_string())),
            }
        }
        let db_names = names(
            src,
            "databases",
            self.databases.iter().map(|d| &d.name),
            &mut out,
        );
        for (i, d) in self.databases.iter().enumerate() {
            if d.conninfo.trim().is_empty() {
                out.push(src.problem(&format!("databases.{i}.conninfo"), "must not be empty"));
            }
            conninfo_problems(src, i, d, &mut out);
            if let Some(p) = &d.password_file {
                absolute(src, &format!("databases.{i}.password_file"), p, &mut out);
                if let Err(e) = private_file_mode(p) {
                    out.push(src.problem(&format!("databases.{i}.password_file"), e.to_string()));
                }
            }
            if let Some(p) = &d.ca_file {
                absolute(src, &format!("databases.{i}.ca_file"), p, &mut out);
            }
        }
        let st_names = names(
            src,
            "storage",
            self.storage.iter().map(|s| &s.name),
            &mut out,
        );
        for (i, s) in self.storage.iter().enumerate() {
            absolute(src, &format!("storage.{i}.path"), &s.path, &mut out);
        }
        let file_names = names(src, "files", self.files.iter().map(|f| &f.name), &mut out);
        for (i, f) in self.files.iter().enumerate() {
            absolute(src, &format!("files.{i}.path"), &f.path, &mut out);
        }
        if let Some(pm2) = &self.pm2 {
            absolute(src, "pm2.home", &pm2.home, &mut out);
            match &pm2.user {
                Some(u) => user_exists(src, "pm2.user", u, &mut out),
                None if nix::unistd::geteuid().is_root() => out.push(src.problem(
                    "pm2",
                    "the agent runs as root: set `user` to the account that owns the PM2 daemon, so hostshift never starts a root PM2 by accident",
                )),
                None => {}
            }
            for (i, a) in pm2.apps.iter().enumerate() {
                if a.trim().is_empty() {
                    out.push(src.problem(&format!("pm2.apps.{i}"), "empty app name"));
                }
            }
        }
        if let Some(n) = &self.nginx {
            absolute(src, "nginx.site", &n.site, &mut out);
            absolute(src, "nginx.config", &n.config, &mut out);
            absolute(src, "nginx.state_dir", &n.state_dir, &mut out);
        }
        for (name, h) in &self.hooks {
            let key = format!("hooks.{name}");
            if !valid_name(name) {
                out.push(src.problem(&key, "hook names are 1-63 letters, digits, '-', '_' or '.'"));
            }
            if h.command.trim().is_empty() {
                out.push(src.problem(&format!("{key}.command"), "must not be empty"));
            }
            if h.timeout_secs == 0 {
                out.push(src.problem(&format!("{key}.timeout_secs"), "must be at least 1"));
            }
            if let Some(c) = &h.cwd {
                absolute(src, &format!("{key}.cwd"), c, &mut out);
            }
            if let Some(u) = &h.user {
                user_exists(src, &format!("{key}.user"), u, &mut out);
            }
        }
        for (list, known, what, key) in [
            (
                &self.allow.restore_databases,
                &db_names,
                "databases",
                "allow.restore_databases",
            ),
            (
                &self.allow.freeze_databases,
                &db_names,
                "databases",
                "allow.freeze_databases",
            ),
            (
                &self.allow.follow_databases,
                &db_names,
                "databases",
                "allow.follow_databases",
            ),
            (
                &self.allow.write_storage,
                &st_names,
                "storage",
                "allow.write_storage",
            ),
            (
                &self.allow.write_files,
                &file_names,
                "files",
                "allow.write_files",
            ),
        ] {
            for (i, n) in list.iter().enumerate() {
                if !known.contains(n.as_str()) {
                    out.push(src.problem(
                        &format!("{key}.{i}"),
                        format!("{n:?} is not declared in [[{what}]]"),
                    ));
                }
            }
        }
        for (i, n) in self.allow.replica_identity_full.iter().enumerate() {
            if !self.allow.follow_databases.contains(n) {
                out.push(src.problem(
                    &format!("allow.replica_identity_full.{i}"),
                    format!("{n:?} is not in allow.follow_databases: only a followed database's tables get REPLICA IDENTITY FULL"),
                ));
            }
        }
        absolute(src, "state_dir", &self.state_dir, &mut out);
        self.validate_backup(src, &mut out);
        if self.limits.shutdown_grace_secs == 0 {
            out.push(src.problem("limits.shutdown_grace_secs", "must be at least 1"));
        }
        out
    }

    /// `[backup]`: an absolute folder outside every storage tree, sane retention, a usable S3 target.
    fn validate_backup(&self, src: &Located, out: &mut Vec<Problem>) {
        let b = &self.backup;
        absolute(src, "backup.dir", &b.dir, out);
        if b.dir == Path::new("/") {
            out.push(src.problem(
                "backup.dir",
                "the filesystem root cannot be the backup folder",
            ));
        }
        if let Some(d) = b.keep_days
            && !(1..=MAX_KEEP_DAYS).contains(&d)
        {
            out.push(src.problem(
                "backup.keep_days",
                format!(
                    "{d} is outside 1..={MAX_KEEP_DAYS} days (0 would keep nothing by age; leave keep_days out for no age rule)"
                ),
            ));
        }
        if b.keep_last == Some(0) {
            out.push(src.problem(
                "backup.keep_last",
                "must be at least 1 (leave it out for no count rule)",
            ));
        }
        if let Some(s3) = &b.s3 {
            if s3.bucket.trim().is_empty() {
                out.push(src.problem("backup.s3.bucket", "must not be empty"));
            }
            if s3.region.trim().is_empty() {
                out.push(src.problem("backup.s3.region", "must not be empty, e.g. \"eu-west-1\""));
            }
            if s3.prefix.starts_with('/') || s3.prefix.ends_with('/') || s3.prefix.contains("//") {
                out.push(src.problem("backup.s3.prefix", "no leading, trailing or doubled '/'"));
            }
            if let Some(u) = &s3.endpoint_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                out.push(src.problem("backup.s3.endpoint_url", "an http:// or https:// URL"));
            }
            if let Some(f) = &s3.credentials_file {
                absolute(src, "backup.s3.credentials_file", f, out);
            }
        }
    }
}
