//! Progress a person can watch: on a terminal (a real pseudo-terminal from util-linux's
//! `script`), `hostshift sync` draws live bars and leaves one summary line per unit; without a
//! terminal the same run prints plain lines with no cursor codes, for logs and CI consoles.
//! `hostshift verify` reports the same way: one unit per compared kind (the config files, each
//! storage tree, each database's schema and its tables), and JSON events with `--json` while
//! stdout keeps only the final document. `hostshift backup` too: one unit per artifact.

use hostshift_tests::rig::{self, Sandbox};

/// A storage-only sandbox whose tree is big enough (48 MiB) for bars to be drawn.
async fn sandbox(test: &str) -> Sandbox {
    sandbox_with(test, |_, _| {}).await
}

/// [`sandbox`], the old agent's setup changed by `old` first.
async fn sandbox_with(test: &str, old: impl FnOnce(&Sandbox, &mut rig::AgentSetup)) -> Sandbox {
    let mut sb = Sandbox::new(test).await;
    sb.plan_databases = false;
    let d = sb.old_storage.join("big");
    std::fs::create_dir_all(&d).expect("dir");
    for i in 0..6u8 {
        std::fs::write(d.join(format!("blob-{i}.bin")), vec![i; 8 << 20]).expect("file");
    }
    let mut setup = sb.old_setup();
    old(&sb, &mut setup);
    sb.start(setup, sb.new_setup()).await;
    sb
}

/// Runs `hostshift ARGS --plan <plan>` on a pseudo-terminal; returns the exit code and what the
/// terminal showed (stdout and stderr together, as a person sees them).
async fn on_a_terminal(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let plan = sb.plan_path().display().to_string();
    let mut all = args.to_vec();
    all.extend(["--plan", &plan]);
    rig::on_a_terminal(&sb.dir, &all, &[]).await
}

#[tokio::test]
async fn sync_on_a_terminal_draws_bars_and_leaves_one_summary_line_per_unit() {
    let sb = sandbox("progress_tty").await;
    let (code, screen) = on_a_terminal(&sb, &["sync", "--only", "storage"]).await;
    assert_eq!(code, 0, "{screen}");
    // A bar was drawn: its frame and figures, redrawn in place with cursor codes.
    assert!(screen.contains("ETA"), "no bar was drawn:\n{screen}");
    assert!(screen.contains("] "), "no bar frame:\n{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "bars redraw with terminal codes:\n{screen}"
    );
    // The unit's summary line stays once the bar is gone: once.
    assert_eq!(
        screen.matches("ok   storage evaluations:").count(),
        1,
        "one summary line for the unit:\n{screen}"
    );
}

