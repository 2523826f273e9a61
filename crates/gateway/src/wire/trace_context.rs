//! W3C Trace Context: where a call sits in its caller's trace.
//!
//! The gateway continues the caller's trace when the call carries a valid
//! `traceparent`, and starts one otherwise. Its own span for the call gets a
//! fresh id, which is the parent the backend sees: the backend's spans hang
//! under the gateway's, and the gateway's under the caller's.

use http::{HeaderMap, HeaderValue};

/// `traceparent`: `00-<trace id>-<parent id>-<flags>`, in lowercase hex.
pub const TRACEPARENT: &str = "traceparent";

/// A call's trace, read from its headers or started at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, when the caller sent a `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this call.
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// The caller's trace, or a new sampled one when `traceparent` is
    /// missing or malformed (the caller's header is then ignored, as W3C
    /// Trace Context asks).
    pub fn read(headers: &HeaderMap) -> Self {
        headers
            .get(TRACEPARENT)
            .and_then(|value| parse_traceparent(value.as_bytes()))
            .map_or_else(
                || Self {
                    trace_id: random(),
                    parent_id: None,
                    span_id: random(),
                    flags: 1,
                },
                |(trace_id, parent_id, flags)| Self {
                    trace_id,
                    parent_id: Some(parent_id),
                    span_id: random(),
                    flags,
                },
            )
    }

    /// The trace id in lowercase hex, as logs and records show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The gateway's span id in lowercase hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The caller's span id in lowercase hex, if there is one.
    pub fn parent_id_hex(&self) -> Option<String> {
        self.parent_id.as_ref().map(|id| hex(id))
    }

    /// The `traceparent` sent to the backend: this trace, under the
    /// gateway's span.
    pub fn upstream_traceparent(&self) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push('-');
        push_hex(&mut text, &[self.flags]);
        // Hex digits and dashes only.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A W3C `traceparent` of version 00 with non-zero ids: trace id, parent
/// id and flags.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?;
    let parent: [u8; 8] = unhex(parent)?;
    let [flags] = unhex::<1>(flags)?;
    (trace != [0; 16] && parent != [0; 8]).then_some((trace, parent, flags))
}

/// A random id, from a generator seeded by the operating system. Trace
/// and span ids are neither secrets nor credentials (a caller may send any
/// it likes), so they need to be unpredictable enough not to collide, not
/// cryptographically: the operating system's generator cost a system call
/// for each of a call's two ids.
pub fn random<const N: usize>() -> [u8; N] {
    let mut id = [0; N];
    // All zeros is the one invalid id (W3C Trace Context).
    while id.iter().all(|byte| *byte == 0) && N > 0 {
        fastrand::fill(&mut id);
    }
    id
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` in lowercase hex: a table look-up per digit, where the
/// formatting machinery took a few hundred instructions per byte.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// Exactly `N` bytes from `2 * N` lowercase hex digits.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(traceparent: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_str(traceparent).unwrap());
        headers
    }

    #[test]
    fn continues_the_callers_trace_under_a_span_of_its_own() {
        let trace = TraceContext::read(&headers(CALLER));
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_id_hex().unwrap(), "00f067aa0ba902b7");
        assert_eq!(trace.flags, 1);
        let upstream = trace.upstream_traceparent();
        let upstream = upstream.to_str().unwrap();
        assert_eq!(
            upstream,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                trace.span_id_hex()
            )
        );
        assert_ne!(trace.span_id_hex(), "00f067aa0ba902b7");
        assert!(parse_traceparent(upstream.as_bytes()).is_some());
    }

    #[test]
    fn starts_a_sampled_trace_when_the_header_is_missing_or_invalid() {
        for header in [
            None,
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
        ] {
            let trace = TraceContext::read(&header.map(headers).unwrap_or_default());
            assert_eq!(trace.parent_id, None, "{header:?}");
            assert_eq!(trace.flags, 1);
            assert_ne!(trace.trace_id, [0; 16]);
            assert_ne!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn ids_differ_between_calls() {
        let one = TraceContext::read(&HeaderMap::new());
        let two = TraceContext::read(&HeaderMap::new());
        assert_ne!(one.trace_id, two.trace_id);
        assert_ne!(one.span_id, two.span_id);
    }
}
