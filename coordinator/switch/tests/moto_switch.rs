//! The traffic switch against a real moto server through the real AWS SDK.
//!
//! Each test starts its own `MotoServer` (about half a second) rather than sharing one per test
//! binary: tests run in parallel and one of them turns on moto's IAM enforcement, which is global
//! to a server, so private servers keep every test's AWS state and auth mode its own without a
//! reset protocol between tests. Every assertion about the switch reads the AWS side back through
//! the SDK; the switch's own return values are checked too, but never trusted alone.
//! A missing moto fails the test with the install command; nothing is skipped.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceType;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, TargetDescription, TargetHealthStateEnum,
};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use hostshift_switch::moto::MotoServer;
use hostshift_switch::{
    AwsTarget, Host, Method, Pointing, Side, SwitchError, Switcher, sdk_config,
};

const DEADLINE: Duration = Duration::from_secs(20);

async fn moto() -> MotoServer {
    MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"))
}

fn target(moto: &MotoServer, key: &str, secret: &str) -> AwsTarget {
    AwsTarget {
        region: "us-east-1".into(),
        endpoint_url: Some(moto.endpoint_url()),
        profile: None,
        static_credentials: Some((key.into(), secret.into())),
    }
}

fn admin(moto: &MotoServer) -> AwsTarget {
    target(moto, "testing", "testing")
}

fn host(instance_id: Option<&str>, ip: Option<&str>) -> Host {
    Host {
        instance_id: instance_id.map(str::to_owned),
        ip: ip.map(|ip| ip.parse::<IpAddr>().expect("test ip")),
    }
}

// ---------------------------------------------------------------------------------------------
// Elastic IP

/// Two running instances and an Elastic IP associated with the first.
struct Eip {
    ec2: aws_sdk_ec2::Client,
    old: String,
    new: String,
    allocation_id: String,
}

async fn eip_fixture(moto: &MotoServer) -> Eip {
    let ec2 = aws_sdk_ec2::Client::new(&sdk_config(&admin(moto)).await);
    let seeded = moto.seed_elastic_ip().await.expect("seed the Elastic IP");
    Eip {
        ec2,
        old: seeded.old_instance,
        new: seeded.new_instance,
        allocation_id: seeded.allocation_id,
    }
}

impl Eip {
    fn method(&self) -> Method {
        Method::ElasticIp {
            allocation_id: self.allocation_id.clone(),
        }
    }

    async fn switcher(&self, target: &AwsTarget) -> Switcher {
        Switcher::connect(
            target,
            self.method(),
            host(Some(&self.old), None),
            host(Some(&self.new), None),
        )
        .await
        .expect("valid switcher")
    }

    /// Which instance the address is associated with, as EC2 reports it.
    async fn associated_instance(&self) -> Option<String> {
        let out = self
            .ec2
            .describe_addresses()
            .allocation_ids(&self.allocation_id)
            .send()
            .await
            .expect("DescribeAddresses");
        out.addresses()[0].instance_id().map(str::to_owned)
    }
}

#[tokio::test]
async fn elastic_ip_preflight_reports_old_and_changes_nothing() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    let before = eip
        .ec2
        .describe_addresses()
        .send()
        .await
        .expect("describe")
        .addresses()[0]
        .association_id()
        .map(str::to_owned);

    let preflight = eip
        .switcher(&admin(&moto))
        .await
        .preflight()
        .await
        .expect("preflight");

    assert_eq!(preflight.pointing, Pointing::Old);
    assert!(preflight.detail.contains("DryRun"), "{}", preflight.detail);
    assert!(preflight.detail.contains(&eip.new), "{}", preflight.detail);
    let after = eip
        .ec2
        .describe_addresses()
        .send()
        .await
        .expect("describe")
        .addresses()[0]
        .association_id()
        .map(str::to_owned);
    assert_eq!(
        after, before,
        "the DryRun must not re-associate the address"
    );
    assert_eq!(
        eip.associated_instance().await.as_deref(),
        Some(eip.old.as_str())
    );
}

