//! The wall clock, in the forms the reports need: a UTC calendar date (known-issue expiry,
//! measurement labels), an RFC 3339 timestamp and epoch seconds (KCIDB). No date crate: the
//! civil-date conversion is a dozen lines.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, as RFC 3339 UTC.
pub fn rfc3339_now() -> String {
    let secs = unix_now();
    let d = Date::from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!("{d}T{:02}:{:02}:{:02}Z", s / 3600, (s / 60) % 60, s % 60)
}

/// A calendar date (UTC), enough for expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// Today in UTC, from the system clock.
    pub fn today() -> Date {
        Date::from_days((unix_now() / 86_400) as i64)
    }

    /// The civil date `days` after 1970-01-01 (Howard Hinnant's algorithm).
    pub fn from_days(days: i64) -> Date {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Date { year, month, day }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_come_from_days_since_the_epoch() {
        assert_eq!(Date::from_days(0).to_string(), "1970-01-01");
        assert_eq!(Date::from_days(20_787).to_string(), "2026-11-30");
        assert_eq!(Date::from_days(11_016).to_string(), "2000-02-29");
        assert!(
            Date {
                year: 2026,
                month: 12,
                day: 1
            } > Date {
                year: 2026,
                month: 11,
                day: 30
            }
        );
    }

    #[test]
    fn rfc3339_has_the_date_and_a_utc_time() {
        let t = rfc3339_now();
        assert!(t.starts_with(&Date::today().to_string()), "{t}");
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
    }
}
