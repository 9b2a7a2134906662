//! libpq connection strings, parsed the way libpq parses them: the keyword form (`host = db
//! port=5432 application_name='my app'`, spaces around `=`, single quotes with `\'` and `\\`)
//! and the URI form (`postgresql://user:pw@host1:5432,host2/db?sslmode=require`, every part
//! percent-decoded, so `?pass%77ord=x` is the keyword `password`).
//!
//! One parser for every question the agent asks about a `conninfo`: does it carry a password
//! (refused by config validation: passwords live in `password_file`), which hosts does it
//! reach and are they all on this machine (a remote host must use verified TLS), what `sslmode`
//! does it ask for. [`ConnInfo::to_keywords`] writes it back in the keyword form, without the
//! password, for `pg_dump --dbname=…` and for the agent's own connections, so what runs is what
//! was checked.

use std::fmt::Write as _;
use std::net::IpAddr;

/// A parsed connection string: keyword → value pairs in order (a later one wins, like libpq).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    params: Vec<(String, String)>,
    /// Where a password was found, for messages ("key `password`", "the URI's user:password@").
    password_at: Vec<String>,
}

/// Why a connection string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    /// The keyword form is malformed.
    #[error("malformed connection string at byte {at}: {what}")]
    Syntax {
        /// Byte offset of the problem.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The URI form is malformed.
    #[error("malformed connection URI: {0}")]
    Uri(String),
}

const URI_SCHEMES: [&str; 2] = ["postgresql://", "postgres://"];

/// Parses a connection string in either form.
///
/// # Errors
/// [`ConnInfoError`] saying where the string is malformed (never repeating values: they may be
/// secrets).
pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
    let t = s.trim();
    if URI_SCHEMES.iter().any(|p| t.starts_with(p)) {
        parse_uri(t)
    } else {
        parse_keywords(s)
    }
}

impl ConnInfo {
    /// The value of `key` (the last one given), if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every keyword → value pair, in the order given.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Where the string carries a password: empty when it carries none. Each entry names the
    /// place (`key \`password\``, `the URI's user:password@ part`, ...), never the value.
    pub fn password_locations(&self) -> &[String] {
        &self.password_at
    }

    /// The `sslmode` asked for, if any.
    pub fn sslmode(&self) -> Option<&str> {
        self.get("sslmode")
    }

    /// The hosts this string reaches: every `host` and `hostaddr` entry (comma lists split);
    /// empty for the default unix socket.
    pub fn hosts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for key in ["host", "hostaddr"] {
            if let Some(v) = self.get(key) {
                out.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|h| !h.is_empty())
                        .map(String::from),
                );
            }
        }
        out
    }

    /// The hosts that are not on this machine (not a unix socket, `localhost` or a loopback
    /// address). Empty when every connection stays on this machine.
    pub fn remote_hosts(&self) -> Vec<String> {
        self.hosts().into_iter().filter(|h| !is_local(h)).collect()
    }

    /// The keyword form, every value quoted where needed, leaving out the keys in `skip` and
    /// always leaving out `password`.
    pub fn to_keywords(&self, skip: &[&str]) -> String {
        let mut out = String::new();
        for (k, v) in &self.params {
            if k.eq_ignore_ascii_case("password") || skip.contains(&k.as_str()) {
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{k}={}", quote(v));
        }
        out
    }
}

