//! Host control, nginx and health checks: a real private nginx per test in front of a tiny app in
//! the test process, real agents, driven through the real `hostshift` CLI. Each test checks the
//! agent's claims against what the test itself sees (HTTP answers through nginx, the site file's
//! bytes, the processes left behind).

use std::time::Instant;

use hostshift_proto::v1::health_client::HealthClient;
use hostshift_proto::v1::{HealthCheckRequest, HealthCheckSpec};
use hostshift_tests::rig::{self, AgentProc, AgentSetup, NginxProc, Sandbox, UpstreamApp};

/// One host's front: the app, and nginx on the old host's address proxying to it.
struct Front {
    sb: Sandbox,
    nginx: NginxProc,
    app: UpstreamApp,
    old_setup: AgentSetup,
}

/// A sandbox whose old agent has `[nginx]` for a private nginx (and `control_services` as
/// given); the plan has `[nginx] maintenance_pass = ["/health"]`.
async fn front(test: &str, control: bool) -> Front {
    front_with(test, control, |_, _| {}).await
}

/// [`front`], with a last word on the old agent's config.
async fn front_with(
    test: &str,
    control: bool,
    tweak: impl FnOnce(&NginxProc, &mut AgentSetup),
) -> Front {
    let mut sb = Sandbox::new(test).await;
    let app = UpstreamApp::start().await;
    let nginx = NginxProc::start(&sb.dir, "old", rig::OLD_IP, app.port()).await;
    let mut old = sb.old_setup();
    old.control_services = control;
    old.extra.push_str(&nginx.agent_toml());
    tweak(&nginx, &mut old);
    sb.start(old.clone(), sb.new_setup()).await;
    sb.write_plan(&plan_extra(""));
    Front {
        sb,
        nginx,
        app,
        old_setup: old,
    }
}

fn plan_extra(extra: &str) -> String {
    format!("[nginx]\nenabled = true\nmaintenance_pass = [\"/health\"]\n\n{extra}")
}

impl Front {
    /// Stops the old agent and starts it again with the same config (a new port), rewriting the
    /// plan for it.
    async fn restart_old_agent(&mut self) {
        drop(self.sb.old.take());
        let a = AgentProc::start(&self.old_setup, &self.sb.dir, self.sb.world).await;
        self.sb.addresses.0 = a.address();
        self.sb.old = Some(a);
        self.sb.write_plan(&plan_extra(""));
    }

    /// GET `/path` through nginx, asserting the status. No polling: the agent answers only once
    /// the reload has taken effect (new workers serve, old ones stopped accepting).
    async fn expect(&self, path: &str, want: u16) -> rig::HttpReply {
        let r = self.nginx.get(path).await;
        assert_eq!(
            r.status,
            want,
            "GET {path}: {r:?}\n{}",
            self.nginx.error_log()
        );
        r
    }
}

