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

/// Parses `yyyy-mm-ddThh:mm:ssZ` (a real date and time of day, UTC), the form API filters
/// take times in.
pub fn parse_utc_seconds(
    field: &str,
    raw: &str,
) -> Result<OffsetDateTime, crate::field::FieldError> {
    time::PrimitiveDateTime::parse(raw, SECONDS)
        .map(time::PrimitiveDateTime::assume_utc)
        .map_err(|_| {
            crate::field::FieldError::new(field, "must be a UTC time, yyyy-mm-ddThh:mm:ssZ")
        })
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
    fn parses_utc_seconds() {
        assert_eq!(
            parse_utc_seconds("since", "2026-02-28T23:59:59Z").unwrap(),
            datetime!(2026-02-28 23:59:59 UTC)
        );
        assert!(parse_utc_seconds("since", "2000-02-29T00:00:00Z").is_ok());
        for bad in [
            "",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.000Z",
            "2026-01-01 00:00:00Z",
        ] {
            let e = parse_utc_seconds("since", bad).unwrap_err();
            assert!(e.to_string().starts_with("since: "), "{bad:?}");
        }
    }

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
