//! Progress of long work, on stderr: for people, live bars per unit (bytes, rate, ETA, drawn by
//! `indicatif`) when stderr is a terminal, else throttled lines with the same figures (a log file
//! or a CI console gets no cursor codes); one JSON object per event (`--json`) for scripts.
//! Either way a unit that ends leaves one summary line. Results stay on stdout.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// Counts items (tables, files compared), not bytes.
    items: bool,
    /// Its bar, when bars are drawn.
    bar: Option<ProgressBar>,
}

/// Progress reporter shared by concurrent units.
pub struct Progress {
    mode: Mode,
    units: Mutex<HashMap<String, Unit>>,
    /// Live bars: `Human` mode on a terminal.
    bars: Option<MultiProgress>,
}

/// The bar of a unit whose size is known, and of one whose size is not.
const BAR: &str = "{prefix} [{bar:28}] {bytes}/{total_bytes}  {binary_bytes_per_sec}  ETA {eta}";
const SPINNER: &str = "{prefix} {spinner} {msg} {elapsed}";
/// The bar of a unit that counts items (files compared).
const ITEMS: &str = "{prefix} [{bar:28}] {pos}/{len} {msg}  ETA {eta}";

impl Progress {
    /// A reporter. `Human` draws bars when stderr is a terminal (and `TERM` is not `dumb`),
    /// lines otherwise.
    pub fn new(mode: Mode) -> Self {
        let terminal =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Self::with_bars(mode, mode == Mode::Human && terminal)
    }

