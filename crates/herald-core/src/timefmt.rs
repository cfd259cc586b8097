//! The UTC timestamp formats the documented APIs use.

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const SECONDS: &[FormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
const MILLIS: &[FormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
/// Also the parse format of [`crate::sdk_auth`]'s `X-Sdk-Date`.
pub(crate) const BASIC: &[FormatItem<'_>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// `at` in UTC written as `format`. Formatting fails only for components a value lacks
/// (an offset of a date without one) or a failing writer; an `OffsetDateTime` has every
/// component these formats name, written to a `String`, so this cannot fail.
fn utc(at: OffsetDateTime, format: &[FormatItem<'_>]) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(format)
        .unwrap_or_default()
}

/// `yyyy-mm-ddThh:mm:ssZ`, as Live configs show `create_time` and `update_time`.
pub fn utc_seconds(at: OffsetDateTime) -> String {
    utc(at, SECONDS)
}

/// `yyyy-mm-ddThh:mm:ss.mmmZ`, for the delivery log and RTC `update_time`.
pub fn utc_millis(at: OffsetDateTime) -> String {
    utc(at, MILLIS)
}

/// `yyyymmddThhmmssZ`, the `X-Sdk-Date` format of the SDK signature.
pub fn utc_basic(at: OffsetDateTime) -> String {
    utc(at, BASIC)
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
        assert_eq!(
            utc_millis(datetime!(2026-11-22 10:30:00.0459 UTC)),
            "2026-11-22T10:30:00.045Z"
        );
    }

    #[test]
    fn unix_ms_round_trips() {
        let at = datetime!(2026-11-22 10:30:00.123 UTC);
        assert_eq!(from_unix_ms(unix_ms(at)), at);
    }
}
