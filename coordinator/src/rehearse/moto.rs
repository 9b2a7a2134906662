//! The local rehearsal's traffic switch: a moto server standing in for EC2, an Elastic IP on
//! the old "instance", and the lab plan's `[switch]` pointed at it, so the cutover switches
//! traffic through the real AWS SDK. Without moto the rehearsal switches nothing (`none`).

use std::path::{Path, PathBuf};

use hostshift_switch::moto::{MotoError, MotoServer};

/// Why the lab cannot switch through moto (the rehearsal then uses `none`).
#[derive(Debug, thiserror::Error)]
pub enum MotoSwitchError {
    /// moto is missing or did not answer.
    #[error(transparent)]
    Moto(#[from] MotoError),
    /// The lab plan could not be read or written.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The plan.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generated plan lacks a section this edit expects.
    #[error("the lab plan has no {section:?} (a bug)")]
    PlanShape {
        /// The section's text looked for.
        section: String,
    },
}

/// Starts a moto server, creates the old and new instances and an Elastic IP on the old one, and
/// points the lab plan's `[switch]` at it. The server lives as long as the returned value.
///
/// # Errors
/// [`MotoSwitchError`]: moto missing, or the plan not as the lab writes it.
pub async fn switch_through_moto(plan: &Path) -> Result<MotoServer, MotoSwitchError> {
    let moto = MotoServer::start().await?;
    let eip = moto.seed_elastic_ip().await?;
    let io = |op: &'static str| {
        move |source: std::io::Error| MotoSwitchError::Io {
            op,
            path: plan.to_path_buf(),
            source,
        }
    };
    let mut text = std::fs::read_to_string(plan).map_err(io("read"))?;
    let edits = [
        (
            "[old]\n".to_string(),
            format!("[old]\ninstance_id = \"{}\"\n", eip.old_instance),
        ),
        (
            "[new]\n".to_string(),
            format!("[new]\ninstance_id = \"{}\"\n", eip.new_instance),
        ),
        (
            "[switch]\nmethod = \"none\"\n".to_string(),
            format!(
                "[switch]\nmethod = \"elastic-ip\"\n\n[switch.aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n[switch.elastic_ip]\nallocation_id = \"{}\"\n",
                moto.endpoint_url(),
                eip.allocation_id
            ),
        ),
    ];
    for (from, to) in edits {
        if !text.contains(&from) {
            return Err(MotoSwitchError::PlanShape { section: from });
        }
        text = text.replacen(&from, &to, 1);
    }
    std::fs::write(plan, text).map_err(io("write"))?;
    Ok(moto)
}
