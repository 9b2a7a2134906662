//! A `.env` parser and editor that changes only the lines it must: comments, blank lines, order,
//! `export ` prefixes, inline comments, quoting and line endings (LF or CRLF, per line) of every
//! other line come back byte for byte. Pure: no I/O.
//!
//! Reading follows dotenv (the loader Node apps under PM2 use): `KEY=value`, optional `export `,
//! spaces around `=`, values in single, double or backtick quotes (a quoted value may span
//! lines), `\n` and `\r` expanded inside double quotes only, and in an unquoted value a `#`
//! starts a comment and surrounding whitespace is trimmed. When a key is set twice the last one
//! wins. Lines that are none of this are kept as they are.
//!
//! Writing a value keeps the line's quoting when it can hold the new value, else picks the
//! simplest that can: bare for plain values, then single quotes (literal in every loader), then
//! double, then backticks. Values are one line.

/// Applies `overrides` (key → value) to `.env` bytes; the bytes come back unchanged when there
/// are none. `hostshift sync` applies a plan's overrides on the new host this way and `hostshift
/// verify` recomputes the expected file with it.
///
/// # Errors
/// When the file is not UTF-8 text or an override cannot be written.
pub fn apply(
    bytes: &[u8],
    overrides: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>, EditError> {
    if overrides.is_empty() {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| EditError::NotText)?;
    let ops: Vec<(String, Option<String>)> = overrides
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    edit(text, &ops).map(|(t, _)| t.into_bytes())
}

/// Shown instead of a secret value.
pub const REDACTED: &str = "*****";
/// Shown for a key the file does not set.
pub const ABSENT: &str = "(not set)";

/// Parts of a key that make its value a secret (compared case-insensitively).
const SECRET_MARKERS: [&str; 9] = [
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "KEY",
    "PRIVATE",
    "CREDENTIAL",
    "DATABASE_URL",
    "DSN",
];

/// The value of `key` is a secret (never shown unless asked for).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| k.contains(m))
}

/// A value for people: `*****` for secrets, `(not set)`, `""` for empty, newlines escaped.
pub fn shown(key: &str, value: Option<&str>) -> String {
    match value {
        None => ABSENT.into(),
        Some(_) if is_secret(key) => REDACTED.into(),
        Some("") => "\"\"".into(),
        Some(v) => v.replace('\r', "\\r").replace('\n', "\\n"),
    }
}

/// A value as sync output, `--json` and reports show an override: a digest, never the value,
/// whatever the key's name (`SMTP_PASS`, `STRIPE_SK` look harmless to a name list): the first
/// 12 hex digits of its SHA-256, or `(not set)`. Equal digests mean equal values, which is what
/// an operator checks.
pub fn fingerprint(value: Option<&str>) -> String {
    match value {
        None => ABSENT.into(),
        Some(v) => {
            let d = crate::digest::Sha256Digest::of(v.as_bytes()).to_string();
            format!("sha256:{}", &d[..12.min(d.len())])
        }
    }
}

/// Keys hostshift sets: a letter or `_`, then letters, digits, `_`, `.` or `-`.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(key_char)
        && key.len() <= 255
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// A change that cannot be written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Not a key ([`valid_key`]).
    #[error(
        "{0:?} is not a valid key: use letters, digits, '_', '.' or '-', starting with a letter or '_'"
    )]
    InvalidKey(String),
    /// A value with a line break.
    #[error("the value for {0} has a line break: values set this way are one line")]
    Multiline(String),
    /// A value holding all three quote characters.
    #[error(
        "the value for {0} holds ', \" and ` (or \" with \\ or $): no .env quoting keeps it intact"
    )]
    Unquotable(String),
    /// The file is not UTF-8 text, so it is not a `.env` file.
    #[error("the file is not UTF-8 text: overrides apply to .env files only")]
    NotText,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quote {
    Bare,
    Single,
    Double,
    Backtick,
}

#[derive(Clone, Debug)]
struct Line {
    /// Without its line ending; a quoted value spanning lines keeps its inner line breaks.
    text: String,
    /// `"\n"`, `"\r\n"`, or `""` for a last line without one.
    eol: &'static str,
    entry: Option<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    key: String,
    /// As the app sees it.
    value: String,
    /// Byte range of the raw value (quotes included) in `text`.
    span: (usize, usize),
    quote: Quote,
    export: bool,
}

