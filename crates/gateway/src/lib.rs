//! govbridge's exchange layer: a gRPC gateway between the members of a
//! national interconnection platform.
//!
//! Partner institutions (banks, telcos, agencies) call public services
//! through it, and public services call partners through it. For every call
//! it authenticates both ends with mutual TLS, authorizes the exact method
//! against Cedar policy, enforces the citizen's consent where the policy
//! asks for it, writes the exchange into a tamper-evident log, and relays
//! the bytes untouched to a healthy backend of the provider, streaming in
//! both directions, with statuses, trailers, deadlines and cancellation
//! intact.
//!
//! This crate knows nothing of its test doubles: the mock agencies, dev
//! PKI, dev, demo, sandbox and bench are the `govbridge-harness` crate,
//! which depends on this one.
//!
//! # The request path
//!
//! ```text
//! TCP accept, TLS (client certificate required, CRLs, ALPN h2)      net, identity
//! member id from the verified certificate, once per connection       identity
//! HTTP/2 (stream, header, reset and keepalive limits)                net
//! one call:
//!   admit: the caller, the gateway's and the member's limits         proxy (limits)
//!   read headers: gRPC, bridge-*, request id, deadline               wire
//!   route: /pkg.Service/Method -> published service -> provider      routing, catalog
//!   authorize: Cedar (member, method, provider, purpose, ...)        policy
//!   bind consent: artefact, data subject of the first message, use   consent, catalog::subject
//!   record decision, durable before anything goes upstream           exchange_log
//!   forward: provider pool, mTLS, deadline, retries                  routing::upstream
//!   relay: frames both ways, message sizes, subject on each message  proxy (body)
//!   record outcome, durable before the caller gets the status        exchange_log
//! ```
//!
//! Each phase of a call is a method of the per-call context in
//! `proxy/call/`, one file per phase, run in this order (see [`proxy`]).
//! Gateway-made failures become gRPC statuses in one place
//! ([`proxy::GatewayError`]), with a `bridge-error` header naming the kind.
//! Statuses returned by a backend pass through unchanged. The gateway's
//! own services (directory, health, reflection, the exchange log's proofs
//! and the Data Tracker) are answered by [`directory`], never forwarded.
//!
//! # Layers
//!
//! Top to bottom; a module imports only from the layers below its own
//! (checked by `tests/layers.rs`):
//!
//! - [`proxy`]: the call path as phases, bind and serve, reload, the admin
//!   endpoint.
//! - [`directory`]: the services the gateway answers itself.
//! - [`policy`], [`consent`], [`exchange_log`], [`routing`]: authorization,
//!   citizens' consent, the tamper-evident log, providers and their pools.
//! - [`telemetry`]: metrics and OTLP span export.
//! - [`config`]: the TOML file, validated into [`config::Config`].
//! - [`net`]: TLS listeners serving HTTP/2 (and HTTP/1.1 for JSON calls),
//!   and an h2 client; [`global`]:
//!   the signed global configuration an instance's directory publishes.
//! - [`wire`], [`catalog`] and [`note`]: the contracts: `bridge-*` headers,
//!   deadlines and trace context; the compiled services, data subjects and
//!   descriptors; C2SP signed notes.
//! - [`identity`], [`keys`], [`unix_time`], [`proto`]: member ids and TLS,
//!   Ed25519 key files, seconds since the epoch, generated code.
//!
//! # Features
//!
//! None. TLS is rustls with the aws-lc-rs provider (post-quantum hybrid key
//! exchange on by default); protos are compiled by protox at build time,
//! so no `protoc` is needed.

#![forbid(unsafe_code)]

pub(crate) mod addresses;
pub mod catalog;
pub mod config;
pub mod consent;
pub mod database;
pub mod directory;
pub mod exchange_log;
pub mod federation;
pub mod global;
pub mod identity;
pub mod keys;
pub mod net;
pub mod note;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod routing;
pub mod telemetry;
pub mod unix_time;
pub mod wire;
