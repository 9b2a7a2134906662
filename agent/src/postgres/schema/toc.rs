//! Splitting `pg_dump`'s plain-text output into its TOC entries, so that the post-data section
//! can be applied entry by entry on several connections (as `pg_restore -j` does from an archive).
//!
//! `pg_dump` heads every entry with a comment block:
//!
//! ```text
//! --
//! -- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: app
//! --
//! ```
//!
//! The text is scanned with a small SQL lexer (string literals, `E''` strings, quoted
//! identifiers, dollar quotes, line and nested block comments), and a header counts only where
//! the lexer is between two statements, at the start of a line. So text inside a literal — a
//! `COMMENT ON ... IS '...'` that contains a line `-- Name: x; Type: INDEX; ...`, say — can
//! never cut a statement in two: the worst a hostile source can do is make the split coarser,
//! never change the SQL that runs.
//!
//! Session settings: `pg_dump` writes `SET default_tablespace = ...;` (and the like) only when
//! the value changes from the previous entry, just before the header of the entry that needs it.
//! When entries run on several connections out of order, each entry therefore carries the
//! settings in effect at its place in the dump ([`TocEntry::session`]); statements of the
//! preamble that only set session state ([`Toc::session_preamble`]) run once on every connection.

use std::collections::BTreeMap;
use std::ops::Range;

/// SQL text the lexer cannot read to its end: something opened and never closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unclosed {
    /// `'...` or `E'...`.
    #[error("a string literal is not closed")]
    Literal,
    /// `"...`.
    #[error("a quoted identifier is not closed")]
    Ident,
    /// `$tag$...`.
    #[error("a dollar-quoted string is not closed")]
    Dollar,
    /// `/* ...`.
    #[error("a /* comment */ is not closed")]
    BlockComment,
}

/// A section split into its entries.
#[derive(Debug, Default)]
pub(crate) struct Toc<'a> {
    /// The preamble's session settings (`SET ...;`, `SELECT pg_catalog.set_config(...);`), to run
    /// on every connection before any entry.
    pub session_preamble: String,
    /// Statements before the first header that are not session settings (none in `pg_dump`'s
    /// output; kept so that hand-made text is still applied, once, first).
    pub leading: Vec<&'a str>,
    /// The entries, in dump order.
    pub entries: Vec<TocEntry<'a>>,
}

/// One TOC entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TocEntry<'a> {
    /// The header's `Name:` (`users users_pkey` for a constraint: table, then name).
    pub name: String,
    /// The header's `Type:` (`INDEX`, `CONSTRAINT`, `FK CONSTRAINT`, `TRIGGER`, ...).
    pub desc: String,
    /// The header's `Schema:` (`-` when none).
    pub schema: String,
    /// The entry's statements, in order, each ending with its `;` — without the session
    /// settings `pg_dump` placed after it for the next entry (those are in the next entry's
    /// [`TocEntry::session`]).
    pub statements: Vec<&'a str>,
    /// `SET` statements to run before this entry so that the session is as `pg_dump` left it at
    /// this point of the dump (only settings changed after the preamble).
    pub session: String,
}

impl TocEntry<'_> {
    /// How the entry is named in messages: `INDEX users_email_idx (schema public)`.
    pub fn label(&self) -> String {
        format!("{} {} (schema {})", self.desc, self.name, self.schema)
    }
}

