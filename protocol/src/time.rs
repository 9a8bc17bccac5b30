//! Time as plain values: the protocol never reads a clock.
//!
//! [`Timestamp`] is milliseconds since the Unix epoch (UTC); [`Date`] is a civil date counted in
//! days since 1970-01-01. Both come in from the driver.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Milliseconds in one day.
pub const DAY_MS: u64 = 86_400_000;

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }
    pub fn as_millis(self) -> u64 {
        self.0
    }
    /// The UTC date this instant falls on.
    pub fn date(self) -> Date {
        Date((self.0 / DAY_MS).min(i32::MAX as u64) as i32)
    }
    pub fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
    pub fn minus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }
    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms_of_day = self.0 % DAY_MS;
        let (h, m, s) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60);
        write!(f, "{}T{h:02}:{m:02}:{s:02}Z", self.date())
    }
}

/// A civil date (UTC), as days since 1970-01-01. Decoding checks it is within the years
/// 1900–2200, the range [`Date::from_ymd`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct Date(pub i32);

impl TryFrom<i32> for Date {
    type Error = DateError;
    fn try_from(days: i32) -> Result<Date, DateError> {
        let (first, last) = (days_from_civil(1900, 1, 1), days_from_civil(2200, 12, 31));
        if !(first..=last).contains(&days) {
            return Err(DateError::NoSuchDay);
        }
        Ok(Date(days))
    }
}

impl From<Date> for i32 {
    fn from(d: Date) -> i32 {
        d.0
    }
}

/// Why a date string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    /// The text is not of the form YYYY-MM-DD.
    #[error("date must be written YYYY-MM-DD")]
    Format,
    /// The month or day is out of range for that year.
    #[error("no such day in the calendar")]
    NoSuchDay,
}

impl Date {
    /// The date `y-m-d`, if it exists.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Result<Date, DateError> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || !(1900..=2200).contains(&y) {
            return Err(DateError::NoSuchDay);
        }
        Ok(Date(days_from_civil(y, m, d)))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Date, DateError> {
        let b = text.trim().as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(DateError::Format);
        }
        let num = |r: std::ops::Range<usize>| -> Result<u32, DateError> {
            let s = std::str::from_utf8(&b[r]).map_err(|_| DateError::Format)?;
            if !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(DateError::Format);
            }
            s.parse().map_err(|_| DateError::Format)
        };
        Date::from_ymd(num(0..4)? as i32, num(5..7)?, num(8..10)?)
    }

    pub fn plus_days(self, days: i32) -> Date {
        Date(self.0.saturating_add(days))
    }

    /// Midnight UTC at the start of this date (dates before 1970 give zero).
    pub fn start(self) -> Timestamp {
        Timestamp((self.0.max(0) as u64) * DAY_MS)
    }

    /// (year, month, day).
    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(self.0)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days, proleptic Gregorian calendar.
fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = i64::from(z) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_text_and_days() {
        for text in ["1970-01-01", "2000-02-29", "2026-11-24", "2099-12-31"] {
            assert_eq!(Date::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Date::parse("1970-01-02").unwrap(), Date(1));
        assert_eq!(Date::parse("2026-11-24").unwrap().start().date(), Date::parse("2026-11-24").unwrap());
    }

    #[test]
    fn impossible_or_malformed_dates_are_refused() {
        assert_eq!(Date::parse("2025-02-29"), Err(DateError::NoSuchDay));
        assert_eq!(Date::parse("2025-13-01"), Err(DateError::NoSuchDay));
        assert_eq!(Date::parse("25-01-01"), Err(DateError::Format));
        assert_eq!(Date::parse("2025/01/01"), Err(DateError::Format));
        assert_eq!(Date::parse("2025-0a-01"), Err(DateError::Format));
    }

    #[test]
    fn extreme_values_print_without_panicking_and_decode_checks_the_range() {
        let _ = Timestamp(u64::MAX).to_string();
        let _ = Date(i32::MAX).to_string();
        let _ = Date(i32::MIN).to_string();
        assert!(Date::try_from(i32::MAX).is_err());
        assert_eq!(Date::try_from(20_000), Ok(Date(20_000)));
    }

    #[test]
    fn timestamps_print_as_utc() {
        let t = Date::parse("2026-11-24").unwrap().start().plus_ms(3_723_000);
        assert_eq!(t.to_string(), "2026-11-24T01:02:03Z");
    }
}
