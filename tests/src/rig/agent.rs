//! Real `hostshift-agent` processes for tests: [`hostshift::lab::agent`] with the world's
//! certificates, and panics with the agent's log instead of errors.

use std::ops::{Deref, DerefMut};
use std::path::Path;

pub use hostshift::lab::agent::AgentSetup;
use hostshift::lab::agent::LabAgent;
use hostshift_shared::tls::TlsFiles;
use tonic::transport::{Channel, ClientTlsConfig};

use super::world::World;

/// A running agent; dropping it stops it (SIGTERM, then SIGKILL).
pub struct AgentProc(LabAgent);

impl AgentProc {
    /// Writes `setup`'s config into `dir`, starts the agent and returns once it answers `Info`.
    pub async fn start(setup: &AgentSetup, dir: &Path, world: &World) -> AgentProc {
        let own = world.certs_agent(&setup.name);
        LabAgent::start(setup, &own, &world.certs_coordinator(), dir)
            .await
            .map(AgentProc)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A channel presenting `files` (certificate, key, CA) to this agent.
    pub async fn channel(&self, files: &TlsFiles) -> Channel {
        self.0
            .channel(files)
            .await
            .unwrap_or_else(|e| panic!("connect to agent {}: {e}", self.0.name))
    }

    /// A channel with a hand-made TLS config (e.g. no client certificate at all).
    pub async fn channel_with(&self, tls: ClientTlsConfig) -> Channel {
        self.0
            .channel_with(tls)
            .await
            .unwrap_or_else(|e| panic!("connect to agent {}: {e}", self.0.name))
    }
}

impl Deref for AgentProc {
    type Target = LabAgent;
    fn deref(&self) -> &LabAgent {
        &self.0
    }
}

impl DerefMut for AgentProc {
    fn deref_mut(&mut self) -> &mut LabAgent {
        &mut self.0
    }
}

impl World {
    /// The coordinator's certificate files.
    pub fn certs_coordinator(&self) -> TlsFiles {
        TlsFiles {
            cert: self.certs.coordinator_cert.clone(),
            key: self.certs.coordinator_key.clone(),
            ca: self.certs.ca_cert.clone(),
        }
    }

    /// An agent's own certificate files (as a peer agent would present them).
    pub fn certs_agent(&self, name: &str) -> TlsFiles {
        let (_, cert, key) = self
            .certs
            .agents
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no certificate for agent {name:?}"));
        TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: self.certs.ca_cert.clone(),
        }
    }
}
