//! The maintenance version of a site file, generated from the original by inserting a few lines
//! at the top of each `server { … }` block and changing nothing else.
//!
//! What is inserted (checked against nginx 1.22):
//!
//! ```nginx
//! error_page 503 @hostshift_maintenance;
//! if ($uri !~ "^(?:/health|/api/status)(?:/.*)?$") {
//!     return 503;
//! }
//! location @hostshift_maintenance {
//!     default_type text/html;
//!     add_header Retry-After 120 always;
//!     add_header Cache-Control "no-store" always;
//!     return 503 "<!doctype html>…";
//! }
//! ```
//!
//! Why this shape: a server-level `if … return` runs in nginx's *server rewrite* phase, before
//! any `location` is chosen, so it wins over whatever the original's locations do (`proxy_pass`,
//! `return 301`, exact matches). Requests for a pass path fall through untouched and are served
//! exactly as the original serves them — same locations, same `proxy_pass`. The `error_page`
//! comes first in the block so it takes precedence over an `error_page 503` of the original, and
//! the named location is reached without running the server rewrite phase again (no loop).
//! Upstream 503s of pass paths pass through unchanged (`proxy_intercept_errors` is off by default).
//!
//! The parser is a small version of nginx's own tokenizer (`ngx_conf_read_token`): comments,
//! quoted strings, escapes and `${var}` are honoured, so braces inside them do not confuse it.
//! Only `server` blocks at the top of the file or inside `http { }` are touched (not `stream` /
//! `mail` ones, not `server` lines inside `upstream`).

use std::path::Path;

/// What is wrong with a pass path or a site file: one sentence for the operator, who fixes the
/// request or the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// A pass path (or the list of them) the agent refuses.
    #[error("{0}")]
    PassPath(String),
    /// Text nginx's tokenizer would not read the same way, or a site without a `server` block.
    #[error("{0}")]
    Syntax(String),
}

/// Appears in every generated file; a site file containing it is a maintenance version.
pub const MARKER: &str = "hostshift-maintenance";
/// `Retry-After` seconds when the request gives none.
pub const DEFAULT_RETRY_AFTER: u32 = 120;
/// Longest `Retry-After` accepted (a day).
pub const MAX_RETRY_AFTER: u32 = 86_400;
/// Most pass paths accepted.
pub const MAX_PASS_PATHS: usize = 32;
/// The page served with the 503. It must not contain `"`, `\` or `$`: it sits inside an nginx
/// string (a unit test guards this).
pub const PAGE: &str = "<!doctype html><html><head><meta charset=utf-8><title>Down for maintenance</title></head><body style='font-family:sans-serif;max-width:36em;margin:4em auto'><h1>Down for maintenance</h1><p>We are moving to a new server. Please try again in a few minutes.</p></body></html>\\n";

