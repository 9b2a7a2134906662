//! The two charts of `report.html`, drawn as inline SVG by this code: the phase timeline (one row
//! per phase, a time axis with a few ticks, the write-freeze window as a red translucent band)
//! and the bytes per stream. Presentation attributes only, so they render without the page's
//! CSS; generic `sans-serif` text, no fonts or images; every row carries a `<title>` tooltip with
//! the full name and detail. Sized to their content: the width is fixed, the height follows the
//! number of rows.

use std::fmt::Write as _;

use super::fmt::{clip, duration, esc, rate};
use super::{Report, Status};

/// Width of both charts, px.
const W: u64 = 960;
/// Left edge of the bars; phase names sit left of it.
const X0: u64 = 250;
/// Right edge of the timeline's bars; durations sit right of it.
const X1: u64 = 830;
/// Height of one row.
const ROW: u64 = 26;
/// Longest phase or stream name drawn in full (the tooltip has all of it).
const NAME_CHARS: usize = 34;

fn status_colour(s: Status) -> &'static str {
    match s {
        Status::Ok => "#2f855a",
        Status::Failed => "#c53030",
        Status::Skipped => "#a0aec0",
    }
}

/// A tick step of 1, 2 or 5 × 10ⁿ ms giving at most about six ticks over `span`.
fn tick_step(span: u64) -> u64 {
    let raw = (span / 5).max(1);
    let mut mag = 1u64;
    while mag.saturating_mul(10) <= raw {
        mag *= 10;
    }
    [1, 2, 5, 10]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(mag * 10)
}

fn tick_label(t: u64, step: u64) -> String {
    if t == 0 {
        "0".into()
    } else if step.is_multiple_of(60_000) {
        format!("{} min", t / 60_000)
    } else if step.is_multiple_of(1000) {
        format!("{} s", t / 1000)
    } else if t >= 1000 {
        format!("{:.1} s", t as f64 / 1000.0)
    } else {
        format!("{t} ms")
    }
}

/// The timeline of the phases, with the freeze window when there is one.
pub fn timeline(r: &Report) -> String {
    let span = r.span_ms().max(1);
    let x = |ms: u64| X0 as f64 + (ms.min(span) as f64) * (X1 - X0) as f64 / span as f64;
    let top = if r.freeze.is_some() { 34 } else { 12 };
    let rows = r.phases.len().max(1) as u64;
    let axis_y = top + rows * ROW + 4;
    let h = axis_y + 34;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-labelledby="timeline-title" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        s,
        r#"<title id="timeline-title">Timeline of {} phases over {}</title>"#,
        r.phases.len(),
        esc(&duration(span))
    );
    // Row stripes, then grid, then the freeze band, then bars: later paints on top.
    for i in (0..rows).step_by(2) {
        let _ = write!(
            s,
            r##"<rect x="0" y="{}" width="{W}" height="{ROW}" fill="#f7fafc"/>"##,
            top + i * ROW
        );
    }
    let step = tick_step(span);
    let mut t = 0;
    while t <= span {
        let tx = x(t);
        let _ = write!(
            s,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{axis_y}" stroke="#e2e8f0"/><line x1="{tx:.1}" y1="{axis_y}" x2="{tx:.1}" y2="{}" stroke="#4a5568"/><text x="{tx:.1}" y="{}" text-anchor="middle" fill="#4a5568">{}</text>"##,
            axis_y + 5,
            axis_y + 19,
            esc(&tick_label(t, step))
        );
        t += step;
    }
    let _ = write!(
        s,
        r##"<line x1="{X0}" y1="{axis_y}" x2="{X1}" y2="{axis_y}" stroke="#4a5568"/>"##
    );
    let _ = write!(
        s,
        r##"<text x="8" y="{}" fill="#4a5568">time since start</text>"##,
        axis_y + 19
    );
    if let Some(w) = r.freeze {
        let (fx0, fx1) = (x(w.start_ms), x(w.end_ms));
        let fw = (fx1 - fx0).max(2.0);
        let label = if w.ms() >= 1000 {
            format!("write freeze: {} ms ({})", w.ms(), duration(w.ms()))
        } else {
            format!("write freeze: {} ms", w.ms())
        };
        let lx = ((fx0 + fx1) / 2.0).clamp(X0 as f64 + 90.0, X1 as f64 - 90.0);
        let _ = write!(
            s,
            r##"<g class="freeze"><title>{t}</title><rect x="{fx0:.1}" y="{}" width="{fw:.1}" height="{}" fill="#e53e3e" fill-opacity="0.16" stroke="#c53030" stroke-dasharray="4 3"/><text x="{lx:.1}" y="{}" text-anchor="middle" fill="#c53030" font-weight="bold">{t}</text></g>"##,
            top - 6,
            axis_y - top + 6,
            top - 12,
            t = esc(&label)
        );
    }
    for (i, p) in r.phases.iter().enumerate() {
        let y = top + i as u64 * ROW;
        let ms = p.end_ms.saturating_sub(p.start_ms);
        let colour = status_colour(p.status);
        let tip = format!(
            "{} — {} — {} — {}",
            p.name,
            p.status.as_str(),
            duration(ms),
            p.detail
        );
        let _ = write!(s, r#"<g class="phase"><title>{}</title>"#, esc(&tip));
        let _ = write!(
            s,
            r##"<text x="8" y="{}" fill="#1a202c">{}</text>"##,
            y + 17,
            esc(&clip(&p.name, NAME_CHARS))
        );
        let (bx, bw) = (x(p.start_ms), (x(p.end_ms) - x(p.start_ms)).max(2.0));
        if p.status == Status::Skipped {
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{}" width="8" height="8" transform="rotate(45 {:.1} {})" fill="none" stroke="{colour}" stroke-width="1.5"/>"##,
                bx - 4.0,
                y + 9,
                bx,
                y + 13
            );
        } else {
            let _ = write!(
                s,
                r##"<rect x="{bx:.1}" y="{}" width="{bw:.1}" height="16" rx="2" fill="{colour}"/>"##,
                y + 5
            );
        }
        let right = match p.status {
            Status::Ok => duration(ms),
            Status::Failed => format!("FAILED · {}", duration(ms)),
            Status::Skipped => "skipped".into(),
        };
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="{}">{}</text></g>"##,
            W - 8,
            y + 17,
            if p.status == Status::Failed {
                "#c53030"
            } else {
                "#2d3748"
            },
            esc(&right)
        );
    }
    s.push_str("</svg>");
    s
}

