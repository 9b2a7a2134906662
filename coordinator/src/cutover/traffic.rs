//! The plan's `[switch]` as a [`hostshift_switch::Switcher`]: which AWS API, which credentials
//! (the usual AWS chain — environment, profile, SSO, instance role — or `[switch.aws] profile`),
//! and the two hosts as AWS knows them. `method = "none"` has no switcher: the operator moves
//! traffic and the cutover says when.

use hostshift_switch::{AwsTarget, Host, Method, Switcher};

use super::error::CutoverError;
use crate::plan::{Plan, SwitchMethod};

/// The switcher for the plan, or `None` for `method = "none"`.
///
/// # Errors
/// A sentence naming the missing plan key (plan validation normally catches these first) or
/// what the switch crate refused (same instance on both sides, address families that differ).
pub async fn switcher(plan: &Plan) -> Result<Option<Switcher>, CutoverError> {
    let missing = |what: &str| CutoverError::Switch(format!("{what} is missing"));
    let s = &plan.switch;
    let method = match s.method {
        SwitchMethod::None => return Ok(None),
        SwitchMethod::ElasticIp => Method::ElasticIp {
            allocation_id: s
                .elastic_ip
                .as_ref()
                .ok_or_else(|| missing("[switch.elastic_ip] allocation_id"))?
                .allocation_id
                .clone(),
        },
        SwitchMethod::Dns => {
            let d = s.dns.as_ref().ok_or_else(|| missing("[switch.dns]"))?;
            Method::Dns {
                zone_id: d.zone_id.clone(),
                record: d.record.clone(),
                ttl: d.ttl,
            }
        }
        SwitchMethod::LoadBalancer => {
            let l = s
                .load_balancer
                .as_ref()
                .ok_or_else(|| missing("[switch.load_balancer]"))?;
            Method::LoadBalancer {
                target_group_arn: l.target_group_arn.clone(),
                port: l.port,
            }
        }
    };
    let aws = s
        .aws
        .as_ref()
        .ok_or_else(|| missing("[switch.aws] region"))?;
    let target = AwsTarget {
        region: aws.region.clone(),
        endpoint_url: aws.endpoint_url.clone(),
        profile: aws.profile.clone(),
        static_credentials: local_stand_in_credentials(aws.endpoint_url.as_deref()),
    };
    let host = |h: &crate::plan::Host| -> Result<Host, CutoverError> {
        Ok(Host {
            instance_id: h.instance_id.clone(),
            ip: h
                .ip
                .as_deref()
                .map(|ip| {
                    ip.parse().map_err(|e| {
                        CutoverError::Switch(format!("{ip:?} is not an IP address: {e}"))
                    })
                })
                .transpose()?,
        })
    };
    Switcher::connect(&target, method, host(&plan.old)?, host(&plan.new)?)
        .await
        .map(Some)
        .map_err(|e| CutoverError::Switch(e.to_string()))
}

/// A local AWS stand-in (an `endpoint_url` on 127.0.0.0/8 or `localhost`, such as the moto
/// server of `hostshift rehearse`) accepts any credentials; when the environment names none,
/// fixed dummy ones are used so a rehearsal needs no AWS setup. Real AWS endpoints always use
/// the normal credential chain.
fn local_stand_in_credentials(endpoint_url: Option<&str>) -> Option<(String, String)> {
    let url = endpoint_url?;
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    let loopback = host == "localhost"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    (loopback && std::env::var_os("AWS_ACCESS_KEY_ID").is_none())
        .then(|| ("hostshift-local".to_string(), "hostshift-local".to_string()))
}

/// What an operator runs to put traffic back on the old host by hand, for the undo instructions.
pub fn manual_switch_back(plan: &Plan) -> String {
    let s = &plan.switch;
    let old = &plan.old;
    match s.method {
        SwitchMethod::None => "move traffic back to the old host the way you moved it".into(),
        SwitchMethod::ElasticIp => format!(
            "aws ec2 associate-address --allow-reassociation --allocation-id {} --instance-id {}",
            s.elastic_ip
                .as_ref()
                .map_or("<allocation id>", |e| e.allocation_id.as_str()),
            old.instance_id.as_deref().unwrap_or("<old instance id>")
        ),
        SwitchMethod::Dns => format!(
            "point the DNS record {} back at {} (Route 53 UPSERT)",
            s.dns.as_ref().map_or("<record>", |d| d.record.as_str()),
            old.ip.as_deref().unwrap_or("<old ip>")
        ),
        SwitchMethod::LoadBalancer => format!(
            "register {} in target group {} again and deregister the new instance",
            old.instance_id
                .as_deref()
                .or(old.ip.as_deref())
                .unwrap_or("<old target>"),
            s.load_balancer
                .as_ref()
                .map_or("<target group>", |l| l.target_group_arn.as_str())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::local_stand_in_credentials as creds;

    #[test]
    fn only_loopback_stand_ins_get_dummy_credentials() {
        let env = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
        assert_eq!(creds(Some("http://127.0.0.1:5000")).is_some(), !env);
        assert_eq!(creds(Some("http://localhost:5000/")).is_some(), !env);
        assert!(creds(Some("https://ec2.eu-west-1.amazonaws.com")).is_none());
        assert!(creds(Some("http://10.0.0.5:5000")).is_none());
        assert!(creds(None).is_none());
    }
}
