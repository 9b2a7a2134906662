//! Why one health check attempt failed: [`CheckFailure`], one variant per way a check can go
//! wrong (its set-up, the exchange, the expectations), each carrying what the operator needs to
//! see — the status seen and expected, the start of the body, the token file's path (never its
//! content). [`super::HealthResult::detail`] is this error's text.

use std::path::PathBuf;

/// One reason a health check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// An https check on a host without root certificates.
    #[error(
        "this host has no usable CA certificates for https (install the ca-certificates package)"
    )]
    NoRootCertificates,
    /// rustls refused the client configuration.
    #[error("TLS set-up: {0}")]
    TlsSetup(rustls::Error),
    /// The request could not be built from the check's fields.
    #[error("cannot build the request: {0}")]
    BuildRequest(http::Error),
    /// The connection or the exchange failed; `chain` is the error and its sources.
    #[error("{chain}")]
    Transport {
        /// The error and its sources, joined with `: `.
        chain: String,
    },
    /// The body broke off while it was read.
    #[error("reading the body: {chain}")]
    Body {
        /// The error and its sources, joined with `: `.
        chain: String,
    },
    /// No complete answer within the check's timeout.
    #[error("no complete answer within {secs} s")]
    Timeout {
        /// The check's timeout, in seconds.
        secs: f64,
    },
    /// Another status than the expected one.
    #[error("status {got}, expected {expected}{}", redirect_note(.location))]
    Status {
        /// What the server answered.
        got: u16,
        /// What the check expects.
        expected: u16,
        /// Where a redirect pointed (already shortened), for 3xx answers.
        location: Option<String>,
    },
    /// The body lacks the expected text.
    #[error("status {status} but the body does not contain {needle:?} (body starts: {starts:?})")]
    BodyLacks {
        /// What the server answered.
        status: u16,
        /// The text looked for.
        needle: String,
        /// The start of the body.
        starts: String,
    },
    /// `json_field` is set but the body is not JSON.
    #[error("status {status} but the body is not JSON ({error}); it starts: {starts:?}")]
    NotJson {
        /// What the server answered.
        status: u16,
        /// The parser's complaint.
        error: serde_json::Error,
        /// The start of the body.
        starts: String,
    },
    /// The JSON body has no such field.
    #[error("status {status} but the JSON body has no field {path}")]
    NoField {
        /// What the server answered.
        status: u16,
        /// The dotted path looked up.
        path: String,
    },
    /// The JSON field holds another value.
    #[error("status {status} but JSON field {path} is {got:?}, expected {want:?}")]
    FieldDiffers {
        /// What the server answered.
        status: u16,
        /// The dotted path looked up.
        path: String,
        /// Its value (shortened).
        got: String,
        /// The value the check expects.
        want: String,
    },
    /// `json_field` is not `path=value`.
    #[error("json_field {spec:?}: use path=value, e.g. \"status=ok\" or \"db.ok=true\"")]
    JsonFieldSpec {
        /// The field as written in the plan.
        spec: String,
    },
    /// The bearer token file cannot be read.
    #[error("cannot read the bearer token file {path}: {source}")]
    TokenUnreadable {
        /// The token file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bearer token file is a folder, a device, ...
    #[error("the bearer token file {path} is not a regular file")]
    TokenNotAFile {
        /// The token file.
        path: PathBuf,
    },
    /// The bearer token file is too large to be a token.
    #[error("the bearer token file {path} is larger than {max} bytes: it should hold one token")]
    TokenTooLarge {
        /// The token file.
        path: PathBuf,
        /// The limit ([`super::MAX_TOKEN_BYTES`]).
        max: u64,
    },
    /// The bearer token file holds something else than one printable line.
    #[error(
        "the bearer token file {path} must hold exactly one line of printable ASCII (the token)"
    )]
    TokenNotOneLine {
        /// The token file.
        path: PathBuf,
    },
}

fn redirect_note(location: &Option<String>) -> String {
    location.as_ref().map_or_else(String::new, |l| {
        format!(" (redirects to {l}; redirects are not followed)")
    })
}
