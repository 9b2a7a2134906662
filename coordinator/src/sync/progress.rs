//! Progress of long work, on stderr: throttled lines with bytes, rate and ETA for people, or one
//! JSON object per event (`--json`) for scripts. Results stay on stdout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::output::bytes;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lines for people on stderr.
    Human,
    /// JSON lines on stderr.
    Json,
    /// Nothing.
    Quiet,
}

/// Minimum time between two progress lines of one unit.
const EVERY: Duration = Duration::from_secs(1);

struct Unit {
    started: Instant,
    last: Instant,
    total: u64,
}

/// Progress reporter shared by concurrent units.
pub struct Progress {
    mode: Mode,
    units: Mutex<HashMap<String, Unit>>,
}

impl Progress {
    /// A reporter.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            units: Mutex::new(HashMap::new()),
        }
    }

    /// How progress is shown.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line of narrative ("planning storage evaluations").
    pub fn say(&self, msg: &str) {
        match self.mode {
            Mode::Human => eprintln!("{}", crate::output::printable(msg)),
            Mode::Json => eprintln!("{}", json!({"event": "note", "message": msg})),
            Mode::Quiet => {}
        }
    }

    /// A unit of work starts; `total` bytes expected (0 = unknown).
    pub fn start(&self, unit: &str, total: u64) {
        let now = Instant::now();
        if let Ok(mut u) = self.units.lock() {
            u.insert(
                unit.to_string(),
                Unit {
                    started: now,
                    last: now,
                    total,
                },
            );
        }
        if self.mode == Mode::Json {
            eprintln!(
                "{}",
                json!({"event": "start", "unit": unit, "total_bytes": total})
            );
        }
    }

    /// `done` bytes of `unit` are through.
    pub fn update(&self, unit: &str, done: u64) {
        let Ok(mut u) = self.units.lock() else { return };
        let Some(x) = u.get_mut(unit) else { return };
        if x.last.elapsed() < EVERY {
            return;
        }
        x.last = Instant::now();
        let secs = x.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = (x.total > done && rate > 0.0).then(|| (x.total - done) as f64 / rate);
        match self.mode {
            Mode::Human => {
                let total = if x.total > 0 {
                    format!(" / {}", bytes(x.total))
                } else {
                    String::new()
                };
                let eta = eta.map(|e| format!("  ETA {e:.0} s")).unwrap_or_default();
                let unit = crate::output::printable_line(unit);
                eprintln!(
                    "  {unit}: {}{total}  {}/s{eta}",
                    bytes(done),
                    bytes(rate as u64)
                );
            }
            Mode::Json => eprintln!(
                "{}",
                json!({"event": "progress", "unit": unit, "bytes": done, "total_bytes": x.total, "bytes_per_sec": rate as u64, "eta_secs": eta})
            ),
            Mode::Quiet => {}
        }
    }

    /// A unit finished (`ok`) or failed, with a short summary.
    pub fn done(&self, unit: &str, moved: u64, ok: bool, summary: &str) {
        let elapsed = self
            .units
            .lock()
            .ok()
            .and_then(|mut u| u.remove(unit))
            .map_or(Duration::ZERO, |x| x.started.elapsed());
        match self.mode {
            Mode::Human => {
                let mark = if ok { "ok  " } else { "FAIL" };
                let rate = if elapsed.as_secs_f64() > 0.0 && moved > 0 {
                    format!(
                        ", {}/s",
                        bytes((moved as f64 / elapsed.as_secs_f64()) as u64)
                    )
                } else {
                    String::new()
                };
                let (unit, summary) = (
                    crate::output::printable_line(unit),
                    crate::output::printable(summary),
                );
                eprintln!(
                    "{mark} {unit}: {summary} ({:.1} s{rate})",
                    elapsed.as_secs_f64()
                );
            }
            Mode::Json => eprintln!(
                "{}",
                json!({"event": "done", "unit": unit, "ok": ok, "bytes": moved, "ms": elapsed.as_millis() as u64, "summary": summary})
            ),
            Mode::Quiet => {}
        }
    }
}
