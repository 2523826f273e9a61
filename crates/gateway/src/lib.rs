//! govbridge: a gRPC interconnection gateway for government e-services.
//!
//! Partner institutions (banks, telcos, agencies) call public services
//! through govbridge, and public services call partners through it. For
//! every call the gateway authenticates both ends with mutual TLS, routes
//! the call by its gRPC method to the provider that publishes it, and relays
//! the bytes untouched, streaming in both directions, with statuses,
//! trailers, deadlines and cancellation intact.
//!
//! # The request path
//!
//! ```text
//! TCP accept
//!  -> TLS (rustls: client cert required, CRLs, ALPN h2, handshake timeout)   net, identity
//!  -> identity (member id from the verified cert, once per connection)       identity
//!  -> HTTP/2 server (hyper: stream, header, reset and keepalive limits)      net
//!  -> limits: load shed, member rate (governor) and calls in flight          proxy::limits
//!  -> request id, bridge-* headers checked                                    proxy::headers
//!  -> route: /pkg.Service/Method -> published service -> provider             routing
//!  -> deadline: min(grpc-timeout, service maximum)                            proxy::deadline
//!  -> upstream: mTLS to a backend that must prove it is the provider          routing::upstream
//!  -> request relay: frames as they come, message size from each prefix     proxy::body, proxy::limits
//!  -> response relay: frames as the caller reads them, deadline, trailers     proxy::body
//! ```
//!
//! Gateway-made failures become gRPC statuses in one place
//! ([`proxy::GatewayError`]), with a `bridge-error` header naming the kind.
//! Statuses returned by a backend pass through unchanged.
//!
//! # Modules
//!
//! - [`identity`]: member ids, TLS configurations, certificate -> member.
//! - [`keys`]: Ed25519 signing keys in PKCS#8 PEM files (checkpoints,
//!   consent artefacts).
//! - [`net`]: TLS listeners serving HTTP/2, shared by gateway and agencies.
//! - [`config`]: the TOML file, validated into [`config::Config`].
//! - [`routing`]: the route table and the upstream connection pools.
//! - [`proxy`]: the passthrough service and where the path is assembled.
//! - [`consent`]: citizens' consent artefacts, their revocation feed and
//!   use counts.
//! - [`unix_time`]: seconds since the epoch, as certificates, consents and
//!   the exchange log count time.
//! - [`agencies`]: mock civil registry, tax authority, business registry,
//!   banks and the MyGov consent portal, backed by deterministic synthetic
//!   data.
//! - [`pki`]: a development CA (rcgen) for demos and tests.
//! - [`launch`]: starting agencies and the gateway as tasks.
//! - [`dev`]: the one-command development setup.
//! - [`sandbox`]: the gateway and every mock agency as a fixture for
//!   partners' integration tests, in Rust and (`govbridge sandbox`) in any
//!   language.
//! - [`bench`]: `govbridge bench`, the load generator and the comparison
//!   with a direct call and nginx.
//! - [`proto`]: code generated from `proto/`.
//!
//! # Features
//!
//! The crate has no optional features. TLS is rustls with the aws-lc-rs
//! provider (post-quantum hybrid key exchange on by default); protos are
//! compiled by protox at build time, so no `protoc` is needed.

#![forbid(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod consent;
pub mod directory;
pub mod exchange_log;
pub mod identity;
pub mod keys;
pub mod net;
pub mod policy;
pub mod proto;
pub mod proxy;
pub mod routing;
pub mod telemetry;
pub mod unix_time;
pub mod wire;
