//! An Elastic IP in a real moto server, for cutover tests: two EC2 instances ("old" and "new")
//! created through the real AWS SDK, and an address allocated and associated with the old one.
//!
//! Each [`Eip`] owns its moto server (about half a second to start): cutover tests run in parallel
//! and each moves its address, so private servers keep every test's AWS state its own. The test
//! reads the AWS side back through the SDK ([`Eip::associated_instance`]) and never trusts what
//! `hostshift` says alone. A missing moto fails the test with the install command.

use hostshift_switch::moto::MotoServer;
use hostshift_switch::sdk_config;

/// Region of every test address.
pub const REGION: &str = "us-east-1";
/// The credentials moto accepts (and the CLI gets through its environment).
const KEY_ID: &str = "testing";
const SECRET: &str = "testing";

/// A moto server holding two instances and an Elastic IP associated with the old one.
pub struct Eip {
    pub moto: MotoServer,
    pub ec2: aws_sdk_ec2::Client,
    pub old_instance: String,
    pub new_instance: String,
    pub allocation_id: String,
    /// The address itself.
    pub public_ip: String,
}

impl Eip {
    /// Starts moto and sets up the instances and the address (the same seeding the rehearsal
    /// uses: [`MotoServer::seed_elastic_ip`]).
    pub async fn start() -> Eip {
        let moto = MotoServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        let seeded = moto
            .seed_elastic_ip()
            .await
            .unwrap_or_else(|e| panic!("seed the Elastic IP in moto: {e}"));
        let ec2 = aws_sdk_ec2::Client::new(&sdk_config(&moto.target()).await);
        let public_ip = ec2
            .describe_addresses()
            .allocation_ids(&seeded.allocation_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeAddresses in moto: {e:?}"))
            .addresses()
            .first()
            .and_then(|a| a.public_ip())
            .expect("the address's public ip")
            .to_owned();
        let eip = Eip {
            moto,
            ec2,
            old_instance: seeded.old_instance,
            new_instance: seeded.new_instance,
            allocation_id: seeded.allocation_id,
            public_ip,
        };
        assert_eq!(
            eip.associated_instance().await.as_deref(),
            Some(eip.old_instance.as_str()),
            "the address starts on the old instance"
        );
        eip
    }

    /// Which instance the address is associated with now, as EC2 (moto) reports it.
    pub async fn associated_instance(&self) -> Option<String> {
        let out = self
            .ec2
            .describe_addresses()
            .allocation_ids(&self.allocation_id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeAddresses in moto: {e:?}"));
        out.addresses()
            .first()
            .and_then(|a| a.instance_id())
            .map(str::to_owned)
    }

    /// Asserts the address is on the old instance (`why` says when).
    pub async fn assert_on_old(&self, why: &str) {
        assert_eq!(
            self.associated_instance().await.as_deref(),
            Some(self.old_instance.as_str()),
            "{why}: the Elastic IP must be on the old instance {} (new is {})",
            self.old_instance,
            self.new_instance
        );
    }

    /// Asserts the address is on the new instance.
    pub async fn assert_on_new(&self, why: &str) {
        assert_eq!(
            self.associated_instance().await.as_deref(),
            Some(self.new_instance.as_str()),
            "{why}: the Elastic IP must be on the new instance {} (old is {})",
            self.new_instance,
            self.old_instance
        );
    }

    /// The plan's `[switch]` for this address (with `verify_urls`), `[switch.aws]` and
    /// `[switch.elastic_ip]`. The instance ids go into `[old]` / `[new]`, which the sandbox writes.
    pub fn plan_switch(&self, verify_urls: &[String]) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let urls: Vec<String> = verify_urls.iter().map(|u| s(u)).collect();
        format!(
            "[switch]\nmethod = \"elastic-ip\"\nverify_urls = [{}]\n\n\
             [switch.aws]\nregion = {}\nendpoint_url = {}\n\n\
             [switch.elastic_ip]\nallocation_id = {}\n\n",
            urls.join(", "),
            s(REGION),
            s(&self.moto.endpoint_url()),
            s(&self.allocation_id)
        )
    }

    /// Environment for the `hostshift` CLI: the credentials moto accepts, and no instance
    /// metadata lookups.
    pub fn cli_env() -> [(&'static str, &'static str); 4] {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }
}
