//! Switching by load balancer: register the side's target in the ELBv2 target group, wait until
//! the load balancer reports it `healthy`, and only then deregister the other side, so there is
//! never a moment without a healthy target.
//!
//! A target is the host's instance id (instance target groups) or its IP (ip target groups), on
//! the plan's port. A deregistered target stays listed as `draining` for the group's
//! deregistration delay; it no longer receives new connections and counts as not registered.

use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::types::{
    TargetDescription, TargetHealthDescription, TargetHealthReasonEnum, TargetHealthStateEnum,
};
use tokio::time::Instant;

use crate::error::classify;
use crate::retry::{Poll, poll_until, with_retry};
use crate::{Pointing, Preflight, Side, SwitchError};

const DESCRIBE_GROUPS: &str = "elasticloadbalancing:DescribeTargetGroups";
const HEALTH: &str = "elasticloadbalancing:DescribeTargetHealth";
const REGISTER: &str = "elasticloadbalancing:RegisterTargets";
const DEREGISTER: &str = "elasticloadbalancing:DeregisterTargets";

#[derive(Clone, Debug)]
pub(crate) struct LoadBalancer {
    pub(crate) client: Client,
    pub(crate) target_group_arn: String,
    pub(crate) port: i32,
    /// Target id of the old host (instance id or IP).
    pub(crate) old: String,
    /// Target id of the new host.
    pub(crate) new: String,
}

/// One listed target: id, port, state and reason.
struct Target {
    id: String,
    port: Option<i32>,
    state: Option<TargetHealthStateEnum>,
    reason: Option<TargetHealthReasonEnum>,
}

impl Target {
    fn from_description(d: &TargetHealthDescription) -> Option<Target> {
        let target = d.target()?;
        Some(Target {
            id: target.id()?.to_owned(),
            port: target.port(),
            state: d.target_health().and_then(|h| h.state()).cloned(),
            reason: d.target_health().and_then(|h| h.reason()).cloned(),
        })
    }

    /// Registered and not on its way out.
    fn is_registered(&self) -> bool {
        self.state != Some(TargetHealthStateEnum::Draining)
            && self.reason != Some(TargetHealthReasonEnum::NotRegistered)
    }

    fn describe(&self) -> String {
        let state = self.state.as_ref().map_or("unknown", |s| s.as_str());
        match &self.reason {
            Some(reason) => format!("{} {state} ({})", self.id, reason.as_str()),
            None => format!("{} {state}", self.id),
        }
    }
}

impl LoadBalancer {
    fn target_id(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }

    fn not_found(&self, _code: &str) -> (String, String) {
        ("ELBv2 target group".into(), self.target_group_arn.clone())
    }

    fn description(&self, side: Side) -> TargetDescription {
        TargetDescription::builder()
            .id(self.target_id(side))
            .port(self.port)
            .build()
    }

    /// Every target the group lists (registered, initial, unhealthy, draining, ...).
    async fn targets(&self) -> Result<Vec<Target>, SwitchError> {
        let output = with_retry(HEALTH, || async move {
            self.client
                .describe_target_health()
                .target_group_arn(&self.target_group_arn)
                .send()
                .await
                .map_err(|e| classify(HEALTH, &e, |code| self.not_found(code)))
        })
        .await?;
        Ok(output
            .target_health_descriptions()
            .iter()
            .filter_map(Target::from_description)
            .collect())
    }

