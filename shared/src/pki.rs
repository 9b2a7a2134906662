//! The migration PKI: one CA per migration, a certificate per agent, one for the coordinator.
//!
//! `hostshift certs init` calls [`init`]; the test rig and the rehearsal call it too, so tests use
//! exactly the certificates operators get. Keys are written with mode 0600 and are never
//! overwritten unless the caller says `force`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::{Identity, Role, valid_name};

/// One agent certificate to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSpec {
    /// The agent's name (`old`, `new`, ...), which becomes its identity `agent:<name>`.
    pub name: String,
    /// DNS names and IP addresses the agent is reached at (its server certificate's SANs).
    pub sans: Vec<String>,
}

/// Why an `--agent NAME=SAN[,SAN...]` argument was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentSpecError {
    /// No `=` between the name and the addresses.
    #[error("{spec:?}: want NAME=HOST[,HOST...], e.g. old=10.0.0.5,old.internal")]
    Shape {
        /// The argument as given.
        spec: String,
    },
    /// The name is not a label an identity can carry.
    #[error("{name:?}: an agent name is 1-63 letters, digits, '-', '_' or '.'")]
    Name {
        /// The name as given.
        name: String,
    },
    /// No DNS name or IP after the `=`.
    #[error("{spec:?}: give at least one DNS name or IP for agent {name}")]
    NoSans {
        /// The argument as given.
        spec: String,
        /// The agent's name.
        name: String,
    },
}

impl AgentSpec {
    /// Parses `NAME=SAN[,SAN...]`, e.g. `old=10.0.0.5,old.internal`.
    ///
    /// # Errors
    /// When the name is not a valid label or no SAN is given.
    pub fn parse(s: &str) -> Result<Self, AgentSpecError> {
        let (name, sans) = s.split_once('=').ok_or_else(|| AgentSpecError::Shape {
            spec: s.to_string(),
        })?;
        if !valid_name(name) {
            return Err(AgentSpecError::Name {
                name: name.to_string(),
            });
        }
        let sans: Vec<String> = sans
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
        if sans.is_empty() {
            return Err(AgentSpecError::NoSans {
                spec: s.to_string(),
                name: name.to_string(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            sans,
        })
    }
}

/// What to create.
#[derive(Clone, Debug)]
pub struct PkiRequest {
    /// Output directory (created if missing).
    pub dir: PathBuf,
    /// Agents to issue certificates for.
    pub agents: Vec<AgentSpec>,
    /// Name in the coordinator's identity (`coordinator:<name>`).
    pub coordinator_name: String,
    /// Validity in days.
    pub days: u32,
    /// Overwrite existing files.
    pub force: bool,
}

/// Paths of everything [`init`] wrote.
#[derive(Clone, Debug, Default)]
pub struct PkiFiles {
    /// `ca.crt`
    pub ca_cert: PathBuf,
    /// `ca.key`
    pub ca_key: PathBuf,
    /// `coordinator.crt`
    pub coordinator_cert: PathBuf,
    /// `coordinator.key`
    pub coordinator_key: PathBuf,
    /// `(name, agent-<name>.crt, agent-<name>.key)`
    pub agents: Vec<(String, PathBuf, PathBuf)>,
}

impl PkiFiles {
    /// Every path, certificates and keys.
    pub fn all(&self) -> Vec<&Path> {
        let mut v = vec![
            self.ca_cert.as_path(),
            self.ca_key.as_path(),
            self.coordinator_cert.as_path(),
            self.coordinator_key.as_path(),
        ];
        for (_, c, k) in &self.agents {
            v.push(c);
            v.push(k);
        }
        v
    }

    /// The layout [`init`] uses in `dir`.
    pub fn layout(dir: &Path, agents: &[AgentSpec]) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            coordinator_cert: dir.join("coordinator.crt"),
            coordinator_key: dir.join("coordinator.key"),
            agents: agents
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        dir.join(format!("agent-{}.crt", a.name)),
                        dir.join(format!("agent-{}.key", a.name)),
                    )
                })
                .collect(),
        }
    }
}

/// Why certificates could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Files exist and `force` was not given.
    #[error("refusing to overwrite existing files (use --force to replace them): {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Exists(Vec<PathBuf>),
    /// Bad request (name, SAN).
    #[error("{0}")]
    Invalid(String),
    /// rcgen failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

fn san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = s
        .to_string()
        .try_into()
        .map_err(|_| PkiError::Invalid(format!("{s:?} is not a valid DNS name or IP address")))?;
    Ok(SanType::DnsName(dns))
}

