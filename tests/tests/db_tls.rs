//! A remote PostgreSQL (a managed database such as RDS) reached over TLS: the new agent's
//! database is the new cluster over TCP with `ssl = on` and non-TLS connections refused by
//! pg_hba; the agent must use TLS and verify the server's certificate against `ca_file`.
//! (Its own test binary: it reconfigures the cluster of its world.)

use hostshift_shared::pki::{self, AgentSpec, PkiRequest};
use hostshift_tests::rig::{NEW_IP, Sandbox};

async fn enable_tls(sb: &Sandbox) -> std::path::PathBuf {
    let pg = &sb.world.new_pg;
    let data = pg.socket_dir.parent().expect("cluster dir").join("data");
    let certs = pki::init(&PkiRequest {
        dir: sb.dir.join("pg-tls"),
        agents: vec![AgentSpec::parse(&format!("pg={NEW_IP}")).expect("spec")],
        coordinator_name: "unused".into(),
        days: 1,
        force: false,
    })
    .expect("certificates");
    let postgres = nix::unistd::User::from_name("postgres")
        .expect("lookup")
        .expect("postgres user");
    for (from, to) in [
        (&certs.agents[0].1, "server.crt"),
        (&certs.agents[0].2, "server.key"),
    ] {
        let dest = data.join(to);
        std::fs::copy(from, &dest).expect("copy");
        std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        nix::unistd::chown(&dest, Some(postgres.uid), Some(postgres.gid)).expect("chown");
    }
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("hba");
    std::fs::write(&hba, format!("hostnossl all all 127.0.0.0/8 reject\n{old}")).expect("hba");
    let admin = pg.connect("postgres").await;
    // Two statements: ALTER SYSTEM refuses to run inside the implicit multi-statement transaction.
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .expect("enable ssl");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // Wait until the server really refuses a plain TCP connection (the reload is asynchronous).
    let plain = format!(
        "host={NEW_IP} port={} user=postgres dbname=postgres sslmode=disable",
        pg.port
    );
    hostshift_tests::rig::eventually(
        std::time::Duration::from_secs(10),
        "pg_hba to refuse plain TCP",
        || {
            let plain = plain.clone();
            async move {
                tokio_postgres::connect(&plain, tokio_postgres::NoTls)
                    .await
                    .is_err()
                    .then_some(())
            }
        },
    )
    .await;
    certs.ca_cert
}

#[tokio::test]
async fn sync_into_a_tls_only_database_verifies_the_server_and_refuses_a_wrong_ca() {
    let mut sb = Sandbox::new("db_tls").await;
    let ca = enable_tls(&sb).await;
    let port = sb.world.new_pg.port;
    let mut new = sb.new_setup();
    new.databases = vec![(
        "app".into(),
        format!("postgresql://postgres@{NEW_IP}:{port}/{}", sb.new_db),
    )];
    new.db_ca_file = Some(ca);
    sb.start(sb.old_setup(), new).await;

    let out = sb.cli(&["sync", "--only", "db"]).await;
    assert_eq!(out.code, 0, "{}", out.both());
    let verify = sb.cli(&["verify", "--json"]).await;
    let rows = verify.json()["rows"].as_array().expect("rows").clone();
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "table")
            .all(|r| r["equal"] == true),
        "{}",
        verify.stdout
    );

    // The same database with a CA that did not sign the server's certificate: refused, named.
    let other = sb.world.foreign_certs.ca_cert.clone();
    let mut wrong = sb.new_setup();
    wrong.databases = vec![(
        "app".into(),
        format!("postgresql://postgres@{NEW_IP}:{port}/{}", sb.new_db),
    )];
    wrong.db_ca_file = Some(other);
    drop(sb.new.take());
    let dir = sb.dir.join("wrong-ca");
    let agent = hostshift_tests::rig::AgentProc::start(&wrong, &dir, sb.world).await;
    sb.addresses.1 = agent.address();
    sb.new = Some(agent);
    sb.write_plan("");
    // verify names the database connection and its ca_file, not the agents' mutual-TLS CA.
    let v = sb.cli(&["verify"]).await;
    assert_ne!(v.code, 0, "{}", v.both());
    assert!(
        v.both().contains("ca_file") && !v.both().contains("[tls] ca"),
        "{}",
        v.both()
    );
    let out = sb.cli(&["check"]).await;
    assert_eq!(out.code, 1, "{}", out.both());
    let text = out.stdout.to_lowercase();
    assert!(
        text.contains("database app")
            && (text.contains("certificate") || text.contains("unknownissuer")),
        "{}",
        out.stdout
    );
}
