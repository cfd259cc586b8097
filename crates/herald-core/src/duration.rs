//! Durations as settings, flags and API fields write them: `500ms`, `5s`, `2m`, `1h`, `30d`.
//!
//! The grammar is humantime's (so `1h 30m` and `2min` read too); this module adds the field
//! name to every refusal and the ten-year bound every setting shares.

use std::time::Duration;

use crate::field::FieldError;

/// The longest duration any setting may hold: ten years. Every time Herald computes from a
/// setting (now + a delay, now − the retention) stays far inside what a date can hold.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A duration of at most [`MAX_SETTING_DURATION`]; errors name `field` and the rule.
pub fn parse_duration(field: &str, raw: &str) -> Result<Duration, FieldError> {
    let raw = raw.trim();
    // humantime's own message lists every unit it knows (weeks, months, `nsec`, …); a
    // reader is told only the forms the docs use.
    let duration = humantime::parse_duration(raw).map_err(|_| {
        FieldError::new(
            field,
            format!("{raw:?} is not a duration: write a number and a unit, like 500ms, 5s, 2m, 1h or 30d"),
        )
    })?;
    if duration > MAX_SETTING_DURATION {
        return Err(FieldError::new(
            field,
            format!("{raw:?} is longer than 10 years"),
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_units_and_names_the_field_when_it_cannot() {
        for (raw, secs) in [("500ms", 0.5), ("5s", 5.0), (" 2m", 120.0), ("1h", 3600.0)] {
            assert_eq!(
                parse_duration("f", raw).unwrap().as_secs_f64(),
                secs,
                "{raw}"
            );
        }
        assert_eq!(
            parse_duration("f", "30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("f", "1h 30m").unwrap(),
            Duration::from_secs(5400)
        );
        for bad in ["", "5", "5x", "-1s", "s", "3651d", "18446744073709551615ms"] {
            let err = parse_duration("HERALD_X", bad).unwrap_err();
            assert_eq!(err.field, "HERALD_X", "{bad:?}");
            if bad != "3651d" {
                assert!(
                    err.rule.contains("500ms, 5s, 2m, 1h or 30d")
                        && !err.rule.contains("weeks")
                        && !err.rule.contains("nsec"),
                    "{bad:?}: {}",
                    err.rule
                );
            }
        }
    }
}
