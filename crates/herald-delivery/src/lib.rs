//! Herald's delivery worker.
//!
//! - [`client`]: the outbound HTTP client and its target guard.
//! - [`concurrency`]: each endpoint's concurrency now (halved on 429, regained after
//!   successes).
//! - [`attempt`]: one attempt: render, sign, send, classify, decide what comes next.
//! - [`dispatcher`]: claims due deliveries within concurrency limits, runs attempts,
//!   records outcomes in batches, rescues expired leases, publishes queue metrics.
//! - [`retention`]: deletes finished history older than the operator keeps.
//! - [`tracker`]: turns the steps media servers' hooks queued into recording events.
//! - [`probe`]: reads a finished recording (where it is, ffprobe's facts).
//! - [`file_turns`]: turns to read a file, shared fairly across projects and sources.
//! - [`upload`]: a finished recording converted and stored in its source's bucket.
//! - [`bucket`]: a source's bucket: the S3 client behind the target guard, and the
//!   multipart uploads a killed process left open there.
#![forbid(unsafe_code)]

pub mod attempt;
pub mod bucket;
pub mod client;
pub mod concurrency;
pub mod dispatcher;
pub mod file_turns;
pub mod probe;
pub mod retention;
pub mod tracker;
pub mod upload;

use std::time::Duration;

use herald_core::retry::RetrySchedule;

/// How deliveries are made; validated at start-up from `HERALD_*` settings.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Delays before each attempt; its length is the number of attempts.
    pub retry_schedule: RetrySchedule,
    /// Connect plus response, per attempt.
    pub timeout: Duration,
    /// Live `auth_timestamp` = send time + this.
    pub signature_ttl: Duration,
    /// Most callbacks being sent to one endpoint (a project's callbacks to one host) at
    /// once. A worker holds up to twice this many claimed, so the next is ready when one
    /// finishes.
    pub per_endpoint_in_flight: u32,
    /// Most deliveries this process holds (sending, claimed and ready, or waiting for
    /// their outcome to be recorded).
    pub max_in_flight: u32,
    /// Most of `max_in_flight` one project may hold: the rest stays free for the others.
    pub per_project_in_flight: u32,
    /// Lets callbacks reach loopback and private addresses.
    pub allow_private_targets: bool,
    /// Longest sleep between looks at the queue when nothing wakes the worker.
    pub poll_interval: Duration,
}

/// How many of an endpoint's sending permits' worth of deliveries a worker holds for it:
/// its permits, and as many again claimed and ready, so that when a callback ends the next
/// starts at once instead of after a round trip to the store.
const CLAIM_ROUNDS: u32 = 2;

/// What a lease adds to the longest hold: rendering, signing and handing the outcome to the
/// recorder.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

impl DeliverySettings {
    /// The most deliveries a worker holds for one endpoint (see [`CLAIM_ROUNDS`]).
    pub fn endpoint_claim(&self) -> u32 {
        self.per_endpoint_in_flight.saturating_mul(CLAIM_ROUNDS)
    }

    /// The longest a claimed delivery can be held before its outcome is known. A claim
    /// leaves at most [`Self::endpoint_claim`] held for an endpoint, of which
    /// `per_endpoint_in_flight` send at once; the sending permits are handed out first come,
    /// first served. So a delivery claimed behind all the others of its endpoint waits for
    /// the senders ahead of it, each done within `timeout` (the client's deadline covers
    /// the connect, the request and the answer), and is then sent within `timeout` itself:
    /// `CLAIM_ROUNDS` timeouts in all.
    pub fn longest_hold(&self) -> Option<Duration> {
        self.timeout.checked_mul(CLAIM_ROUNDS)
    }

    /// How long a claim holds its deliveries: the longest hold plus a margin. A lease
    /// shorter than the hold would let the rescuer take back a delivery that is still
    /// waiting or sending, count a false attempt and send it a second time; a worker that
    /// dies loses its leases after this.
    pub fn lease(&self) -> Duration {
        self.longest_hold()
            .and_then(|hold| hold.checked_add(LEASE_MARGIN))
            .unwrap_or(Duration::MAX)
    }

    /// Checks at start-up that the settings allow a lease that covers the longest hold,
    /// and says what it is; an error names the setting that makes it impossible.
    pub fn check(&self) -> Result<String, String> {
        let hold = self.longest_hold().filter(|hold| {
            hold.checked_add(LEASE_MARGIN)
                .is_some_and(|lease| time::Duration::try_from(lease).is_ok())
        });
        match hold {
            Some(_) => Ok(format!(
                "a claimed delivery is leased for {:?}: {CLAIM_ROUNDS} x the delivery timeout \
                 ({:?}; a wait for one of the endpoint's {} sending permits, then the send) + {:?}",
                self.lease(),
                self.timeout,
                self.per_endpoint_in_flight,
                LEASE_MARGIN
            )),
            None => Err(format!(
                "{:?} is too long: a claimed delivery is leased for {CLAIM_ROUNDS} x the delivery \
                 timeout + {LEASE_MARGIN:?}",
                self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(timeout: Duration) -> DeliverySettings {
        DeliverySettings {
            retry_schedule: RetrySchedule::default(),
            timeout,
            signature_ttl: Duration::from_secs(600),
            per_endpoint_in_flight: 2,
            max_in_flight: 8,
            per_project_in_flight: 4,
            allow_private_targets: false,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// The lease covers a wait for a permit behind a full round of the endpoint's callbacks
    /// and the delivery's own send, whatever the timeout.
    #[test]
    fn the_lease_covers_the_longest_hold() {
        for secs in [1, 5, 10, 22, 30, 300] {
            let s = settings(Duration::from_secs(secs));
            assert!(s.lease() > Duration::from_secs(2 * secs), "{secs}");
            assert!(s.check().is_ok());
        }
        assert!(settings(Duration::MAX).check().is_err());
    }
}