fn leaf(
    identity: &Identity,
    sans: &[String],
    server: bool,
    days: u32,
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("hostshift {identity}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "hostshift");
    let uri = identity
        .uri()
        .try_into()
        .map_err(|_| PkiError::Invalid(format!("bad identity URI {}", identity.uri())))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for s in sans {
        params.subject_alt_names.push(san(s)?);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes one output file. With `force`, an existing entry is removed first (a symlink itself,
/// never what it points to) and the file is created anew with `O_EXCL | O_NOFOLLOW`: a symlink
/// planted in the folder can never redirect a private key elsewhere.
fn write(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if force {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(err(std::io::Error::other(
                    "a folder is in the way of this file: remove it",
                )));
            }
            Ok(_) => std::fs::remove_file(path).map_err(err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    // The umask may have narrowed (or, for 0644 certificates, not) the mode: make it exact.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    f.sync_all().map_err(err)
}

/// Creates the CA, one certificate per agent (server + client use, identity `agent:<name>`) and
/// the coordinator's client certificate (identity `coordinator:<name>`).
///
/// # Errors
/// [`PkiError::Exists`] when any output file exists and `force` is false (nothing is written
/// then); otherwise generation or write errors.
pub fn init(req: &PkiRequest) -> Result<PkiFiles, PkiError> {
    if !valid_name(&req.coordinator_name) {
        return Err(PkiError::Invalid(format!(
            "coordinator name {:?}: use 1-63 letters, digits, '-', '_' or '.'",
            req.coordinator_name
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for a in &req.agents {
        if !seen.insert(&a.name) {
            return Err(PkiError::Invalid(format!(
                "agent {:?} is given twice",
                a.name
            )));
        }
    }
    let files = PkiFiles::layout(&req.dir, &req.agents);
    if !req.force {
        let existing: Vec<PathBuf> = files
            .all()
            .into_iter()
            .filter(|p| p.exists())
            .map(Path::to_path_buf)
            .collect();
        if !existing.is_empty() {
            return Err(PkiError::Exists(existing));
        }
    }
    // A folder we create holds private keys: 0700 whatever the umask (an existing folder is
    // the operator's and keeps its mode).
    if !req.dir.exists() {
        let werr = |source| PkiError::Write {
            path: req.dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&req.dir)
            .map_err(werr)?;
        std::fs::set_permissions(
            &req.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(werr)?;
    }

    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    // A CA name unique to this migration: with two CAs of the same name, TLS reports a wrong-CA
    // certificate as a bad signature instead of the clearer "unknown issuer".
    let tag = crate::digest::Sha256Digest::of(ca_key.public_key_pem().as_bytes()).to_string();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("hostshift migration CA {}", &tag[..12]),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "hostshift");
    validity(&mut ca, req.days);
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;

    write(&files.ca_cert, &issuer.pem(), 0o644, req.force)?;
    write(
        &files.ca_key,
        &issuer.key().serialize_pem(),
        0o600,
        req.force,
    )?;

    let coord = Identity::new(Role::Coordinator, &req.coordinator_name);
    let (c, k) = leaf(&coord, &[], false, req.days, &issuer)?;
    write(&files.coordinator_cert, &c, 0o644, req.force)?;
    write(&files.coordinator_key, &k, 0o600, req.force)?;

    for (spec, (_, cert_path, key_path)) in req.agents.iter().zip(&files.agents) {
        let id = Identity::new(Role::Agent, &spec.name);
        let (c, k) = leaf(&id, &spec.sans, true, req.days, &issuer)?;
        write(cert_path, &c, 0o644, req.force)?;
        write(key_path, &k, 0o600, req.force)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn req(dir: &Path, force: bool) -> PkiRequest {
        PkiRequest {
            dir: dir.to_path_buf(),
            agents: vec![AgentSpec::parse("old=127.0.0.2,old.local").expect("spec")],
            coordinator_name: "ops".into(),
            days: 2,
            force,
        }
    }

    #[test]
    fn init_writes_private_keys_0600_and_identities_in_certs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = init(&req(tmp.path(), false)).expect("init");
        for key in [&files.ca_key, &files.coordinator_key, &files.agents[0].2] {
            let mode = std::fs::metadata(key).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        let pem = std::fs::read(&files.agents[0].1).expect("read");
        let der = crate::tls::first_pem_der(&pem).expect("der");
        assert_eq!(
            Identity::from_der(&der).expect("identity"),
            Identity::new(Role::Agent, "old")
        );
        let pem = std::fs::read(&files.coordinator_cert).expect("read");
        let der = crate::tls::first_pem_der(&pem).expect("der");
        assert_eq!(
            Identity::from_der(&der).expect("identity").role,
            Role::Coordinator
        );
    }

    #[test]
    fn rerun_refuses_to_overwrite_keys_without_force() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(&req(tmp.path(), false)).expect("first init");
        let before = std::fs::read(tmp.path().join("ca.key")).expect("read");
        let err = init(&req(tmp.path(), false)).expect_err("second init must refuse");
        assert!(
            matches!(err, PkiError::Exists(ref v) if v.len() == 6),
            "{err}"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("ca.key")).expect("read"),
            before
        );
        init(&req(tmp.path(), true)).expect("forced init");
        assert_ne!(
            std::fs::read(tmp.path().join("ca.key")).expect("read"),
            before
        );
    }

    #[test]
    fn agent_spec_parse_errors_say_the_format() {
        assert!(
            AgentSpec::parse("old")
                .unwrap_err()
                .to_string()
                .contains("NAME=HOST")
        );
        assert!(AgentSpec::parse("o ld=1.2.3.4").is_err());
        assert!(AgentSpec::parse("old=").is_err());
    }
}
