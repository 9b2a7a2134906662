//! `report.md`: the same content as the page, as Markdown for a ticket, a chat or a terminal
//! (`less report.md` reads fine). Free text is escaped where Markdown would act on it (`|` in
//! tables, `*` emphasis — masked values are `*****` —, `<` raw HTML, `` ` `` code) and kept on
//! one line.

use std::fmt::Write as _;

use super::fmt::{duration, rate, utc};
use super::{Report, Status};

/// Free text as inert, one-line Markdown.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '|' | '*' | '<' | '>' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The document.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let (_, result) = super::html::verdict(r);
    let _ = writeln!(o, "# hostshift {} — {result}\n", r.kind.as_str());
    let _ = writeln!(
        o,
        "- Plan: **{}** (`{}`)",
        cell(&r.plan_name),
        r.plan_path.replace('`', "'")
    );
    let _ = writeln!(o, "- Started: {}", utc(r.started));
    let _ = writeln!(o, "- Took: {}", duration(r.duration_ms()));
    if let Some(w) = r.freeze {
        let _ = writeln!(
            o,
            "- Write freeze: **{} ms** (from +{} ms to +{} ms)",
            w.ms(),
            w.start_ms,
            w.end_ms
        );
    }
    if !r.streams.is_empty() {
        let bytes: u64 = r.streams.iter().map(|s| s.bytes).sum();
        let files: u64 = r.streams.iter().map(|s| s.files).sum();
        let _ = writeln!(
            o,
            "- Sent: {} in {files} files",
            crate::output::bytes(bytes)
        );
    }
    if !r.verification.is_empty() {
        let differ = r.verification.iter().filter(|v| !v.equal).count();
        let _ = writeln!(
            o,
            "- Verification: {} equal, {differ} differ",
            r.verification.len() - differ
        );
    }

    o.push_str("\n## What to do next\n\n");
    for (i, s) in r.next_steps.iter().enumerate() {
        // Our own text, with `code` spans meant as such.
        let _ = writeln!(o, "{}. {}", i + 1, s.replace('\n', " "));
    }
    if r.next_steps.is_empty() {
        o.push_str("Nothing.\n");
    }

    o.push_str("\n## Phases\n\n");
    if r.phases.is_empty() {
        o.push_str("No phases were recorded.\n");
    } else {
        o.push_str("| Phase | Result | Start | Duration | Detail |\n|---|---|--:|--:|---|\n");
        for p in &r.phases {
            let status = if p.status == Status::Failed {
                "**FAILED**"
            } else {
                p.status.as_str()
            };
            let _ = writeln!(
                o,
                "| {} | {status} | +{} ms | {} | {} |",
                cell(&p.name),
                p.start_ms,
                if p.status == Status::Skipped {
                    "-".into()
                } else {
                    duration(p.end_ms.saturating_sub(p.start_ms))
                },
                cell(&p.detail)
            );
        }
    }

    if !r.streams.is_empty() {
        o.push_str("\n## Streams\n\n| Stream | Sent | Files | Time | Rate | Retries |\n|---|--:|--:|--:|--:|--:|\n");
        for s in &r.streams {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&s.name),
                crate::output::bytes(s.bytes),
                s.files,
                duration(s.ms),
                rate(s.bytes, s.ms),
                s.retries
            );
        }
    }

    if !r.verification.is_empty() {
        o.push_str("\n## Verification\n\n| Kind | Name | Result | Old host | New host | Details |\n|---|---|---|---|---|---|\n");
        for v in &r.verification {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&v.kind),
                cell(&v.name),
                if v.equal {
                    "equal"
                } else if v.status == crate::sync::verify::RowStatus::CouldNotRun {
                    "**COULD NOT RUN**"
                } else {
                    "**DIFFERS**"
                },
                cell(&v.old),
                cell(&v.new),
                cell(&v.detail)
            );
        }
    }

    if !r.notes.is_empty() {
        o.push_str("\n## Notes\n\n");
        for n in &r.notes {
            let _ = writeln!(o, "- {}", cell(n));
        }
    }
    o
}