/// Bytes per stream as horizontal bars, with size, rate, files and retries beside each.
pub fn streams(r: &Report) -> String {
    const BX1: u64 = 600;
    let max = r.streams.iter().map(|s| s.bytes).max().unwrap_or(0).max(1);
    let h = r.streams.len() as u64 * ROW + 16;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-labelledby="streams-title" font-family="sans-serif" font-size="12">"##
    );
    let _ = write!(
        s,
        r#"<title id="streams-title">Bytes sent per stream ({} streams)</title>"#,
        r.streams.len()
    );
    for (i, st) in r.streams.iter().enumerate() {
        let y = 8 + i as u64 * ROW;
        if i % 2 == 0 {
            let _ = write!(
                s,
                r##"<rect x="0" y="{y}" width="{W}" height="{ROW}" fill="#f7fafc"/>"##
            );
        }
        let bw = (st.bytes as f64 * (BX1 - X0) as f64 / max as f64).max(1.0);
        // A database unit counts tables where the others count files.
        let unit = if st.name.starts_with("database ") {
            "tables"
        } else {
            "files"
        };
        let unit = if st.files == 1 {
            &unit[..unit.len() - 1]
        } else {
            unit
        };
        let mut text = format!(
            "{} in {} · {} · {} {unit}",
            crate::output::bytes(st.bytes),
            duration(st.ms),
            rate(st.bytes, st.ms),
            st.files
        );
        if st.bytes == 0 {
            text = "0 B (nothing needed sending)".into();
        }
        if st.retries > 0 {
            let _ = write!(
                text,
                " · {} retr{}",
                st.retries,
                if st.retries == 1 { "y" } else { "ies" }
            );
        }
        let tip = format!("{}: {text}", st.name);
        let _ = write!(
            s,
            r##"<g class="stream"><title>{}</title><text x="8" y="{}" fill="#1a202c">{}</text><rect x="{X0}" y="{}" width="{bw:.1}" height="16" rx="2" fill="#3182ce"/><text x="{}" y="{}" fill="#2d3748">{}</text></g>"##,
            esc(&tip),
            y + 17,
            esc(&clip(&st.name, NAME_CHARS)),
            y + 5,
            BX1 + 10,
            y + 17,
            esc(&text)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(4_321), 1000);
        assert_eq!(tick_step(12_000), 5000);
        assert_eq!(tick_step(95), 20);
        assert_eq!(tick_label(2000, 1000), "2 s");
        assert_eq!(tick_label(1500, 500), "1.5 s");
        assert_eq!(tick_label(120_000, 60_000), "2 min");
        assert_eq!(tick_label(250, 50), "250 ms");
    }
}
