//! The retry policy: a pure function of (attempts made, outcome, now) with jitter.

use std::time::Duration;

use crate::duration::parse_duration;
use crate::field::FieldError;

/// Delays before each attempt; its length is the number of attempts (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// 0s, 5s, 30s, 2m, 10m, 30m, 1h, 3h, 6h, 12h: ten attempts over about 23 hours.
    fn default() -> Self {
        let secs = [
            0,
            5,
            30,
            120,
            600,
            1800,
            3600,
            3 * 3600,
            6 * 3600,
            12 * 3600,
        ];
        Self(secs.into_iter().map(Duration::from_secs).collect())
    }
}

impl RetrySchedule {
    /// A comma-separated list of at least one delay: `0s,5s,30s,2m`.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let delays = raw
            .split(',')
            .map(|d| parse_duration(field, d))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err(FieldError::new(field, "must list at least one delay"));
        }
        Ok(Self(delays))
    }

    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    /// After `attempts_made` failed attempts, how long until the next one, or `None` when
    /// the delivery is dead. `jitter` in [0, 1) spreads retries by up to ±10% so that
    /// many deliveries failing together do not all come back in the same instant.
    pub fn next_delay(&self, attempts_made: u32, jitter: f64) -> Option<Duration> {
        let base = *self.0.get(usize::try_from(attempts_made).ok()?)?;
        let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
        Some(base.mul_f64(factor))
    }

    /// The longest delay of the schedule: how far a receiver's `Retry-After` may push a
    /// retry.
    pub fn longest(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    /// After `attempts_made` attempts, the last answered with `Retry-After: asked`: the
    /// receiver's delay instead of the schedule's, at most [`Self::longest`], or `None`
    /// when the delivery is dead. The answer counted as one attempt, as any failure does,
    /// and no more.
    pub fn delay_asked_for(&self, attempts_made: u32, asked: Duration) -> Option<Duration> {
        self.next_delay(attempts_made, 0.5)?;
        Some(asked.min(self.longest()))
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP date, as the delay
/// from `now` (zero for a date already past). `None` for anything else.
pub fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long delays are capped by the schedule; saturate rather than refuse.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_form() {
        let s = RetrySchedule::parse("schedule", "0s,5s, 30s,2m,1h,500ms").unwrap();
        assert_eq!(s.attempts(), 6);
        assert_eq!(s.next_delay(3, 0.5), Some(Duration::from_secs(120)));
        for bad in [
            "",
            "5",
            "5x",
            "-1s",
            "1s,,2s",
            "s",
            "3651d",
            "18446744073709551615ms",
        ] {
            assert!(RetrySchedule::parse("schedule", bad).is_err(), "{bad:?}");
        }
        assert_eq!(RetrySchedule::default().attempts(), 10);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = time::macros::datetime!(2026-12-06 10:00:00 UTC);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "2026-12-06T10:00:30Z"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        let schedule = RetrySchedule::parse("s", "0s,5s,1m").unwrap();
        assert_eq!(
            schedule.delay_asked_for(1, Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            schedule.delay_asked_for(1, Duration::from_secs(3600)),
            Some(Duration::from_secs(60))
        );
        assert_eq!(schedule.delay_asked_for(3, Duration::from_secs(2)), None);
    }

    proptest! {
        #[test]
        fn delays_stay_within_ten_percent_and_end_when_attempts_run_out(
            secs in proptest::collection::vec(0u64..100_000, 1..12),
            attempts in 0u32..15,
            jitter in 0.0f64..1.0,
        ) {
            let schedule = RetrySchedule(secs.iter().copied().map(Duration::from_secs).collect());
            match schedule.next_delay(attempts, jitter) {
                None => prop_assert!(attempts as usize >= secs.len()),
                Some(d) => {
                    let base = Duration::from_secs(secs[attempts as usize]);
                    prop_assert!(d >= base.mul_f64(0.9) && d <= base.mul_f64(1.1));
                }
            }
        }
    }
}
