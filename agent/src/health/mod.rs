//! `service Health`: HTTP checks run on this host, so `http://localhost:3666/health` reaches this
//! host's app. The checking itself is [`hostshift_shared::health`], the same code the
//! coordinator runs for its own checks; here we only validate the definitions that arrive
//! (http/https only — a URL is data, never a command) and run them concurrently, stopping when
//! the agent shuts down.

mod run;
mod service;

pub use service::HealthService;
