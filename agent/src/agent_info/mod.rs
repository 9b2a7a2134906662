//! `service Agent`: who this agent is and what it has — tools and their versions, databases and
//! whether they answer, free disk under each configured root (`Info`), and the sizes and row
//! counts the coordinator's preflight needs (`Inventory`).

pub(crate) mod disk;
mod inventory;
mod service;
mod tools;

pub use disk::fs_usage;
pub use service::AgentInfoService;
pub use tools::{find_in_path, pg_bin_dir};