/// Whether a host name or address is this machine: a unix socket folder (`/…`, `@…`),
/// `localhost`, or a loopback address.
pub fn is_local(host: &str) -> bool {
    let h = host.trim();
    if h.is_empty() || h.starts_with('/') || h.starts_with('@') {
        return true;
    }
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,@%+".contains(c));
    if plain {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn push(info: &mut ConnInfo, key: String, value: String, place: String) {
    if key.eq_ignore_ascii_case("password") {
        info.password_at.push(place);
    } else if key == "dbname"
        && (value.contains('=') || URI_SCHEMES.iter().any(|p| value.starts_with(p)))
    {
        // libpq expands a `dbname` that is itself a connection string: look inside it too.
        if let Ok(inner) = parse(&value)
            && !inner.password_at.is_empty()
        {
            info.password_at.push(format!(
                "{place} (a connection string that holds a password)"
            ));
        }
    }
    info.params.push((key, value));
}

fn parse_keywords(s: &str) -> Result<ConnInfo, ConnInfoError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut info = ConnInfo::default();
    let ws = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return Ok(info);
        }
        let start = i;
        while i < b.len() && !ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        if key.is_empty() {
            return Err(ConnInfoError::Syntax {
                at: i,
                what: "a keyword is missing before `=`",
            });
        }
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(ConnInfoError::Syntax {
                at: i,
                what: "missing `=` after a keyword",
            });
        }
        i += 1;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(ConnInfoError::Syntax {
                            at: i,
                            what: "unterminated quoted value",
                        });
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !ws(b[i]) {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        let value = String::from_utf8(value).map_err(|_| ConnInfoError::Syntax {
            at: i,
            what: "a value is not UTF-8",
        })?;
        push(&mut info, key.to_string(), value, format!("key `{key}`"));
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConnInfoError::Uri(format!("bad percent-escape in {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::Uri(format!("{what} is not UTF-8")))
}

fn parse_uri(s: &str) -> Result<ConnInfo, ConnInfoError> {
    let rest = URI_SCHEMES
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let mut info = ConnInfo::default();
    let hostlist = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, pw) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                info.params
                    .push(("user".into(), percent_decode(user, "the user name")?));
            }
            if let Some(p) = pw {
                // Even an empty one: it says the operator meant to put a password here.
                let _ = percent_decode(p, "the password")?;
                info.password_at
                    .push("the URI's user:password@ part".into());
            }
            hosts
        }
        None => authority,
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in hostlist.split(',') {
        let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| ConnInfoError::Uri("an IPv6 address lacks its `]`".into()))?;
            (h.to_string(), after.strip_prefix(':').unwrap_or(""))
        } else {
            match entry.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (entry.to_string(), ""),
            }
        };
        hosts.push(percent_decode(&host, "a host")?);
        if !port.is_empty() && !port.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ConnInfoError::Uri("a port is not a number".into()));
        }
        ports.push(port.to_string());
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        info.params.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        info.params.push(("port".into(), ports.join(",")));
    }
    if let Some(p) = path
        && !p.is_empty()
    {
        info.params
            .push(("dbname".into(), percent_decode(p, "the database name")?));
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConnInfoError::Uri("a query parameter has no `=`".into()))?;
            let key = percent_decode(k, "a parameter name")?;
            let value = percent_decode(v, "a parameter value")?;
            // libpq's URI spelling of hostaddr/host parameters is the keyword itself.
            let place = format!("query parameter `{k}`");
            push(&mut info, key, value, place);
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> Vec<String> {
        parse(s).expect("parses").password_locations().to_vec()
    }

    #[test]
    fn keyword_form_with_spaces_and_quotes() {
        let c = parse("host = db.example port=5432 password = x application_name='my \\'app\\''")
            .expect("parses");
        assert_eq!(c.get("host"), Some("db.example"));
        assert_eq!(c.get("application_name"), Some("my 'app'"));
        assert_eq!(c.password_locations(), ["key `password`"]);
        assert_eq!(
            c.to_keywords(&[]),
            "host=db.example port=5432 application_name='my \\'app\\''"
        );
    }

    #[test]
    fn every_spelling_of_a_password_is_found() {
        assert!(pw("host=/tmp user=u").is_empty());
        assert_eq!(pw("password=x").len(), 1);
        assert_eq!(pw("host=h\tpassword\t=\t'a b'").len(), 1);
        assert_eq!(pw("postgresql://u:secret@h/db").len(), 1);
        assert_eq!(pw("postgres://u:@h/db").len(), 1);
        assert_eq!(
            pw("postgresql://u@h/db?pass%77ord=x"),
            ["query parameter `pass%77ord`"]
        );
        assert_eq!(pw("postgresql://u@h/db?password=x").len(), 1);
        assert_eq!(pw("dbname='host=h password=x'").len(), 1);
        assert!(pw("postgresql://u@h/db").is_empty());
        assert!(pw("postgresql://h/d%40b?sslmode=require").is_empty());
    }

    #[test]
    fn uris_become_keywords() {
        let c = parse(
            "postgresql://a%20b@[::1]:5433,h2:5434/my%2Fdb?sslmode=verify-full&application_name=x",
        )
        .expect("parses");
        assert_eq!(c.get("user"), Some("a b"));
        assert_eq!(c.get("host"), Some("::1,h2"));
        assert_eq!(c.get("port"), Some("5433,5434"));
        assert_eq!(c.get("dbname"), Some("my/db"));
        assert_eq!(c.sslmode(), Some("verify-full"));
        assert_eq!(c.remote_hosts(), ["h2"]);
        let sock = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app").expect("parses");
        assert_eq!(sock.get("host"), Some("/var/run/postgresql"));
        assert!(sock.remote_hosts().is_empty());
        assert_eq!(
            parse("postgresql://u:p@h/db").expect("p").to_keywords(&[]),
            "user=u host=h dbname=db"
        );
    }

    #[test]
    fn local_hosts() {
        for h in [
            "",
            "/run/postgresql",
            "@abstract",
            "localhost",
            "127.0.0.2",
            "::1",
            "[::1]",
        ] {
            assert!(is_local(h), "{h}");
        }
        for h in ["db.example.com", "10.0.0.5", "192.168.1.1"] {
            assert!(!is_local(h), "{h}");
        }
        let c = parse("host=/tmp hostaddr=10.1.2.3").expect("parses");
        assert_eq!(c.remote_hosts(), ["10.1.2.3"]);
    }

    #[test]
    fn malformed_strings_are_errors_without_values() {
        let e = parse("host=h password='unterminated").expect_err("bad");
        assert!(!e.to_string().contains("unterminated'"), "{e}");
        assert!(parse("host").is_err());
        assert!(parse("=x").is_err());
        assert!(parse("postgresql://h/db?pass%7").is_err());
        assert!(parse("postgresql://h:port/db").is_err());
    }
}
