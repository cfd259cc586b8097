//! The `herald` binary's library: everything `main.rs` calls, so tests can call it too.
//!
//! - [`settings`]: defaults, TOML file, `HERALD_*` variables and flags, in that order.
//! - [`master_key`]: the key that seals secrets at rest.
//! - [`data_dir`]: the data dir and its files, created private (0700, 0600).
//! - [`app`]: opening the store and running the server.
//! - [`credentials`]: creating, listing and revoking access keys and tokens.
//! - [`deliveries`]: `herald deliveries retry`, bulk retry from the command line.
//! - [`sources`]: creating, listing and deleting recording sources.
//! - [`listen`]: `herald listen`, a local receiver that verifies callbacks.
//! - [`emit`]: `herald emit`, a signed test event sent to a running Herald.
#![forbid(unsafe_code)]

pub mod app;
pub mod credentials;
pub mod data_dir;
pub mod deliveries;
pub mod emit;
pub mod listen;
pub mod master_key;
pub mod settings;
pub mod sources;
