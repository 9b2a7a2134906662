//! Code that both hostshift binaries need.
//!
//! # Architecture
//! `hostshift-proto` (the gRPC contract) → **`hostshift-shared`** → `hostshift-agent` (daemon) and
//! `hostshift` (coordinator CLI) → `hostshift-tests` (the cross-host suite). Nothing here knows
//! about a particular service; it holds the vocabulary both sides must agree on:
//!
//! - [`buffered_tcp`] — TCP connections with their reads buffered under TLS (every gRPC
//!   connection: rustls alone reads a record or less at a time).
//! - [`conninfo`] — libpq connection strings (keyword and URI forms), one parser for every
//!   check (passwords, remote hosts, sslmode).
//! - [`exit`] — the documented process exit codes.
//! - [`framing`] — chunk + trailer framing that makes every stream's integrity checkable.
//! - [`dotenv`] — the `.env` parser/editor that keeps every untouched byte (overrides, edits).
//! - [`digest`] — the [`digest::Sha256Digest`] newtype every checksum travels in.
//! - [`identity`] — who a certificate belongs to (coordinator or agent), read from its URI SAN.
//! - [`tls`] — loading PEM files into tonic's mutual-TLS configs, and HTTP/2 window sizes.
//! - [`pki`] — creating the migration CA and the certificates (`hostshift certs init`).
//! - [`tomlpos`] — errors for TOML files that name the file, line and key.
//! - [`telemetry`] — `tracing` set-up shared by both binaries (`HOSTSHIFT_LOG`).
//! - [`model`] — the database vocabulary of both binaries (table description, key range, table
//!   pattern, fingerprint) and its checked conversions from the gRPC messages.
//! - [`health`] — HTTP health checks (one definition → one result, retries with backoff), run
//!   by agents on their hosts and by the coordinator alike.

pub mod buffered_tcp;
pub mod conninfo;
pub mod dbspec;
pub mod digest;
pub mod dotenv;
pub mod exit;
pub mod expect_identity;
pub mod framing;
pub mod health;
pub mod identity;
pub mod keyspan;
pub mod model;
pub mod pki;
pub mod procfs;
pub mod telemetry;
pub mod tls;
pub mod tomlpos;

/// Version of this build (the workspace version), reported by agents and checked by the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