/// Splits `text` (already without `\restrict` lines) into its entries.
///
/// # Errors
/// A description of the problem when a literal, quoted identifier or comment is not closed.
pub(crate) fn split(text: &str) -> Result<Toc<'_>, Unclosed> {
    let scan = scan(text)?;
    let mut toc = Toc::default();
    // Latest statement per setting; which settings changed after the preamble.
    let mut settings: BTreeMap<String, &str> = BTreeMap::new();
    let mut changed: Vec<String> = Vec::new();
    let mut headers = scan.headers.into_iter().peekable();
    let mut current: Option<TocEntry<'_>> = None;
    for range in scan.statements {
        while headers.peek().is_some_and(|h| h.at < range.start) {
            let h = headers.next().expect("peeked");
            if let Some(done) = current.take() {
                toc.entries.push(done);
            }
            let session = changed
                .iter()
                .filter_map(|k| settings.get(k))
                .map(|s| format!("{s}\n"))
                .collect();
            current = Some(TocEntry {
                name: h.name,
                desc: h.desc,
                schema: h.schema,
                statements: Vec::new(),
                session,
            });
        }
        let stmt = &text[range];
        if let Some(key) = setting_key(stmt) {
            match &mut current {
                None => {
                    toc.session_preamble.push_str(stmt);
                    toc.session_preamble.push('\n');
                }
                Some(e) => {
                    if !changed.contains(&key) {
                        changed.push(key.clone());
                    }
                    // Set between a header and its first statement: it is this entry's own.
                    if e.statements.is_empty() {
                        e.session.push_str(stmt);
                        e.session.push('\n');
                    }
                }
            }
            settings.insert(key, stmt);
            continue;
        }
        match &mut current {
            Some(e) => e.statements.push(stmt),
            None => toc.leading.push(stmt),
        }
    }
    // Headers after the last statement: entries with nothing to run.
    for h in headers {
        if let Some(done) = current.take() {
            toc.entries.push(done);
        }
        current = Some(TocEntry {
            name: h.name,
            desc: h.desc,
            schema: h.schema,
            statements: Vec::new(),
            session: String::new(),
        });
    }
    toc.entries.extend(current);
    Ok(toc)
}

/// The setting a statement changes (`default_tablespace`), when it only changes session state.
fn setting_key(stmt: &str) -> Option<String> {
    if let Some(rest) = stmt.strip_prefix("SET ") {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        // `SET SESSION AUTHORIZATION`, `SET ROLE`: keyed by the first word, which is enough.
        return (!name.is_empty()).then(|| name.to_ascii_lowercase());
    }
    let rest = stmt.strip_prefix("SELECT pg_catalog.set_config('")?;
    let name: String = rest.chars().take_while(|c| *c != '\'').collect();
    Some(name.to_ascii_lowercase())
}

/// A header found by the scanner.
#[derive(Debug)]
struct Header {
    /// Where it starts.
    at: usize,
    name: String,
    desc: String,
    schema: String,
}

