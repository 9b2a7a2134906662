//! Foundation: two real agents over mutual TLS, the real `hostshift check`, certificate
//! identities, and clean shutdown. Each test names the behaviour it pins down.

use std::time::Duration;

use hostshift::lab::seed;
use hostshift_proto::v1::hooks_client::HooksClient;
use hostshift_proto::v1::{InfoRequest, RunHookRequest, agent_client::AgentClient};
use hostshift_tests::rig::{self, Sandbox};
use tonic::transport::{Certificate, ClientTlsConfig};

#[tokio::test]
async fn check_against_two_real_agents_passes_and_lists_both_hosts_tools() {
    let mut sb = Sandbox::new("check_ok").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let before = seed::content_digest(&sb.world.old_pg.connect(&sb.old_db).await)
        .await
        .expect("digest");

    let out = sb.cli(&["check", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let j = out.json();
    assert_eq!(j["ok"], true, "{}", out.both());
    for host in ["old", "new"] {
        assert_eq!(j["hosts"][host]["identity"], format!("agent:{host}"));
        let pg_dump = j["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .find(|t| t["host"] == host && t["tool"] == "pg_dump")
            .unwrap_or_else(|| panic!("no pg_dump for {host}: {}", out.stdout));
        assert_eq!(pg_dump["present"], true);
        assert!(
            pg_dump["version"]
                .as_str()
                .expect("version")
                .contains("PostgreSQL")
        );
        assert!(
            j["hosts"][host]["databases"]["app"]
                .as_str()
                .expect("server version")
                .starts_with("15"),
            "{}",
            out.stdout
        );
    }
    let users = j["baseline"]
        .as_array()
        .expect("baseline")
        .iter()
        .find(|b| b["table"] == "public.users")
        .expect("users baseline");
    assert_eq!(users["rows"].as_i64(), Some(sb.world.seed.rows["users"]));

    let human = sb.cli(&["check"]).await;
    assert_eq!(human.code, 0, "{}", human.both());
    assert!(
        human.stdout.contains("Tools") && human.stdout.contains("Baseline row counts"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("All ") && human.stdout.contains("checks passed"),
        "{}",
        human.stdout
    );

    let after = seed::content_digest(&sb.world.old_pg.connect(&sb.old_db).await)
        .await
        .expect("digest");
    assert_eq!(before, after, "check must not change the old host's data");
}

#[tokio::test]
async fn check_fails_naming_the_fix_when_the_new_host_does_not_allow_restore() {
    let mut sb = Sandbox::new("check_no_allow").await;
    let mut new = sb.new_setup();
    new.restore_databases.clear();
    sb.start(sb.old_setup(), new).await;
    let out = sb.cli(&["check", "--json"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    let j = out.json();
    let failing: Vec<&serde_json::Value> = j["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["result"] == "fail")
        .collect();
    assert_eq!(failing.len(), 1, "{}", out.stdout);
    assert_eq!(failing[0]["host"], "new");
    assert!(
        failing[0]["detail"]
            .as_str()
            .expect("detail")
            .contains("restore-database:app")
    );
    assert!(
        failing[0]["hint"]
            .as_str()
            .expect("hint")
            .contains("[allow]")
    );
}

#[tokio::test]
async fn check_says_nothing_listens_when_an_agent_is_down() {
    let mut sb = Sandbox::new("check_down").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    // Stop the new agent; the plan still points at its address.
    drop(sb.new.take());
    let out = sb.cli(&["check"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("nothing listens there"),
        "{}",
        out.both()
    );
    assert!(
        out.stdout.contains("FAIL new reachable over mutual TLS"),
        "{}",
        out.both()
    );
}

#[tokio::test]
async fn coordinator_certificate_from_another_ca_is_refused_with_a_clear_message() {
    let mut sb = Sandbox::new("foreign_ca").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let foreign = &sb.world.foreign_certs;
    // Right CA file, but a client certificate the agents' CA never issued.
    let plan = std::fs::read_to_string(sb.plan_path())
        .expect("plan")
        .replace(
            &sb.world.certs.coordinator_cert.display().to_string(),
            &foreign.coordinator_cert.display().to_string(),
        )
        .replace(
            &sb.world.certs.coordinator_key.display().to_string(),
            &foreign.coordinator_key.display().to_string(),
        );
    std::fs::write(sb.plan_path(), plan).expect("plan");
    let out = sb.cli(&["check"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.matches("refused our client certificate").count() >= 2,
        "both agents must refuse, with a clear reason:\n{}",
        out.both()
    );

    // The whole foreign set: now the coordinator refuses the agents' certificates first.
    let plan = std::fs::read_to_string(sb.plan_path())
        .expect("plan")
        .replace(
            &sb.world.certs.ca_cert.display().to_string(),
            &foreign.ca_cert.display().to_string(),
        );
    std::fs::write(sb.plan_path(), plan).expect("plan");
    let out = sb.cli(&["check"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    assert!(
        out.stdout.contains("not issued by the CA in the plan"),
        "{}",
        out.both()
    );
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let mut sb = Sandbox::new("no_client_cert").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let ca = std::fs::read(&sb.world.certs.ca_cert).expect("ca");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(rig::OLD_IP.to_string());
    // The TLS 1.3 handshake completes; the refusal arrives with the first RPC.
    let ch = sb.old().channel_with(tls).await;
    let r = AgentClient::new(ch)
        .info(InfoRequest { brief: false })
        .await;
    let status = r.expect_err("a client without a certificate must be refused");
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(sb.old().log_text().contains("agent serving"));
}

#[tokio::test]
async fn peer_agent_certificate_cannot_call_control_rpcs() {
    let mut sb = Sandbox::new("peer_cert").await;
    let marker = sb.dir.join("hook-ran");
    let mut old = sb.old_setup();
    old.hooks
        .push(("touch".into(), format!("touch {}", marker.display())));
    sb.start(old, sb.new_setup()).await;

    let ch = sb.old().channel(&sb.world.certs_agent("new")).await;
    let status = AgentClient::new(ch.clone())
        .info(InfoRequest { brief: false })
        .await
        .expect_err("Info is a control RPC");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("agent:new may not call control RPCs"),
        "{status:?}"
    );

    let status = HooksClient::new(ch)
        .run(RunHookRequest {
            name: "touch".into(),
        })
        .await
        .expect_err("running hooks is a control RPC");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(!marker.exists(), "the hook must not have run");

    // The coordinator's certificate may run it.
    let ch = sb.old().channel(&sb.world.certs_coordinator()).await;
    let mut stream = HooksClient::new(ch)
        .run(RunHookRequest {
            name: "touch".into(),
        })
        .await
        .expect("coordinator may run hooks")
        .into_inner();
    while stream.message().await.expect("stream").is_some() {}
    assert!(marker.exists());
}

/// A brief `Info` (what a sync asks, also inside the cutover's freeze) leaves out the probes that
/// start processes and open database sessions, and keeps what the caller decides on.
#[tokio::test]
async fn a_brief_info_leaves_out_the_probes_and_keeps_identity_permits_and_freeze_state() {
    let mut sb = Sandbox::new("brief_info").await;
    sb.start(sb.old_setup(), sb.new_setup()).await;
    let ch = sb.old().channel(&sb.world.certs_coordinator()).await;
    let full = AgentClient::new(ch.clone())
        .info(InfoRequest { brief: false })
        .await
        .expect("full info")
        .into_inner();
    let brief = AgentClient::new(ch)
        .info(InfoRequest { brief: true })
        .await
        .expect("brief info")
        .into_inner();
    assert!(
        !full.tools.is_empty() && !full.databases.is_empty(),
        "the full answer probes tools and databases: {full:?}"
    );
    assert!(
        brief.tools.is_empty() && brief.databases.is_empty(),
        "the brief answer probes nothing: {brief:?}"
    );
    // Free bytes move with whatever else writes to the disk meanwhile: the roots by name.
    let roots = |i: &hostshift_proto::v1::InfoResponse| {
        i.roots
            .iter()
            .map(|r| (r.kind.clone(), r.name.clone(), r.path.clone(), r.exists))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (
            &brief.identity,
            &brief.permits,
            roots(&brief),
            &brief.frozen_databases,
            brief.protocol_version
        ),
        (
            &full.identity,
            &full.permits,
            roots(&full),
            &full.frozen_databases,
            full.protocol_version
        )
    );
}

#[tokio::test]
async fn sigterm_stops_the_agent_within_the_grace_period_and_leaves_no_child_behind() {
    let mut sb = Sandbox::new("sigterm").await;
    let pids = sb.dir.join("hook.pids");
    let mut old = sb.old_setup();
    old.grace_secs = 5;
    // A hook that would run for 5 minutes, with a grandchild in the background.
    old.hooks.push((
        "long".into(),
        format!("sleep 300 & echo $$ $! > {}; wait", pids.display()),
    ));
    sb.start(old, sb.new_setup()).await;
    let ch = sb.old().channel(&sb.world.certs_coordinator()).await;
    let mut stream = HooksClient::new(ch)
        .run(RunHookRequest {
            name: "long".into(),
        })
        .await
        .expect("run hook")
        .into_inner();
    let hook_pids: Vec<u32> = rig::eventually(Duration::from_secs(10), "the hook to start", || {
        let p = pids.clone();
        async move {
            let s = std::fs::read_to_string(p).ok()?;
            let v: Vec<u32> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2).then_some(v)
        }
    })
    .await;
    let agent_pid = sb.old().pid();

    let mut agent = sb.old.take().expect("agent");
    let (status, took) = agent
        .sigterm_and_wait(Duration::from_secs(10))
        .expect("the agent must exit within its 5 s grace period (+ margin)");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        agent.log_text()
    );
    assert!(took < Duration::from_secs(7), "took {took:?}");
    // The stream ends with an error (cancelled), not with a fake success.
    let end = stream.message().await;
    assert!(
        !matches!(end, Ok(Some(ref ev)) if matches!(ev.event, Some(hostshift_proto::v1::hook_event::Event::Exit(ref x)) if x.code == 0))
    );
    for pid in hook_pids {
        rig::eventually(
            Duration::from_secs(5),
            "hook processes to be gone",
            || async move { rig::process_gone(pid).then_some(()) },
        )
        .await;
    }
    assert!(rig::process_gone(agent_pid));
    assert!(
        agent.log_text().contains("SIGTERM received"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn hooks_run_only_by_name_and_their_output_streams_through_the_cli() {
    let mut sb = Sandbox::new("hook_cli").await;
    let mut new = sb.new_setup();
    new.hooks.push((
        "build".into(),
        "echo building; echo careful >&2; echo done; exit 3".into(),
    ));
    sb.start(sb.old_setup(), new).await;

    let out = sb.cli(&["hook", "run", "build", "--host", "new"]).await;
    assert_eq!(
        out.code,
        1,
        "a failing hook fails the command:\n{}",
        out.both()
    );
    assert_eq!(out.stdout, "building\ndone\n", "{}", out.both());
    assert!(out.stderr.contains("careful"), "{}", out.both());
    assert!(
        out.stderr
            .contains("hook build on the new host exited with 3"),
        "{}",
        out.both()
    );

    // Each RPC runs in a span naming it, so the agent's log says which call an event belongs to.
    assert!(
        sb.new_agent()
            .log_text()
            .contains("rpc{method=/hostshift.v1.Hooks/Run}: hook started"),
        "{}",
        sb.new_agent().log_text()
    );

    let list = sb.cli(&["hook", "list", "--host", "new", "--json"]).await;
    assert_eq!(list.code, 0, "{}", list.both());
    assert_eq!(list.json()[0]["name"], "build");

    // Only names the agent's config declares can run; a command string is just an unknown name.
    // A usage error (exit 2), not a failed hook.
    let out = sb.cli(&["hook", "run", "rm -rf /", "--host", "new"]).await;
    assert_eq!(out.code, 2, "{}", out.both());
    assert!(
        out.stderr
            .contains("is not declared in this agent's config"),
        "{}",
        out.both()
    );
}
