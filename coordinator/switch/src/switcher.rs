//! [`Switcher`]: checks the plan's hosts against the method, builds the one AWS client the method
//! needs, and gives every method the same three operations (preflight, current, switch_to).

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use tokio::time::Instant;

use crate::dns::Dns;
use crate::elastic_ip::ElasticIp;
use crate::load_balancer::LoadBalancer;
use crate::{AwsTarget, Host, Method, Outcome, Pointing, Preflight, Side, SwitchError, sdk_config};

/// Time allowed to open a connection to the AWS endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one attempt of one AWS call (the retry loop makes up to four).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Moves traffic between two hosts with one [`Method`]. Cheap to clone; holds one SDK client.
#[derive(Clone, Debug)]
pub struct Switcher {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    ElasticIp(ElasticIp),
    Dns(Dns),
    LoadBalancer(LoadBalancer),
}

impl Switcher {
    /// Loads the SDK configuration for `target` (see [`sdk_config`]) and builds a switcher.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Invalid`] when the hosts lack what `method` needs (see [`Switcher::new`]).
    pub async fn connect(
        target: &AwsTarget,
        method: Method,
        old: Host,
        new: Host,
    ) -> Result<Switcher, SwitchError> {
        Switcher::new(&sdk_config(target).await, method, old, new)
    }