/// A parsed `.env` file.
#[derive(Clone, Debug)]
pub struct EnvFile {
    bom: bool,
    lines: Vec<Line>,
}

/// One key whose value an edit changed (`None`: not set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: String,
    /// Before.
    pub old: Option<String>,
    /// After.
    pub new: Option<String>,
}

/// Where the line starting at `from` ends: (end of content, line ending, start of next line).
fn split_eol(body: &str, from: usize) -> (usize, &'static str, usize) {
    match body[from..].find('\n') {
        Some(i) => {
            let nl = from + i;
            if nl > from && body.as_bytes()[nl - 1] == b'\r' {
                (nl - 1, "\r\n", nl + 1)
            } else {
                (nl, "\n", nl + 1)
            }
        }
        None => (body.len(), "", body.len()),
    }
}

fn skip_ws(s: &str, mut i: usize) -> usize {
    while i < s.len() && matches!(s.as_bytes()[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// Whitespace, optionally followed by a `#` comment, up to the end.
fn only_comment_after(s: &str) -> bool {
    let t = s.trim_start_matches([' ', '\t']);
    t.is_empty() || t.starts_with('#')
}

/// Tries to read an entry from the line at `start` (content ending at `end`). Returns the entry,
/// with its span relative to `start`, and where its last line ends.
fn parse_entry(
    body: &str,
    start: usize,
    end: usize,
) -> Option<(Entry, usize, &'static str, usize)> {
    let s = &body[start..end];
    let mut i = skip_ws(s, 0);
    let mut export = false;
    if s[i..].starts_with("export") && matches!(s.as_bytes().get(i + 6), Some(b' ' | b'\t')) {
        export = true;
        i = skip_ws(s, i + 6);
    }
    let key_start = i;
    while i < s.len() && key_char(s.as_bytes()[i] as char) {
        i += 1;
    }
    if i == key_start {
        return None;
    }
    let key = s[key_start..i].to_string();
    i = skip_ws(s, i);
    if s.as_bytes().get(i) != Some(&b'=') {
        return None;
    }
    let vs = skip_ws(s, i + 1);
    let entry = |value: String, ve: usize, quote| Entry {
        key: key.clone(),
        value,
        span: (vs, ve),
        quote,
        export,
    };
    if let Some(q) = s[vs..]
        .chars()
        .next()
        .filter(|c| matches!(c, '\'' | '"' | '`'))
    {
        // The closing quote may be on a later line; a backslash-escaped quote does not close.
        let open = start + vs;
        let bytes = body.as_bytes();
        let mut j = open + 1;
        while j < body.len() {
            match bytes[j] {
                b'\\' if bytes.get(j + 1) == Some(&(q as u8)) => j += 2,
                b if b == q as u8 => break,
                _ => j += 1,
            }
        }
        if j < body.len() {
            let (last_end, eol, next) = split_eol(body, j);
            if only_comment_after(&body[j + 1..last_end]) {
                let inner = body[open + 1..j].replace("\r\n", "\n");
                let value = if q == '"' {
                    inner.replace("\\n", "\n").replace("\\r", "\r")
                } else {
                    inner
                };
                let quote = match q {
                    '\'' => Quote::Single,
                    '"' => Quote::Double,
                    _ => Quote::Backtick,
                };
                return Some((entry(value, j + 1 - start, quote), last_end, eol, next));
            }
        }
    }
    let raw = &s[vs..];
    let cut = raw.find('#').unwrap_or(raw.len());
    let value = raw[..cut].trim_end_matches([' ', '\t']);
    let (_, eol, next) = split_eol(body, end);
    Some((
        entry(value.to_string(), vs + value.len(), Quote::Bare),
        end,
        eol,
        next,
    ))
}

fn bare_safe(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:@%+,=~-".contains(c))
}

/// The raw text for `value`, in `prefer`'s quoting when it can hold it.
fn encode(key: &str, value: &str, prefer: Quote) -> Result<(String, Quote), EditError> {
    let can = |q: Quote| match q {
        Quote::Bare => bare_safe(value),
        Quote::Single => !value.contains('\''),
        Quote::Double => !value.contains(['"', '\\', '$']),
        Quote::Backtick => !value.contains('`'),
    };
    let q = [
        prefer,
        Quote::Bare,
        Quote::Single,
        Quote::Double,
        Quote::Backtick,
    ]
    .into_iter()
    .find(|q| can(*q))
    .ok_or_else(|| EditError::Unquotable(key.to_string()))?;
    let raw = match q {
        Quote::Bare => value.to_string(),
        Quote::Single => format!("'{value}'"),
        Quote::Double => format!("\"{value}\""),
        Quote::Backtick => format!("`{value}`"),
    };
    Ok((raw, q))
}

impl EnvFile {
    /// Parses a file. Never fails: what is not an entry is kept as an opaque line.
    pub fn parse(text: &str) -> Self {
        let (bom, body) = match text.strip_prefix('\u{feff}') {
            Some(b) => (true, b),
            None => (false, text),
        };
        let mut lines = Vec::new();
        let mut pos = 0;
        while pos < body.len() {
            let (end, eol, next) = split_eol(body, pos);
            let trimmed = body[pos..end].trim_start_matches([' ', '\t']);
            let parsed = if trimmed.starts_with('#') {
                None
            } else {
                parse_entry(body, pos, end)
            };
            match parsed {
                Some((entry, last_end, eol, next)) => {
                    lines.push(Line {
                        text: body[pos..last_end].to_string(),
                        eol,
                        entry: Some(entry),
                    });
                    pos = next;
                }
                None => {
                    lines.push(Line {
                        text: body[pos..end].to_string(),
                        eol,
                        entry: None,
                    });
                    pos = next;
                }
            }
        }
        Self { bom, lines }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.bom {
            out.push('\u{feff}');
        }
        for l in &self.lines {
            out.push_str(&l.text);
            out.push_str(l.eol);
        }
        out
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|l| l.entry.as_ref())
    }

    /// The value of `key` (its last definition wins, as in dotenv).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries()
            .filter(|e| e.key == key)
            .last()
            .map(|e| e.value.as_str())
    }

    /// Keys in the order they first appear.
    pub fn keys(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in self.entries() {
            if !out.contains(&e.key.as_str()) {
                out.push(&e.key);
            }
        }
        out
    }

    /// The line ending new lines get: the first line's, else LF.
    fn newline(&self) -> &'static str {
        self.lines
            .iter()
            .map(|l| l.eol)
            .find(|e| !e.is_empty())
            .unwrap_or("\n")
    }

    /// Sets `key` in its last definition, keeping that line's prefix, quoting (when it can hold
    /// the value) and inline comment; appends `KEY=value` when the file lacks the key.
    ///
    /// # Errors
    /// An invalid key, a value with a line break, or one no quoting can hold.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), EditError> {
        if !valid_key(key) {
            return Err(EditError::InvalidKey(key.to_string()));
        }
        if value.contains(['\n', '\r']) {
            return Err(EditError::Multiline(key.to_string()));
        }
        let last = self
            .lines
            .iter_mut()
            .rev()
            .find(|l| l.entry.as_ref().is_some_and(|e| e.key == key));
        if let Some(line) = last {
            let Some(e) = line.entry.as_mut() else {
                return Ok(());
            };
            if e.value == value {
                return Ok(());
            }
            let (raw, quote) = encode(key, value, e.quote)?;
            line.text.replace_range(e.span.0..e.span.1, &raw);
            e.span.1 = e.span.0 + raw.len();
            e.value = value.to_string();
            e.quote = quote;
            return Ok(());
        }
        let (raw, quote) = encode(key, value, Quote::Bare)?;
        let nl = self.newline();
        if let Some(l) = self.lines.last_mut()
            && l.eol.is_empty()
        {
            l.eol = nl;
        }
        // Follow the file's habit: `export KEY=` when every entry has it.
        let export = self.entries().next().is_some() && self.entries().all(|e| e.export);
        let prefix = if export { "export " } else { "" };
        let text = format!("{prefix}{key}={raw}");
        let vs = prefix.len() + key.len() + 1;
        self.lines.push(Line {
            text,
            eol: nl,
            entry: Some(Entry {
                key: key.to_string(),
                value: value.to_string(),
                span: (vs, vs + raw.len()),
                quote,
                export,
            }),
        });
        Ok(())
    }

    /// Removes every definition of `key`; true when there was one.
    pub fn unset(&mut self, key: &str) -> bool {
        let before = self.lines.len();
        self.lines
            .retain(|l| l.entry.as_ref().is_none_or(|e| e.key != key));
        self.lines.len() != before
    }
}

