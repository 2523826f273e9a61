//! `govbridge bench`: a gRPC load generator and a side-by-side comparison
//! of the gateway with a direct call and with nginx.
//!
//! - [`echo`]: the backend every target forwards to
//!   (`govbridge.bench.v1.Echo`), served over mutual TLS.
//! - [`setup`]: the benchmark's PKI (the dev PKI plus certificates for the
//!   echo backend, nginx and one member per load connection) and the
//!   gateway configurations it writes (routing only, everything on).
//! - [`process`]: the targets as child processes, killed on drop, and
//!   their CPU time and memory, read from `/proc`.
//! - [`load`]: closed and open loops over many HTTP/2 connections, each
//!   with its own member certificate; latencies in HDR histograms, every
//!   grpc-status counted.
//! - [`report`]: the tables and the JSON.
//! - [`compare`]: `govbridge bench compare`, every target one after the
//!   other in one run.
//! - [`fleet`]: `govbridge bench fleet`, the fleet's PostgreSQL store
//!   against one node's SQLite store.
//! - [`directory`]: `govbridge bench directory`, publications of a large
//!   global configuration reaching gateways that poll it, under load.
//! - [`federation`]: `govbridge bench federation`, what the second hop
//!   (a partner instance's gateway) adds to a call's latency.
//! - [`soak`]: `govbridge bench soak`, everything on at saturation for a
//!   long time, with the exchange log's disk, the process's memory and
//!   files watched as it goes.
//!
//! Nothing here is on the gateway's request path; a benchmark only drives
//! the gateway from outside, as a partner would.

pub mod compare;
pub mod directory;
pub mod echo;
pub mod federation;
pub mod fleet;
pub mod load;
pub mod process;
pub mod report;
pub mod setup;
pub mod soak;
