//! `service Nginx`: tests and reloads the nginx instance named in `[nginx]`, and switches its
//! site into and out of maintenance mode.
//!
//! - [`control`] runs `nginx -t` / `nginx -s reload` (with `-p`/`-e` for a private prefix) and
//!   holds the two gates: an `[nginx]` section, and `[allow] control_services` for everything
//!   that changes the host (reload, maintenance on/off). `Test` and `MaintenanceStatus` change
//!   nothing and need no permit.
//! - [`site`] generates the maintenance version of a site file: each `server` block answers 503
//!   with `Retry-After` and a small HTML page, except the pass paths (e.g. `/health`), which are
//!   served exactly as the original serves them.
//! - [`maintenance`] keeps the original in `[nginx] state_dir` (not beside the site, which nginx
//!   may include by glob), and orders writes so that a crash or an agent restart at any point
//!   leaves a state that the next `on` or `off` completes. `off` restores the original byte for
//!   byte.
//! - [`workers`] waits after a reload until new workers serve and the old ones stopped
//!   accepting connections, so "maintenance on" means no request reaches the app any more.
//!
//! Requests never carry a path or a command: the agent acts on its configured site only. One
//! operation at a time per agent (a lock in the service), so two callers cannot interleave the
//! save/write/reload steps.

mod control;
mod maintenance;
mod service;
mod site;
mod workers;

pub use service::NginxService;
