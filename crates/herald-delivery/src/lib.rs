//! Herald's delivery worker.
//!
//! - [`client`]: the outbound HTTP client and its target guard.
//! - [`attempt`]: one attempt: render, sign, send, classify, decide what comes next.
//! - [`dispatcher`]: claims due deliveries within concurrency limits, runs attempts,
//!   records outcomes in batches, rescues expired leases, publishes queue metrics.
//! - [`retention`]: deletes finished history older than the operator keeps.
//! - [`tracker`]: turns the steps media servers' hooks queued into recording events.
//! - [`probe`]: reads a finished recording (where it is, ffprobe's facts).
//! - [`file_turns`]: turns to read a file, shared fairly across projects and sources.
#![forbid(unsafe_code)]

pub mod attempt;
pub mod client;
pub mod dispatcher;
pub mod file_turns;
pub mod probe;
pub mod retention;
pub mod tracker;

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
    /// Most callbacks being sent to one endpoint (scheme, host and port) at once. A
    /// worker holds up to twice this many claimed, so the next is ready when one finishes.
    pub per_endpoint_in_flight: u32,
    /// Most deliveries this process holds (sending or claimed and ready).
    pub max_in_flight: u32,
    /// Lets callbacks reach loopback and private addresses.
    pub allow_private_targets: bool,
    /// Longest sleep between looks at the queue when nothing wakes the worker.
    pub poll_interval: Duration,
}

impl DeliverySettings {
    /// How long a claim holds its deliveries: an attempt can take `timeout`, and the
    /// margin covers recording the outcome. A worker that dies loses its leases after this.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(10)
    }
}