/// A path that still reaches the app, normalized (no trailing `/`).
///
/// # Errors
/// A sentence saying what is wrong: not absolute, `/` itself, characters outside
/// `A-Z a-z 0-9 / . _ - ~`, empty, `.` or `..` segments.
pub fn pass_path(p: &str) -> Result<String, SiteError> {
    let trimmed = p.trim_end_matches('/');
    if !p.starts_with('/') {
        return Err(SiteError::PassPath(format!(
            "pass path {p:?} must start with '/'"
        )));
    }
    if trimmed.is_empty() {
        return Err(SiteError::PassPath(
            "pass path \"/\" would let every request through: name the paths, e.g. \"/health\""
                .into(),
        ));
    }
    if trimmed.len() > 200 {
        return Err(SiteError::PassPath(format!(
            "pass path {p:?} is longer than 200 characters"
        )));
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-~".contains(*c)))
    {
        return Err(SiteError::PassPath(format!(
            "pass path {p:?} contains {c:?}: use letters, digits and / . _ - ~ only"
        )));
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(SiteError::PassPath(format!(
            "pass path {p:?} has an empty, '.' or '..' segment"
        )));
    }
    Ok(trimmed.to_string())
}

/// Normalizes and de-duplicates pass paths, keeping their order.
///
/// # Errors
/// The first invalid path (see [`pass_path`]), or too many of them.
pub fn pass_paths(paths: &[String]) -> Result<Vec<String>, SiteError> {
    if paths.len() > MAX_PASS_PATHS {
        return Err(SiteError::PassPath(format!(
            "at most {MAX_PASS_PATHS} pass paths"
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let p = pass_path(p)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether `text` is a maintenance version written by [`generate`].
pub fn is_generated(text: &[u8]) -> bool {
    text.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())
}

/// The maintenance version of `original`: a header comment naming where the original is kept,
/// and the maintenance lines at the top of every `server` block. `pass` must come from
/// [`pass_paths`].
///
/// # Errors
/// When the file cannot be parsed (unbalanced braces, an unterminated string) or has no `server`
/// block to put in maintenance.
pub fn generate(
    original: &str,
    pass: &[String],
    retry_after: u32,
    saved_at: &Path,
) -> Result<String, SiteError> {
    let blocks = server_blocks(original)?;
    if blocks.is_empty() {
        return Err(SiteError::Syntax(
            "it has no `server { … }` block to put in maintenance".into(),
        ));
    }
    let saved = saved_at.display().to_string().replace(['\n', '\r'], " ");
    let mut out = String::with_capacity(original.len() + blocks.len() * 600 + 300);
    out.push_str(&format!(
        "# {MARKER}: this site is in MAINTENANCE MODE (written by hostshift-agent; do not edit).\n\
         # The original is saved in {saved}\n\
         # and is put back byte for byte by `hostshift nginx maintenance off`.\n"
    ));
    let mut at = 0;
    for b in &blocks {
        out.push_str(&original[at..b.body_start]);
        out.push_str(&injection(&b.indent, pass, retry_after));
        at = b.body_start;
    }
    out.push_str(&original[at..]);
    Ok(out)
}

fn injection(outer: &str, pass: &[String], retry_after: u32) -> String {
    let i = format!("{outer}    ");
    let mut s = String::new();
    s.push('\n');
    s.push_str(&format!(
        "{i}# {MARKER}: begin (requests answer 503, except the pass paths)\n"
    ));
    s.push_str(&format!("{i}error_page 503 @hostshift_maintenance;\n"));
    if pass.is_empty() {
        s.push_str(&format!("{i}return 503;\n"));
    } else {
        let alternatives: Vec<String> = pass.iter().map(|p| p.replace('.', "\\.")).collect();
        s.push_str(&format!(
            "{i}if ($uri !~ \"^(?:{})(?:/.*)?$\") {{\n{i}    return 503;\n{i}}}\n",
            alternatives.join("|")
        ));
    }
    s.push_str(&format!(
        "{i}location @hostshift_maintenance {{\n\
         {i}    default_type text/html;\n\
         {i}    add_header Retry-After {retry_after} always;\n\
         {i}    add_header Cache-Control \"no-store\" always;\n\
         {i}    return 503 \"{PAGE}\";\n\
         {i}}}\n"
    ));
    s.push_str(&format!("{i}# {MARKER}: end\n"));
    s
}

/// A `server` block found in a site file.
#[derive(Debug, PartialEq, Eq)]
struct ServerBlock {
    /// Byte offset just after its `{`.
    body_start: usize,
    /// Leading whitespace of the line holding `server`.
    indent: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Word { variable: bool },
    Quoted(u8),
    Comment,
}

/// Finds the `server` blocks of the `http` context.
fn server_blocks(text: &str) -> Result<Vec<ServerBlock>, SiteError> {
    let mut out = Vec::new();
    walk(text, |st| {
        if let (Some(body_start), [(word, kw)]) = (st.block_body, st.words)
            && word == "server"
            && st.context.iter().all(|b| b == "http")
        {
            let line_start = text[..*kw].rfind('\n').map_or(0, |p| p + 1);
            let indent: String = text[line_start..*kw]
                .chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect();
            out.push(ServerBlock { body_start, indent });
        }
    })?;
    Ok(out)
}

/// The value of a directive of the main context (e.g. `pid`) in a config file's text, quotes
/// removed; `None` when the file does not set it.
///
/// # Errors
/// When the text cannot be parsed.
pub fn main_directive(text: &str, name: &str) -> Result<Option<String>, SiteError> {
    let mut found = None;
    walk(text, |st| {
        if found.is_none()
            && st.block_body.is_none()
            && st.context.is_empty()
            && st.words.first().is_some_and(|(w, _)| w == name)
            && let Some((v, _)) = st.words.get(1)
        {
            found = Some(v.trim_matches(['"', '\'']).to_string());
        }
    })?;
    Ok(found)
}

/// A statement as the tokenizer saw it.
struct Statement<'a> {
    /// Its words (quotes kept), each with its byte offset.
    words: &'a [(String, usize)],
    /// Names of the enclosing blocks, outermost first.
    context: &'a [String],
    /// For a block (`name … {`), the byte offset just after its `{`.
    block_body: Option<usize>,
}

/// Tokenizes config text like nginx does (`ngx_conf_read_token`) and calls `f` for each
/// statement (`…;`) and block opening (`… {`).
fn walk(text: &str, mut f: impl FnMut(Statement<'_>)) -> Result<(), SiteError> {
    let bytes = text.as_bytes();
    let mut stack: Vec<String> = Vec::new();
    let mut words: Vec<(String, usize)> = Vec::new();
    let mut state = State::Between;
    let mut escaped = false;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if escaped {
            escaped = false;
            i += 1;
            continue;
        }
        match state {
            State::Comment => {
                if c == b'\n' {
                    state = State::Between;
                }
            }
            State::Quoted(q) => {
                if c == b'\\' {
                    escaped = true;
                } else if c == q {
                    words.push((text[start..=i].to_string(), start));
                    state = State::Between;
                }
            }
            State::Word { variable } => {
                if c == b'{' && variable {
                    state = State::Word { variable: false };
                } else if c.is_ascii_whitespace() || c == b';' || c == b'{' {
                    words.push((text[start..i].to_string(), start));
                    state = State::Between;
                    continue; // the terminator is handled in the Between state
                } else {
                    state = State::Word {
                        variable: c == b'$',
                    };
                    if c == b'\\' {
                        escaped = true;
                    }
                }
            }
            State::Between => match c {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'#' => state = State::Comment,
                b';' => {
                    if !words.is_empty() {
                        f(Statement {
                            words: &words,
                            context: &stack,
                            block_body: None,
                        });
                    }
                    words.clear();
                }
                b'{' => {
                    f(Statement {
                        words: &words,
                        context: &stack,
                        block_body: Some(i + 1),
                    });
                    stack.push(words.first().map(|(w, _)| w.clone()).unwrap_or_default());
                    words.clear();
                }
                b'}' => {
                    if stack.pop().is_none() {
                        let line = text[..i].matches('\n').count() + 1;
                        return Err(SiteError::Syntax(format!("unexpected '}}' on line {line}")));
                    }
                    words.clear();
                }
                b'"' | b'\'' => {
                    start = i;
                    state = State::Quoted(c);
                }
                _ => {
                    start = i;
                    state = State::Word {
                        variable: c == b'$',
                    };
                    if c == b'\\' {
                        escaped = true;
                    }
                }
            },
        }
        i += 1;
    }
    if matches!(state, State::Quoted(_)) {
        return Err(SiteError::Syntax("a quoted string is not closed".into()));
    }
    if let Some(open) = stack.last() {
        return Err(SiteError::Syntax(format!(
            "the block {open:?} is not closed (missing '}}' at the end of the file)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "# app site\nupstream backend {\n    server 127.0.0.1:3666;\n}\n\nserver {\n    listen 80;\n    server_name app.example.com; # comment with { brace\n    location / {\n        proxy_pass http://backend;\n        add_header X-Note \"a } b\";\n    }\n}\n  server{listen 8080;}\n";

    #[test]
    fn finds_server_blocks_but_not_upstream_servers_or_braces_in_strings_and_comments() {
        let blocks = server_blocks(SITE).expect("parse");
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        assert_eq!(
            &SITE[blocks[0].body_start - 8..blocks[0].body_start],
            "server {"
        );
        assert_eq!(blocks[0].indent, "");
        assert_eq!(blocks[1].indent, "  ");
    }

    #[test]
    fn generated_site_keeps_every_original_byte_in_order() {
        let pass = pass_paths(&["/health".into(), "/api/v1.0/status/".into()]).expect("paths");
        let out = generate(
            SITE,
            &pass,
            120,
            Path::new("/var/lib/hostshift/nginx/site.original"),
        )
        .expect("generate");
        assert!(is_generated(out.as_bytes()));
        assert!(!is_generated(SITE.as_bytes()));
        assert!(
            out.contains("if ($uri !~ \"^(?:/health|/api/v1\\.0/status)(?:/.*)?$\") {"),
            "{out}"
        );
        assert!(out.contains("add_header Retry-After 120 always;"));
        // Removing the header and the inserted lines gives the original back.
        let mut rebuilt = out.splitn(4, '\n').nth(3).expect("header").to_string();
        let (begin, end) = (format!("# {MARKER}: begin"), format!("# {MARKER}: end\n"));
        while let Some(b) = rebuilt.find(&begin) {
            let from = rebuilt[..b].rfind('\n').expect("inserted newline");
            let to = b + rebuilt[b..].find(&end).expect("end tag") + end.len();
            rebuilt.replace_range(from..to, "");
        }
        assert_eq!(rebuilt, SITE);
    }

    #[test]
    fn without_pass_paths_everything_answers_503() {
        let out = generate("server { listen 80; }", &[], 60, Path::new("/s")).expect("generate");
        assert!(
            out.contains("    return 503;\n") && !out.contains("if ($uri"),
            "{out}"
        );
    }

    #[test]
    fn stream_servers_and_broken_files_are_not_touched() {
        let s = "stream { server { listen 12345; proxy_pass db; } }\n";
        let e = generate(s, &[], 60, Path::new("/s")).expect_err("no http server");
        assert!(
            matches!(&e, SiteError::Syntax(m) if m.contains("no `server")),
            "{e}"
        );
        assert!(
            server_blocks("server { listen 80;")
                .expect_err("unclosed")
                .to_string()
                .contains("not closed")
        );
        assert!(
            server_blocks("}")
                .expect_err("stray")
                .to_string()
                .contains("line 1")
        );
        assert!(server_blocks("server { return 200 \"x; }").is_err());
        assert_eq!(server_blocks("http { server { } }").expect("http").len(), 1);
        assert_eq!(
            server_blocks(
                "server { set $a \"${host}\"; set $b $a${host}; location ~ \"^/x{2}$\" { } }"
            )
            .expect("vars")
            .len(),
            1
        );
    }

    #[test]
    fn pass_paths_are_checked_and_normalized() {
        assert_eq!(pass_path("/health/").expect("ok"), "/health");
        for bad in [
            "health", "/", "//", "/a b", "/a\"b", "/a$b", "/x/../y", "/a//b", "/a;b",
        ] {
            assert!(pass_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            pass_paths(&["/a".into(), "/a/".into(), "/b".into()]).expect("ok"),
            vec!["/a", "/b"]
        );
    }

    #[test]
    fn main_directives_are_found_only_at_the_top() {
        let conf = "user www-data;\nhttp { pid /wrong; server { } }\npid \"/run/x.pid\";\n";
        assert_eq!(
            main_directive(conf, "pid").expect("parse").as_deref(),
            Some("/run/x.pid")
        );
        assert_eq!(main_directive("events { }", "pid").expect("parse"), None);
    }

    #[test]
    fn page_is_safe_inside_an_nginx_string() {
        let page = PAGE.trim_end_matches("\\n");
        assert!(!page.contains(['"', '\\', '$']));
    }
}