    /// A reporter that draws bars (`Human` only) or not, whatever stderr is.
    pub fn with_bars(mode: Mode, bars: bool) -> Self {
        Self {
            mode,
            units: Mutex::new(HashMap::new()),
            bars: (bars && mode == Mode::Human)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// Prints a line for people: above the bars when they are drawn.
    fn line(&self, text: &str) {
        match &self.bars {
            // println fails only when the terminal is gone; then there is no one to tell.
            Some(bars) => {
                if bars.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
            None => eprintln!("{text}"),
        }
    }

    /// A new bar for `unit` (`total` 0: size unknown).
    fn bar(bars: &MultiProgress, unit: &str, total: u64, items: bool) -> ProgressBar {
        let (bar, template) = if total > 0 {
            (ProgressBar::new(total), if items { ITEMS } else { BAR })
        } else {
            (ProgressBar::new_spinner(), SPINNER)
        };
        // The templates are constants; a template error would leave the default style.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("  {}", crate::output::printable_line(unit)));
        let bar = bars.add(bar);
        if total == 0 {
            // Nothing moves the spinner but time.
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        bar.tick();
        bar
    }

    /// How progress is shown.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line of narrative ("planning storage evaluations").
    pub fn say(&self, msg: &str) {
        match self.mode {
            Mode::Human => self.line(&crate::output::printable(msg)),
            Mode::Json => eprintln!("{}", json!({"event": "note", "message": msg})),
            Mode::Quiet => {}
        }
    }

    /// A step of a longer run starts (a cutover's `delta`, `prove after switch`): on a terminal
    /// a spinner with its elapsed time, so a step that takes minutes shows it is alive; else
    /// the line `STEP ...` (a JSON note with `--json`).
    pub fn step_started(&self, step: &str) {
        if self.bars.is_some() {
            self.begin(step, 0, false);
        } else {
            self.say(&format!("{step} ..."));
        }
    }

    /// The step ended: its spinner goes, and `line` (how it ended) stays.
    pub fn step_ended(&self, step: &str, line: &str) {
        self.end(step);
        self.say(line);
    }

    /// Forgets `unit` and clears its bar; returns how long it ran (zero when unknown).
    fn end(&self, unit: &str) -> Duration {
        let (elapsed, bar) = self
            .units
            .lock()
            .ok()
            .and_then(|mut u| u.remove(unit))
            .map_or((Duration::ZERO, None), |x| (x.started.elapsed(), x.bar));
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        elapsed
    }

    /// A unit of work starts; `total` bytes expected (0 = unknown).
    pub fn start(&self, unit: &str, total: u64) {
        self.begin(unit, total, false);
    }

    /// A unit of work that counts items starts: `total` items expected (0 = unknown).
    pub fn start_items(&self, unit: &str, total: u64) {
        self.begin(unit, total, true);
    }

    fn begin(&self, unit: &str, total: u64, items: bool) {
        let now = Instant::now();
        let bar = self.bars.as_ref().map(|b| Self::bar(b, unit, total, items));
        let replaced = self.units.lock().ok().and_then(|mut u| {
            u.insert(
                unit.to_string(),
                Unit {
                    started: now,
                    last: now,
                    total,
                    items,
                    bar,
                },
            )
        });
        // A unit started again (a retry): its old bar goes.
        if let Some(b) = replaced.and_then(|old| old.bar) {
            b.finish_and_clear();
        }
        if self.mode == Mode::Json {
            let event = if items {
                json!({"event": "start", "unit": unit, "total_items": total})
            } else {
                json!({"event": "start", "unit": unit, "total_bytes": total})
            };
            eprintln!("{event}");
        }
    }

    /// What `unit` is doing now ("fingerprinting the tables on both hosts"): the spinner's text
    /// on a terminal, a line otherwise (steps are few: not throttled).
    pub fn step(&self, unit: &str, what: &str) {
        if let Ok(u) = self.units.lock()
            && let Some(bar) = u.get(unit).and_then(|x| x.bar.as_ref())
        {
            bar.set_message(crate::output::printable_line(what));
            return;
        }
        match self.mode {
            Mode::Human => self.line(&format!(
                "  {}: {}",
                crate::output::printable_line(unit),
                crate::output::printable_line(what)
            )),
            Mode::Json => eprintln!("{}", json!({"event": "step", "unit": unit, "step": what})),
            Mode::Quiet => {}
        }
    }

    /// `done` bytes of `unit` are through.
    pub fn update(&self, unit: &str, done: u64) {
        let Ok(mut u) = self.units.lock() else { return };
        let Some(x) = u.get_mut(unit) else { return };
        if let Some(bar) = &x.bar {
            // The bar redraws at its own pace.
            bar.set_position(done);
            if x.total == 0 && !x.items {
                bar.set_message(bytes(done));
            }
            return;
        }
        if x.last.elapsed() < EVERY {
            return;
        }
        x.last = Instant::now();
        let secs = x.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = (x.total > done && rate > 0.0).then(|| (x.total - done) as f64 / rate);
        if x.items {
            let eta = eta.map(|e| format!("  ETA {e:.0} s")).unwrap_or_default();
            match self.mode {
                Mode::Human => {
                    let total = if x.total > 0 {
                        format!(" / {}", x.total)
                    } else {
                        String::new()
                    };
                    let unit = crate::output::printable_line(unit);
                    eprintln!("  {unit}: {done}{total}{eta}");
                }
                Mode::Json => eprintln!(
                    "{}",
                    json!({"event": "progress", "unit": unit, "items": done, "total_items": x.total, "eta_secs": eta})
                ),
                Mode::Quiet => {}
            }
            return;
        }
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
        let elapsed = self.end(unit);
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
                self.line(&format!(
                    "{mark} {unit}: {summary} ({:.1} s{rate})",
                    elapsed.as_secs_f64()
                ));
            }
            Mode::Json => eprintln!(
                "{}",
                json!({"event": "done", "unit": unit, "ok": ok, "bytes": moved, "ms": elapsed.as_millis() as u64, "summary": summary})
            ),
            Mode::Quiet => {}
        }
    }
}

impl Drop for Progress {
    /// A unit or step that never reported its end (a run that stopped on an error between the
    /// two) must not leave its spinner ticking over what is printed next.
    fn drop(&mut self) {
        if let Ok(mut u) = self.units.lock() {
            for (_, x) in u.drain() {
                if let Some(bar) = x.bar {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar_of(p: &Progress, unit: &str) -> Option<ProgressBar> {
        p.units.lock().ok()?.get(unit)?.bar.clone()
    }

    #[test]
    fn a_step_that_ended_and_one_left_running_both_lose_their_spinner() {
        let p = Progress::with_bars(Mode::Human, true);
        p.step_started("delta");
        p.step_started("prove");
        let (delta, prove) = (bar_of(&p, "delta"), bar_of(&p, "prove"));
        let (delta, prove) = (delta.expect("a spinner"), prove.expect("a spinner"));
        p.step_ended("delta", "delta: ok — 0 bytes");
        assert!(delta.is_finished(), "an ended step's spinner is cleared");
        assert!(!prove.is_finished(), "a running step keeps its spinner");
        // The run stopped on an error before `prove` ended: dropping the reporter clears it.
        drop(p);
        assert!(prove.is_finished(), "no spinner outlives the reporter");
    }

    #[test]
    fn without_a_terminal_a_step_is_a_line_not_a_spinner() {
        let p = Progress::with_bars(Mode::Human, false);
        p.step_started("delta");
        assert!(bar_of(&p, "delta").is_none());
    }
}
