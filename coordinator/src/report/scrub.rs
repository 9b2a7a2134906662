//! The last line of defence before a report touches the disk: masks what looks like a secret in
//! free text, whatever the upstream redaction missed.
//!
//! - The value of a `KEY=value` pair (also `KEY = value`, `export KEY=value`, `--db-password=x`,
//!   `a=1&token=x`, `"KEY":"value"`, and `KEY: value` for upper-case env-style keys such as
//!   `JWT_SECRET: old → new`) whose key [`is_secret`] says is one. A quoted value is masked up to
//!   its closing quote; an unquoted one up to the end of the line, or up to the next pair when
//!   several share a line (`JWT_SECRET=x; PORT=3666` keeps `PORT=3666`).
//! - The password of a URL with credentials: `postgresql://app:hunter2@db/app` becomes
//!   `postgresql://app:*****@db/app` (any scheme).
//!
//! It errs towards masking: a value is cut short only where another `KEY=` pair clearly begins.

use hostshift_shared::dotenv::{ABSENT, REDACTED, is_secret};

/// `s` with secret values and URL passwords replaced by [`REDACTED`].
pub fn scrub(s: &str) -> String {
    let chars: Vec<char> = url_passwords(s).chars().collect();
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let Some(a) = assignment_at(&chars, i) else {
            out.push(chars[i]);
            i += 1;
            continue;
        };
        out.extend(&chars[i..a.value_start]);
        if !is_secret(&a.key) {
            i = a.value_start;
            continue;
        }
        let end = value_end(&chars, a.value_start);
        let value: String = chars[a.value_start..end].iter().collect();
        out.push_str(&mask(&value));
        i = end;
    }
    out
}

