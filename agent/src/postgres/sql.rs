//! Quoting of identifiers and literals for the few statements that cannot take bind parameters
//! (`COPY`, `CREATE ROLE`, `GRANT`, `ALTER LARGE OBJECT`). Every name the library puts into SQL
//! text goes through [`ident`]; every string value through [`literal`]; integers are formatted
//! from Rust integers. Nothing else is interpolated.

/// `name` as a double-quoted identifier (`"a""b"` for `a"b`), valid whatever its case or
/// characters.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a string literal that means the same whatever `standard_conforming_strings` is:
/// `'it''s'`, and `E'a\\b'` when it holds a backslash (as PostgreSQL's own `quote_literal`).
pub fn literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// A comma-separated list of quoted identifiers.
pub fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_inner_quotes_doubled() {
        assert_eq!(ident("users"), "\"users\"");
        assert_eq!(ident("Mixed Case"), "\"Mixed Case\"");
        assert_eq!(
            ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(
            ident_list(&["a".into(), "B".into()]),
            "\"a\", \"B\"".to_string()
        );
    }

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("plain"), "'plain'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'c"), "E'a\\\\b''c'");
    }
}
