//! The migration report (`coordinator/src/report/`): the three files of a report folder, what
//! the HTML page may and may not contain, that secrets never reach the disk, and that `hostshift
//! sync` / `hostshift verify` write a report and print its path on stderr.
//!
//! Rendering: when `/usr/bin/chromium` exists, the page is screenshotted headless and the PNG
//! kept under `target/tmp/report-screenshots/` for a person to look at. Without chromium that
//! test says so on stderr and checks the structure only; the manual check is
//! `apt-get install -y chromium`, then
//! `chromium --headless --no-sandbox --disable-gpu --screenshot=/tmp/r.png --window-size=1200,900
//! file:///path/to/report.html` and look at `/tmp/r.png`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hostshift::plan::Plan;
use hostshift::report::{self, Builder, Kind, Phase, Report, Status, Window};
use hostshift::sync::verify;
use hostshift::sync::{ErrorKind, SyncReport, UnitError, UnitReport};
use hostshift_tests::rig::Sandbox;

const SECRETS: [&str; 3] = ["hunter2", "hunter3", "s3cr3t"];

fn plan(dir: &Path) -> Plan {
    let mut p: Plan = toml::from_str(
        r#"
[migration]
name = "shop-move"
[old]
address = "https://10.0.0.5:7443"
agent = "old"
[new]
address = "https://10.0.0.6:7443"
agent = "new"
[tls]
ca = "certs/ca.crt"
cert = "certs/coordinator.crt"
key = "certs/coordinator.key"
[switch]
method = "none"
"#,
    )
    .expect("plan");
    p.base_dir = dir.to_path_buf();
    p.path = dir.join("plan.toml");
    p
}

fn unit(kind: &str, name: &str, bytes: u64, files: u64, ms: u64) -> UnitReport {
    UnitReport {
        kind: kind.into(),
        name: name.into(),
        status: "copied".into(),
        bytes,
        files,
        skipped_files: 0,
        skipped_bytes: 0,
        ms,
        attempts: 1,
        retried: vec![],
        changes: vec![],
        detail: String::new(),
        ranges: 0,
        old_fingerprints: Default::default(),
        deferred: 0,
        deferred_names: vec![],
    }
}

/// A sync with secrets planted where a careless upstream could leak them, and text that must be
/// escaped.
fn sync_report() -> SyncReport {
    let mut env = unit("file", "backend-env", 312, 1, 40);
    env.changes = vec![
        "JWT_SECRET=hunter2".into(),
        "CORS_ORIGIN: https://old.example → https://shop.example".into(),
    ];
    let mut storage = unit("storage", "evaluations", 48 * 1024 * 1024, 1_204, 2_900);
    storage.attempts = 2;
    storage.skipped_files = 17;
    storage.skipped_bytes = 4096;
    storage.retried = vec![UnitError {
        kind: ErrorKind::Unavailable,
        message: "DATABASE_URL=postgres://app:hunter3@10.0.0.5/app: connection reset".into(),
    }];
    storage.detail =
        "3 dirs created <script>alert(1)</script> via postgresql://app:hunter2@db/app".into();
    let mut db = unit("database", "app", 180 * 1024 * 1024, 12, 6_100);
    db.status = "failed".into();
    db.detail = "restore refused: password=hunter2 is wrong".into();
    let units = vec![env, storage, db];
    SyncReport {
        ok: false,
        mode: "pull".into(),
        bytes: units.iter().map(|u| u.bytes).sum(),
        files: units.iter().map(|u| u.files).sum(),
        skipped_files: 17,
        ms: 9_400,
        journal: "/srv/move/.hostshift/shop-move/journal.jsonl".into(),
        units,
    }
}

fn verify_report() -> verify::Report {
    let row = |kind: &str, name: &str, equal: bool, detail: &str| verify::Row {
        kind: kind.into(),
        name: name.into(),
        equal,
        status: verify::RowStatus::of(equal),
        old: "1204 files, 48.0 MiB".into(),
        new: if equal {
            "1204 files, 48.0 MiB".into()
        } else {
            "1203 files, 47.9 MiB".into()
        },
        detail: detail.into(),
    };
    verify::Report {
        ok: false,
        rows: vec![
            row("file", "backend-env", true, ""),
            row(
                "storage",
                "evaluations",
                false,
                "missing: 2026/03/eval-9.json; JWT_SECRET: hunter2 → hunter3",
            ),
            row("table", "app public.users", true, ""),
        ],
        ms: 1_830,
        old_tables: Default::default(),
        new_tables: Default::default(),
    }
}

