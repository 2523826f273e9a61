//! Time as certificates, consents, checkpoints and the exchange log count
//! it: whole seconds (or micro- and nanoseconds) since the Unix epoch.
//!
//! One place for the conversion and its edge: a clock set before 1970 reads
//! 0 rather than failing a call.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in whole seconds since the epoch.
pub fn now() -> i64 {
    seconds(SystemTime::now())
}

/// `at`, in whole seconds since the epoch.
pub fn seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    })
}

/// `at`, in microseconds since the epoch: the exchange log's timestamps.
pub fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    })
}

/// `at`, in nanoseconds since the epoch: OTLP's timestamps.
pub fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// `seconds` since the epoch as people read it: `2026-12-04T20:00:00Z`.
pub fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} s after the epoch"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn whole_seconds_and_zero_before_the_epoch() {
        assert_eq!(seconds(UNIX_EPOCH + Duration::from_millis(1_999)), 1);
        assert_eq!(seconds(UNIX_EPOCH + Duration::from_secs(1 << 40)), 1 << 40);
        assert_eq!(seconds(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(now() > 1_700_000_000);
    }
}
