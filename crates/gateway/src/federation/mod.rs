//! Federation: calls between national instances, each through its own
//! gateways, as X-Road federates instances.
//!
//! A call from a member of this instance to a provider of a partner
//! instance is authorized and recorded here, then forwarded to the
//! partner's gateway over gateway-to-gateway mutual TLS (the partner's CAs
//! vouch for its identities only, see
//! [`crate::identity::tls::InstanceVerifier`]). Who called, for which
//! purpose and why travels with it as an [`Assertion`] this gateway signs:
//! the partner's gateway checks it, authorizes the call against the
//! original caller with its own policies, records it, and can later show
//! which gateway asserted what.
//!
//! # The assertion
//!
//! A C2SP signed note (see [`crate::note`]), signed with the instance's
//! federation key and sent base64url-encoded in `bridge-assertion`:
//!
//! ```text
//! govbridge federation assertion v1
//! from SN
//! to AZ
//! gateway SN/GOV/GOVBRIDGE/gateway
//! caller SN/COM/CBAO/kyc
//! method /govbridge.business.v1.BusinessRegistry/GetCompany
//! provider AZ/GOV/ASAN/business-registry
//! request-id 5b0c0a0e-...
//! nonce 9f86d081884c7d659a2feaa0c55ad015
//! issued 1764880000
//! purpose TRADE-FINANCE
//! reason Letter of credit 2026-118
//! user-id officer-17
//! ```
//!
//! The last three lines are there when the caller declared them. An
//! assertion is accepted for [`MAX_AGE`] after it was issued (and as much
//! before, for clocks apart), once: its nonce is remembered that long
//! ([`ReplayGuard`]).

mod assertion;

pub use assertion::{Assertion, AssertionError, MAX_AGE, ReplayGuard};