fn cutover_report(p: &Plan) -> Report {
    let mut b = Builder::for_plan(Kind::Cutover, p);
    let mut at = 0;
    for (name, ms, status) in [
        ("preflight", 900, Status::Ok),
        ("freeze old host", 300, Status::Ok),
        ("delta sync", 2_600, Status::Ok),
        ("verify", 1_100, Status::Ok),
        ("switch traffic", 800, Status::Ok),
        ("public check", 700, Status::Ok),
    ] {
        b.phase(Phase {
            name: name.into(),
            start_ms: at,
            end_ms: at + ms,
            status,
            detail: format!("{name} done"),
        });
        at += ms;
    }
    b.freeze(Window {
        start_ms: 900,
        end_ms: 5_700,
    });
    b.add_sync(&sync_report()).add_verify(&verify_report());
    let mut r = b.finish(true);
    r.finished = r.started + at;
    r
}

fn rehearse_report(p: &Plan) -> Report {
    // As `hostshift rehearse` would: durations only, one phase after another.
    let mut b = Builder::for_plan(Kind::Rehearse, p);
    for (name, ms, status, detail) in [
        ("lab", 4_200, "ok", "2 clusters"),
        ("check", 700, "ok", "31 checks"),
        ("backup", 0, "skipped", "not available in this version yet"),
    ] {
        b.then(name, ms, status.parse().expect("a status"), detail);
    }
    b.finish(true)
}

fn read3(dir: &Path) -> [String; 3] {
    ["report.json", "report.md", "report.html"].map(|f| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
    })
}

fn written(r: &Report) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = report::write(&tmp.path().join("reports"), r).expect("write the report");
    (tmp, dir)
}

/// Every `src=`/`href=`-like attribute points inside the page (`#…`) or is a `data:` URI; no
/// scripts, stylesheets links, imports or remote `url(…)`; `http` only in text the user gave.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for banned in [
        "<script", "<link", "@import", "<iframe", "<object", "<embed", "<base", "xmlns",
    ] {
        assert!(!lower.contains(banned), "the page contains {banned}");
    }
    for (i, _) in lower.match_indices("url(") {
        let target = lower[i + 4..].trim_start_matches(['"', '\'', ' ']);
        assert!(target.starts_with('#'), "url( outside the page at byte {i}");
    }
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        let gt = rest[lt..]
            .find('>')
            .map(|g| lt + g)
            .expect("every tag closes");
        let tag = rest[lt..=gt].to_ascii_lowercase();
        let mut after = &rest[gt + 1..];
        if tag.starts_with("<style") {
            let end = after.find("</style>").expect("style closes");
            let css = after[..end].to_ascii_lowercase();
            assert!(
                !css.contains("http") && !css.contains("//"),
                "the stylesheet refers outside: {css}"
            );
            after = &after[end..];
        }
        assert!(
            !tag.replace("http-equiv=", "").contains("http"),
            "a tag refers outside the page: {tag}"
        );
        for attr in [
            "src",
            "href",
            "srcset",
            "action",
            "formaction",
            "poster",
            "background",
            "ping",
            "data",
        ] {
            for (i, _) in tag.match_indices(&format!("{attr}=")) {
                let before = tag[..i].chars().last().unwrap_or(' ');
                if !(before.is_whitespace() || before == ':') {
                    continue;
                }
                let value = tag[i + attr.len() + 1..].trim_start_matches(['"', '\'']);
                assert!(
                    value.starts_with('#') || value.starts_with("data:"),
                    "{attr}= points outside the page: {tag}"
                );
            }
        }
        rest = after;
    }
}

