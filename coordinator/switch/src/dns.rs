//! Switching by DNS: a Route 53 `UPSERT` of one simple `A`/`AAAA` record to the side's IP, then
//! `GetChange` until the change is `INSYNC` on Route 53's name servers, then a read-back.
//!
//! `INSYNC` only means Route 53 answers with the new value; resolvers may keep serving the old one
//! for up to the record's *previous* TTL, which the outcome reports. Records with a routing policy
//! (weighted, latency, failover, ...) and alias records are refused: overwriting one of those with
//! a simple record would change more than this switch is meant to.

use std::net::IpAddr;

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};
use tokio::time::Instant;

use crate::error::classify;
use crate::retry::{Poll, poll_until, with_retry};
use crate::{Pointing, Preflight, Side, SwitchError};

const GET_ZONE: &str = "route53:GetHostedZone";
const LIST: &str = "route53:ListResourceRecordSets";
const CHANGE: &str = "route53:ChangeResourceRecordSets";
const GET_CHANGE: &str = "route53:GetChange";

#[derive(Clone, Debug)]
pub(crate) struct Dns {
    client: Client,
    /// Without the `/hostedzone/` prefix.
    zone_id: String,
    /// Fully qualified, lower case, with the trailing dot, as Route 53 lists it.
    record: String,
    ttl: i64,
    old: IpAddr,
    new: IpAddr,
    rr_type: RrType,
}

/// What the record holds now.
enum Record {
    Missing,
    Simple {
        values: Vec<String>,
        ttl: Option<i64>,
    },
    /// Alias or routing-policy record: not ours to overwrite.
    Unsupported(String),
}

impl Dns {
    pub(crate) fn new(
        client: Client,
        zone_id: &str,
        record: &str,
        ttl: u32,
        old: IpAddr,
        new: IpAddr,
    ) -> Dns {
        Dns {
            client,
            zone_id: zone_id.trim_start_matches("/hostedzone/").to_owned(),
            record: normalize(record),
            ttl: i64::from(ttl),
            old,
            new,
            rr_type: if old.is_ipv4() {
                RrType::A
            } else {
                RrType::Aaaa
            },
        }
    }

    fn not_found(&self, code: &str) -> (String, String) {
        if code == "NoSuchChange" {
            ("Route 53 change for record".into(), self.record.clone())
        } else {
            ("Route 53 hosted zone".into(), self.zone_id.clone())
        }
    }