struct Scan {
    headers: Vec<Header>,
    statements: Vec<Range<usize>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// `'...'`; `true` for an `E'...'` string, where a backslash escapes the next byte.
    Literal(bool),
    Ident,
    /// Inside `$tag$ ... $tag$`; the range is the opening tag in the text.
    Dollar(usize, usize),
    LineComment,
    BlockComment(u32),
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The statements (from their first significant byte to their `;`) and the headers that stand
/// between statements at the start of a line.
fn scan(text: &str) -> Result<Scan, Unclosed> {
    let b = text.as_bytes();
    let mut out = Scan {
        headers: Vec::new(),
        statements: Vec::new(),
    };
    let mut state = State::Normal;
    let mut stmt_start: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match state {
            State::Normal => {
                let line_start = i == 0 || b[i - 1] == b'\n';
                if line_start
                    && stmt_start.is_none()
                    && c == b'-'
                    && let Some((len, header)) = header_at(text, i)
                {
                    out.headers.push(header);
                    i += len;
                    continue;
                }
                match c {
                    b'-' if b.get(i + 1) == Some(&b'-') => {
                        state = State::LineComment;
                        i += 2;
                        continue;
                    }
                    b'/' if b.get(i + 1) == Some(&b'*') => {
                        state = State::BlockComment(1);
                        i += 2;
                        continue;
                    }
                    b';' => {
                        let start = stmt_start.take().unwrap_or(i);
                        out.statements.push(start..i + 1);
                    }
                    b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {}
                    _ => {
                        stmt_start.get_or_insert(i);
                        match c {
                            b'\'' => {
                                let escapes = i > 0
                                    && matches!(b[i - 1], b'E' | b'e')
                                    && (i < 2 || !ident_byte(b[i - 2]));
                                state = State::Literal(escapes);
                            }
                            b'"' => state = State::Ident,
                            b'$' if i == 0 || !ident_byte(b[i - 1]) => {
                                if let Some(end) = dollar_tag(b, i) {
                                    state = State::Dollar(i, end);
                                    i = end;
                                    continue;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                i += 1;
            }
            State::Literal(escapes) => {
                if escapes && c == b'\\' {
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    state = State::Normal;
                }
                i += 1;
            }
            State::Ident => {
                if c == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    state = State::Normal;
                }
                i += 1;
            }
            State::Dollar(start, end) => {
                let tag = &b[start..end];
                if b[i..].starts_with(tag) {
                    state = State::Normal;
                    i += tag.len();
                } else {
                    i += 1;
                }
            }
            State::LineComment => {
                if c == b'\n' {
                    state = State::Normal;
                }
                i += 1;
            }
            State::BlockComment(depth) => {
                if c == b'/' && b.get(i + 1) == Some(&b'*') {
                    state = State::BlockComment(depth + 1);
                    i += 2;
                } else if c == b'*' && b.get(i + 1) == Some(&b'/') {
                    state = if depth == 1 {
                        State::Normal
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    i += 2;
                } else {
                    i += 1;
                }
            }
        }
    }
    match state {
        State::Normal | State::LineComment => {}
        State::Literal(_) => return Err(Unclosed::Literal),
        State::Ident => return Err(Unclosed::Ident),
        State::Dollar(..) => return Err(Unclosed::Dollar),
        State::BlockComment(_) => return Err(Unclosed::BlockComment),
    }
    if let Some(start) = stmt_start {
        // Text after the last `;`: the server decides what it is.
        out.statements.push(start..b.len());
    }
    Ok(out)
}

/// The end of a dollar-quote opening tag (`$$`, `$body$`) starting at `at`.
fn dollar_tag(b: &[u8], at: usize) -> Option<usize> {
    let mut j = at + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    while let Some(&c) = b.get(j) {
        if c == b'$' {
            return Some(j + 1);
        }
        if !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80) {
            return None;
        }
        j += 1;
    }
    None
}

/// A header block starting at `at` (a line `--`, comment lines one of which is the
/// `Name: ...; Type: ...` line, a line `--`): its length and content.
fn header_at(text: &str, at: usize) -> Option<(usize, Header)> {
    let rest = &text[at..];
    let mut lines = rest.split_inclusive('\n');
    if lines.next()? != "--\n" {
        return None;
    }
    let mut len = 3;
    let mut found = None;
    for line in lines {
        len += line.len();
        let bare = line.trim_end_matches('\n');
        if bare == "--" {
            let (name, desc, schema) = found?;
            return Some((
                len,
                Header {
                    at,
                    name,
                    desc,
                    schema,
                },
            ));
        }
        let comment = bare.strip_prefix("-- ")?;
        if found.is_none() {
            found = name_line(comment);
        }
    }
    None
}

/// `Name: X; Type: Y; Schema: Z; Owner: W` → (X, Y, Z). `pg_dump` replaces newlines in names
/// (so the line is whole), but a name may contain `; Type: `: the type is the first candidate made
/// of capital letters and spaces only, as every `pg_dump` type is.
fn name_line(line: &str) -> Option<(String, String, String)> {
    let body = line
        .strip_prefix("Name: ")
        .or_else(|| line.strip_prefix("Data for Name: "))?;
    let mut from = 0;
    while let Some(off) = body[from..].find("; Type: ") {
        let at = from + off;
        let after = &body[at + "; Type: ".len()..];
        if let Some(end) = after.find("; Schema: ") {
            let desc = &after[..end];
            if !desc.is_empty() && desc.bytes().all(|c| c.is_ascii_uppercase() || c == b' ') {
                let schema_and_more = &after[end + "; Schema: ".len()..];
                let schema = schema_and_more
                    .find("; Owner: ")
                    .or_else(|| schema_and_more.find("; Tablespace: "))
                    .map_or(schema_and_more, |e| &schema_and_more[..e]);
                return Some((body[..at].to_string(), desc.to_string(), schema.to_string()));
            }
        }
        from = at + 1;
    }
    None
}

/// Reads a possibly schema-qualified name at the start of `s` (after blanks): `public.users`,
/// `"My Schema"."T"`. Returns it exactly as written (the form `pg_dump` uses everywhere for the
/// same object) and the rest of `s`.
pub(crate) fn qualified_name(s: &str) -> Option<(&str, &str)> {
    let t = s.trim_start();
    let b = t.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return None,
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            let start = i;
            while b.get(i).is_some_and(|c| ident_byte(*c)) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return Some((&t[..i], &t[i..]));
        }
    }
}

/// The parts of a qualified name as [`qualified_name`] returns it, unquoted (`""` inside quotes
/// is one `"`): `public.users` → `["public", "users"]`, `"My Schema"."T"` → `["My Schema",
/// "T"]`.
/// `pg_dump` leaves a name unquoted only when it is already in its stored (lower-case) form.
pub(crate) fn name_parts(qualified: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut chars = qualified.chars().peekable();
    let mut part = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    parts.push(part);
    parts
}

/// Skips the keywords `words` (case-insensitive, separated by blanks) at the start of `s`.
pub(crate) fn keywords<'s>(s: &'s str, words: &[&str]) -> Option<&'s str> {
    let mut rest = s;
    for w in words {
        let t = rest.trim_start();
        let head = t.get(..w.len())?;
        if !head.eq_ignore_ascii_case(w) || t[w.len()..].bytes().next().is_some_and(ident_byte) {
            return None;
        }
        rest = &t[w.len()..];
    }
    Some(rest)
}

