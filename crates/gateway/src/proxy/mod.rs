//! The passthrough: where the gateway's request path is assembled.
//!
//! [`Gateway::bind`] builds everything a configuration describes (TLS, the
//! member registry, policies, the route table and upstream pools) and binds
//! the listener; [`Gateway::serve`] gives each partner connection a
//! [`GatewayService`], which runs every call on it through the phases of
//! the request path, in the order of the diagram in the crate docs:
//!
//! ```text
//! admit -> read headers -> route -> authorize -> bind consent
//!   -> record decision -> forward (retries) -> relay -> record outcome
//! ```
//!
//! Each phase is a method of the per-call context, `call::Call`, in a
//! file of its own under `call/` (the table in its docs). Messages are
//! never decoded here: bodies are relayed frame by frame in both
//! directions (`body.rs`), and what the exchange log learns of a call is
//! gathered in `record.rs`. Every refusal is a [`GatewayError`], mapped to
//! a gRPC status in one place (`error.rs`).
//!
//! Everything a configuration determines lives in one [`GatewayState`]
//! (`state.rs`), swapped atomically by a [`Reloader`] (`reload.rs`): each
//! call takes the snapshot current when it arrives and finishes under it,
//! so a reload never breaks a call in flight and never mixes two
//! configurations in one call.

pub mod admin;
mod body;
mod call;
mod error;
mod gateway;
pub mod global;
mod json;
pub mod limits;
mod receipts;
mod record;
mod reload;
mod service;
pub mod signals;
mod state;
mod witness;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use crate::wire::Deadline;
pub use body::{RequestBody, ResponseBody};
pub use error::{Blame, GatewayError};
pub use gateway::{Gateway, StartError};
pub use reload::{ReloadError, Reloader};
pub use service::GatewayService;
pub use state::GatewayState;

/// The current configuration, shared by every connection.
type SharedState = Arc<ArcSwap<GatewayState>>;
