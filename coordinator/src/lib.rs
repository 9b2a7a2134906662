//! The hostshift coordinator: the `hostshift` CLI and the library behind it.
//!
//! # Architecture
//! - [`cli`] parses flags and dispatches to [`commands`] (one file per command).
//! - [`plan`] is the plan file: types, template, validation with file/line/key errors.
//! - [`client`] connects to agents over mutual TLS and explains transport errors.
//! - [`preflight`] checks both hosts (`hostshift check`); later phases reuse it as a gate.
//! - [`lab`] builds throwaway hosts on loopback (PostgreSQL clusters, seeded app data) for the
//!   rehearsal and the test suite.
//! - [`sync`] copies files, storage and databases (`sync`) and proves equality (`verify`).
//! - [`journal`] is the append-only record of what sync and cutover did (resume, rollback);
//!   [`progress`] reports units on stderr (bars, lines or JSON). Both serve sync, cutover,
//!   backup and rehearse, so they sit beside them, not inside one.
//! - [`health`] runs the plan's `[[health]]` checks (`hostshift health`, the cutover's gates).
//! - [`phase`] gives each phase (sync unit, verify, cutover step) its `tracing` span, so
//!   `HOSTSHIFT_LOG=debug` tells the run in order.
//!
//! Imports point from [`commands`] into the library, never back.
//! - [`cutover`] moves traffic: gates, write freeze, final delta, proof, switch, undo
//!   (`cutover`, `rollback`, `status`).
//! - [`follow`] keeps the new host's databases current by logical decoding (`follow`).
//! - [`snapshots`] lists the snapshots an agent holds open (`status`, `check`).
//! - [`backup`] asks an agent for a backup of its host (`backup`, the rehearsal).
//! - [`rehearse`] builds two local hosts for `hostshift rehearse` and runs its phases against
//!   them (or against a plan's real hosts, into scratch targets).
//! - [`error`] maps outcomes to the documented exit codes; [`output`] prints tables and JSON.
//!
//! The coordinator holds no data of its own beyond its journal: data flows agent to agent.

// The cutover's and rehearsal's futures nest the sync's and the AWS SDK's deeply; a clean build
// computing their layout can pass the default query depth (128).
#![recursion_limit = "256"]

pub mod backup;
pub mod cli;
pub mod client;
pub mod commands;
pub mod cutover;
pub mod error;
pub mod follow;
pub mod health;
pub mod journal;
pub mod lab;
pub mod lock;
pub mod output;
pub mod phase;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod rehearse;
pub mod report;
pub mod snapshots;
pub mod sync;
pub mod window;