    /// Builds a switcher from an already loaded SDK configuration. Makes no AWS call.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Invalid`] when a host lacks what `method` needs (an Elastic IP needs both
    /// instance ids; DNS needs both IPs, of the same family; a load balancer needs an instance id
    /// or an IP), or when old and new are the same host.
    pub fn new(
        config: &SdkConfig,
        method: Method,
        old: Host,
        new: Host,
    ) -> Result<Switcher, SwitchError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let backend = match method {
            Method::ElasticIp { allocation_id } => {
                let old = required(old.instance_id, "old", "instance_id", "an Elastic IP")?;
                let new = required(new.instance_id, "new", "instance_id", "an Elastic IP")?;
                distinct(&old, &new)?;
                non_empty(&allocation_id, "allocation_id")?;
                let conf = aws_sdk_ec2::config::Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts)
                    .build();
                Backend::ElasticIp(ElasticIp {
                    client: aws_sdk_ec2::Client::from_conf(conf),
                    allocation_id,
                    old,
                    new,
                })
            }
            Method::Dns {
                zone_id,
                record,
                ttl,
            } => {
                let old_ip = required(old.ip, "old", "ip", "a DNS record")?;
                let new_ip = required(new.ip, "new", "ip", "a DNS record")?;
                distinct(&old_ip, &new_ip)?;
                if old_ip.is_ipv4() != new_ip.is_ipv4() {
                    return Err(SwitchError::Invalid(format!(
                        "old ip {old_ip} and new ip {new_ip} are of different families: one DNS \
                         record (A or AAAA) cannot hold both; give two IPv4 or two IPv6 addresses"
                    )));
                }
                non_empty(&zone_id, "zone_id")?;
                non_empty(&record, "record")?;
                let conf = aws_sdk_route53::config::Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts)
                    .build();
                Backend::Dns(Dns::new(
                    aws_sdk_route53::Client::from_conf(conf),
                    &zone_id,
                    &record,
                    ttl,
                    old_ip,
                    new_ip,
                ))
            }
            Method::LoadBalancer {
                target_group_arn,
                port,
            } => {
                let old = target_id(old, "old")?;
                let new = target_id(new, "new")?;
                distinct(&old, &new)?;
                non_empty(&target_group_arn, "target_group_arn")?;
                if port == 0 {
                    return Err(SwitchError::Invalid(
                        "load-balancer port 0 is not a port: give the port the app listens on"
                            .into(),
                    ));
                }
                let conf = aws_sdk_elasticloadbalancingv2::config::Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(timeouts)
                    .build();
                Backend::LoadBalancer(LoadBalancer {
                    client: aws_sdk_elasticloadbalancingv2::Client::from_conf(conf),
                    target_group_arn,
                    port: i32::from(port),
                    old,
                    new,
                })
            }
        };
        Ok(Switcher { backend })
    }

    /// Proves the switch is possible without changing anything, and says where traffic points.
    ///
    /// Elastic IP: `DescribeAddresses` plus an `AssociateAddress` `DryRun` to the new instance.
    /// DNS: `GetHostedZone` plus `ListResourceRecordSets`. Load balancer: `DescribeTargetGroups`
    /// plus `DescribeTargetHealth`.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Refused`] (missing permission; the message names it),
    /// [`SwitchError::NotFound`], [`SwitchError::Unavailable`] after retries, or
    /// [`SwitchError::Invalid`] when the resource cannot be switched this way.
    #[tracing::instrument(level = "info", skip(self), err(Display))]
    pub async fn preflight(&self) -> Result<Preflight, SwitchError> {
        match &self.backend {
            Backend::ElasticIp(b) => b.preflight().await,
            Backend::Dns(b) => b.preflight().await,
            Backend::LoadBalancer(b) => b.preflight().await,
        }
    }

    /// Reads where traffic points now. Read-only.
    ///
    /// # Errors
    ///
    /// As [`Switcher::preflight`], minus the `DryRun` refusal.
    pub async fn current(&self) -> Result<Pointing, SwitchError> {
        match &self.backend {
            Backend::ElasticIp(b) => b.current().await,
            Backend::Dns(b) => b.current().await,
            Backend::LoadBalancer(b) => b.current().await,
        }
    }

    /// Points traffic at `side` unless it already points there, then waits until AWS shows the
    /// change, for at most `deadline`.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Unconfirmed`] when the change was sent but not visible before the deadline
    /// (read [`Switcher::current`] before doing anything else); otherwise as
    /// [`Switcher::preflight`].
    #[tracing::instrument(level = "info", skip(self), err(Display))]
    pub async fn switch_to(&self, side: Side, deadline: Duration) -> Result<Outcome, SwitchError> {
        let started = Instant::now();
        let until = started + deadline;
        let before = self.current().await?;
        if before == Pointing::from(side) {
            tracing::info!(%side, "traffic already points there; nothing to do");
            return Ok(Outcome {
                changed: false,
                pointing: before,
                elapsed: started.elapsed(),
                detail: format!("traffic already pointed at the {side} host; nothing was sent"),
            });
        }
        tracing::info!(%side, %before, "switching traffic");
        let detail = match &self.backend {
            Backend::ElasticIp(b) => b.switch_to(side, until).await?,
            Backend::Dns(b) => b.switch_to(side, until).await?,
            Backend::LoadBalancer(b) => b.switch_to(side, until).await?,
        };
        let elapsed = started.elapsed();
        tracing::info!(%side, elapsed_ms = elapsed.as_millis() as u64, "traffic switched");
        Ok(Outcome {
            changed: true,
            pointing: Pointing::from(side),
            elapsed,
            detail: format!("was pointing at the {before}; {detail}"),
        })
    }
}

fn required<T>(value: Option<T>, side: &str, field: &str, method: &str) -> Result<T, SwitchError> {
    value.ok_or_else(|| {
        SwitchError::Invalid(format!(
            "the {side} host has no {field}: switching {method} needs it; add it to the plan"
        ))
    })
}

fn distinct<T: PartialEq + std::fmt::Display>(old: &T, new: &T) -> Result<(), SwitchError> {
    if old == new {
        return Err(SwitchError::Invalid(format!(
            "old and new host are both {old}: a switch needs two different hosts"
        )));
    }
    Ok(())
}

fn non_empty(value: &str, field: &str) -> Result<(), SwitchError> {
    if value.trim().is_empty() {
        return Err(SwitchError::Invalid(format!(
            "the switch method's {field} is empty"
        )));
    }
    Ok(())
}

/// The id a target group knows a host by: its instance id, or its IP for `ip` target groups.
fn target_id(host: Host, side: &str) -> Result<String, SwitchError> {
    match (host.instance_id, host.ip) {
        (Some(id), _) => Ok(id),
        (None, Some(ip)) => Ok(ip.to_string()),
        (None, None) => Err(SwitchError::Invalid(format!(
            "the {side} host has neither instance_id nor ip: a load-balancer target needs one"
        ))),
    }
}
