//! The small checks the agent config's validation repeats for many keys: names (valid and
//! unique), absolute paths, existing users, a database's conninfo, and secret files only their
//! owner can read ([`private_file_mode`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hostshift_shared::identity::valid_name;
use hostshift_shared::tomlpos::{Located, Problem};

use super::types::DatabaseConfig;

pub(super) fn names<'a>(
    src: &Located,
    table: &str,
    it: impl Iterator<Item = &'a String>,
    out: &mut Vec<Problem>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, n) in it.enumerate() {
        let key = format!("{table}.{i}.name");
        if !valid_name(n) {
            out.push(src.problem(&key, "names are 1-63 letters, digits, '-', '_' or '.'"));
        } else if !seen.insert(n.as_str()) {
            out.push(src.problem(&key, format!("{n:?} is declared twice in [[{table}]]")));
        }
    }
    seen
}

pub(super) fn absolute(src: &Located, key: &str, path: &Path, out: &mut Vec<Problem>) {
    if !path.is_absolute() {
        out.push(src.problem(key, format!("{} must be an absolute path", path.display())));
    }
}

pub(super) fn user_exists(src: &Located, key: &str, user: &str, out: &mut Vec<Problem>) {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => out.push(src.problem(key, format!("no system user {user:?} on this host"))),
        Err(e) => out.push(src.problem(key, format!("cannot look up user {user:?}: {e}"))),
    }
}

/// What the one conninfo parser ([`hostshift_shared::conninfo`]) finds wrong with a database's
/// connection settings: a password in it (it would reach `pg_dump`'s command line, visible in
/// `ps`), or an unverified connection to a host that is not this machine.
pub(super) fn conninfo_problems(
    src: &Located,
    i: usize,
    d: &DatabaseConfig,
    out: &mut Vec<Problem>,
) {
    let key = format!("databases.{i}.conninfo");
    let info = match hostshift_shared::conninfo::parse(&d.conninfo) {
        Ok(info) => info,
        Err(e) => {
            out.push(src.problem(&key, e.to_string()));
            return;
        }
    };
    if let Some(at) = info.password_locations().first() {
        out.push(src.problem(
            &key,
            format!(
                "holds a password ({at}): move it to a file (mode 0600) and name it in `password_file`"
            ),
        ));
    }
    let weak = info
        .sslmode()
        .filter(|m| matches!(*m, "disable" | "allow" | "prefer"));
    let remote = info.remote_hosts();
    match (weak, &d.ca_file) {
        (Some(m), Some(_)) => out.push(src.problem(
            &key,
            format!(
                "sslmode={m} contradicts ca_file (which asks for TLS with the server's certificate verified): remove sslmode from conninfo, or remove ca_file for a local server"
            ),
        )),
        (Some(m), None) if !remote.is_empty() => out.push(src.problem(
            &key,
            format!(
                "sslmode={m} to {} (not this machine) would send the database unencrypted or unverified: remove sslmode and set ca_file to the PEM of the CA that signed the server's certificate",
                remote.join(", ")
            ),
        )),
        (None, None)
            if !remote.is_empty()
                && !matches!(info.sslmode(), Some("require" | "verify-ca" | "verify-full")) =>
        {
            out.push(src.problem(
                &key,
                format!(
                    "{} is not this machine: set ca_file to the PEM of the CA that signed the server's certificate (e.g. the RDS bundle), so the connection uses TLS and verifies it",
                    remote.join(", ")
                ),
            ));
        }
        _ => {}
    }
}

/// A secret file (password file) that group or others can read or write is refused, the way
/// libpq refuses such a `.pgpass` and ssh such a key. A missing file is not checked here (it
/// is read at connect time, which names it).
///
/// # Errors
/// [`OpenSecretFile`], whose text says the `chmod` to run.
pub fn private_file_mode(path: &Path) -> Result<(), OpenSecretFile> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(OpenSecretFile {
            path: path.to_path_buf(),
            mode: m.permissions().mode() & 0o7777,
        }),
        _ => Ok(()),
    }
}

/// A secret file that group or others may read or write.
#[derive(Debug, thiserror::Error)]
#[error("{path} is readable by group or others (mode {mode:04o}): run `chmod 600 {path}`")]
pub struct OpenSecretFile {
    /// The file.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
}
