//! HTTP health checks: one check definition ([`CheckSpec`]) in, one [`HealthResult`] out, with
//! retries and a doubling pause between attempts.
//!
//! Both binaries judge health the same way by calling [`run`]: the agent runs the checks a plan
//! gives `from = "old"` / `"new"` *on its own host* (so `http://localhost:3666/health` is that
//! host's app), and the coordinator runs `from = "coordinator"` checks itself (public URLs). The
//! cutover reuses the same function as its gate.
//!
//! Transport: hyper 1 through hyper-util's legacy client and hyper-rustls, TLS by rustls with the
//! **ring** provider (the workspace's one TLS stack: no aws-lc-rs, no OpenSSL) and the host's own
//! root certificates. Each attempt opens a fresh connection (no idle pool), so a check sees what
//! a new visitor sees. Redirects are not followed: a `301` is a status like any other.
//!
//! Safety: only `http` and `https` URLs, without credentials in them. The bearer token file is
//! read where the check runs, must hold one line of at most [`MAX_TOKEN_BYTES`] printable ASCII
//! (so the feature cannot be used to send, say, a key file somewhere), is never part of a result,
//! and is sent only over https or to a loopback address.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

mod failure;

pub use failure::CheckFailure;

/// Pause after the first failed attempt; it doubles after each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The pause between attempts never grows beyond this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Most of a response body that is read (for `body_contains` / `json_field`); the rest is
/// ignored. Worst-case memory per running check.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest bearer token file accepted.
pub const MAX_TOKEN_BYTES: u64 = 4096;
/// Most attempts one check may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// Longest timeout of one attempt.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeout of one attempt when the definition gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts when the definition gives none.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Expected status when the definition gives none.
pub const DEFAULT_STATUS: u16 = 200;
/// How much of a body or a JSON value a failure message quotes.
const SNIPPET_CHARS: usize = 160;

/// One HTTP check: what to fetch and what the answer must look like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// A short name for reports.
    pub name: String,
    /// `http://` or `https://` URL to GET.
    pub url: String,
    /// `Host` header to send instead of the URL's host.
    pub host_header: Option<String>,
    /// File holding a bearer token, read on the host that runs the check.
    pub bearer_token_file: Option<PathBuf>,
    /// Expected HTTP status.
    pub expect_status: u16,
    /// Substring the body must contain.
    pub body_contains: Option<String>,
    /// `dotted.path=value` the JSON body must hold (array elements by index: `items.0.id=7`).
    pub json_field: Option<String>,
    /// Deadline of one attempt (connect, headers and body).
    pub timeout: Duration,
    /// Attempts before the check fails (at least 1).
    pub attempts: u32,
}

