//! hostshift's traffic switch: the one place that talks to AWS to move traffic from the old host
//! to the new one (and back).
//!
//! # Architecture
//!
//! A [`Switcher`] is built from an [`AwsTarget`] (where the AWS API is and which credentials to
//! use), a [`Method`] (what carries the traffic: an Elastic IP, a Route 53 record or the targets of
//! an ELBv2 target group) and the two [`Host`]s. It offers three operations, each safe to repeat:
//!
//! - [`Switcher::preflight`] proves the switch is possible without changing anything (read access,
//!   and for EC2 a `DryRun` of the very call the switch will make);
//! - [`Switcher::current`] reads where traffic points *now*, so that a resumed cutover never
//!   repeats a switch blindly;
//! - [`Switcher::switch_to`] makes the change only if needed, then polls AWS until the change is
//!   visible (or the deadline passes, which is [`SwitchError::Unconfirmed`], not success).
//!
//! One module per method (`elastic_ip`, `dns`, `load_balancer`) holds the AWS calls; `error`
//! turns SDK errors into [`SwitchError`] (refused, not found, unavailable, invalid, unconfirmed);
//! `retry` owns the only retry loop (the SDK's own retries are switched off so that transient
//! errors are retried exactly once per layer, and a refusal is never retried). [`moto`] starts a
//! local moto server that stands in for the AWS API in tests and in `hostshift rehearse`.
//!
//! Every AWS call goes through the real SDK with one TLS stack (rustls + ring) and an explicit HTTP
//! client; pointing [`AwsTarget::endpoint_url`] at a moto server is all a test needs.

mod dns;
mod elastic_ip;
mod error;
mod load_balancer;
pub mod moto;
mod retry;
mod switcher;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use serde::{Deserialize, Serialize};

pub use error::SwitchError;
pub use switcher::Switcher;

/// Where the AWS API is and who hostshift is when it calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsTarget {
    /// AWS region of the Elastic IP / target group (Route 53 is global; any region works for it).
    pub region: String,
    /// Send every call here instead of AWS's own endpoints (a moto server in tests and rehearsals).
    pub endpoint_url: Option<String>,
    /// Named profile from `~/.aws/config` to take credentials and settings from.
    pub profile: Option<String>,
    /// Fixed `(access key id, secret access key)`: only for tests and rehearsals against moto.
    /// Production leaves this `None` and uses the default credential chain (environment, profile,
    /// SSO, web identity, instance role).
    pub static_credentials: Option<(String, String)>,
}

impl fmt::Debug for AwsTarget {
    // Hand-written so that a secret key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsTarget")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("profile", &self.profile)
            .field(
                "static_credentials",
                &self
                    .static_credentials
                    .as_ref()
                    .map(|(id, _)| (id, "<redacted>")),
            )
            .finish()
    }
}

/// Loads the SDK configuration for `target`: region, optional endpoint override, profile or static
/// credentials, and the one HTTP client this workspace uses (hyper + rustls with the ring
/// provider; without an explicit client the SDK would compile but fail every call at run time).
///
/// Credentials are resolved lazily, at the first call, so this cannot fail; a missing or rejected
/// credential shows up as [`SwitchError::Refused`] from the first operation.
pub async fn sdk_config(target: &AwsTarget) -> SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .http_client(http_client);
    if let Some(url) = &target.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(profile) = &target.profile {
        loader = loader.profile_name(profile.clone());
    }
    if let Some((access_key_id, secret)) = &target.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            access_key_id.clone(),
            secret.clone(),
            None,
            None,
            "hostshift-static",
        ));
    }
    loader.load().await
}

/// One of the two machines, as AWS knows it. Which fields are needed depends on the [`Method`]:
/// an Elastic IP needs `instance_id`, DNS needs `ip`, a load balancer needs `instance_id` (instance
/// target groups) or `ip` (ip target groups).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// EC2 instance id, e.g. `i-0123456789abcdef0`.
    pub instance_id: Option<String>,
    /// Public address that clients should reach the host at.
    pub ip: Option<IpAddr>,
}

/// What carries the traffic, i.e. what the switch changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Method {
    /// Re-associate an Elastic IP from the old instance to the new one.
    ElasticIp {
        /// The address's allocation id, e.g. `eipalloc-0123456789abcdef0`.
        allocation_id: String,
    },
    /// Point a Route 53 `A` (or `AAAA`) record at the new host's `ip`.
    Dns {
        /// Hosted zone id, with or without the `/hostedzone/` prefix.
        zone_id: String,
        /// Record name, e.g. `app.example.com` (a trailing dot is optional).
        record: String,
        /// TTL written with the new value, in seconds. Lower it well before the cutover: resolvers
        /// keep the old answer for up to the *old* TTL.
        ttl: u32,
    },
    /// Register the new host in an ELBv2 target group, wait until it is healthy, then deregister
    /// the old host.
    LoadBalancer {
        /// The target group's ARN.
        target_group_arn: String,
        /// Port the app listens on, registered with the target.
        port: u16,
    },
}

/// One of the two hosts, as a destination of the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The host being moved away from.
    Old,
    /// The host being moved to.
    New,
}

impl Side {
    /// The other host.
    #[must_use]
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Old => "old",
            Side::New => "new",
        })
    }
}

/// Where traffic points right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pointing {
    /// At the old host only.
    Old,
    /// At the new host only.
    New,
    /// At neither host alone; says what it points at (another instance, several values, both
    /// targets registered, nothing at all).
    Neither(String),
}

impl From<Side> for Pointing {
    fn from(side: Side) -> Pointing {
        match side {
            Side::Old => Pointing::Old,
            Side::New => Pointing::New,
        }
    }
}

impl fmt::Display for Pointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pointing::Old => f.write_str("old host"),
            Pointing::New => f.write_str("new host"),
            Pointing::Neither(what) => write!(f, "neither host ({what})"),
        }
    }
}

/// What [`Switcher::preflight`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preflight {
    /// Where traffic points now.
    pub pointing: Pointing,
    /// What was checked, in words an operator can act on.
    pub detail: String,
}

/// What [`Switcher::switch_to`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// `false` when traffic already pointed at the requested side and nothing was sent.
    pub changed: bool,
    /// Where traffic points now, as confirmed by reading it back.
    pub pointing: Pointing,
    /// Time from the call to the confirmation.
    pub elapsed: Duration,
    /// What was changed and how it was confirmed.
    pub detail: String,
}
