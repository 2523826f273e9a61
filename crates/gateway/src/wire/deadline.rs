//! Call deadlines: the `grpc-timeout` header and the budget left of it.
//!
//! The gateway bounds every call by min(client timeout, the configured
//! maximum), forwards what is left when it sends the call upstream, and
//! answers `DEADLINE_EXCEEDED` itself when the budget runs out.

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

/// When a call must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    started: Instant,
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// The deadline of a call received at `started`.
    pub fn new(started: Instant, client_timeout: Option<Duration>, max: Duration) -> Self {
        let budget = client_timeout.map_or(max, |timeout| timeout.min(max));
        Self {
            started,
            at: started + budget,
            budget,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// The whole time the call was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// What is left of the budget now.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// How long the call has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes a duration as `grpc-timeout`, in the finest unit that fits in
/// eight digits, rounding down so that the backend never gets more time
/// than the gateway has left.
pub fn encode_grpc_timeout(duration: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = duration.as_nanos();
    let (amount, unit) = [
        (nanos / 1_000, 'u'),
        (nanos / 1_000_000, 'm'),
        (nanos / 1_000_000_000, 'S'),
        (nanos / 60_000_000_000, 'M'),
        (nanos / 3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .find(|(amount, _)| *amount <= MAX)
    .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{amount}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("0m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_units() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"4m"), Some(Duration::from_millis(4)));
        assert_eq!(parse_grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout(b"6n"), Some(Duration::from_nanos(6)));
        assert_eq!(
            parse_grpc_timeout(b"99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        for bad in [&b""[..], b"S", b"123456789S", b"5s", b"-5S", b"5 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_rounding_down() {
        assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "0u");
        let back =
            parse_grpc_timeout(encode_grpc_timeout(Duration::from_nanos(1_234_567_891)).as_bytes());
        assert_eq!(back, Some(Duration::from_micros(1_234_567)));
    }
}