    async fn record(&self) -> Result<Record, SwitchError> {
        let output = with_retry(LIST, || async move {
            self.client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .start_record_name(&self.record)
                .start_record_type(self.rr_type.clone())
                .max_items(1)
                .send()
                .await
                .map_err(|e| classify(LIST, &e, |code| self.not_found(code)))
        })
        .await?;
        // The listing starts *at* the name; the first set is a different record when ours is
        // missing.
        let Some(set) = output
            .resource_record_sets()
            .iter()
            .find(|s| normalize(s.name()) == self.record && *s.r#type() == self.rr_type)
        else {
            return Ok(Record::Missing);
        };
        if let Some(alias) = set.alias_target() {
            return Ok(Record::Unsupported(format!(
                "an alias to {}",
                alias.dns_name()
            )));
        }
        if let Some(set_id) = set.set_identifier() {
            return Ok(Record::Unsupported(format!(
                "a routing-policy record (set identifier {set_id})"
            )));
        }
        Ok(Record::Simple {
            values: set
                .resource_records()
                .iter()
                .map(|r| r.value().to_owned())
                .collect(),
            ttl: set.ttl(),
        })
    }

    fn pointing(&self, record: &Record) -> Pointing {
        let kind = self.rr_type.as_str();
        match record {
            Record::Missing => Pointing::Neither(format!("no {kind} record {}", self.record)),
            Record::Unsupported(what) => Pointing::Neither(format!("{} is {what}", self.record)),
            Record::Simple { values, .. } => match values.as_slice() {
                [one] if same_ip(one, self.old) => Pointing::Old,
                [one] if same_ip(one, self.new) => Pointing::New,
                _ => Pointing::Neither(format!("{kind} {} → {}", self.record, values.join(", "))),
            },
        }
    }

    pub(crate) async fn current(&self) -> Result<Pointing, SwitchError> {
        Ok(self.pointing(&self.record().await?))
    }

    pub(crate) async fn preflight(&self) -> Result<Preflight, SwitchError> {
        let zone = with_retry(GET_ZONE, || async move {
            self.client
                .get_hosted_zone()
                .id(&self.zone_id)
                .send()
                .await
                .map_err(|e| classify(GET_ZONE, &e, |code| self.not_found(code)))
        })
        .await?;
        let zone_name = zone
            .hosted_zone()
            .map(|z| normalize(z.name()))
            .unwrap_or_default();
        if !zone_name.is_empty()
            && self.record != zone_name
            && !self.record.ends_with(&format!(".{zone_name}"))
        {
            return Err(SwitchError::Invalid(format!(
                "record {} is not inside hosted zone {} ({zone_name}); fix the plan's record or \
                 zone_id",
                self.record, self.zone_id
            )));
        }
        let record = self.record().await?;
        if let Record::Unsupported(what) = &record {
            return Err(unsupported(&self.record, what));
        }
        let now = match &record {
            Record::Simple { values, ttl } => format!(
                "{} (TTL {})",
                values.join(", "),
                ttl.map_or_else(|| "none".into(), |t| t.to_string())
            ),
            _ => "missing".into(),
        };
        Ok(Preflight {
            pointing: self.pointing(&record),
            detail: format!(
                "hosted zone {zone_name} ({}) is readable; {} {} is now {now}; the switch will \
                 UPSERT it with TTL {} (no DryRun exists for Route 53: the write permission \
                 {CHANGE} is first used at the switch)",
                self.zone_id,
                self.rr_type.as_str(),
                self.record,
                self.ttl
            ),
        })
    }

    pub(crate) async fn switch_to(
        &self,
        side: Side,
        deadline: Instant,
    ) -> Result<String, SwitchError> {
        let previous_ttl = match self.record().await? {
            Record::Unsupported(what) => return Err(unsupported(&self.record, &what)),
            Record::Simple { ttl, .. } => ttl,
            Record::Missing => None,
        };
        let ip = match side {
            Side::Old => self.old,
            Side::New => self.new,
        };
        let batch = self.batch(side, ip)?;
        let change = with_retry(CHANGE, || {
            let batch = batch.clone();
            async move {
                self.client
                    .change_resource_record_sets()
                    .hosted_zone_id(&self.zone_id)
                    .change_batch(batch)
                    .send()
                    .await
                    .map_err(|e| classify(CHANGE, &e, |code| self.not_found(code)))
            }
        })
        .await?;
        let change_id = change
            .change_info()
            .map(|c| c.id().trim_start_matches("/change/").to_owned())
            .unwrap_or_default();
        tracing::info!(record = %self.record, %ip, %change_id, "UPSERT sent");
        let what = format!("change {change_id} (UPSERT {} → {ip})", self.record);
        poll_until(&what, deadline, || {
            let change_id = change_id.clone();
            async move {
                let out = with_retry(GET_CHANGE, || {
                    let change_id = change_id.clone();
                    async move {
                        self.client
                            .get_change()
                            .id(change_id)
                            .send()
                            .await
                            .map_err(|e| classify(GET_CHANGE, &e, |code| self.not_found(code)))
                    }
                })
                .await?;
                Ok(match out.change_info().map(|c| c.status()) {
                    Some(ChangeStatus::Insync) => Poll::Done,
                    other => Poll::Pending(format!("{other:?}")),
                })
            }
        })
        .await?;
        // INSYNC says the change is live; the read-back says it is the value we wanted.
        let pointing = self.pointing(&self.record().await?);
        if pointing != Pointing::from(side) {
            return Err(SwitchError::Unconfirmed {
                what: format!("{what} is INSYNC but the record now reads: {pointing}"),
            });
        }
        let lag = previous_ttl.map_or_else(String::new, |t| {
            format!("; resolvers may serve the previous answer for up to {t} s (its old TTL)")
        });
        Ok(format!(
            "{} {} now → {ip} (TTL {}), change {change_id} INSYNC{lag}",
            self.rr_type.as_str(),
            self.record,
            self.ttl
        ))
    }

    fn batch(&self, side: Side, ip: IpAddr) -> Result<ChangeBatch, SwitchError> {
        let build = |e: aws_sdk_route53::error::BuildError| {
            SwitchError::Invalid(format!("cannot build the Route 53 change: {e}"))
        };
        let set = ResourceRecordSet::builder()
            .name(&self.record)
            .r#type(self.rr_type.clone())
            .ttl(self.ttl)
            .resource_records(
                ResourceRecord::builder()
                    .value(ip.to_string())
                    .build()
                    .map_err(build)?,
            )
            .build()
            .map_err(build)?;
        let change = Change::builder()
            .action(ChangeAction::Upsert)
            .resource_record_set(set)
            .build()
            .map_err(build)?;
        ChangeBatch::builder()
            .comment(format!("hostshift: point traffic at the {side} host"))
            .changes(change)
            .build()
            .map_err(build)
    }
}

fn unsupported(record: &str, what: &str) -> SwitchError {
    SwitchError::Invalid(format!(
        "{record} is {what}: hostshift only switches simple A/AAAA records; point a simple \
         record at the old host first, or switch with the load balancer"
    ))
}

/// Lower case with a trailing dot; Route 53 lists names that way and escapes `*` as `\052`.
fn normalize(name: &str) -> String {
    let mut name = name.trim().to_ascii_lowercase().replace("\\052", "*");
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

fn same_ip(value: &str, ip: IpAddr) -> bool {
    value.trim().parse::<IpAddr>().is_ok_and(|v| v == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_the_way_route53_lists_them() {
        assert_eq!(normalize("App.Example.com"), "app.example.com.");
        assert_eq!(normalize("app.example.com."), "app.example.com.");
        assert_eq!(normalize("\\052.example.com."), "*.example.com.");
    }

    #[test]
    fn record_values_compare_as_addresses() {
        let ip: IpAddr = "2001:db8::1".parse().expect("valid");
        assert!(same_ip("2001:0db8:0:0::1", ip));
        assert!(!same_ip("2001:db8::2", ip));
        assert!(!same_ip("not an ip", ip));
    }
}