#[tokio::test]
async fn sync_without_a_terminal_prints_plain_lines_without_cursor_codes() {
    let sb = sandbox("progress_plain").await;
    let out = sb.cli(&["sync", "--only", "storage"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no terminal codes in a log:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.lines().any(|l| l.starts_with("ok   storage")),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn verify_on_a_terminal_draws_progress_and_leaves_one_summary_line_per_unit() {
    let sb = sandbox("progress_verify_tty").await;
    let synced = sb.cli(&["sync"]).await;
    assert_eq!(synced.code, 0, "{}", synced.both());
    let (code, screen) = on_a_terminal(&sb, &["verify"]).await;
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "progress redraws with terminal codes:\n{screen}"
    );
    // One summary line per unit, left once its spinner or bar is gone.
    assert_eq!(
        screen.matches("ok   storage evaluations: equal (").count(),
        1,
        "one summary line for the storage tree:\n{screen}"
    );
    assert_eq!(
        screen.matches("ok   files: 1 of 1 file(s) equal").count(),
        1,
        "one summary line for the config files:\n{screen}"
    );
    // The result table still follows.
    assert!(screen.contains("KIND"), "{screen}");
}

#[tokio::test]
async fn verify_without_a_terminal_prints_plain_lines_and_with_json_events() {
    // With a database: its schema and its tables are units of their own.
    let mut sb = Sandbox::new("progress_verify_plain").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let synced = sb.cli(&["sync"]).await;
    assert_eq!(synced.code, 0, "{}", synced.both());

    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        !out.stderr.contains('\u{1b}'),
        "no terminal codes in a log:\n{}",
        out.stderr
    );
    let line = |prefix: &str| out.stderr.lines().filter(|l| l.starts_with(prefix)).count();
    for unit in [
        "ok   files: 1 of 1 file(s) equal",
        "ok   storage evaluations: equal (",
        "ok   schema app: equal",
        "ok   tables app: ",
    ] {
        assert_eq!(line(unit), 1, "one `{unit}` line:\n{}", out.stderr);
    }
    let tables = out
        .stderr
        .lines()
        .find(|l| l.starts_with("ok   tables app: "))
        .expect("tables line");
    let counted = tables
        .trim_start_matches("ok   tables app: ")
        .split(" of ")
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .expect("`N of M tables equal`");
    assert!(counted > 0, "the template has tables: {tables}");
    assert!(
        tables.contains(&format!("{counted} of {counted} tables equal")),
        "{tables}"
    );
    // Results stay on stdout, progress on stderr.
    assert!(!out.stdout.contains("ok   "), "{}", out.stdout);

    let out = sb.cli(&["--json", "verify"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    // stdout is one JSON document: the report.
    let doc: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", out.stdout));
    assert_eq!(doc["ok"], true, "{doc}");
    // stderr: one JSON event a line, a start and a done for every unit.
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for unit in ["files", "storage evaluations", "schema app", "tables app"] {
        let of = |event: &str| {
            events
                .iter()
                .filter(|e| e["event"] == event && e["unit"] == unit)
                .count()
        };
        assert_eq!(of("start"), 1, "{unit} starts once:\n{}", out.stderr);
        assert_eq!(of("done"), 1, "{unit} is done once:\n{}", out.stderr);
        let done = events
            .iter()
            .find(|e| e["event"] == "done" && e["unit"] == unit)
            .expect("done");
        assert_eq!(done["ok"], true, "{done}");
        assert!(
            done["summary"]
                .as_str()
                .is_some_and(|s| s.contains("equal")),
            "{done}"
        );
    }

    // A difference: the unit's summary line says FAIL and names it; the others stay ok.
    std::fs::write(sb.new_storage.join("2026/01/eval-0.json"), "changed").expect("write");
    let out = sb.cli(&["verify"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    let fail = out
        .stderr
        .lines()
        .find(|l| l.starts_with("FAIL storage evaluations: DIFFERS: "))
        .unwrap_or_else(|| panic!("no FAIL line for the tree:\n{}", out.stderr));
    assert!(fail.contains("2026/01/eval-0.json"), "{fail}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("ok   schema app: equal")),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn backup_on_a_terminal_draws_progress_and_leaves_one_summary_line_per_artifact() {
    let sb = sandbox_with("progress_backup_tty", |sb, old| {
        let dir = toml::Value::String(sb.dir.join("backups").display().to_string());
        old.extra.push_str(&format!("\n[backup]\ndir = {dir}\n"));
    })
    .await;
    let (code, screen) = on_a_terminal(&sb, &["backup"]).await;
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("\u{1b}["),
        "progress redraws with terminal codes:\n{screen}"
    );
    // One summary line per artifact, left once its spinner is gone.
    for artifact in ["ok   storage evaluations: ", "ok   file backend-env: "] {
        assert_eq!(
            screen.matches(artifact).count(),
            1,
            "one summary line {artifact:?}:\n{screen}"
        );
    }
    // The list of artifacts still follows.
    assert!(
        screen.contains("KIND") && screen.contains("storage/evaluations.tar.gz"),
        "{screen}"
    );
}
