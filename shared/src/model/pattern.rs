//! [`TablePattern`]: one `schema.table` glob of a plan's `include`/`exclude` list, with the one
//! rule both binaries apply — the coordinator when it checks a plan (`plan check`), the agent when
//! it selects tables (`Selection`). Before this module each had its own parser and they disagreed
//! (the plan refused spaces, the agent did not).
//!
//! # The rule
//! `schema.table`, split at the first `.`; either part may use `*` (any run of characters) and `?`
//! (one character). Names are matched exactly as stored: case-sensitive and without quoting, so
//! a `"` is refused (it would be taken literally, which is never what its writer meant), and so
//! are an empty part, a part that starts or ends with white space (a typo that would match
//! nothing), and a second `.` (ambiguous: which one separates?). A name with such a character is
//! still reachable with `?` in its place ([`TablePattern::exact`] does that for a known table).

use std::fmt;

use super::TableRef;

/// Why a pattern was refused: the pattern and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("table pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// Why, and what to write instead.
    pub reason: String,
}

/// One `schema.table` glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    text: String,
    schema: String,
    table: String,
}

impl TablePattern {
    /// Parses a pattern by the rule of the module docs.
    ///
    /// # Errors
    /// [`PatternError`] saying which part is wrong and what to write.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let (schema, table) = text
            .split_once('.')
            .ok_or_else(|| bad("write it as schema.table or schema.* (e.g. public.users)"))?;
        if schema.is_empty() || table.is_empty() {
            return Err(bad(
                "both the schema and the table part must be non-empty (e.g. public.users)",
            ));
        }
        if text.contains('"') {
            return Err(bad(
                "names are matched exactly as stored, without quotes: drop the \" (use ? for a character that cannot be written)",
            ));
        }
        if table.contains('.') {
            return Err(bad(
                "one . separates the schema from the table: write ? for a . inside a name",
            ));
        }
        if [schema, table].iter().any(|p| p.trim() != *p) {
            return Err(bad(
                "a part starts or ends with white space: remove it (use ? for a space that belongs to the name)",
            ));
        }
        Ok(Self {
            text: text.to_string(),
            schema: schema.to_string(),
            table: table.to_string(),
        })
    }

    /// A pattern that matches `t` (and, when its name holds a character the rule refuses or a
    /// glob character, the few names that differ from it only there: each such character becomes
    /// `?`).
    pub fn exact(t: &TableRef) -> Self {
        let part = |s: &str| -> String {
            let n = s.chars().count();
            s.chars()
                .enumerate()
                .map(|(i, c)| {
                    let edge = (i == 0 || i + 1 == n) && c.is_whitespace();
                    if matches!(c, '"' | '*' | '?' | '.') || edge {
                        '?'
                    } else {
                        c
                    }
                })
                .collect()
        };
        let (schema, table) = (part(&t.schema), part(&t.table));
        Self {
            text: format!("{schema}.{table}"),
            schema,
            table,
        }
    }

    /// Whether the pattern matches `t`.
    pub fn matches(&self, t: &TableRef) -> bool {
        glob(&self.schema, &t.schema) && glob(&self.table, &t.table)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `*` and `?` glob over characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_pg_dump_patterns() {
        assert!(glob("users", "users"));
        assert!(!glob("users", "Users"));
        assert!(glob("*", ""));
        assert!(glob("audit_*", "audit_2024"));
        assert!(!glob("audit_*", "xaudit_2024"));
        assert!(glob("*_log", "app_log"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("t?", "t1"));
        assert!(!glob("t?", "t12"));
    }

    #[test]
    fn the_rule() {
        for good in [
            "public.users",
            "public.*",
            "audit_*.log_?",
            "*.*",
            "My Schema.my table",
        ] {
            assert!(TablePattern::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "users",
            ".users",
            "public.",
            "",
            "\"public\".users",
            "public.a.b",
            "public. users",
            " public.users",
            "public.users ",
        ] {
            assert!(TablePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_exact_pattern_parses_and_matches_its_table() {
        for (s, t) in [
            ("public", "users"),
            ("My Schema", "a\"b"),
            ("we.ird", "x.y"),
            (" lead", "trail "),
            ("s", "star*q?"),
        ] {
            let t = TableRef::new(s, t);
            let p = TablePattern::exact(&t);
            assert!(TablePattern::parse(p.as_str()).is_ok(), "{p}");
            assert!(p.matches(&t), "{p} vs {t}");
        }
        let p = TablePattern::exact(&TableRef::new("public", "users"));
        assert!(!p.matches(&TableRef::new("public", "users2")));
    }
}