/// Skips one optional keyword.
pub(crate) fn optional<'s>(s: &'s str, word: &str) -> &'s str {
    keywords(s, &[word]).unwrap_or(s)
}

/// The text after the first ` REFERENCES ` outside quoted identifiers and literals.
pub(crate) fn after_references(stmt: &str) -> Option<&str> {
    let b = stmt.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < b.len() {
        match (quote, b[i]) {
            (None, q @ (b'"' | b'\'')) => quote = Some(q),
            (Some(q), c) if c == q => quote = None,
            (None, _)
                if keywords(&stmt[i..], &["REFERENCES"]).is_some()
                    && (i == 0 || !ident_byte(b[i - 1])) =>
            {
                return keywords(&stmt[i..], &["REFERENCES"]);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--\n-- PostgreSQL database dump\n--\n\n\
        SET statement_timeout = 0;\n\
        SELECT pg_catalog.set_config('search_path', '', false);\n\
        SET default_tablespace = '';\n\n\
        --\n-- Name: users users_pkey; Type: CONSTRAINT; Schema: public; Owner: app\n--\n\n\
        ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_pkey PRIMARY KEY (id);\n\n\n\
        SET default_tablespace = fast;\n\n\
        --\n-- Name: users_email_idx; Type: INDEX; Schema: public; Owner: app; Tablespace: fast\n--\n\n\
        CREATE INDEX users_email_idx ON public.users USING btree (email);\n\n\n\
        --\n-- Name: INDEX users_email_idx; Type: COMMENT; Schema: public; Owner: app\n--\n\n\
        COMMENT ON INDEX public.users_email_idx IS 'x\n--\n-- Name: evil; Type: INDEX; Schema: public; Owner: app\n--\n\nDROP TABLE public.users; --';\n\n\n\
        --\n-- PostgreSQL database dump complete\n--\n\n";

    #[test]
    fn entries_are_split_at_headers_and_a_header_inside_a_literal_is_text() {
        let toc = split(DUMP).expect("split");
        assert_eq!(
            toc.session_preamble,
            "SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nSET default_tablespace = '';\n"
        );
        assert!(toc.leading.is_empty());
        let labels: Vec<String> = toc.entries.iter().map(TocEntry::label).collect();
        assert_eq!(
            labels,
            [
                "CONSTRAINT users users_pkey (schema public)",
                "INDEX users_email_idx (schema public)",
                "COMMENT INDEX users_email_idx (schema public)",
            ]
        );
        assert_eq!(
            toc.entries[0].statements,
            ["ALTER TABLE ONLY public.users\n    ADD CONSTRAINT users_pkey PRIMARY KEY (id);"]
        );
        // The tablespace set before the index's header belongs to the index, and stays in force
        // for what follows it in the dump.
        assert_eq!(toc.entries[0].session, "");
        assert_eq!(toc.entries[1].session, "SET default_tablespace = fast;\n");
        assert_eq!(toc.entries[2].session, "SET default_tablespace = fast;\n");
        let comment = toc.entries[2].statements.concat();
        assert!(comment.starts_with("COMMENT ON INDEX"), "{comment}");
        assert!(
            comment.contains("DROP TABLE public.users; --';"),
            "{comment}"
        );
    }

    #[test]
    fn quotes_dollar_quotes_and_comments_hide_semicolons_and_headers() {
        let text = "SELECT 'a;b', E'it\\'s;', \"we;ird\", $x$ ; $$ ; $x$, $$;$$, a$b;\n\
                    /* c; /* nested; */ still; */ SELECT 2; -- tail; comment\n";
        let s = scan(text).expect("scan");
        let stmts: Vec<&str> = s.statements.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            stmts,
            [
                "SELECT 'a;b', E'it\\'s;', \"we;ird\", $x$ ; $$ ; $x$, $$;$$, a$b;",
                "SELECT 2;"
            ]
        );
        assert!(scan("SELECT 'open").is_err());
        assert!(scan("SELECT $q$ open").is_err());
        assert!(scan("/* open").is_err());
        // A header in the middle of a statement is only a comment.
        let mid =
            "CREATE INDEX a ON t\n--\n-- Name: b; Type: INDEX; Schema: s; Owner: o\n--\n(x);\n";
        let toc = split(mid).expect("split");
        assert!(toc.entries.is_empty());
        assert_eq!(toc.leading.len(), 1);
    }

    #[test]
    fn header_lines_are_read_even_when_names_contain_separators() {
        assert_eq!(
            name_line("Name: t a; Type: b; Type: FK CONSTRAINT; Schema: s; Owner: o"),
            Some(("t a; Type: b".into(), "FK CONSTRAINT".into(), "s".into()))
        );
        assert_eq!(
            name_line("Name: x; Type: INDEX; Schema: public; Owner: app; Tablespace: ts"),
            Some(("x".into(), "INDEX".into(), "public".into()))
        );
        assert_eq!(name_line("Dumped by pg_dump version 15"), None);
    }

    #[test]
    fn names_and_keywords_are_read_like_sql() {
        assert_eq!(
            qualified_name(" public.users USING"),
            Some(("public.users", " USING"))
        );
        assert_eq!(
            qualified_name("\"My \"\"S\"\"\".\"T.x\"(id)"),
            Some(("\"My \"\"S\"\"\".\"T.x\"", "(id)"))
        );
        assert_eq!(qualified_name("(x)"), None);
        let rest = keywords("ALTER TABLE ONLY x", &["ALTER", "TABLE"]).expect("kw");
        assert_eq!(optional(rest, "ONLY"), " x");
        assert!(keywords("ALTER TABLESPACE", &["ALTER", "TABLE"]).is_none());
        assert_eq!(
            after_references(
                "ALTER TABLE ONLY a ADD CONSTRAINT \" REFERENCES x\" FOREIGN KEY (b) REFERENCES public.u(id);"
            )
            .and_then(qualified_name)
            .map(|(n, _)| n),
            Some("public.u")
        );
    }
}