#[tokio::test]
async fn nginx_test_reports_ok_and_a_broken_site_reports_nginx_error() {
    // `test` needs no permit: this agent may not control services.
    let f = front("nginx_test", false).await;
    let out = f.sb.cli(&["nginx", "test", "--host", "old"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("syntax is ok") && out.stdout.contains("test is successful"),
        "{}",
        out.both()
    );
    let j =
        f.sb.cli(&["nginx", "test", "--host", "old", "--json"])
            .await
            .json();
    assert_eq!(j["ok"], true);
    assert!(
        j["command"].as_str().expect("command").contains(" -e "),
        "{j}"
    );

    let broken = String::from_utf8(f.nginx.original_site.clone())
        .expect("utf-8")
        .replace(
            "server_name app.test;",
            "server_name app.test;\n    bogus_directive on;",
        );
    std::fs::write(&f.nginx.site, broken).expect("break the site");
    let out = f.sb.cli(&["nginx", "test", "--host", "old"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stderr.contains("unknown directive \"bogus_directive\""),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains(&f.nginx.site.display().to_string()),
        "nginx names the file:\n{}",
        out.both()
    );
    // Testing changed nothing: the running nginx still serves the app.
    assert_eq!(f.nginx.get("/").await.body, UpstreamApp::ROOT_BODY);
}

#[tokio::test]
async fn nginx_control_without_control_services_is_refused_naming_the_key() {
    let f = front("nginx_no_permit", false).await;
    for args in [
        &["nginx", "reload", "--host", "old"][..],
        &["nginx", "maintenance", "on", "--host", "old", "--yes"][..],
        &["nginx", "maintenance", "off", "--host", "old"][..],
    ] {
        let out = f.sb.cli(args).await;
        assert_eq!(out.code, 1, "{args:?}: {}", out.both());
        assert!(out.stderr.contains("refused"), "{args:?}: {}", out.both());
        assert!(
            out.stderr.contains("`control_services = true` in [allow]"),
            "{args:?}: {}",
            out.both()
        );
    }
    assert_eq!(f.nginx.site_bytes(), f.nginx.original_site);
    assert!(!f.nginx.state_dir.exists(), "nothing saved");
    let r = f.nginx.get("/").await;
    assert_eq!((r.status, r.body.as_str()), (200, UpstreamApp::ROOT_BODY));
    // A dry run changes nothing, so it needs no permit.
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--dry-run"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("hostshift-maintenance: begin"),
        "{}",
        out.both()
    );
    assert_eq!(f.nginx.site_bytes(), f.nginx.original_site);
}

#[tokio::test]
async fn maintenance_on_serves_503_with_retry_after_while_health_reaches_the_app_and_off_restores_the_exact_bytes()
 {
    let f = front("maintenance", true).await;
    let original = f.nginx.original_site.clone();

    // Taking a site down needs --yes when there is no terminal to ask on.
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old"])
            .await;
    assert_eq!(out.code, 2, "{}", out.both());
    assert!(out.stderr.contains("add --yes"), "{}", out.both());
    assert_eq!(f.nginx.site_bytes(), original);

    let t = Instant::now();
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
            .await;
    eprintln!("maintenance on (CLI, test + reload): {:?}", t.elapsed());
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout
            .contains("Maintenance ON on the old host (switched on)"),
        "{}",
        out.both()
    );
    assert!(out.stdout.contains("except: /health"), "{}", out.both());

    let r = f.expect("/", 503).await;
    assert_eq!(r.header("retry-after"), Some("120"), "{r:?}");
    assert!(r.body.contains("Down for maintenance"), "{r:?}");
    assert_eq!(f.nginx.get("/some/page?x=1").await.status, 503);
    let h = f.nginx.get("/health").await;
    assert_eq!(
        (h.status, h.body.as_str()),
        (200, UpstreamApp::HEALTH_BODY),
        "/health must still reach the app"
    );
    let saved = f.nginx.state_dir.join("site.original");
    assert_eq!(std::fs::read(&saved).expect("saved original"), original);
    // Nothing new beside the site: nginx includes sites-enabled/* and would load it.
    let beside: Vec<_> = std::fs::read_dir(f.nginx.site.parent().expect("dir"))
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("app")]);

    // On again: no change, and the saved original is still the original (not the maintenance
    // version).
    let maintenance_bytes = f.nginx.site_bytes();
    let j =
        f.sb.cli(&[
            "nginx",
            "maintenance",
            "on",
            "--host",
            "old",
            "--yes",
            "--json",
        ])
        .await
        .json();
    assert_eq!(
        (j["on"].as_bool(), j["changed"].as_bool()),
        (Some(true), Some(false)),
        "{j}"
    );
    assert_eq!(std::fs::read(&saved).expect("saved original"), original);
    assert_eq!(f.nginx.site_bytes(), maintenance_bytes);
    let j =
        f.sb.cli(&["nginx", "maintenance", "status", "--host", "old", "--json"])
            .await
            .json();
    assert_eq!(j["on"], true, "{j}");
    assert_eq!(j["pass_paths"], serde_json::json!(["/health"]));

    let t = Instant::now();
    let out =
        f.sb.cli(&["nginx", "maintenance", "off", "--host", "old"])
            .await;
    eprintln!("maintenance off (CLI): {:?}", t.elapsed());
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(out.stdout.contains("byte for byte"), "{}", out.both());
    assert_eq!(
        f.nginx.site_bytes(),
        original,
        "the site file must be the original, byte for byte"
    );
    let r = f.expect("/", 200).await;
    assert_eq!(r.body, UpstreamApp::ROOT_BODY);
    assert!(!f.nginx.state_dir.join("maintenance.json").exists());

    // Off again: nothing to do, success.
    let j =
        f.sb.cli(&["nginx", "maintenance", "off", "--host", "old", "--json"])
            .await
            .json();
    assert_eq!(
        (j["on"].as_bool(), j["changed"].as_bool()),
        (Some(false), Some(false)),
        "{j}"
    );
    assert_eq!(f.nginx.site_bytes(), original);
}

