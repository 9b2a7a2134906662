//! The plan's `[[health]]` checks, run where each one says (`from`): on the old or new host
//! through its agent — so `localhost` is that host's app — or here, for public URLs.
//! [`run_checks`] is shared by `hostshift health` and the cutover's gates and checks.

use std::time::Duration;

use hostshift_proto::v1::{HealthCheckRequest, HealthCheckSpec};
use hostshift_shared::health::{self, CheckSpec, HealthResult};
use serde::Serialize;

use crate::client;
use crate::plan::{CheckFrom, HealthCheck, Plan, Side};

/// One check's result and where it ran.
#[derive(Clone, Debug, Serialize)]
pub struct CheckOutcome {
    /// Where it ran.
    pub from: CheckFrom,
    /// Its result.
    #[serde(flatten)]
    pub result: HealthResult,
}

/// The plan's check as the shared library's definition. A relative `bearer_token_file` is
/// resolved against the plan's folder for checks run here, and left as is for agents (which
/// refuse to read it: an agent's working directory means nothing to the plan's author).
pub fn spec_of(plan: &Plan, h: &HealthCheck) -> CheckSpec {
    CheckSpec {
        name: h.name.clone(),
        url: h.url.clone(),
        host_header: h.host_header.clone(),
        bearer_token_file: h.bearer_token_file.as_ref().map(|p| {
            if h.from == CheckFrom::Coordinator {
                plan.resolve(p)
            } else {
                p.clone()
            }
        }),
        expect_status: h.expect_status,
        body_contains: h.body_contains.clone(),
        json_field: h.json_field.clone(),
        timeout: Duration::from_secs(h.timeout_secs),
        attempts: h.retries,
    }
}

fn proto_spec(s: &CheckSpec) -> HealthCheckSpec {
    HealthCheckSpec {
        name: s.name.clone(),
        url: s.url.clone(),
        host_header: s.host_header.clone().unwrap_or_default(),
        bearer_token_file: s
            .bearer_token_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        expect_status: u32::from(s.expect_status),
        body_contains: s.body_contains.clone().unwrap_or_default(),
        json_field: s.json_field.clone().unwrap_or_default(),
        timeout_secs: s.timeout.as_secs(),
        retries: s.attempts,
    }
}

fn failed_result(spec: &CheckSpec, detail: String) -> HealthResult {
    HealthResult {
        name: spec.name.clone(),
        ok: false,
        status: None,
        elapsed_ms: 0,
        attempts: 0,
        detail,
    }
}

/// Runs the plan's checks (those from `only`, when given; those named in `names`, when any),
/// each where its `from` says, all at once. Never fails as a whole: an unreachable agent or a
/// refused definition becomes a failed result of each check concerned, saying why.
pub async fn run_checks(
    plan: &Plan,
    only: Option<CheckFrom>,
    names: &[String],
) -> Vec<CheckOutcome> {
    let chosen: Vec<&HealthCheck> = plan
        .health
        .iter()
        .filter(|h| only.is_none_or(|f| h.from == f))
        .filter(|h| names.is_empty() || names.contains(&h.name))
        .collect();
    let batch = |from: CheckFrom| -> Vec<CheckSpec> {
        chosen
            .iter()
            .filter(|h| h.from == from)
            .map(|h| spec_of(plan, h))
            .collect()
    };
    let local = batch(CheckFrom::Coordinator);
    let (here, old, new) = tokio::join!(
        futures::future::join_all(local.iter().map(health::run)),
        on_agent(plan, Side::Old, batch(CheckFrom::Old)),
        on_agent(plan, Side::New, batch(CheckFrom::New)),
    );
    let mut out: Vec<CheckOutcome> = Vec::new();
    out.extend(here.into_iter().map(|result| CheckOutcome {
        from: CheckFrom::Coordinator,
        result,
    }));
    out.extend(old.into_iter().map(|result| CheckOutcome {
        from: CheckFrom::Old,
        result,
    }));
    out.extend(new.into_iter().map(|result| CheckOutcome {
        from: CheckFrom::New,
        result,
    }));
    // In the plan's order, whatever finished first.
    out.sort_by_key(|o| {
        chosen
            .iter()
            .position(|h| h.name == o.result.name)
            .unwrap_or(usize::MAX)
    });
    out
}

async fn on_agent(plan: &Plan, side: Side, specs: Vec<CheckSpec>) -> Vec<HealthResult> {
    if specs.is_empty() {
        return Vec::new();
    }
    let all_failed = |why: String| {
        specs
            .iter()
            .map(|s| failed_result(s, why.clone()))
            .collect()
    };
    if let Some(s) = specs.iter().find(|s| {
        s.bearer_token_file
            .as_ref()
            .is_some_and(|p| p.is_relative())
    }) {
        return all_failed(format!(
            "check {}: bearer_token_file must be an absolute path on the {side} host",
            s.name
        ));
    }
    let agent = match client::connect(plan, side).await {
        Ok(a) => a,
        Err(e) => return all_failed(e.to_string()),
    };
    let worst = specs
        .iter()
        .map(CheckSpec::worst_case)
        .max()
        .unwrap_or_default();
    let mut req = tonic::Request::new(HealthCheckRequest {
        checks: specs.iter().map(proto_spec).collect(),
    });
    req.set_timeout(worst + Duration::from_secs(15));
    match agent.health().check(req).await {
        Ok(r) => r
            .into_inner()
            .results
            .into_iter()
            .map(|r| HealthResult {
                name: r.name,
                ok: r.ok,
                status: u16::try_from(r.status).ok().filter(|s| *s != 0),
                elapsed_ms: r.elapsed_ms,
                attempts: r.attempts,
                detail: r.detail,
            })
            .collect(),
        Err(s) => all_failed(format!("the {side} agent: {}", client::explain_status(&s))),
    }
}