#[test]
fn html_report_is_one_self_contained_page_without_external_references() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    for r in [
        Report::from_sync(&sync_report(), &p, 1_773_483_302_000),
        Report::from_verify(&verify_report(), &p),
        cutover_report(&p),
        rehearse_report(&p),
    ] {
        let (_t, dir) = written(&r);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "exactly the three files: {names:?}");
        let [_, _, html] = read3(&dir);
        assert!(html.starts_with("<!doctype html>"), "{}", &html[..40]);
        assert!(html.contains(r#"<meta charset="utf-8">"#));
        assert!(
            html.contains("<svg") && html.contains("</svg>"),
            "the timeline is inline SVG"
        );
        assert_self_contained(&html);
    }
    // User text is escaped, never markup: the planted tag shows as text.
    let r = Report::from_sync(&sync_report(), &p, 1_773_483_302_000);
    let (_t, dir) = written(&r);
    let [_, _, html] = read3(&dir);
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        html.contains("https://shop.example"),
        "a URL the user gave stays readable as text"
    );
}

#[test]
fn every_phase_stream_and_verification_row_appears_in_html_and_markdown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let r = cutover_report(&p);
    let (_t, dir) = written(&r);
    let [_, md, html] = read3(&dir);
    for ph in &r.phases {
        assert!(
            html.contains(&ph.name) && md.contains(&ph.name),
            "phase {} missing",
            ph.name
        );
    }
    for s in ["file backend-env", "storage evaluations", "database app"] {
        assert!(html.contains(s) && md.contains(s), "stream {s} missing");
    }
    for v in &r.verification {
        assert!(
            html.contains(&v.name) && md.contains(&v.name),
            "row {} missing",
            v.name
        );
    }
    assert!(
        html.contains("DIFFERS") && html.contains(">equal<"),
        "results are words, not only colours"
    );
    assert!(
        html.contains("missing: 2026/03/eval-9.json"),
        "the difference is named"
    );
    assert!(html.contains("hostshift rollback --plan") && md.contains("hostshift rollback --plan"));
    assert!(html.contains("24–72 h") && html.contains("hostshift verify --plan"));
    assert!(
        html.contains(r##"href="#next""##),
        "in-page navigation uses fragments"
    );
}