#[tokio::test]
async fn elastic_ip_switch_moves_the_address_is_idempotent_and_moves_back() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    let switcher = eip.switcher(&admin(&moto)).await;

    let to_new = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("switch to new");
    assert!(to_new.changed);
    assert_eq!(to_new.pointing, Pointing::New);
    assert_eq!(
        eip.associated_instance().await.as_deref(),
        Some(eip.new.as_str())
    );
    assert_eq!(switcher.current().await.expect("current"), Pointing::New);

    let again = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("repeat switch");
    assert!(
        !again.changed,
        "a repeated switch must send nothing: {}",
        again.detail
    );
    assert_eq!(
        eip.associated_instance().await.as_deref(),
        Some(eip.new.as_str())
    );

    let back = switcher
        .switch_to(Side::Old, DEADLINE)
        .await
        .expect("switch back");
    assert!(back.changed);
    assert_eq!(back.pointing, Pointing::Old);
    assert_eq!(
        eip.associated_instance().await.as_deref(),
        Some(eip.old.as_str())
    );
}

#[tokio::test]
async fn elastic_ip_preflight_with_unknown_allocation_is_not_found_naming_it() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    let switcher = Switcher::connect(
        &admin(&moto),
        Method::ElasticIp {
            allocation_id: "eipalloc-0000000000000dead".into(),
        },
        host(Some(&eip.old), None),
        host(Some(&eip.new), None),
    )
    .await
    .expect("valid switcher");

    let err = switcher.preflight().await.expect_err("unknown allocation");

    assert!(matches!(err, SwitchError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("eipalloc-0000000000000dead"),
        "{err}"
    );
    assert_eq!(
        eip.associated_instance().await.as_deref(),
        Some(eip.old.as_str())
    );
}

#[tokio::test]
async fn elastic_ip_without_associate_permission_is_refused_by_the_dry_run_and_the_switch() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    let (key, secret) = iam_user_allowed_only(&moto, "ec2:Describe*").await;
    moto.post("/moto-api/reset-auth", &[], "0")
        .await
        .expect("turn on IAM enforcement");
    let limited = eip.switcher(&target(&moto, &key, &secret)).await;

    // Reading is allowed, so the refusal below is the DryRun's, not the DescribeAddresses'.
    assert_eq!(
        limited.current().await.expect("describe is allowed"),
        Pointing::Old
    );
    let err = limited
        .preflight()
        .await
        .expect_err("DryRun must be refused");
    match &err {
        SwitchError::Refused {
            operation, code, ..
        } => {
            assert_eq!(operation, "ec2:AssociateAddress");
            assert_eq!(code, "AccessDenied");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("grant ec2:AssociateAddress to the role"),
        "{err}"
    );

    let err = limited
        .switch_to(Side::New, DEADLINE)
        .await
        .expect_err("switch must be refused");
    assert!(matches!(err, SwitchError::Refused { .. }), "{err:?}");
    let out = eip
        .ec2
        .describe_addresses()
        .allocation_ids(&eip.allocation_id)
        .send()
        .await;
    // The admin keys are not IAM users of moto: with enforcement on they are rejected too.
    assert!(out.is_err(), "IAM enforcement must be on");
    let seen = limited
        .current()
        .await
        .expect("describe with the limited user");
    assert_eq!(
        seen,
        Pointing::Old,
        "a refused switch must leave the address where it was"
    );
}

