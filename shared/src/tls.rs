//! Mutual-TLS configuration from PEM files, and the HTTP/2 flow-control windows.
//!
//! Both binaries load the same three files (certificate, key, migration CA). Errors name the file
//! and say what to do, because a wrong path is the most common first-day mistake.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

/// HTTP/2 stream window for data streams. With the default 64 KiB window a TLS stream on
/// loopback tops out near 100 MiB/s; 4 MiB lifts it past 500 MiB/s (TOOLCHAIN.md). Worst-case
/// memory per stream in flight is this window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window (all streams on one connection together).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame each side accepts (`SETTINGS_MAX_FRAME_SIZE`; HTTP/2's default is
/// 16 KiB). A sender cuts its data into frames of at most what the receiver accepts, and each
/// frame went out in its own `writev` of ~16 KiB: ~300,000 calls and as many loopback packets
/// (each answered by the receiver) for a 3 GB stream. With 256 KiB frames rustls sends up to its
/// 64 KiB buffer per call.
pub const MAX_FRAME: u32 = 256 * 1024;

/// The PEM files of one side of a mutual-TLS connection.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This side's certificate (chain), PEM.
    pub cert: PathBuf,
    /// This side's private key, PEM.
    pub key: PathBuf,
    /// The migration CA certificate that the other side's certificate must chain to, PEM.
    pub ca: PathBuf,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error(
        "cannot read {what} {path}: {source} (create certificates with `hostshift certs init`)"
    )]
    Read {
        /// Which file ("certificate", "private key", "CA certificate").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The private key's metadata could not be read.
    #[error("cannot read private key {path}: {source}")]
    KeyUnreadable {
        /// The key's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The private key's mode lets group or others read it.
    #[error(
        "private key {path} is readable by group or others (mode {mode:04o}): run `chmod 600 {path}`"
    )]
    KeyMode {
        /// The key's path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The certificate file holds no certificate block.
    #[error("certificate {path} holds no certificate")]
    NoCertificate {
        /// The certificate's path.
        path: PathBuf,
    },
    /// The certificate carries no hostshift identity.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The file was read but is not PEM of the expected kind.
    #[error("{what} {path} is not a PEM {expected}")]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What its first line should say.
        expected: &'static str,
    },
}

/// Refuses a private key that group or others can read or write, like ssh does: on a shared
/// host another account could take the migration's identity with it. Returns the message with
/// the `chmod` to run.
///
/// # Errors
/// The file cannot be inspected, or its mode lets others in.
pub fn check_key_mode(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).map_err(|source| TlsError::KeyUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN") || !text.contains(expected) {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

impl TlsFiles {
    fn load(&self) -> Result<(TlsIdentity, Certificate), TlsError> {
        let cert = read_pem("certificate", &self.cert, "CERTIFICATE")?;
        let key = read_pem("private key", &self.key, "PRIVATE KEY")?;
        check_key_mode(&self.key)?;
        let ca = read_pem("CA certificate", &self.ca, "CERTIFICATE")?;
        Ok((TlsIdentity::from_pem(cert, key), Certificate::from_pem(ca)))
    }

    /// Server side: present our certificate and *require* a client certificate from the CA.
    ///
    /// # Errors
    /// When a file is missing or not PEM.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let (identity, ca) = self.load()?;
        Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
    }

    /// Client side: present our certificate and trust only the migration CA. `server_name` is the
    /// name (or IP) the server certificate must carry.
    ///
    /// # Errors
    /// When a file is missing or not PEM.
    pub fn client_config(&self, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
        let (identity, ca) = self.load()?;
        Ok(ClientTlsConfig::new()
            .identity(identity)
            .ca_certificate(ca)
            .domain_name(server_name))
    }

    /// The identity our own certificate carries (first certificate of the PEM file).
    ///
    /// # Errors
    /// When the file is unreadable or carries no hostshift identity.
    pub fn own_identity(&self) -> Result<crate::identity::Identity, TlsError> {
        let pem = read_pem("certificate", &self.cert, "CERTIFICATE")?;
        let der = first_pem_der(&pem).ok_or_else(|| TlsError::NoCertificate {
            path: self.cert.clone(),
        })?;
        Ok(crate::identity::Identity::from_der(&der)?)
    }
}

/// The DER bytes of the first `CERTIFICATE` block of a PEM buffer.
pub fn first_pem_der(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Some(parsed.contents)
}
