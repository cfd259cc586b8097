//! The UTC timestamp formats the documented APIs use.

use time::{OffsetDateTime, UtcOffset};

/// `yyyy-mm-ddThh:mm:ssZ`, as Live configs show `create_time` and `update_time`.
pub fn utc_seconds(at: OffsetDateTime) -> String {
    utc_with_separators(at, "-", ":")
}

/// `yyyy-mm-ddThh:mm:ss.mmmZ`, for the delivery log and RTC `update_time`.
pub fn utc_millis(at: OffsetDateTime) -> String {
    let seconds = utc_seconds(at);
    let ms = at.millisecond();
    format!("{}.{ms:03}Z", seconds.trim_end_matches('Z'))
}

/// `yyyymmddThhmmssZ`, the `X-Sdk-Date` format of the SDK signature.
pub fn utc_basic(at: OffsetDateTime) -> String {
    utc_with_separators(at, "", "")
}

fn utc_with_separators(at: OffsetDateTime, date_sep: &str, time_sep: &str) -> String {
    let t = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}{date_sep}{:02}{date_sep}{:02}T{:02}{time_sep}{:02}{time_sep}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Milliseconds since the Unix epoch, the resolution timestamps are stored at.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`unix_ms`]; out-of-range values (corrupt rows) clamp to the epoch.
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_like_the_seeds() {
        assert_eq!(
            utc_seconds(datetime!(2020-03-08 14:10:25.999 +02:00)),
            "2020-03-08T12:10:25Z"
        );
        assert_eq!(
            utc_basic(datetime!(2026-11-22 10:30:00 UTC)),
            "20261122T103000Z"
        );
    }

    #[test]
    fn unix_ms_round_trips() {
        let at = datetime!(2026-11-22 10:30:00.123 UTC);
        assert_eq!(from_unix_ms(unix_ms(at)), at);
    }
}
