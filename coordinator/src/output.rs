//! Output conventions: results on stdout (a table for people, one JSON document with `--json`),
//! diagnostics and progress on stderr.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Whether this process printed its JSON document (so the error path prints one only when
/// nothing was printed: `--json` always yields exactly one document).
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);

/// Text made safe for a terminal: control characters (ESC, BEL, CSI, DEL, C1) and Unicode
/// direction overrides are shown escaped (`\x1b`, `\u{202e}`), so a file name such as
/// `evil␛[2J` cannot clear the screen, set the title or reorder what the operator reads.
/// Newlines and tabs stay (messages span lines). Every name printed for people goes through
/// this (tables, progress, error messages).
pub fn printable(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            let n = u32::from(c);
            if n < 0x80 {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for one table cell or one line: newlines escaped too.
pub fn printable_line(s: &str) -> String {
    printable(s).replace('\n', "\\n").replace('\t', " ")
}

/// Renders rows as a left-aligned text table with a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable_line(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i].saturating_sub(c.chars().count()) + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Prints one JSON document on stdout.
pub fn print_json<T: Serialize>(v: &T) {
    JSON_PRINTED.store(true, Ordering::SeqCst);
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("hostshift: cannot encode the result as JSON: {e}"),
    }
}

/// Whether [`print_json`] ran in this process.
pub fn json_printed() -> bool {
    JSON_PRINTED.load(Ordering::SeqCst)
}

/// Bytes as a short human figure (`1.5 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "LONG"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain/name.json"), "plain/name.json");
        assert_eq!(
            printable("evil\u{1b}[2J\u{1b}]0;t\u{7}\u{9b}\u{202e}x\nnext"),
            "evil\\x1b[2J\\x1b]0;t\\x07\\u{9b}\\u{202e}x\nnext"
        );
        assert_eq!(printable_line("a\nb"), "a\\nb");
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
