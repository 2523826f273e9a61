//! govbridge: a gRPC interconnection gateway for government e-services.
//!
//! This crate is the `govbridge` command and one name for the two crates
//! it is built from, so that a partner's integration tests depend on
//! `govbridge` alone:
//!
//! - [`govbridge_gateway`](gateway): the exchange layer itself;
//! - [`govbridge_harness`](harness) (feature `harness`, on by default): the
//!   mock agencies, dev PKI, dev, demo, sandbox and bench.
//!
//! Their modules are re-exported at the top: `govbridge::proxy`,
//! `govbridge::sandbox`, and so on.
//!
//! # Features
//!
//! - `harness` (default): the test doubles and the commands that run them.
//!   `cargo build --release --no-default-features` builds the production
//!   gateway without them.

#![forbid(unsafe_code)]

pub use gateway::*;
#[cfg(feature = "harness")]
pub use harness::*;
