//! What happens to a TCP connection before its TLS handshake (besides the
//! cap on connections per source address, [`crate::addresses`]):
//! recognising bytes that are not TLS at all (plaintext HTTP/1.1, h2c,
//! garbage) so that they get a clean close instead of a TLS error or a
//! hang.
//!
//! This module never reads past the first bytes of a TLS connection: it
//! only peeks, and rustls reads everything.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the first bytes of a connection say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstBytes {
    /// A TLS handshake record: over to rustls.
    Tls,
    /// HTTP/1.x in the clear.
    PlaintextHttp1,
    /// HTTP/2 with prior knowledge in the clear (h2c).
    PlaintextH2,
    /// Neither TLS nor HTTP.
    Garbage,
    /// The peer closed before sending anything.
    Closed,
}

impl FirstBytes {
    /// A metric label for the connections refused this way.
    pub(super) fn refusal(self) -> &'static str {
        match self {
            Self::Tls => "protocol",
            Self::PlaintextHttp1 | Self::PlaintextH2 => "plaintext-http",
            Self::Garbage => "not-tls",
            Self::Closed => "connection",
        }
    }
}

/// Looks at the first bytes of `tcp` without consuming them.
pub(super) async fn sniff(tcp: &TcpStream) -> std::io::Result<FirstBytes> {
    // TLS record type 22 (handshake); anything else is not a ClientHello.
    const HANDSHAKE: u8 = 0x16;
    let mut first = [0_u8; 4];
    let read = tcp.peek(&mut first).await?;
    Ok(match &first[..read] {
        [] => FirstBytes::Closed,
        [HANDSHAKE, ..] => FirstBytes::Tls,
        bytes if bytes.starts_with(b"PRI ") => FirstBytes::PlaintextH2,
        // Every HTTP/1 method is upper-case letters then a space.
        [first, ..] if first.is_ascii_uppercase() => FirstBytes::PlaintextHttp1,
        _ => FirstBytes::Garbage,
    })
}

/// What a plaintext HTTP/1 client is told before the connection closes.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain\r\n\
connection: close\r\n\
content-length: 56\r\n\
\r\n\
This port speaks gRPC over HTTP/2 with mutual TLS only.\n";

/// Closes a connection that does not speak TLS: a plaintext HTTP/1 client
/// gets a 400 that says why, then every peer gets a FIN, never a reset
/// that could destroy the answer. Takes at most `within`.
pub(super) async fn close_cleanly(mut tcp: TcpStream, spoke: FirstBytes, within: Duration) {
    let close = async {
        if spoke == FirstBytes::PlaintextHttp1 {
            tcp.write_all(PLAINTEXT_ANSWER).await?;
        }
        tcp.shutdown().await?;
        // Closing with unread bytes in the socket would send a reset: read
        // until the peer closes too, up to a bound.
        let mut sink = [0_u8; 4096];
        let mut left = 64_usize << 10;
        while left > 0 {
            let read = tcp.read(&mut sink).await?;
            if read == 0 {
                break;
            }
            left = left.saturating_sub(read);
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(within, close).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_answer_has_the_length_it_says() {
        let text = std::str::from_utf8(PLAINTEXT_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
