//! HTTP/2 written by hand over mutual TLS, for tests that must break the
//! rules a client library keeps: resetting streams as fast as they are
//! opened, opening more streams than allowed, never reading.
//!
//! Only what those tests need: frames are built as bytes, header blocks
//! use HPACK literals without indexing (no Huffman, no dynamic table), and
//! frames read back are classified, not decoded.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// A TLS connection to the gateway, HTTP/2 negotiated, nothing sent yet.
pub async fn connect(address: SocketAddr, tls: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(address).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// One frame: 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap();
    assert!(
        length < 1 << 14,
        "larger than the default maximum frame size"
    );
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The client connection preface and a SETTINGS frame with `settings`.
pub fn preface(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    out.extend(frame(SETTINGS, 0, 0, &payload));
    out
}

/// A HEADERS frame opening a gRPC call to `path` on `stream`.
pub fn grpc_headers(stream: u32, path: &str, end_stream: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, name, value);
    }
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block)
}

/// A DATA frame carrying `message` as one gRPC message.
pub fn grpc_data(stream: u32, message: &impl prost::Message, end_stream: bool) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&payload);
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, &body)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK literal header field without indexing, new name.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0);
    for text in [name, value] {
        integer(block, text.len(), 7);
        block.extend_from_slice(text.as_bytes());
    }
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541, 5.1), first
/// byte's other bits zero.
fn integer(block: &mut Vec<u8>, value: usize, prefix: u32) {
    let max = (1_usize << prefix) - 1;
    if value < max {
        block.push(u8::try_from(value).unwrap());
        return;
    }
    block.push(u8::try_from(max).unwrap());
    let mut rest = value - max;
    while rest >= 128 {
        block.push(u8::try_from(rest % 128 + 128).unwrap());
        rest /= 128;
    }
    block.push(u8::try_from(rest).unwrap());
}

/// A frame as read back.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// The next frame, or `None` once the connection is closed (cleanly or
/// not).
pub async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> Option<Frame> {
    let mut head = [0_u8; 9];
    reader.read_exact(&mut head).await.ok()?;
    let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    })
}

/// What the server sent until it closed the connection.
#[derive(Debug, Default)]
pub struct Received {
    /// The error code of the GOAWAY frames, in order.
    pub goaways: Vec<u32>,
    /// RST_STREAM frames by error code.
    pub resets: std::collections::BTreeMap<u32, u64>,
    /// HEADERS frames: response heads and trailers.
    pub headers: u64,
}

/// Reads every frame until the connection closes.
pub async fn read_until_closed(mut reader: impl AsyncRead + Unpin) -> Received {
    let mut received = Received::default();
    while let Some(frame) = read_frame(&mut reader).await {
        match frame.kind {
            GOAWAY => received.goaways.push(frame.error_code().unwrap()),
            RST_STREAM => {
                *received
                    .resets
                    .entry(frame.error_code().unwrap())
                    .or_default() += 1
            }
            HEADERS => received.headers += 1,
            _ => {}
        }
    }
    received
}