impl CheckSpec {
    /// A check of `url` expecting [`DEFAULT_STATUS`], with the default timeout and attempts.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            host_header: None,
            bearer_token_file: None,
            expect_status: DEFAULT_STATUS,
            body_contains: None,
            json_field: None,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }

    /// Checks the definition without running it, and returns the parsed URL.
    ///
    /// # Errors
    /// [`SpecError`] naming the check and what is wrong (not an http(s) URL, credentials in the
    /// URL, a status outside 100-599, a zero or too long timeout, too many attempts, a malformed
    /// `json_field` or `Host` header).
    pub fn validate(&self) -> Result<Uri, SpecError> {
        let invalid = |reason: String| SpecError::Invalid {
            name: self.name.clone(),
            reason,
        };
        let bad_url = |reason: &str| SpecError::Url {
            name: self.name.clone(),
            url: self.url.clone(),
            reason: reason.to_string(),
        };
        if self.name.trim().is_empty() {
            return Err(invalid("a check needs a name".into()));
        }
        // Judge the scheme first: `file:///x` does not even parse as an HTTP URI.
        if let Some((scheme, _)) = self.url.split_once(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !scheme.eq_ignore_ascii_case("http")
            && !scheme.eq_ignore_ascii_case("https")
            && self.url[scheme.len()..].starts_with("://")
        {
            return Err(bad_url("only http and https URLs are checked"));
        }
        let uri: Uri = self.url.parse().map_err(|_| bad_url("cannot be parsed"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(_) => return Err(bad_url("only http and https URLs are checked")),
            None => return Err(bad_url("it has no scheme (want http://... or https://...)")),
        }
        let Some(authority) = uri.authority() else {
            return Err(bad_url("it has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(bad_url(
                "credentials in URLs are not sent: put a token in bearer_token_file",
            ));
        }
        if authority.host().is_empty() {
            return Err(bad_url("it has no host"));
        }
        if !(100..=599).contains(&self.expect_status) {
            return Err(invalid(format!(
                "expect_status {} is not an HTTP status (100-599)",
                self.expect_status
            )));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(invalid(format!(
                "the timeout must be 1-{} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        if self.attempts == 0 || self.attempts > MAX_ATTEMPTS {
            return Err(invalid(format!(
                "retries (the number of attempts) must be 1-{MAX_ATTEMPTS}"
            )));
        }
        if let Some(h) = &self.host_header
            && (h.is_empty()
                || h.contains(char::is_whitespace)
                || HeaderValue::from_str(h).is_err())
        {
            return Err(invalid(format!("{h:?} is not a valid Host header")));
        }
        if let Some(f) = &self.json_field {
            json_field(f).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(uri)
    }

    /// The longest [`run`] can take: every attempt timing out, plus the pauses between them.
    pub fn worst_case(&self) -> Duration {
        let mut total = self.timeout.saturating_mul(self.attempts.max(1));
        let mut pause = FIRST_BACKOFF;
        for _ in 1..self.attempts.max(1) {
            total += pause;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        total
    }
}

/// A check definition that cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The URL is not one we fetch.
    #[error("check {name}: {url:?} is not a usable URL: {reason}")]
    Url {
        /// The check.
        name: String,
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Any other field.
    #[error("check {name}: {reason}")]
    Invalid {
        /// The check.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResult {
    /// The check's name.
    pub name: String,
    /// Passed on one of its attempts.
    pub ok: bool,
    /// HTTP status of the last attempt; `None` when no response arrived.
    pub status: Option<u16>,
    /// Wall time of all attempts, pauses included.
    pub elapsed_ms: u64,
    /// Attempts made (0 when the definition or the token file was refused before any request).
    pub attempts: u32,
    /// Why it failed (the last attempt's reason), or what passed. Never holds the bearer token.
    pub detail: String,
}

/// Runs one check: up to `attempts` GETs, pausing [`FIRST_BACKOFF`] after the first failure and
/// doubling the pause after each further one, until one answer meets every expectation. Never
/// fails as a function: every problem becomes a result with `ok = false` and a `detail`.
pub async fn run(spec: &CheckSpec) -> HealthResult {
    let started = Instant::now();
    let mut result = HealthResult {
        name: spec.name.clone(),
        ok: false,
        status: None,
        elapsed_ms: 0,
        attempts: 0,
        detail: String::new(),
    };
    let finish = |mut r: HealthResult| {
        r.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        r
    };
    let uri = match spec.validate() {
        Ok(u) => u,
        Err(e) => {
            result.detail = e.to_string();
            return finish(result);
        }
    };
    let token = match &spec.bearer_token_file {
        None => None,
        Some(path) => {
            if !token_may_travel_to(&uri) {
                result.detail = format!(
                    "refused to send the bearer token in clear text to {}: use https, or a loopback address",
                    uri.host().unwrap_or_default()
                );
                return finish(result);
            }
            match read_token(path).await {
                Ok(t) => Some(t),
                Err(e) => {
                    result.detail = e.to_string();
                    return finish(result);
                }
            }
        }
    };
    let client = match client(uri.scheme_str() == Some("https")) {
        Ok(c) => c,
        Err(e) => {
            result.detail = e.to_string();
            return finish(result);
        }
    };
    let mut pause = FIRST_BACKOFF;
    for n in 1..=spec.attempts {
        result.attempts = n;
        let (status, verdict) = attempt(&client, &uri, spec, token.as_deref()).await;
        result.status = status;
        match verdict {
            Ok(note) => {
                result.ok = true;
                result.detail = note;
                break;
            }
            Err(why) => result.detail = why.to_string(),
        }
        if n < spec.attempts {
            tracing::debug!(check = %spec.name, attempt = n, detail = %result.detail, "health check attempt failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }
    finish(result)
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client without an idle pool. For https it trusts the host's root certificates; for plain
/// http no roots are loaded at all.
fn client(https: bool) -> Result<HttpClient, CheckFailure> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(CheckFailure::NoRootCertificates);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(CheckFailure::TlsSetup)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector))
}

/// What one response looked like, as far as the expectations care.
struct Answer {
    status: u16,
    location: Option<String>,
    body: Option<Vec<u8>>,
}

async fn attempt(
    client: &HttpClient,
    uri: &Uri,
    spec: &CheckSpec,
    token: Option<&str>,
) -> (Option<u16>, Result<String, CheckFailure>) {
    let mut b = Request::get(uri.clone()).header(
        header::USER_AGENT,
        concat!("hostshift-health/", env!("CARGO_PKG_VERSION")),
    );
    if let Some(h) = &spec.host_header {
        b = b.header(header::HOST, h);
    }
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match b.body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return (None, Err(CheckFailure::BuildRequest(e))),
    };
    let want_body = spec.body_contains.is_some() || spec.json_field.is_some();
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| CheckFailure::Transport {
                chain: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = if want_body {
            Some(read_body(resp.into_body()).await?)
        } else {
            None
        };
        Ok::<_, CheckFailure>(Answer {
            status,
            location,
            body,
        })
    };
    match tokio::time::timeout(spec.timeout, exchange).await {
        Err(_) => (
            None,
            Err(CheckFailure::Timeout {
                secs: spec.timeout.as_secs_f64(),
            }),
        ),
        Ok(Err(e)) => (None, Err(e)),
        Ok(Ok(a)) => (Some(a.status), judge(spec, &a)),
    }
}

async fn read_body(mut body: hyper::body::Incoming) -> Result<Vec<u8>, CheckFailure> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CheckFailure::Body {
            chain: error_chain(&e),
        })?;
        if let Ok(data) = frame.into_data() {
            let room = MAX_BODY_BYTES.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= MAX_BODY_BYTES {
                break;
            }
        }
    }
    Ok(buf)
}

/// Whether an answer meets the check's expectations: `Ok(note)` or `Err(reason)`.
fn judge(spec: &CheckSpec, a: &Answer) -> Result<String, CheckFailure> {
    if a.status != spec.expect_status {
        return Err(CheckFailure::Status {
            got: a.status,
            expected: spec.expect_status,
            location: a
                .location
                .as_deref()
                .filter(|_| (300..400).contains(&a.status))
                .map(snippet),
        });
    }
    let mut notes = vec![format!("status {}", a.status)];
    let body = a.body.as_deref().unwrap_or_default();
    if let Some(needle) = &spec.body_contains {
        let text = String::from_utf8_lossy(body);
        if !text.contains(needle.as_str()) {
            return Err(CheckFailure::BodyLacks {
                status: a.status,
                needle: needle.clone(),
                starts: snippet(&text),
            });
        }
        notes.push(format!("body contains {needle:?}"));
    }
    if let Some(f) = &spec.json_field {
        let (path, want) = json_field(f)?;
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|error| CheckFailure::NotJson {
                status: a.status,
                error,
                starts: snippet(&String::from_utf8_lossy(body)),
            })?;
        let got = json_lookup(&doc, path).ok_or_else(|| CheckFailure::NoField {
            status: a.status,
            path: path.to_string(),
        })?;
        let got = json_text(got);
        if got != want {
            return Err(CheckFailure::FieldDiffers {
                status: a.status,
                path: path.to_string(),
                got: snippet(&got),
                want: want.to_string(),
            });
        }
        notes.push(format!("{path} = {want:?}"));
    }
    Ok(notes.join(", "))
}

/// Splits `path=value`.
fn json_field(f: &str) -> Result<(&str, &str), CheckFailure> {
    match f.split_once('=') {
        Some((path, value)) if !path.trim().is_empty() => Ok((path.trim(), value)),
        _ => Err(CheckFailure::JsonFieldSpec {
            spec: f.to_string(),
        }),
    }
}

/// Follows a dotted path; a segment that is a number indexes an array.
fn json_lookup<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(doc, |v, seg| match v {
        serde_json::Value::Object(m) => m.get(seg),
        serde_json::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// A JSON value as the text a plan writes after `=`: strings bare, everything else as JSON.
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn snippet(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    out
}

/// Plain http carries the token in clear text: allow it only to this machine.
fn token_may_travel_to(uri: &Uri) -> bool {
    if uri.scheme_str() == Some("https") {
        return true;
    }
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host.to_ascii_lowercase().ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a token file: one line of printable ASCII, at most [`MAX_TOKEN_BYTES`]. Error messages
/// name the file, never its content.
async fn read_token(path: &Path) -> Result<String, CheckFailure> {
    let unreadable = |source| CheckFailure::TokenUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(unreadable)?;
    if !meta.is_file() {
        return Err(CheckFailure::TokenNotAFile {
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_TOKEN_BYTES {
        return Err(CheckFailure::TokenTooLarge {
            path: path.to_path_buf(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let raw = tokio::fs::read(path).await.map_err(unreadable)?;
    let text = std::str::from_utf8(&raw).unwrap_or_default();
    let token = text.trim_end_matches(['\n', '\r']).trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CheckFailure::TokenNotOneLine {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// An error and its sources, joined: "client error (Connect): tcp connect error: Connection
/// refused (os error 111)".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            location: None,
            body: Some(body.as_bytes().to_vec()),
        }
    }

    #[test]
    fn json_field_follows_dotted_paths_and_array_indexes() {
        let mut spec = CheckSpec::new("c", "http://localhost/");
        let body = r#"{"status":"ok","db":{"ok":true,"latency":3},"items":[{"id":7}]}"#;
        for (f, ok) in [
            ("status=ok", true),
            ("db.ok=true", true),
            ("db.latency=3", true),
            ("items.0.id=7", true),
            ("status=down", false),
            ("db.missing=1", false),
        ] {
            spec.json_field = Some(f.into());
            assert_eq!(judge(&spec, &answer(200, body)).is_ok(), ok, "{f}");
        }
        spec.json_field = Some("status=down".into());
        let why = judge(&spec, &answer(200, body))
            .expect_err("mismatch")
            .to_string();
        assert!(
            why.contains("JSON field status is \"ok\", expected \"down\""),
            "{why}"
        );
        let why = judge(&spec, &answer(200, "<html>"))
            .expect_err("not JSON")
            .to_string();
        assert!(why.contains("not JSON"), "{why}");
    }

    #[test]
    fn wrong_status_and_missing_substring_say_what_was_seen() {
        let mut spec = CheckSpec::new("c", "http://localhost/");
        spec.body_contains = Some("healthy".into());
        let why = judge(&spec, &answer(503, "down"))
            .expect_err("status")
            .to_string();
        assert_eq!(why, "status 503, expected 200");
        let why = judge(&spec, &answer(200, "sick"))
            .expect_err("body")
            .to_string();
        assert!(
            why.contains("does not contain \"healthy\"") && why.contains("sick"),
            "{why}"
        );
        assert!(judge(&spec, &answer(200, "all healthy")).is_ok());
    }

    #[test]
    fn validation_refuses_other_schemes_credentials_and_bad_fields() {
        for url in [
            "file:///etc/passwd",
            "ftp://h/x",
            "localhost:80/x",
            "http://u:p@h/",
        ] {
            let e = CheckSpec::new("c", url).validate().expect_err(url);
            assert!(matches!(e, SpecError::Url { .. }), "{url}: {e}");
        }
        let mut s = CheckSpec::new("c", "https://example.invalid/health");
        assert!(s.validate().is_ok());
        s.json_field = Some("no-equals".into());
        assert!(s.validate().is_err());
        s.json_field = None;
        s.attempts = 0;
        assert!(s.validate().is_err());
        s.attempts = 1;
        s.host_header = Some("a b".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn tokens_travel_in_clear_text_only_to_loopback() {
        let ok = |u: &str| token_may_travel_to(&u.parse().expect("uri"));
        assert!(ok("https://app.example.com/"));
        assert!(ok("http://localhost:3666/health"));
        assert!(ok("http://127.0.0.2/"));
        assert!(ok("http://[::1]:80/"));
        assert!(!ok("http://10.0.0.5/"));
        assert!(!ok("http://app.example.com/"));
    }

    #[test]
    fn worst_case_counts_attempts_and_pauses() {
        let mut s = CheckSpec::new("c", "http://localhost/");
        s.timeout = Duration::from_secs(2);
        s.attempts = 3;
        assert_eq!(s.worst_case(), Duration::from_millis(6000 + 500 + 1000));
    }

    #[tokio::test]
    async fn token_file_must_be_one_printable_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good");
        std::fs::write(&good, "abc.DEF-123\n").expect("write");
        assert_eq!(read_token(&good).await.expect("token"), "abc.DEF-123");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "line1\nsecret-line2\n").expect("write");
        let e = read_token(&bad).await.expect_err("two lines").to_string();
        assert!(!e.contains("secret"), "the content must not be echoed: {e}");
    }

    /// A one-connection-at-a-time server answering every request with `status` and `body`,
    /// counting requests and remembering the last Authorization header.
    async fn serve(
        status: u16,
        body: &'static str,
    ) -> (String, Arc<std::sync::Mutex<(u32, String)>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new((0u32, String::new())));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let auth = req
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or_default()
                    .to_string();
                if let Ok(mut g) = seen2.lock() {
                    g.0 += 1;
                    g.1 = auth;
                }
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_wrong_status_fails_after_every_attempt_with_doubling_pauses() {
        let (base, seen) = serve(200, "fine").await;
        let mut spec = CheckSpec::new("wrong", format!("{base}/health"));
        spec.expect_status = 204;
        spec.attempts = 3;
        let r = run(&spec).await;
        assert!(!r.ok);
        assert_eq!(r.attempts, 3);
        assert_eq!(r.status, Some(200));
        assert_eq!(r.detail, "status 200, expected 204");
        assert!(r.elapsed_ms >= 1500, "pauses 0.5 s + 1 s: {}", r.elapsed_ms);
        assert_eq!(seen.lock().expect("lock").0, 3);
    }

    #[tokio::test]
    async fn bearer_token_is_sent_and_never_reported() {
        let (base, seen) = serve(200, "{\"status\":\"ok\"}").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "t0ken-value\n").expect("write");
        let mut spec = CheckSpec::new("auth", format!("{base}/private"));
        spec.bearer_token_file = Some(token);
        spec.json_field = Some("status=ok".into());
        let r = run(&spec).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.attempts, 1);
        assert_eq!(seen.lock().expect("lock").1, "Bearer t0ken-value");
        assert!(!format!("{r:?}").contains("t0ken-value"));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_failed_check_not_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let mut spec = CheckSpec::new("down", format!("http://127.0.0.1:{port}/"));
        spec.attempts = 1;
        let r = run(&spec).await;
        assert!(!r.ok && r.status.is_none());
        assert!(r.detail.contains("onnection refused"), "{}", r.detail);
    }
}
