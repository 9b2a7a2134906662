//! `service Hooks`: runs commands that the agent's config names (`[hooks.<name>]`), streaming
//! their output. A request carries only a hook *name*: nothing sent over the wire can add a
//! command or change one.

mod run;
mod service;

pub use service::HooksService;
