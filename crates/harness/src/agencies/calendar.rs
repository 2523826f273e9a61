//! Calendar dates of the mock agencies: the one parser and printer of the
//! ISO 8601 `YYYY-MM-DD` strings their protos carry, and the little day
//! arithmetic the dataset needs (ages, "after", "N years later").
//!
//! Proleptic Gregorian calendar, no time zones, no clock except
//! [`Date::today`]. This module must never pull in a date crate: the protos
//! stay dependency-free and the arithmetic here is all they need.

use std::fmt;

/// A calendar date, stored as days since 1970-01-01.
///
/// Ordering is chronological.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    days: i32,
}

/// Why a string is not a `YYYY-MM-DD` date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDate {
    #[error("a date is written YYYY-MM-DD")]
    Format,
    #[error("no such day in the calendar")]
    NoSuchDay,
}

/// Why a string is not a `YYYY-MM` month.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a month is written YYYY-MM")]
pub struct InvalidMonth;

impl Date {
    /// The date `year-month-day`, or `None` when no such day exists.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        Some(Date {
            days: days_from_civil(year, month, day),
        })
    }

    /// The date `year-month-day` for constants the code knows to be valid;
    /// an impossible day rolls over into the next month.
    pub(crate) const fn from_ymd_const(year: i32, month: u32, day: u32) -> Date {
        Date {
            days: days_from_civil(year, month, day),
        }
    }

    /// Parses `YYYY-MM-DD` exactly (four-digit year, zero-padded month and
    /// day, nothing around them).
    pub fn parse(text: &str) -> Result<Date, InvalidDate> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return Err(InvalidDate::Format);
        }
        let year = digits(&bytes[0..4]).ok_or(InvalidDate::Format)?;
        let month = digits(&bytes[5..7]).ok_or(InvalidDate::Format)?;
        let day = digits(&bytes[8..10]).ok_or(InvalidDate::Format)?;
        Date::from_ymd(year as i32, month, day).ok_or(InvalidDate::NoSuchDay)
    }

    /// Today, from the system clock (UTC).
    pub fn today() -> Date {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        Date {
            days: i32::try_from(secs / 86_400).unwrap_or(i32::MAX),
        }
    }

    /// Year, month (1-12) and day (1-31).
    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(self.days)
    }

    /// The year.
    pub fn year(self) -> i32 {
        self.ymd().0
    }

    /// The date `days` days later (earlier when negative).
    pub fn add_days(self, days: i32) -> Date {
        Date {
            days: self.days.saturating_add(days),
        }
    }

    /// The same day `years` years later (earlier when negative); 29 February
    /// becomes 28 February in a common year.
    pub fn add_years(self, years: i32) -> Date {
        let (year, month, day) = self.ymd();
        let year = year + years;
        let day = day.min(days_in_month(year, month));
        Date {
            days: days_from_civil(year, month, day),
        }
    }

    /// Days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: Date) -> i32 {
        later.days - self.days
    }

    /// Completed years from `self` to `on`: a person born on `self` is this
    /// old on `on`.
    pub fn years_until(self, on: Date) -> i32 {
        let (y0, m0, d0) = self.ymd();
        let (y1, m1, d1) = on.ymd();
        let mut years = y1 - y0;
        if (m1, d1) < (m0, d0) {
            years -= 1;
        }
        years
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.ymd();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a month `YYYY-MM` into its year and month (1-12).
pub fn parse_month(text: &str) -> Result<(i32, u32), InvalidMonth> {
    let bytes = text.as_bytes();
    if bytes.len() != 7 || bytes[4] != b'-' {
        return Err(InvalidMonth);
    }
    let year = digits(&bytes[0..4]).ok_or(InvalidMonth)?;
    let month = digits(&bytes[5..7]).ok_or(InvalidMonth)?;
    if !(1..=12).contains(&month) {
        return Err(InvalidMonth);
    }
    Ok((year as i32, month))
}

/// The value of a run of ASCII digits, or `None` if any byte is not one.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0_u32, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u32::from(byte - b'0'))
    })
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in a month; `month` is 1-12.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's `days_from_civil` and `civil_from_days`
// (https://howardhinnant.github.io/date_algorithms.html): exact for every
// proleptic Gregorian date, integer only.
const fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i32) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i32::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_day_over_two_centuries() {
        let start = Date::from_ymd(1900, 1, 1).unwrap();
        for offset in 0..(200 * 366) {
            let date = start.add_days(offset);
            assert_eq!(Date::parse(&date.to_string()), Ok(date));
        }
        assert_eq!(Date::from_ymd(1970, 1, 1).unwrap().days, 0);
    }

    #[test]
    fn rejects_malformed_and_impossible_dates() {
        assert_eq!(Date::parse("2024-02-30"), Err(InvalidDate::NoSuchDay));
        assert_eq!(Date::parse("2023-02-29"), Err(InvalidDate::NoSuchDay));
        assert!(Date::parse("2024-02-29").is_ok());
        for bad in [
            "",
            "2024-1-01",
            "2024/01/01",
            "24-01-01",
            "2024-01-01T00:00",
            "２０２４-01-01",
        ] {
            assert_eq!(Date::parse(bad), Err(InvalidDate::Format), "{bad}");
        }
    }

    #[test]
    fn counts_completed_years() {
        let birth = Date::from_ymd(2000, 6, 15).unwrap();
        assert_eq!(birth.years_until(Date::from_ymd(2018, 6, 14).unwrap()), 17);
        assert_eq!(birth.years_until(Date::from_ymd(2018, 6, 15).unwrap()), 18);
        let leap = Date::from_ymd(2024, 2, 29).unwrap();
        assert_eq!(leap.add_years(1), Date::from_ymd(2025, 2, 28).unwrap());
    }

    #[test]
    fn parses_months() {
        assert_eq!(parse_month("2024-07"), Ok((2024, 7)));
        assert_eq!(parse_month("2024-13"), Err(InvalidMonth));
        assert_eq!(parse_month("2024-7"), Err(InvalidMonth));
    }
}
