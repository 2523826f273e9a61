//! Who is on the other end of a connection.
//!
//! This module owns member identifiers, the TLS configurations of both hops
//! (partner -> gateway, gateway -> backend) and the one function that turns a
//! verified peer certificate into a [`MemberId`]. It never trusts anything the
//! peer says about itself outside a certificate chain that rustls verified.

mod member;
pub mod national;
pub mod secret;
pub mod tls;

pub use member::{InvalidMemberId, MAX_MEMBER_ID_LEN, MemberId};
pub use tls::{PeerIdentityError, member_of_certificate};
