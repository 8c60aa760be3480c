//! Wall-clock time as the APIs report it: Unix seconds, and A1111's `YYYYMMDDhhmmss` job timestamps (UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `seconds` since the epoch as A1111's `YYYYMMDDhhmmss`, in UTC.
pub fn a1111_timestamp(seconds: f64) -> String {
    let total = seconds.max(0.0) as i64;
    let (days, rest) = (total.div_euclid(86_400), total.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::a1111_timestamp;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(a1111_timestamp(0.0), "19700101000000");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(a1111_timestamp(1_709_210_096.0), "20240229123456");
        assert_eq!(a1111_timestamp(951_782_400.0), "20000229000000");
    }
}