#[tokio::test]
async fn maintenance_off_says_that_edits_made_during_maintenance_are_not_restored_and_keeps_them() {
    let f = front("maintenance_edited", true).await;
    let original = f.nginx.original_site.clone();
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    // Someone edits the live site file while maintenance is on.
    let mut edited = f.nginx.site_bytes();
    edited.extend_from_slice(b"\n# added during maintenance\n");
    std::fs::write(&f.nginx.site, &edited).expect("edit the site");

    let out =
        f.sb.cli(&["nginx", "maintenance", "off", "--host", "old"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(f.nginx.site_bytes(), original, "the original is back");
    assert!(
        out.stdout.contains("edited during maintenance"),
        "off says the edits are not in the restored site: {}",
        out.both()
    );
    let kept: Vec<_> = std::fs::read_dir(&f.nginx.state_dir)
        .expect("state dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("site.edited-"))
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).expect("kept"), edited);
    assert!(
        out.stdout.contains(&kept[0].display().to_string()),
        "{}",
        out.stdout
    );

    // Without edits, off says nothing of the kind.
    f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
        .await;
    let out =
        f.sb.cli(&["nginx", "maintenance", "off", "--host", "old"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        !out.stdout.contains("edited during maintenance"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn maintenance_survives_an_agent_restart_between_on_and_off() {
    let mut f = front("maintenance_restart", true).await;
    let original = f.nginx.original_site.clone();
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    f.expect("/", 503).await;

    f.restart_old_agent().await;
    let j =
        f.sb.cli(&["nginx", "maintenance", "status", "--host", "old", "--json"])
            .await
            .json();
    assert_eq!(
        j["on"], true,
        "the state is on disk, not in the agent's memory: {j}"
    );

    let out =
        f.sb.cli(&["nginx", "maintenance", "off", "--host", "old"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(f.nginx.site_bytes(), original);
    assert_eq!(f.expect("/", 200).await.body, UpstreamApp::ROOT_BODY);
}

#[tokio::test]
async fn maintenance_on_leaves_the_original_in_place_when_nginx_rejects_a_config() {
    // nginx itself accepts every maintenance site we generate from a valid original, so the
    // rejection is injected: a wrapper that fails `-t` whenever the site is a maintenance version
    // and otherwise runs the real nginx.
    let f = front_with("maintenance_rejected", true, |nginx, setup| {
        let wrapper = nginx.prefix.join("nginx-rejecting-maintenance");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = -t ] && grep -q hostshift-maintenance '{site}'; then\n    echo 'nginx: [emerg] injected rejection in {site}:7' >&2; exit 1\n  fi\ndone\nexec '{real}' \"$@\"\n",
                site = nginx.site.display(),
                real = rig::nginx_bin().display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        setup.extra = setup.extra.replace(
            &format!("bin = \"{}\"", rig::nginx_bin().display()),
            &format!("bin = \"{}\"", wrapper.display()),
        );
        assert!(setup.extra.contains("nginx-rejecting-maintenance"), "{}", setup.extra);
    })
    .await;
    let original = f.nginx.original_site.clone();

    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
            .await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stderr.contains("injected rejection in"),
        "nginx's message:\n{}",
        out.both()
    );
    assert!(
        out.stderr.contains("the original site is back in place"),
        "{}",
        out.both()
    );
    assert_eq!(f.nginx.site_bytes(), original);
    assert!(
        !f.nginx.state_dir.join("maintenance.json").exists(),
        "maintenance must not be recorded as on"
    );
    assert_eq!(f.nginx.get("/").await.body, UpstreamApp::ROOT_BODY);

    // A config that is already broken is refused before anything is saved or written.
    let broken = String::from_utf8(original)
        .expect("utf-8")
        .replace("listen ", "listen_typo ");
    std::fs::write(&f.nginx.site, &broken).expect("break");
    let out =
        f.sb.cli(&["nginx", "maintenance", "on", "--host", "old", "--yes"])
            .await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stderr
            .contains("the current configuration must pass first"),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains("unknown directive \"listen_typo\""),
        "{}",
        out.both()
    );
    assert_eq!(f.nginx.site_bytes(), broken.as_bytes());
    assert!(!f.nginx.state_dir.join("site.original").exists());
    assert_eq!(f.nginx.get("/").await.body, UpstreamApp::ROOT_BODY);
}

#[tokio::test]
async fn reload_refuses_a_broken_config_and_the_old_config_keeps_serving() {
    let f = front("reload", true).await;
    let original = String::from_utf8(f.nginx.original_site.clone()).expect("utf-8");

    let broken = original.replace(
        "proxy_pass http://app_backend;\n        proxy_set_header",
        "proxy_pass http://app_backend\n        proxy_set_header",
    );
    assert_ne!(broken, original);
    std::fs::write(&f.nginx.site, &broken).expect("break");
    let out = f.sb.cli(&["nginx", "reload", "--host", "old"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(out.stderr.contains("not reloaded"), "{}", out.both());
    assert!(
        out.stderr
            .contains("invalid number of arguments in \"proxy_pass\""),
        "nginx's message:\n{}",
        out.both()
    );
    let r = f.nginx.get("/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, UpstreamApp::ROOT_BODY),
        "the old config keeps serving"
    );

    // A valid change is applied.
    let teapot = original.replace(
        "    location = /health {",
        "    location = /teapot {\n        return 418;\n    }\n\n    location = /health {",
    );
    std::fs::write(&f.nginx.site, &teapot).expect("change");
    let out =
        f.sb.cli(&["nginx", "reload", "--host", "old", "--json"])
            .await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert_eq!(out.json()["reloaded"], true);
    f.expect("/teapot", 418).await;
}

#[tokio::test]
async fn health_checks_judge_status_body_json_and_bearer_token_where_the_plan_says() {
    let mut f = front("health", false).await;
    let token = f.sb.dir.join("health.token");
    std::fs::write(&token, format!("{}\n", UpstreamApp::TOKEN)).expect("token");
    let nginx = f.nginx.url("/");
    let app_health = f.app.url("/health");
    let private = f.app.url("/private");
    let checks = format!(
        r#"
[[health]]
name = "site-body"
url = "{nginx}"
from = "coordinator"
body_contains = "hello from the app"

[[health]]
name = "app-json-on-old"
url = "{app_health}"
from = "old"
json_field = "db.ok=true"

[[health]]
name = "wrong-status"
url = "{app_health}"
from = "coordinator"
expect_status = 204
retries = 2

[[health]]
name = "private-with-token-on-new"
url = "{private}"
from = "new"
bearer_token_file = "{token}"
retries = 1

[[health]]
name = "private-without-token"
url = "{private}"
from = "coordinator"
retries = 1

[[health]]
name = "json-mismatch"
url = "{app_health}"
from = "coordinator"
json_field = "status=down"
retries = 1
"#,
        token = token.display()
    );
    f.sb.write_plan(&plan_extra(&checks));

    let t = Instant::now();
    let out = f.sb.cli(&["health", "--json"]).await;
    eprintln!("health, 6 checks (one with 2 attempts): {:?}", t.elapsed());
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        !out.stdout.contains(UpstreamApp::TOKEN) && !out.stderr.contains(UpstreamApp::TOKEN),
        "the token must never be echoed"
    );
    let j = out.json();
    assert_eq!(j["ok"], false);
    let check = |name: &str| -> serde_json::Value {
        j["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {j}"))
            .clone()
    };
    let c = check("site-body");
    assert_eq!(
        (c["ok"].as_bool(), c["from"].as_str(), c["status"].as_u64()),
        (Some(true), Some("coordinator"), Some(200)),
        "{c}"
    );
    let c = check("app-json-on-old");
    assert_eq!(
        (c["ok"].as_bool(), c["from"].as_str()),
        (Some(true), Some("old")),
        "{c}"
    );
    assert!(
        c["detail"].as_str().expect("detail").contains("db.ok"),
        "{c}"
    );
    let c = check("wrong-status");
    assert_eq!(
        (
            c["ok"].as_bool(),
            c["attempts"].as_u64(),
            c["status"].as_u64()
        ),
        (Some(false), Some(2), Some(200)),
        "{c}"
    );
    assert_eq!(c["detail"], "status 200, expected 204");
    assert!(
        c["elapsed_ms"].as_u64().expect("ms") >= 500,
        "one 0.5 s pause between the attempts: {c}"
    );
    let c = check("private-with-token-on-new");
    assert_eq!(
        (c["ok"].as_bool(), c["from"].as_str(), c["status"].as_u64()),
        (Some(true), Some("new"), Some(200)),
        "{c}"
    );
    let c = check("private-without-token");
    assert_eq!(
        (
            c["ok"].as_bool(),
            c["status"].as_u64(),
            c["attempts"].as_u64()
        ),
        (Some(false), Some(401), Some(1)),
        "{c}"
    );
    let c = check("json-mismatch");
    assert_eq!(c["ok"], false);
    assert!(
        c["detail"]
            .as_str()
            .expect("detail")
            .contains("JSON field status is \"ok\", expected \"down\""),
        "{c}"
    );
    assert!(
        out.stderr.contains(
            "3 of 6 health checks failed: wrong-status, private-without-token, json-mismatch"
        ),
        "{}",
        out.both()
    );

    // Only the old host's checks: they pass, as a table for people.
    let out = f.sb.cli(&["health", "--host", "old"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.starts_with("CHECK")
            && out.stdout.contains("app-json-on-old")
            && !out.stdout.contains("site-body"),
        "{}",
        out.both()
    );

    // The cutover's gate sees the same through the library function, also with an agent down.
    let plan = hostshift::plan::Plan::load(&f.sb.plan_path()).expect("plan");
    drop(f.sb.new.take());
    let outcomes =
        hostshift::health::run_checks(&plan, Some(hostshift::plan::CheckFrom::New), &[]).await;
    assert_eq!(outcomes.len(), 1);
    assert!(!outcomes[0].result.ok);
    assert!(
        outcomes[0].result.detail.contains("new agent"),
        "{:?}",
        outcomes[0]
    );
}

#[tokio::test]
async fn agent_refuses_health_checks_with_non_http_urls() {
    let mut sb = Sandbox::new("health_scheme").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let ch = sb.old().channel(&sb.world.certs_coordinator()).await;
    for url in [
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "ftp://127.0.0.1/x",
    ] {
        let status = HealthClient::new(ch.clone())
            .check(HealthCheckRequest {
                checks: vec![HealthCheckSpec {
                    name: "evil".into(),
                    url: url.into(),
                    ..Default::default()
                }],
            })
            .await
            .expect_err(url);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{url}: {status:?}"
        );
        assert!(
            status.message().contains("only http and https"),
            "{status:?}"
        );
    }
    // A peer agent's certificate may not run checks either (control RPC).
    let ch = sb.old().channel(&sb.world.certs_agent("new")).await;
    let status = HealthClient::new(ch)
        .check(HealthCheckRequest { checks: vec![] })
        .await
        .expect_err("peer");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn no_nginx_process_outlives_its_test() {
    let sb = Sandbox::new("nginx_lifetime").await;
    let app = UpstreamApp::start().await;
    let nginx = NginxProc::start(&sb.dir, "old", rig::OLD_IP, app.port()).await;
    let master = nginx.master_pid().expect("pid file");
    let group = rig::process_group(master);
    assert!(group.len() >= 2, "a master and its workers: {group:?}");
    assert_eq!(nginx.get("/").await.body, UpstreamApp::ROOT_BODY);
    // Even a test that leaves the config broken (so `nginx -s quit` could not even parse it)
    // leaves nothing behind.
    std::fs::write(&nginx.site, "this is not nginx syntax").expect("break");
    let addr = nginx.addr;
    let t = Instant::now();
    drop(nginx);
    eprintln!("nginx stop: {:?}", t.elapsed());
    assert!(
        t.elapsed().as_secs() < 5,
        "a graceful stop, not the SIGKILL fallback: {:?}",
        t.elapsed()
    );
    assert_eq!(
        rig::process_group(master),
        Vec::<u32>::new(),
        "nginx processes outlived their NginxProc"
    );
    for pid in group {
        assert!(
            rig::process_gone(pid),
            "nginx process {pid} outlived its NginxProc"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts connections"
    );
}
