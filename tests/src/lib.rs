//! The cross-host test rig of hostshift: two real "hosts" on one machine.
//!
//! # What a test gets
//! - [`rig::world()`] — shared by every test of one test binary, started once: certificates from
//!   the real `certs init` code (plus a second, foreign CA), and two real PostgreSQL clusters
//!   ("old" on 127.0.0.2, "new" on 127.0.0.3) with a seeded template database of the app schema.
//!   It is torn down when the test binary exits (even after failures), and a watchdog ends a test
//!   binary that runs too long, so nothing hangs CI forever.
//! - [`rig::Sandbox`] — per test: its own folder, its own databases cloned from the template, and
//!   real `hostshift-agent` processes on the two loopback addresses with configs the test shapes
//!   ([`rig::AgentSetup`]); a plan file for them; and [`rig::cli`] to run the real `hostshift`
//!   binary. Dropping it stops the agents and drops its databases.
//!
//! Only loopback addresses are used. A missing tool (PostgreSQL server binaries, the built
//! binaries) fails the test with the command that installs or builds it.

#![allow(missing_docs)]

pub mod rig;
