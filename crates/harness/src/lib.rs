//! Everything around the govbridge gateway that is not the gateway: the
//! mock agencies and their synthetic data, a development PKI, and the
//! `dev`, `demo`, `sandbox` and `bench` setups built from them.
//!
//! This crate depends on [`gateway`] and never the reverse: the exchange
//! layer builds, tests and ships without its test doubles.

#![forbid(unsafe_code)]

pub mod agencies;
pub mod bench;
pub mod demo;
pub mod dev;
pub mod json_client;
pub mod launch;
pub mod partner;
pub mod pki;
pub mod postgres;
pub mod sandbox;