/// Applies `ops` in order (`(key, Some(value))` sets, `(key, None)` unsets) to `text`. Returns
/// the new text — `text` itself, byte for byte, when no value changed — and the changed keys in
/// the order they were first named.
///
/// # Errors
/// The first change that cannot be written; nothing is applied then.
pub fn edit(
    text: &str,
    ops: &[(String, Option<String>)],
) -> Result<(String, Vec<Change>), EditError> {
    let mut file = EnvFile::parse(text);
    let mut before: Vec<(String, Option<String>)> = Vec::new();
    for (key, value) in ops {
        if !valid_key(key) {
            return Err(EditError::InvalidKey(key.clone()));
        }
        if !before.iter().any(|(k, _)| k == key) {
            before.push((key.clone(), file.get(key).map(String::from)));
        }
        match value {
            Some(v) => file.set(key, v)?,
            None => {
                file.unset(key);
            }
        }
    }
    let changes: Vec<Change> = before
        .into_iter()
        .filter_map(|(key, old)| {
            let new = file.get(&key).map(String::from);
            (old != new).then_some(Change { key, old, new })
        })
        .collect();
    let out = if changes.is_empty() {
        text.to_string()
    } else {
        file.render()
    };
    Ok((out, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKY: &str = "\u{feff}# backend settings\r\n\r\nexport PORT=3666\r\nJWT_SECRET='s3cr3t'  # rotate yearly\r\n  URL = http://x/?a=b&c=d#frag\r\nMSG=\"line1\\nline2\"\r\nCERT=\"-----BEGIN\r\nabc\r\n-----END\"\r\nnot an entry\r\nEMPTY=\r\nTICK=`it's`\r\nLAST=1";

    fn set(text: &str, k: &str, v: &str) -> String {
        edit(text, &[(k.into(), Some(v.into()))]).expect("edit").0
    }

    #[test]
    fn parsing_and_rendering_round_trips_byte_for_byte() {
        for text in [
            TRICKY,
            "",
            "\n",
            "A=1",
            "A=1\n\n# end",
            "weird line\nA='unterminated\n",
        ] {
            assert_eq!(EnvFile::parse(text).render(), text, "{text:?}");
        }
    }

    #[test]
    fn values_are_read_as_dotenv_reads_them() {
        let f = EnvFile::parse(TRICKY);
        assert_eq!(f.get("PORT"), Some("3666"));
        assert_eq!(f.get("JWT_SECRET"), Some("s3cr3t"));
        assert_eq!(
            f.get("URL"),
            Some("http://x/?a=b&c=d"),
            "# starts a comment in bare values"
        );
        assert_eq!(f.get("MSG"), Some("line1\nline2"));
        assert_eq!(f.get("CERT"), Some("-----BEGIN\nabc\n-----END"));
        assert_eq!(f.get("EMPTY"), Some(""));
        assert_eq!(f.get("TICK"), Some("it's"));
        assert_eq!(f.get("LAST"), Some("1"));
        assert_eq!(f.get("not"), None);
        assert_eq!(
            f.keys(),
            [
                "PORT",
                "JWT_SECRET",
                "URL",
                "MSG",
                "CERT",
                "EMPTY",
                "TICK",
                "LAST"
            ]
        );
    }

    #[test]
    fn set_changes_only_the_value_and_keeps_quotes_comments_export_and_crlf() {
        let out = set(TRICKY, "JWT_SECRET", "n3w");
        assert_eq!(out, TRICKY.replace("'s3cr3t'", "'n3w'"));
        let out = set(TRICKY, "PORT", "4000");
        assert_eq!(out, TRICKY.replace("export PORT=3666", "export PORT=4000"));
        // A multi-line value becomes one line; every other byte stays.
        let out = set(TRICKY, "CERT", "short");
        assert_eq!(
            out,
            TRICKY.replace("\"-----BEGIN\r\nabc\r\n-----END\"", "\"short\"")
        );
    }

    #[test]
    fn equals_signs_and_spaces_in_values_are_kept_and_quoted_when_needed() {
        assert_eq!(set("A=1\n", "A", "x=y=z"), "A=x=y=z\n");
        assert_eq!(set("A=1\n", "A", "two words"), "A='two words'\n");
        assert_eq!(set("A=1\n", "A", "it's"), "A=\"it's\"\n");
        assert_eq!(set("A=1\n", "A", "it's \"q\""), "A=`it's \"q\"`\n");
        assert_eq!(set("A=1\n", "A", "a#b"), "A='a#b'\n");
        assert_eq!(
            set("A=\"1\"\n", "A", "2"),
            "A=\"2\"\n",
            "the line's quoting is kept"
        );
        let f = EnvFile::parse(&set("A=1\n", "A", "x=y #z"));
        assert_eq!(f.get("A"), Some("x=y #z"));
        assert_eq!(
            edit("A=1\n", &[("A".into(), Some("'\"`".into()))]),
            Err(EditError::Unquotable("A".into()))
        );
        assert_eq!(
            edit("A=1\n", &[("A".into(), Some("a\nb".into()))]),
            Err(EditError::Multiline("A".into()))
        );
    }

    #[test]
    fn a_missing_key_is_appended_with_the_files_line_ending_and_export_habit() {
        assert_eq!(set("A=1\r\nB=2\r\n", "C", "3"), "A=1\r\nB=2\r\nC=3\r\n");
        assert_eq!(set("A=1", "C", "3"), "A=1\nC=3\n");
        assert_eq!(set("", "C", "3"), "C=3\n");
        assert_eq!(set("export A=1\n", "C", "3"), "export A=1\nexport C=3\n");
        assert_eq!(
            set("# only a comment\n", "C", "3"),
            "# only a comment\nC=3\n"
        );
    }

    #[test]
    fn unset_removes_every_definition_and_nothing_else() {
        let text = "# c\nA=1\nB=2\nA=3\n\n";
        let (out, changes) = edit(text, &[("A".into(), None)]).expect("edit");
        assert_eq!(out, "# c\nB=2\n\n");
        assert_eq!(
            changes,
            vec![Change {
                key: "A".into(),
                old: Some("3".into()),
                new: None
            }]
        );
    }

    #[test]
    fn duplicates_set_the_last_definition_which_is_the_one_that_counts() {
        assert_eq!(set("A=1\nA=2\n", "A", "9"), "A=1\nA=9\n");
    }

    #[test]
    fn no_change_returns_the_original_bytes_and_no_diff() {
        let (out, changes) = edit(
            TRICKY,
            &[("PORT".into(), Some("3666".into())), ("NOPE".into(), None)],
        )
        .expect("edit");
        assert_eq!(out, TRICKY);
        assert!(changes.is_empty());
    }

    #[test]
    fn invalid_keys_are_refused() {
        for k in ["", "1A", "A B", "A=B", "ä"] {
            assert_eq!(
                edit("", &[(k.into(), Some("v".into()))]),
                Err(EditError::InvalidKey(k.into())),
                "{k:?}"
            );
        }
    }

    #[test]
    fn secrets_are_recognised_by_key_and_redacted() {
        for k in [
            "JWT_SECRET",
            "db_password",
            "PASSWD",
            "GITHUB_TOKEN",
            "API_KEY",
            "PRIVATE_PEM",
            "AWS_CREDENTIALS",
            "DATABASE_URL",
            "SENTRY_DSN",
        ] {
            assert!(is_secret(k), "{k}");
            assert_eq!(shown(k, Some("v")), REDACTED);
        }
        for k in ["USE_POSTGRES", "PORT", "FEATURE_FLAG"] {
            assert!(!is_secret(k), "{k}");
        }
        assert_eq!(shown("USE_POSTGRES", Some("true")), "true");
        assert_eq!(shown("X", None), ABSENT);
        assert_eq!(shown("X", Some("")), "\"\"");
    }
}
