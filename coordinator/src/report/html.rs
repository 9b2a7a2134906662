//! `report.html`: one self-contained page a person would rather look at than read logs.
//!
//! No scripts, fonts, images or links to anything outside the page (the only `href`s are
//! `#fragments`), and a Content-Security-Policy that forbids loading anything else should a
//! later change try. Every piece of text is escaped. The page is plain semantic HTML (headings,
//! a definition list, tables, lists) with a light inline `<style>`: without CSS it still reads
//! top to bottom, and the charts use SVG presentation attributes, not the stylesheet.

use std::fmt::Write as _;

use super::fmt::{duration, esc, rate, utc};
use super::{Kind, Report, Status, svg};

const STYLE: &str = "
:root{color-scheme:light}
body{font:15px/1.5 system-ui,sans-serif;color:#1a202c;background:#fff;max-width:1000px;margin:24px auto;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid #e2e8f0}
.meta,footer,.muted{color:#4a5568}
nav a{color:#2b6cb0}
.verdict{display:inline-block;font-size:15px;vertical-align:middle;padding:2px 10px;border-radius:12px}
.verdict.ok{background:#c6f6d5;color:#22543d}
.verdict.failed{background:#fed7d7;color:#822727}
dl.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
dl.cards div{border:1px solid #e2e8f0;border-radius:6px;padding:6px 12px;min-width:120px}
dl.cards dt{font-size:12px;color:#4a5568;text-transform:uppercase;letter-spacing:.03em}
dl.cards dd{margin:0;font-size:19px;font-weight:600}
dl.cards .freeze dd{color:#c53030}
svg.chart{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;width:100%;font-size:14px;margin:8px 0}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e2e8f0;vertical-align:top}
th{background:#f7fafc}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.detail{overflow-wrap:anywhere}
tr.differs td,tr.failed td{background:#fff5f5}
.bad{color:#c53030;font-weight:700}
.good{color:#2f855a;font-weight:600}
code{font:13px ui-monospace,monospace;background:#edf2f7;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
ol.next li{margin:4px 0}
footer{margin-top:32px;font-size:13px}
";

/// Text with `` `code` `` spans as `<code>`, everything escaped.
fn inline(s: &str) -> String {
    s.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", esc(part))
            } else {
                esc(part)
            }
        })
        .collect()
}

/// The headline's CSS class and words (shared with `report.md`).
pub(super) fn verdict(r: &Report) -> (&'static str, &'static str) {
    match (r.kind, r.ok) {
        (Kind::Verify, true) => ("ok", "all equal"),
        (Kind::Verify, false) => ("failed", "differences found"),
        (_, true) => ("ok", "succeeded"),
        (_, false) => ("failed", "FAILED"),
    }
}

fn card(out: &mut String, class: &str, term: &str, value: &str) {
    let _ = write!(
        out,
        r#"<div class="{class}"><dt>{}</dt><dd>{}</dd></div>"#,
        esc(term),
        esc(value)
    );
}

fn summary(out: &mut String, r: &Report) {
    out.push_str(r#"<dl class="cards">"#);
    card(out, "", "Took", &duration(r.duration_ms()));
    let failed = r
        .phases
        .iter()
        .filter(|p| p.status == Status::Failed)
        .count();
    let phases = if failed > 0 {
        format!("{} ({failed} failed)", r.phases.len())
    } else {
        r.phases.len().to_string()
    };
    card(out, "", "Phases", &phases);
    if !r.streams.is_empty() {
        let bytes: u64 = r.streams.iter().map(|s| s.bytes).sum();
        let files: u64 = r.streams.iter().map(|s| s.files).sum();
        card(out, "", "Sent", &crate::output::bytes(bytes));
        card(out, "", "Files sent", &files.to_string());
    }
    if let Some(w) = r.freeze {
        card(out, "freeze", "Write freeze", &format!("{} ms", w.ms()));
    }
    if !r.verification.is_empty() {
        let differ = r.verification.iter().filter(|v| !v.equal).count();
        let equal = r.verification.len() - differ;
        card(
            out,
            "",
            "Verification",
            &format!("{equal} equal, {differ} differ"),
        );
    }
    out.push_str("</dl>");
}

fn phases_table(out: &mut String, r: &Report) {
    out.push_str("<table><thead><tr><th>Phase</th><th>Result</th><th>Start</th><th>Duration</th><th>Detail</th></tr></thead><tbody>");
    for p in &r.phases {
        let (class, word) = match p.status {
            Status::Ok => ("", r#"<span class="good">ok</span>"#),
            Status::Failed => (r#" class="failed""#, r#"<span class="bad">FAILED</span>"#),
            Status::Skipped => ("", r#"<span class="muted">skipped</span>"#),
        };
        let _ = write!(
            out,
            r#"<tr{class}><td>{}</td><td>{word}</td><td class="num">+{} ms</td><td class="num">{}</td><td class="detail">{}</td></tr>"#,
            esc(&p.name),
            p.start_ms,
            if p.status == Status::Skipped {
                "-".into()
            } else {
                esc(&duration(p.end_ms.saturating_sub(p.start_ms)))
            },
            esc(&p.detail)
        );
    }
    out.push_str("</tbody></table>");
}

fn streams_table(out: &mut String, r: &Report) {
    out.push_str("<table><thead><tr><th>Stream</th><th>Sent</th><th>Files</th><th>Time</th><th>Rate</th><th>Retries</th></tr></thead><tbody>");
    for s in &r.streams {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&s.name),
            esc(&crate::output::bytes(s.bytes)),
            s.files,
            esc(&duration(s.ms)),
            esc(&rate(s.bytes, s.ms)),
            s.retries
        );
    }
    out.push_str("</tbody></table>");
}

fn verification_table(out: &mut String, r: &Report) {
    out.push_str("<table><thead><tr><th>Kind</th><th>Name</th><th>Result</th><th>Old host</th><th>New host</th><th>Details</th></tr></thead><tbody>");
    for v in &r.verification {
        let (class, word) = if v.equal {
            ("", r#"<span class="good">equal</span>"#)
        } else if v.status == crate::sync::verify::RowStatus::CouldNotRun {
            (
                r#" class="differs""#,
                r#"<span class="bad">COULD NOT RUN</span>"#,
            )
        } else {
            (r#" class="differs""#, r#"<span class="bad">DIFFERS</span>"#)
        };
        let _ = write!(
            out,
            r#"<tr{class}><td>{}</td><td>{}</td><td>{word}</td><td class="detail">{}</td><td class="detail">{}</td><td class="detail">{}</td></tr>"#,
            esc(&v.kind),
            esc(&v.name),
            esc(&v.old),
            esc(&v.new),
            esc(&v.detail)
        );
    }
    out.push_str("</tbody></table>");
}

/// The page.
pub fn render(r: &Report) -> String {
    let (class, word) = verdict(r);
    let kind = r.kind.as_str();
    let mut o = String::with_capacity(16 * 1024);
    o.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        o,
        "<title>hostshift {kind}: {} — {word}</title>",
        esc(&r.plan_name)
    );
    let _ = writeln!(o, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(
        o,
        r#"<header><h1>hostshift {kind} <span class="verdict {class}">{}</span></h1>"#,
        esc(word)
    );
    let _ = writeln!(
        o,
        r#"<p class="meta">Plan <strong>{}</strong> (<code>{}</code>) · started {}</p>"#,
        esc(&r.plan_name),
        esc(&r.plan_path),
        esc(&utc(r.started))
    );
    o.push_str(r##"<nav>Jump to: <a href="#next">What to do next</a> · <a href="#timeline">Timeline</a> · <a href="#streams">Streams</a> · <a href="#verification">Verification</a> · <a href="#notes">Notes</a></nav></header>"##);
    o.push('\n');
    summary(&mut o, r);

    o.push_str("\n<section id=\"next\"><h2>What to do next</h2>");
    if r.next_steps.is_empty() {
        o.push_str("<p>Nothing.</p>");
    } else {
        o.push_str("<ol class=\"next\">");
        for s in &r.next_steps {
            let _ = write!(o, "<li>{}</li>", inline(s));
        }
        o.push_str("</ol>");
    }
    o.push_str("</section>\n<section id=\"timeline\"><h2>Timeline</h2>");
    if let Some(w) = r.freeze {
        let _ = write!(
            o,
            r#"<p>Writes were frozen on the old host for <strong class="bad">{} ms</strong> (from +{} ms to +{} ms), shown as the red band.</p>"#,
            w.ms(),
            w.start_ms,
            w.end_ms
        );
    }
    if r.phases.is_empty() {
        o.push_str("<p class=\"muted\">No phases were recorded.</p>");
    } else {
        o.push_str(&svg::timeline(r));
        phases_table(&mut o, r);
    }
    o.push_str("</section>\n<section id=\"streams\"><h2>Streams</h2>");
    if r.streams.is_empty() {
        o.push_str("<p class=\"muted\">No data was streamed in this run.</p>");
    } else {
        o.push_str(&svg::streams(r));
        streams_table(&mut o, r);
    }
    o.push_str("</section>\n<section id=\"verification\"><h2>Verification</h2>");
    if r.verification.is_empty() {
        o.push_str("<p class=\"muted\">Nothing was compared in this run.</p>");
    } else {
        verification_table(&mut o, r);
    }
    o.push_str("</section>\n<section id=\"notes\"><h2>Notes</h2>");
    if r.notes.is_empty() {
        o.push_str("<p class=\"muted\">None.</p>");
    } else {
        o.push_str("<ul>");
        for n in &r.notes {
            let _ = write!(o, "<li>{}</li>", esc(n));
        }
        o.push_str("</ul>");
    }
    let _ = write!(
        o,
        "</section>\n<footer>Written by hostshift {} at {}. <code>report.json</code> beside this page holds the same data for scripts; <code>report.md</code> for chat and tickets.</footer>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&utc(r.finished))
    );
    o
}