#[tokio::test]
async fn unknown_credentials_are_refused_with_a_credentials_hint() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    moto.post("/moto-api/reset-auth", &[], "0")
        .await
        .expect("turn on IAM enforcement");
    let stranger = eip
        .switcher(&target(&moto, "AKIAUNKNOWNKEY000000", "wrong"))
        .await;

    let err = stranger.current().await.expect_err("unknown key");

    assert!(
        matches!(&err, SwitchError::Refused { code, .. } if code == "AuthFailure"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("credentials were not accepted"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// DNS

const OLD_IP: &str = "198.51.100.10";
const NEW_IP: &str = "198.51.100.20";
const RECORD: &str = "app.example.test.";

async fn dns_fixture(moto: &MotoServer) -> (aws_sdk_route53::Client, String) {
    let r53 = aws_sdk_route53::Client::new(&sdk_config(&admin(moto)).await);
    let zone = r53
        .create_hosted_zone()
        .name("example.test.")
        .caller_reference("hostshift-test")
        .send()
        .await
        .expect("CreateHostedZone");
    let zone_id = zone.hosted_zone().expect("zone").id().to_owned();
    let set = ResourceRecordSet::builder()
        .name(RECORD)
        .r#type(RrType::A)
        .ttl(300)
        .resource_records(
            ResourceRecord::builder()
                .value(OLD_IP)
                .build()
                .expect("record"),
        )
        .build()
        .expect("set");
    let change = Change::builder()
        .action(ChangeAction::Create)
        .resource_record_set(set)
        .build()
        .expect("change");
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone_id)
        .change_batch(
            ChangeBatch::builder()
                .changes(change)
                .build()
                .expect("batch"),
        )
        .send()
        .await
        .expect("create A record");
    (r53, zone_id)
}

/// The record's (values, TTL) as Route 53 lists it.
async fn a_record(r53: &aws_sdk_route53::Client, zone_id: &str) -> (Vec<String>, Option<i64>) {
    let out = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .send()
        .await
        .expect("ListResourceRecordSets");
    let set = out
        .resource_record_sets()
        .iter()
        .find(|s| s.name() == RECORD && *s.r#type() == RrType::A)
        .expect("the A record exists");
    (
        set.resource_records()
            .iter()
            .map(|r| r.value().to_owned())
            .collect(),
        set.ttl(),
    )
}

#[tokio::test]
async fn dns_switch_upserts_the_record_with_the_plan_ttl_and_back() {
    let moto = moto().await;
    let (r53, zone_id) = dns_fixture(&moto).await;
    let switcher = Switcher::connect(
        &admin(&moto),
        Method::Dns {
            zone_id: zone_id.clone(),
            record: "app.example.test".into(),
            ttl: 60,
        },
        host(None, Some(OLD_IP)),
        host(None, Some(NEW_IP)),
    )
    .await
    .expect("valid switcher");

    let preflight = switcher.preflight().await.expect("preflight");
    assert_eq!(preflight.pointing, Pointing::Old);
    assert_eq!(
        a_record(&r53, &zone_id).await,
        (vec![OLD_IP.to_owned()], Some(300))
    );

    let to_new = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("switch to new");
    assert!(to_new.changed);
    assert!(
        to_new.detail.contains("300 s"),
        "old TTL must be reported: {}",
        to_new.detail
    );
    assert_eq!(
        a_record(&r53, &zone_id).await,
        (vec![NEW_IP.to_owned()], Some(60))
    );

    let again = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("repeat");
    assert!(!again.changed);

    let back = switcher
        .switch_to(Side::Old, DEADLINE)
        .await
        .expect("switch back");
    assert!(back.changed);
    assert_eq!(
        a_record(&r53, &zone_id).await,
        (vec![OLD_IP.to_owned()], Some(60))
    );
    assert_eq!(switcher.current().await.expect("current"), Pointing::Old);
}

#[tokio::test]
async fn dns_preflight_with_unknown_zone_is_not_found_naming_it() {
    let moto = moto().await;
    let switcher = Switcher::connect(
        &admin(&moto),
        Method::Dns {
            zone_id: "ZNOSUCHZONE0".into(),
            record: RECORD.into(),
            ttl: 60,
        },
        host(None, Some(OLD_IP)),
        host(None, Some(NEW_IP)),
    )
    .await
    .expect("valid switcher");

    let err = switcher.preflight().await.expect_err("unknown zone");

    assert!(matches!(err, SwitchError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("ZNOSUCHZONE0"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Load balancer

struct Lb {
    elb: aws_sdk_elasticloadbalancingv2::Client,
    target_group_arn: String,
    old: String,
    new: String,
}

const APP_PORT: u16 = 3666;

async fn lb_fixture(moto: &MotoServer) -> Lb {
    let config = sdk_config(&admin(moto)).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    let vpcs = ec2.describe_vpcs().send().await.expect("DescribeVpcs");
    let vpc_id = vpcs
        .vpcs()
        .iter()
        .find(|v| v.is_default() == Some(true))
        .and_then(|v| v.vpc_id())
        .expect("moto's default VPC")
        .to_owned();
    let subnets = ec2
        .describe_subnets()
        .send()
        .await
        .expect("DescribeSubnets");
    let subnet_ids: Vec<String> = subnets
        .subnets()
        .iter()
        .filter(|s| s.vpc_id() == Some(vpc_id.as_str()))
        .filter_map(|s| s.subnet_id().map(str::to_owned))
        .take(2)
        .collect();
    let lb = elb
        .create_load_balancer()
        .name("hostshift-test")
        .set_subnets(Some(subnet_ids.clone()))
        .send()
        .await
        .expect("CreateLoadBalancer");
    let lb_arn = lb.load_balancers()[0]
        .load_balancer_arn()
        .expect("lb arn")
        .to_owned();
    let tg = elb
        .create_target_group()
        .name("hostshift-app")
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(i32::from(APP_PORT))
        .vpc_id(&vpc_id)
        .send()
        .await
        .expect("CreateTargetGroup");
    let target_group_arn = tg.target_groups()[0]
        .target_group_arn()
        .expect("tg arn")
        .to_owned();
    elb.create_listener()
        .load_balancer_arn(&lb_arn)
        .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
        .port(80)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(&target_group_arn)
                .build(),
        )
        .send()
        .await
        .expect("CreateListener");
    let mut ids = Vec::new();
    for subnet in &subnet_ids {
        let run = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(InstanceType::T3Micro)
            .subnet_id(subnet)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect("RunInstances");
        ids.push(
            run.instances()[0]
                .instance_id()
                .expect("instance id")
                .to_owned(),
        );
    }
    elb.register_targets()
        .target_group_arn(&target_group_arn)
        .targets(
            TargetDescription::builder()
                .id(&ids[0])
                .port(i32::from(APP_PORT))
                .build(),
        )
        .send()
        .await
        .expect("register old");
    Lb {
        elb,
        target_group_arn,
        old: ids[0].clone(),
        new: ids[1].clone(),
    }
}

impl Lb {
    /// Registered targets (id → state), as the load balancer reports them.
    async fn targets(&self) -> Vec<(String, TargetHealthStateEnum)> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(&self.target_group_arn)
            .send()
            .await
            .expect("DescribeTargetHealth");
        let mut targets: Vec<_> = out
            .target_health_descriptions()
            .iter()
            .map(|d| {
                (
                    d.target().and_then(|t| t.id()).expect("id").to_owned(),
                    d.target_health()
                        .and_then(|h| h.state())
                        .expect("state")
                        .clone(),
                )
            })
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        targets
    }
}

#[tokio::test]
async fn load_balancer_switch_registers_new_healthy_then_deregisters_old_and_back() {
    let moto = moto().await;
    let lb = lb_fixture(&moto).await;
    let switcher = Switcher::connect(
        &admin(&moto),
        Method::LoadBalancer {
            target_group_arn: lb.target_group_arn.clone(),
            port: APP_PORT,
        },
        host(Some(&lb.old), None),
        host(Some(&lb.new), None),
    )
    .await
    .expect("valid switcher");

    let preflight = switcher.preflight().await.expect("preflight");
    assert_eq!(preflight.pointing, Pointing::Old);
    assert_eq!(
        lb.targets().await,
        vec![(lb.old.clone(), TargetHealthStateEnum::Healthy)]
    );

    let to_new = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("switch to new");
    assert!(to_new.changed);
    assert_eq!(
        lb.targets().await,
        vec![(lb.new.clone(), TargetHealthStateEnum::Healthy)]
    );

    let again = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("repeat");
    assert!(!again.changed);

    let back = switcher
        .switch_to(Side::Old, DEADLINE)
        .await
        .expect("switch back");
    assert!(back.changed);
    assert_eq!(
        lb.targets().await,
        vec![(lb.old.clone(), TargetHealthStateEnum::Healthy)]
    );
}

#[tokio::test]
async fn load_balancer_with_both_registered_points_at_neither_and_switch_finishes_the_job() {
    let moto = moto().await;
    let lb = lb_fixture(&moto).await;
    // A cutover interrupted between register and deregister leaves both targets registered.
    lb.elb
        .register_targets()
        .target_group_arn(&lb.target_group_arn)
        .targets(
            TargetDescription::builder()
                .id(&lb.new)
                .port(i32::from(APP_PORT))
                .build(),
        )
        .send()
        .await
        .expect("register new");
    let switcher = Switcher::connect(
        &admin(&moto),
        Method::LoadBalancer {
            target_group_arn: lb.target_group_arn.clone(),
            port: APP_PORT,
        },
        host(Some(&lb.old), None),
        host(Some(&lb.new), None),
    )
    .await
    .expect("valid switcher");

    let current = switcher.current().await.expect("current");
    assert!(
        matches!(&current, Pointing::Neither(what) if what.contains("both")),
        "{current:?}"
    );

    let outcome = switcher
        .switch_to(Side::New, DEADLINE)
        .await
        .expect("finish switch");
    assert!(outcome.changed);
    assert_eq!(
        lb.targets().await,
        vec![(lb.new.clone(), TargetHealthStateEnum::Healthy)]
    );
}

// ---------------------------------------------------------------------------------------------
// Transport failures and the test server itself

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_after_three_retries() {
    // A loopback port nobody listens on: connection refused, every time.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let target = AwsTarget {
        region: "us-east-1".into(),
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        profile: None,
        static_credentials: Some(("testing".into(), "testing".into())),
    };
    let switcher = Switcher::connect(
        &target,
        Method::ElasticIp {
            allocation_id: "eipalloc-1".into(),
        },
        host(Some("i-old"), None),
        host(Some("i-new"), None),
    )
    .await
    .expect("valid switcher");
    let started = Instant::now();

    let err = switcher.preflight().await.expect_err("nothing listens");

    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.to_string().contains("gave up after 4 attempts"),
        "{err}"
    );
    // Backoff 0.25 + 0.5 + 1 s proves the retries waited between attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(1700),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn moto_reset_forgets_all_resources() {
    let moto = moto().await;
    let eip = eip_fixture(&moto).await;
    let switcher = eip.switcher(&admin(&moto)).await;
    assert_eq!(switcher.current().await.expect("current"), Pointing::Old);

    moto.reset().await.expect("reset");

    let addresses = eip
        .ec2
        .describe_addresses()
        .send()
        .await
        .expect("DescribeAddresses");
    assert!(addresses.addresses().is_empty(), "{addresses:?}");
    let err = switcher.current().await.expect_err("allocation is gone");
    assert!(matches!(err, SwitchError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn moto_server_stops_listening_when_dropped() {
    let moto = moto().await;
    let addr = moto.endpoint_url().trim_start_matches("http://").to_owned();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_ok(),
        "listening while alive"
    );

    drop(moto);

    // SIGKILL is asynchronous: poll (with a deadline) until the kernel has closed the socket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "moto still listens on {addr} after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn plan_validation_rejects_hosts_the_method_cannot_use() {
    let config = aws_config::SdkConfig::builder().build();
    let err = Switcher::new(
        &config,
        Method::ElasticIp {
            allocation_id: "eipalloc-1".into(),
        },
        host(None, Some(OLD_IP)),
        host(Some("i-new"), None),
    )
    .expect_err("old host has no instance id");
    assert!(
        err.to_string().contains("old host has no instance_id"),
        "{err}"
    );

    let err = Switcher::new(
        &config,
        Method::Dns {
            zone_id: "Z1".into(),
            record: RECORD.into(),
            ttl: 60,
        },
        host(None, Some(OLD_IP)),
        host(None, Some("2001:db8::1")),
    )
    .expect_err("mixed families");
    assert!(err.to_string().contains("different families"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// IAM setup through moto's query API (this crate has no IAM SDK; setup runs before enforcement)

/// Creates an IAM user in moto allowed only `action`, and returns its access key.
async fn iam_user_allowed_only(moto: &MotoServer, action: &str) -> (String, String) {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
    );
    iam(
        moto,
        &[("Action", "CreateUser"), ("UserName", "hostshift-limited")],
    )
    .await;
    iam(
        moto,
        &[
            ("Action", "PutUserPolicy"),
            ("UserName", "hostshift-limited"),
            ("PolicyName", "limited"),
            ("PolicyDocument", &policy),
        ],
    )
    .await;
    let key = iam(
        moto,
        &[
            ("Action", "CreateAccessKey"),
            ("UserName", "hostshift-limited"),
        ],
    )
    .await;
    (
        xml_text(&key, "AccessKeyId"),
        xml_text(&key, "SecretAccessKey"),
    )
}

async fn iam(moto: &MotoServer, params: &[(&str, &str)]) -> String {
    let body: Vec<String> = params
        .iter()
        .chain(&[("Version", "2010-05-08")])
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect();
    // moto routes a request by the service in the credential scope; the signature is not checked
    // while enforcement is off.
    let headers = [
        (
            "Content-Type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        ),
    ];
    moto.post("/", &headers, &body.join("&"))
        .await
        .unwrap_or_else(|e| panic!("IAM {params:?}: {e}"))
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_text(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let len = xml[start..].find('<').expect("closing tag");
    xml[start..start + len].to_owned()
}