/// A secret value masked. A change line `old → new` (as the agent reports overrides) keeps its
/// arrow and any side that is already `*****` or `(not set)`, so "added" and "changed" still
/// read differently.
fn mask(value: &str) -> String {
    if value.trim().is_empty() {
        return value.to_string();
    }
    value
        .split(" → ")
        .map(|part| match part.trim() {
            REDACTED | ABSENT => part,
            _ => REDACTED,
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// A `KEY=` (or `KEY: `, `"KEY":`) starting at one position.
struct Assignment {
    key: String,
    /// First character of the value.
    value_start: usize,
}

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn assignment_at(c: &[char], i: usize) -> Option<Assignment> {
    let first = *c.get(i)?;
    if !(first.is_ascii_alphabetic() || first == '_') {
        return None;
    }
    // A key starts at a word boundary; `-` and `.` before it are fine (`--db-password=`).
    if i > 0 && (c[i - 1].is_ascii_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    while j < c.len() && key_char(c[j]) {
        j += 1;
    }
    let key: String = c[i..j].iter().collect();
    let skip_blank = |mut k: usize| {
        while k < c.len() && (c[k] == ' ' || c[k] == '\t') {
            k += 1;
        }
        k
    };
    let k = skip_blank(j);
    if c.get(k) == Some(&'=') && c.get(k + 1) != Some(&'=') {
        return Some(Assignment {
            key,
            value_start: skip_blank(k + 1),
        });
    }
    let env_style = key.chars().any(|x| x.is_ascii_uppercase())
        && key
            .chars()
            .all(|x| x.is_ascii_uppercase() || x.is_ascii_digit() || x == '_');
    if env_style && c.get(j) == Some(&':') && c.get(j + 1) == Some(&' ') {
        return Some(Assignment {
            key,
            value_start: skip_blank(j + 1),
        });
    }
    if i > 0 && c[i - 1] == '"' && c.get(j) == Some(&'"') && c.get(j + 1) == Some(&':') {
        return Some(Assignment {
            key,
            value_start: skip_blank(j + 2),
        });
    }
    None
}

/// Where the value starting at `start` ends (exclusive).
fn value_end(c: &[char], start: usize) -> usize {
    if let Some(&q) = c.get(start)
        && matches!(q, '"' | '\'' | '`')
    {
        let close = c[start + 1..].iter().position(|&x| x == q);
        return close.map_or(c.len(), |p| start + 1 + p + 1);
    }
    let separator = |x: char| matches!(x, ' ' | '\t' | ';' | ',' | '&');
    let mut k = start;
    while k < c.len() && c[k] != '\n' && c[k] != '\r' {
        if separator(c[k]) {
            let mut n = k;
            while n < c.len() && separator(c[n]) {
                n += 1;
            }
            if assignment_at(c, n).is_some() {
                return k;
            }
            k = n;
        } else {
            k += 1;
        }
    }
    k
}

/// Masks the password of every `scheme://user:password@host` in `s`.
fn url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("://") {
        let (head, tail) = rest.split_at(p + 3);
        out.push_str(head);
        // The authority ends at the path, query, fragment, or anything that ends a URL in text.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) if at > colon + 1 => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secret_env_values_and_keeps_the_rest() {
        assert_eq!(scrub("JWT_SECRET=hunter2"), "JWT_SECRET=*****");
        assert_eq!(
            scrub("export DB_PASSWORD = 'hunter 2' # prod"),
            "export DB_PASSWORD = ***** # prod"
        );
        assert_eq!(
            scrub("JWT_SECRET=hunter2; PORT=3666"),
            "JWT_SECRET=*****; PORT=3666"
        );
        assert_eq!(
            scrub("overrides: API_TOKEN=a b c, CORS_ORIGIN=x"),
            "overrides: API_TOKEN=*****, CORS_ORIGIN=x"
        );
        assert_eq!(
            scrub("PASSWORD=my pass phrase\nPORT=1"),
            "PASSWORD=*****\nPORT=1"
        );
        assert_eq!(
            scrub("JWT_SECRET: hunter2 → hunter3"),
            "JWT_SECRET: ***** → *****"
        );
        assert_eq!(
            scrub("JWT_SECRET: (not set) → *****"),
            "JWT_SECRET: (not set) → *****"
        );
        assert_eq!(scrub("API_KEY: ***** → hunter2"), "API_KEY: ***** → *****");
        assert_eq!(
            scrub("host=db password=hunter2 sslmode=require"),
            "host=db password=***** sslmode=require"
        );
        assert_eq!(scrub("--db-password=hunter2"), "--db-password=*****");
        assert_eq!(
            scrub("?user=app&token=hunter2&x=1"),
            "?user=app&token=*****&x=1"
        );
        assert_eq!(
            scrub(r#"{"jwt_secret":"hunter2","port":1}"#),
            r#"{"jwt_secret":*****,"port":1}"#
        );
        assert_eq!(
            scrub("PORT=3666, NODE_ENV=production"),
            "PORT=3666, NODE_ENV=production"
        );
        assert_eq!(scrub("JWT_SECRET="), "JWT_SECRET=");
        assert_eq!(
            scrub("a == b; invalid token: expired"),
            "a == b; invalid token: expired"
        );
    }

    #[test]
    fn masks_url_passwords_of_any_scheme() {
        assert_eq!(
            scrub("postgresql://app:hunter2@db/app"),
            "postgresql://app:*****@db/app"
        );
        assert_eq!(
            scrub("see postgres://u:p%40ss@h:5432/x?sslmode=require now"),
            "see postgres://u:*****@h:5432/x?sslmode=require now"
        );
        assert_eq!(
            scrub("redis://:hunter2@cache:6379"),
            "redis://:*****@cache:6379"
        );
        assert_eq!(
            scrub("https://example.invalid/a:b@c"),
            "https://example.invalid/a:b@c"
        );
        assert_eq!(
            scrub("postgres://app@localhost/app"),
            "postgres://app@localhost/app"
        );
        // A secret key wins over the URL rule: the whole value goes.
        assert_eq!(
            scrub("DATABASE_URL=postgres://app:hunter2@db/app"),
            "DATABASE_URL=*****"
        );
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        for s in [
            "copied 3 files (1.2 KiB)",
            "file backend-env: PORT: 3666 → 4666",
            "ключ=значение",
            "",
        ] {
            assert_eq!(scrub(s), s);
        }
    }
}