#[test]
fn freeze_band_is_drawn_for_a_cutover_and_absent_otherwise() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let (_t, dir) = written(&cutover_report(&p));
    let [json, md, html] = read3(&dir);
    assert!(html.contains(r#"<g class="freeze">"#), "the band is drawn");
    assert!(
        html.contains("write freeze: 4800 ms"),
        "the band says its length in ms"
    );
    assert!(
        html.contains(r##"fill="#e53e3e" fill-opacity="0.16""##),
        "red, translucent"
    );
    assert!(md.contains("Write freeze: **4800 ms**"));
    assert!(json.contains(r#""freeze": {"#));

    for r in [
        Report::from_sync(&sync_report(), &p, 1_773_483_302_000),
        rehearse_report(&p),
    ] {
        let (_t, dir) = written(&r);
        let [json, md, html] = read3(&dir);
        assert!(
            !html.contains("class=\"freeze\"") && !html.contains("write freeze"),
            "{:?} has no freeze",
            r.kind
        );
        assert!(!md.contains("Write freeze"));
        assert!(json.contains(r#""freeze": null"#));
    }
}

#[test]
fn json_round_trips_to_the_same_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let clean = rehearse_report(&p);
    let (_t, dir) = written(&clean);
    let [json, _, _] = read3(&dir);
    let back: Report = serde_json::from_str(&json).expect("report.json parses as a Report");
    assert_eq!(back, clean, "a report without secrets comes back unchanged");
    assert_eq!(back.phases[2].status, Status::Skipped);

    // With secrets, what comes back is the scrubbed report, field for field.
    let dirty = cutover_report(&p);
    let (_t, dir) = written(&dirty);
    let [json, _, _] = read3(&dir);
    let back: Report = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, dirty.scrubbed());
    assert_eq!(
        back.freeze,
        Some(Window {
            start_ms: 900,
            end_ms: 5_700
        })
    );
}

#[test]
fn planted_secrets_never_appear_in_any_report_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let mut with_notes = cutover_report(&p);
    with_notes
        .notes
        .push("API_TOKEN = 'hunter2 and more'".into());
    with_notes.phases[0].detail = "export JWT_SECRET=hunter2\nPORT=3666".into();
    for r in [
        Report::from_sync(&sync_report(), &p, 1_773_483_302_000),
        Report::from_verify(&verify_report(), &p),
        with_notes,
    ] {
        let (_t, dir) = written(&r);
        for (name, text) in ["report.json", "report.md", "report.html"]
            .iter()
            .zip(read3(&dir))
        {
            for s in SECRETS {
                assert!(
                    !text.contains(s),
                    "{name} of a {:?} report contains {s}",
                    r.kind
                );
            }
            // (report.md escapes the stars: `\*\*\*\*\*`.)
            assert!(
                text.replace('\\', "").contains("*****"),
                "{name}: the masked values are still visible as masked"
            );
        }
    }
}

#[test]
fn report_folders_are_named_by_utc_time_and_kind_and_never_overwritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let r = Report::from_sync(&sync_report(), &p, 1_773_483_302_000);
    let reports = report::reports_dir(&p);
    assert_eq!(reports, tmp.path().join(".hostshift/shop-move/reports"));
    let a = report::write(&reports, &r).expect("first");
    let b = report::write(&reports, &r).expect("second");
    assert_eq!(a, reports.join("20260314T101502Z-sync"));
    assert_eq!(b, reports.join("20260314T101502Z-sync-2"));
    let left: Vec<_> = std::fs::read_dir(&reports)
        .expect("reports")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "no staging folders are left behind: {left:?}"
    );
}

#[test]
fn builder_measures_phases_and_the_freeze_on_its_own_clock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let mut b = Builder::for_plan(Kind::Cutover, &p);
    let t = Instant::now();
    b.freeze_begins();
    b.phase_since("delta sync", t, Status::Ok, "0 files");
    let r = b.finish(false); // an open freeze is closed by finish
    let w = r.freeze.expect("the freeze window");
    assert!(w.start_ms <= w.end_ms && w.end_ms <= r.duration_ms());
    assert!(r.phases[0].start_ms <= r.phases[0].end_ms);
    assert!(!r.ok);
    assert!(
        "done".parse::<Status>().is_err(),
        "only ok, failed, skipped"
    );
    let rehearsal = rehearse_report(&p);
    let ends: Vec<(u64, u64)> = rehearsal
        .phases
        .iter()
        .map(|p| (p.start_ms, p.end_ms))
        .collect();
    assert_eq!(
        ends,
        [(0, 4_200), (4_200, 4_900), (4_900, 4_900)],
        "`then` lays phases end to end"
    );
    assert!(
        rehearsal.duration_ms() >= 4_900,
        "a report is never shorter than its timeline"
    );
    assert!(
        r.next_steps
            .iter()
            .any(|s| s.contains("hostshift rollback --plan")),
        "{:?}",
        r.next_steps
    );
}

/// Runs chromium headless on `html` and returns the PNG bytes; fails the test if it hangs.
fn screenshot(chromium: &Path, html: &Path, png: &Path) -> Vec<u8> {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,900")
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish a screenshot within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read(png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()))
}

#[test]
fn html_report_renders_in_headless_chromium_or_passes_structural_checks_when_chromium_is_absent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = plan(tmp.path());
    let chromium = Path::new("/usr/bin/chromium");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    for r in [
        cutover_report(&p),
        Report::from_sync(&sync_report(), &p, 1_773_483_302_000),
        Report::from_verify(&verify_report(), &p),
        rehearse_report(&p),
    ] {
        let dir = report::write(&tmp.path().join("reports"), &r).expect("write");
        let html = dir.join("report.html");
        assert_self_contained(&std::fs::read_to_string(&html).expect("html"));
        // Kept beside the screenshots for a person to open.
        for ext in ["html", "md"] {
            std::fs::copy(
                dir.join(format!("report.{ext}")),
                shots.join(format!("{}.{ext}", r.kind.as_str())),
            )
            .expect("keep a copy of the page");
        }
        if !chromium.exists() {
            eprintln!(
                "chromium is not installed: checked the page's structure only. To look at it: \
                 apt-get install -y chromium, then chromium --headless --no-sandbox --disable-gpu \
                 --screenshot=/tmp/r.png --window-size=1200,900 file://{}",
                html.display()
            );
            continue;
        }
        let png_path = shots.join(format!("{}.png", r.kind.as_str()));
        let png = screenshot(chromium, &html, &png_path);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let (w, h) = (
            u32::from_be_bytes(png[16..20].try_into().expect("4")),
            u32::from_be_bytes(png[20..24].try_into().expect("4")),
        );
        assert_eq!((w, h), (1200, 900));
        // A blank 1200×900 page compresses to a few KiB; charts, tables and text do not.
        assert!(
            png.len() > 40 * 1024,
            "the screenshot is nearly empty ({} bytes): {}",
            png.len(),
            png_path.display()
        );
        eprintln!(
            "screenshot of the {} report: {}",
            r.kind.as_str(),
            png_path.display()
        );
    }
}