    fn find<'t>(&self, targets: &'t [Target], side: Side) -> Option<&'t Target> {
        let id = self.target_id(side);
        targets
            .iter()
            .find(|t| t.id == id && t.port.is_none_or(|p| p == self.port))
    }

    fn pointing(&self, targets: &[Target]) -> Pointing {
        let registered = |side| self.find(targets, side).is_some_and(Target::is_registered);
        match (registered(Side::Old), registered(Side::New)) {
            (true, false) => Pointing::Old,
            (false, true) => Pointing::New,
            (true, true) => Pointing::Neither("both old and new are registered targets".into()),
            (false, false) => {
                let listed: Vec<String> = targets.iter().map(Target::describe).collect();
                Pointing::Neither(format!(
                    "neither old nor new is a registered target (targets: {})",
                    if listed.is_empty() {
                        "none".into()
                    } else {
                        listed.join(", ")
                    }
                ))
            }
        }
    }

    pub(crate) async fn current(&self) -> Result<Pointing, SwitchError> {
        Ok(self.pointing(&self.targets().await?))
    }

    pub(crate) async fn preflight(&self) -> Result<Preflight, SwitchError> {
        let groups = with_retry(DESCRIBE_GROUPS, || async move {
            self.client
                .describe_target_groups()
                .target_group_arns(&self.target_group_arn)
                .send()
                .await
                .map_err(|e| classify(DESCRIBE_GROUPS, &e, |code| self.not_found(code)))
        })
        .await?;
        let group = groups
            .target_groups()
            .iter()
            .find(|g| g.target_group_arn() == Some(self.target_group_arn.as_str()))
            .ok_or_else(|| SwitchError::NotFound {
                what: "ELBv2 target group".into(),
                id: self.target_group_arn.clone(),
            })?;
        let name = group.target_group_name().unwrap_or("(unnamed)");
        if group.load_balancer_arns().is_empty() {
            return Err(SwitchError::Invalid(format!(
                "target group {name} ({}) is not attached to any load balancer: switching its \
                 targets would move no traffic; attach it to the listener first or fix the plan's \
                 target_group_arn",
                self.target_group_arn
            )));
        }
        let targets = self.targets().await?;
        let listed: Vec<String> = targets.iter().map(Target::describe).collect();
        Ok(Preflight {
            pointing: self.pointing(&targets),
            detail: format!(
                "target group {name} ({} targets, {} load balancer(s)) is readable; targets: {}; \
                 the switch registers the new host on port {} (no DryRun exists for ELBv2: \
                 {REGISTER} and {DEREGISTER} are first used at the switch)",
                group.target_type().map_or("unknown", |t| t.as_str()),
                group.load_balancer_arns().len(),
                if listed.is_empty() {
                    "none".into()
                } else {
                    listed.join(", ")
                },
                self.port
            ),
        })
    }

    pub(crate) async fn switch_to(
        &self,
        side: Side,
        deadline: Instant,
    ) -> Result<String, SwitchError> {
        let (id, other) = (self.target_id(side), side.other());
        with_retry(REGISTER, || async move {
            self.client
                .register_targets()
                .target_group_arn(&self.target_group_arn)
                .targets(self.description(side))
                .send()
                .await
                .map_err(|e| classify(REGISTER, &e, |code| self.not_found(code)))
        })
        .await?;
        tracing::info!(target_group = %self.target_group_arn, target = %id, port = self.port,
            "target registered; waiting until healthy");
        let what = format!(
            "the {side} target {id}:{} in {}",
            self.port, self.target_group_arn
        );
        poll_until(&format!("health of {what}"), deadline, || async move {
            let out = with_retry(HEALTH, || async move {
                self.client
                    .describe_target_health()
                    .target_group_arn(&self.target_group_arn)
                    .targets(self.description(side))
                    .send()
                    .await
                    .map_err(|e| classify(HEALTH, &e, |code| self.not_found(code)))
            })
            .await?;
            let target = out
                .target_health_descriptions()
                .iter()
                .find_map(Target::from_description);
            Ok(match target {
                Some(t) if t.state == Some(TargetHealthStateEnum::Healthy) => Poll::Done,
                Some(t) => Poll::Pending(t.describe()),
                None => Poll::Pending("not listed".into()),
            })
        })
        .await?;
        // Only now that the side is healthy does the other side stop receiving traffic. It is
        // deregistered only if registered: deregistering an unknown target is an error.
        let targets = self.targets().await?;
        let other_id = self.target_id(other);
        let deregistered = if self
            .find(&targets, other)
            .is_some_and(Target::is_registered)
        {
            with_retry(DEREGISTER, || async move {
                self.client
                    .deregister_targets()
                    .target_group_arn(&self.target_group_arn)
                    .targets(self.description(other))
                    .send()
                    .await
                    .map_err(|e| classify(DEREGISTER, &e, |code| self.not_found(code)))
            })
            .await?;
            format!("the {other} target {other_id} deregistered (draining)")
        } else {
            format!("the {other} target {other_id} was not registered")
        };
        let pointing = self.current().await?;
        if pointing != Pointing::from(side) {
            return Err(SwitchError::Unconfirmed {
                what: format!("{what} is healthy but the target group now reads: {pointing}"),
            });
        }
        Ok(format!("{what} registered and healthy; {deregistered}"))
    }
}
