//! `service EnvFiles`: reads and edits the `.env` files the agent's config declares
//! (`[[files]]`), by name, and restarts a PM2 app so that it runs with the new values.
//!
//! - [`edit`] is a pure `.env` parser and editor that touches only the lines it must;
//! - [`file`] reads a file and replaces it atomically, keeping its owner and mode;
//! - [`run`] checks permissions, edits under a lock, builds the redacted diff and asks
//!   [`crate::pm2::Pm2Control`] for the restart;
//! - `service.rs` only translates proto ↔ these.
//!
//! Edits need the file in `[allow] write_files`. Secret values (by key name, see
//! [`edit::is_secret`]) are redacted in everything that leaves the agent unless `Get` asks for
//! them, and never logged.

/// The `.env` parser and editor lives in the shared crate: the coordinator's `verify` applies
/// the plan's overrides with the very same code.
pub use hostshift_shared::dotenv as edit;
pub mod file;
pub mod run;
mod service;

pub use service::EnvFilesService;
