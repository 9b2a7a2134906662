//! Client connections that accept only one named agent.
//!
//! Mutual TLS alone proves that the agent's certificate comes from the migration CA and names the
//! address dialled — but every agent of a migration has such a certificate, so a plan whose
//! `[old]` and `[new]` addresses are swapped would happily talk to the new host as if it were the
//! old one (and write into the old host as if it were the new one). [`connect_expecting`] checks,
//! during the TLS handshake and before any request is sent, that the server's certificate carries
//! the identity the caller expects (`spiffe://hostshift/agent/<name>`); a different agent is
//! refused with [`wrong_agent_message`] in the error chain.
//!
//! tonic 0.14 offers no hook for a custom server-certificate verifier, so this module brings its
//! own connector: TCP, then rustls (ring provider, ALPN `h2`) with a verifier that first runs the
//! usual WebPKI checks against the migration CA and then compares the identity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::buffered_tcp::BufferedTcp;
use crate::identity::Identity;
use crate::tls::TlsFiles;

/// The text of a refusal because the server is another agent. Callers (and tests) can look for
/// `expected` and `found` in it.
pub fn wrong_agent_message(found: &Identity, expected: &Identity) -> String {
    format!(
        "the agent at this address is {found}, not {expected}: the plan's address and agent name disagree (swapped [old]/[new] addresses?); fix the plan (`hostshift check` shows who answers where) — nothing was changed"
    )
}

#[derive(Debug)]
struct ExpectIdentity {
    inner: Arc<WebPkiServerVerifier>,
    expected: Identity,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let found = Identity::from_der(end_entity.as_ref())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        if found != self.expected {
            return Err(rustls::Error::General(wrong_agent_message(
                &found,
                &self.expected,
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A connector for tonic: TCP (reads buffered, see [`BufferedTcp`]), then TLS that accepts only
/// the expected agent.
#[derive(Clone)]
struct Connector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

type IoResult = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<BufferedTcp>>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<BufferedTcp>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = IoResult> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let tcp = BufferedTcp::connect(&uri).await?;
            let tls = tokio_rustls::TlsConnector::from(me.config)
                .connect(me.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Why a connection could not even be set up (files, names); handshake and network errors come
/// from [`connect_expecting`]'s `tonic` error instead.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A TLS file is missing or unusable.
    #[error(transparent)]
    Files(#[from] crate::tls::TlsError),
    /// The files were read but rustls refused them.
    #[error("TLS set-up: {0}")]
    Tls(String),
    /// The address or server name is not usable.
    #[error("{0}")]
    Address(String),
}

fn client_config(files: &TlsFiles, expected: Identity) -> Result<ClientConfig, SetupError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| crate::tls::TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let ca_pem = read("CA certificate", &files.ca)?;
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("private key", &files.key)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| SetupError::Tls(format!("{}: {e}", files.ca.display())))?;
        roots
            .add(c)
            .map_err(|e| SetupError::Tls(format!("{}: {e}", files.ca.display())))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| SetupError::Tls(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| SetupError::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SetupError::Tls(format!("{}: {e}", files.ca.display())))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectIdentity { inner, expected }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| SetupError::Tls(format!("{}: {e}", files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects to the agent at `address` (`https://host:port`) over mutual TLS, presenting `files`,
/// and accepts the server only when its certificate is valid for `server_name`, chains to the
/// migration CA *and* carries `expected`. `endpoint` tunes the channel (timeouts, windows); its
/// URI is replaced.
///
/// # Errors
/// [`SetupError`] (outer) when files or names are unusable; the inner `tonic` error when the
/// connection fails — for another agent its chain holds [`wrong_agent_message`].
pub async fn connect_expecting(
    files: &TlsFiles,
    server_name: &str,
    expected: Identity,
    endpoint: impl FnOnce(Endpoint) -> Endpoint,
    address: &str,
) -> Result<Result<Channel, tonic::transport::Error>, SetupError> {
    let config = client_config(files, expected)?;
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|e| SetupError::Address(format!("server name {server_name:?}: {e}")))?;
    // The connector does TLS itself; tonic must see a plain scheme or it insists on its own TLS.
    let plain = address
        .strip_prefix("https://")
        .map_or_else(|| address.to_string(), |rest| format!("http://{rest}"));
    let ep = Endpoint::from_shared(plain)
        .map_err(|e| SetupError::Address(format!("invalid address {address:?}: {e}")))?;
    let ep = endpoint(ep);
    Ok(ep
        .connect_with_connector(Connector {
            config: Arc::new(config),
            server_name,
        })
        .await)
}
