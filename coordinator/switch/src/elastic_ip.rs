//! Switching by Elastic IP: `AssociateAddress` with `AllowReassociation` moves the address from
//! the old instance to the new one in one call (no window where it is unassociated), and
//! `DescribeAddresses` confirms it.
//!
//! The preflight's `DryRun` is EC2's own permission check: AWS answers with the *error* code
//! `DryRunOperation` when the call would have succeeded and `UnauthorizedOperation` when it would
//! not, so here an error is the success case.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Address;
use tokio::time::Instant;

use crate::error::classify;
use crate::retry::{Poll, poll_until, with_retry};
use crate::{Pointing, Preflight, Side, SwitchError};

const DESCRIBE: &str = "ec2:DescribeAddresses";
const ASSOCIATE: &str = "ec2:AssociateAddress";

/// The code a `DryRun` request comes back with when it would have succeeded.
const DRY_RUN_OK: &str = "DryRunOperation";

#[derive(Clone, Debug)]
pub(crate) struct ElasticIp {
    pub(crate) client: Client,
    pub(crate) allocation_id: String,
    pub(crate) old: String,
    pub(crate) new: String,
}

impl ElasticIp {
    fn instance(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }

    /// `(what, id)` for a NotFound code: EC2 says which kind of id it could not find.
    fn not_found(&self, code: &str) -> (String, String) {
        if code.starts_with("InvalidInstanceID") {
            (
                "EC2 instance (old or new host)".into(),
                format!("{} / {}", self.old, self.new),
            )
        } else {
            ("Elastic IP allocation".into(), self.allocation_id.clone())
        }
    }

    async fn address(&self) -> Result<Address, SwitchError> {
        let output = with_retry(DESCRIBE, || async move {
            self.client
                .describe_addresses()
                .allocation_ids(&self.allocation_id)
                .send()
                .await
                .map_err(|e| classify(DESCRIBE, &e, |code| self.not_found(code)))
        })
        .await?;
        output
            .addresses()
            .iter()
            .find(|a| a.allocation_id() == Some(self.allocation_id.as_str()))
            .cloned()
            .ok_or_else(|| SwitchError::NotFound {
                what: "Elastic IP allocation".into(),
                id: self.allocation_id.clone(),
            })
    }

    fn pointing(&self, address: &Address) -> Pointing {
        match (address.instance_id(), address.network_interface_id()) {
            (Some(id), _) if id == self.old => Pointing::Old,
            (Some(id), _) if id == self.new => Pointing::New,
            (Some(id), _) => Pointing::Neither(format!("associated with instance {id}")),
            (None, Some(eni)) => Pointing::Neither(format!("associated with interface {eni}")),
            (None, None) => Pointing::Neither("not associated with anything".into()),
        }
    }

    pub(crate) async fn current(&self) -> Result<Pointing, SwitchError> {
        Ok(self.pointing(&self.address().await?))
    }

    pub(crate) async fn preflight(&self) -> Result<Preflight, SwitchError> {
        let address = self.address().await?;
        let pointing = self.pointing(&address);
        let dry_run = with_retry(ASSOCIATE, || async move {
            let result = self
                .client
                .associate_address()
                .allocation_id(&self.allocation_id)
                .instance_id(&self.new)
                .allow_reassociation(true)
                .dry_run(true)
                .send()
                .await;
            match result {
                Err(e) if e.code() == Some(DRY_RUN_OK) => Ok(()),
                Err(e) => Err(classify(ASSOCIATE, &e, |code| self.not_found(code))),
                // A DryRun that really associated would be an AWS bug; refuse to call it a check.
                Ok(_) => Err(SwitchError::Invalid(format!(
                    "{ASSOCIATE} with DryRun=true returned success instead of {DRY_RUN_OK}: the \
                     endpoint does not honour DryRun, so the address may have moved; check it"
                ))),
            }
        })
        .await;
        dry_run?;
        Ok(Preflight {
            detail: format!(
                "Elastic IP {} ({}) is {}; DryRun of {ASSOCIATE} to the new instance {} with \
                 AllowReassociation was allowed",
                self.allocation_id,
                address.public_ip().unwrap_or("no public IP"),
                describe(&pointing),
                self.new,
            ),
            pointing,
        })
    }

    pub(crate) async fn switch_to(
        &self,
        side: Side,
        deadline: Instant,
    ) -> Result<String, SwitchError> {
        let instance = self.instance(side);
        let association = with_retry(ASSOCIATE, || async move {
            self.client
                .associate_address()
                .allocation_id(&self.allocation_id)
                .instance_id(instance)
                .allow_reassociation(true)
                .send()
                .await
                .map_err(|e| classify(ASSOCIATE, &e, |code| self.not_found(code)))
        })
        .await?;
        let association_id = association.association_id().unwrap_or("(no id)").to_owned();
        tracing::info!(allocation_id = %self.allocation_id, %instance, %association_id,
            "AssociateAddress sent");
        let what = format!(
            "association of Elastic IP {} with the {side} instance {instance}",
            self.allocation_id
        );
        poll_until(&what, deadline, || async move {
            let address = self.address().await?;
            Ok(match address.instance_id() {
                Some(id) if id == instance => Poll::Done,
                _ => Poll::Pending(describe(&self.pointing(&address))),
            })
        })
        .await?;
        Ok(format!(
            "Elastic IP {} re-associated with the {side} instance {instance} (association \
             {association_id}), confirmed by DescribeAddresses",
            self.allocation_id
        ))
    }
}

fn describe(pointing: &Pointing) -> String {
    match pointing {
        Pointing::Old => "associated with the old instance".into(),
        Pointing::New => "associated with the new instance".into(),
        Pointing::Neither(what) => what.clone(),
    }
}