#[tokio::test]
async fn sync_and_verify_through_the_cli_write_a_report_folder_and_print_its_path_on_stderr() {
    let mut sb = Sandbox::new("report_cli").await;
    sb.plan_databases = false;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // Plant a secret in the plan's overrides: the sync applies it and reports the change.
    let plan_text = std::fs::read_to_string(sb.plan_path()).expect("plan");
    let anchor = "[[files]]\nname = \"backend-env\"\n";
    assert!(plan_text.contains(anchor), "{plan_text}");
    std::fs::write(
        sb.plan_path(),
        plan_text.replace(
            anchor,
            &format!("{anchor}overrides = {{ JWT_SECRET = \"hunter2\" }}\n"),
        ),
    )
    .expect("plan with an override");

    let out = sb.cli(&["sync"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(!out.stdout.contains("Report:"), "stdout is the result only");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("Report: "))
        .unwrap_or_else(|| panic!("no Report: line\n{}", out.both()));
    let html = PathBuf::from(line.trim_start_matches("Report: "));
    let dir = html.parent().expect("report folder").to_path_buf();
    assert_eq!(
        html.file_name().and_then(|n| n.to_str()),
        Some("report.html")
    );
    assert_eq!(
        dir.parent(),
        Some(sb.dir.join(".hostshift/test/reports").as_path()),
        "{}",
        dir.display()
    );
    assert!(
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("-sync")),
        "{}",
        dir.display()
    );
    let [json, md, page] = read3(&dir);
    assert_self_contained(&page);
    for name in ["file backend-env", "storage evaluations"] {
        assert!(
            page.contains(name) && md.contains(name),
            "{name} missing from the report"
        );
    }
    let r: Report = serde_json::from_str(&json).expect("report.json");
    assert!(r.ok && r.kind == Kind::Sync && r.plan_name == "test");
    assert_eq!(
        r.streams
            .iter()
            .find(|s| s.name == "storage evaluations")
            .map(|s| s.files),
        Some(3)
    );
    for text in [&json, &md, &page] {
        for s in SECRETS {
            assert!(!text.contains(s), "a secret reached the report: {s}");
        }
    }

    // verify: its own folder, the rows equal; --json keeps stdout one JSON document.
    let v = sb.cli(&["verify", "--json"]).await;
    assert_eq!(v.code, 0, "{}", v.both());
    assert!(
        v.json().get("report").is_none(),
        "the JSON shape is unchanged"
    );
    let line = v
        .stderr
        .lines()
        .find(|l| l.starts_with("Report: "))
        .unwrap_or_else(|| panic!("no Report: line\n{}", v.both()));
    let vdir = PathBuf::from(line.trim_start_matches("Report: "))
        .parent()
        .expect("folder")
        .to_path_buf();
    assert_ne!(vdir, dir);
    let [json, _, page] = read3(&vdir);
    let r: Report = serde_json::from_str(&json).expect("report.json");
    assert_eq!(r.kind, Kind::Verify);
    assert!(
        !r.verification.is_empty() && r.verification.iter().all(|row| row.equal),
        "{:?}",
        r.verification
    );
    assert!(page.contains(">equal<") && !page.contains("DIFFERS"));
}
