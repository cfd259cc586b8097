//! The delivery queue's types at the store boundary, shared by every backend.

use std::collections::HashMap;

use herald_core::config::rtc::AuthKey;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::project::ProjectId;
use herald_core::signing::LiveSigning;
use time::OffsetDateTime;

use crate::state::{self, DeliveryState, StateList};

/// What acceptance answered for one event; a repeated `event_id` gets the first answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    pub deliveries: u32,
}

/// A claim's lease: who holds the claimed deliveries, and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: String,
    pub expires_at: OffsetDateTime,
}

/// How much a claim may take: in all, per endpoint and per project, given what is already
/// in flight.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits<'a> {
    /// Most deliveries to lease in this claim.
    pub total: usize,
    /// Most deliveries the worker may hold for one endpoint.
    pub per_endpoint: u32,
    /// Deliveries the worker holds (sending, or claimed and waiting to send), by
    /// endpoint; endpoints not listed have none.
    pub in_flight: &'a HashMap<String, u32>,
    /// Most deliveries the worker may hold for one project: its share of the worker, so
    /// that one project whose receivers hang cannot take all of it and starve the others.
    pub per_project: u32,
    /// Deliveries the worker holds by project; projects not listed have none.
    pub project_in_flight: &'a HashMap<String, u32>,
    /// Most followers ([`ClaimedDelivery::followers`]) to lease behind one due delivery;
    /// 0 for none. A store may lease fewer (PostgreSQL leases none).
    pub followers: usize,
}

impl ClaimLimits<'_> {
    /// The room `endpoint` has left in this claim, before what the claim itself takes.
    pub(crate) fn room_of(&self, endpoint: &str) -> u32 {
        let held = self.in_flight.get(endpoint).copied().unwrap_or(0);
        self.per_endpoint.saturating_sub(held)
    }

    /// The room `project` has left in this claim, before what the claim itself takes.
    pub(crate) fn project_room_of(&self, project: &str) -> u32 {
        let held = self.project_in_flight.get(project).copied().unwrap_or(0);
        self.per_project.saturating_sub(held)
    }

    /// The room each project with deliveries in flight has left, as a JSON object of
    /// project to count (projects not in it have the full `per_project`).
    pub(crate) fn project_room_json(&self) -> String {
        let room: HashMap<&str, u32> = self
            .project_in_flight
            .keys()
            .map(|project| (project.as_str(), self.project_room_of(project)))
            .collect();
        // Serialising strings and numbers cannot fail.
        serde_json::to_string(&room).unwrap_or_else(|_| "{}".into())
    }

    /// The room each endpoint with deliveries in flight has left, as a JSON object of
    /// endpoint to count (a claim's query parameter; endpoints not in it have the full
    /// `per_endpoint`).
    pub(crate) fn room_json(&self) -> String {
        let room: HashMap<&str, u32> = self
            .in_flight
            .keys()
            .map(|endpoint| (endpoint.as_str(), self.room_of(endpoint)))
            .collect();
        // Serialising strings and numbers cannot fail.
        serde_json::to_string(&room).unwrap_or_else(|_| "{}".into())
    }

    /// `total` as an SQL integer.
    pub(crate) fn total_sql(&self) -> i64 {
        i64::try_from(self.total).unwrap_or(i64::MAX)
    }
}

/// The project part of an endpoint key (`{project} {host}`, see
/// `herald_core::config::callback_url::CallbackUrl::endpoint`); empty for a key written
/// before keys named their project, which then counts towards no project's share. The
/// embedded store's claim computes the same in SQL from its due index.
pub(crate) fn endpoint_project(endpoint: &str) -> &str {
    endpoint.split_once(' ').map_or("", |(project, _)| project)
}

/// A delivery handed to a worker: everything needed to render, sign and send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub project_id: ProjectId,
    pub event_id: String,
    pub config_id: String,
    pub endpoint: String,
    pub url: String,
    /// The number of this attempt, 1 for the first (the `Herald-Delivery-Attempt` header).
    pub attempt: u32,
    pub notification: Notification,
    /// The next deliveries of the same stream (config and stream), oldest first, leased
    /// with this one: each goes out as soon as the one before it succeeded, without a
    /// round trip through the store, and is handed back unsent
    /// ([`AfterAttempt::NotSent`]) when one before it fails or its lease has no time left
    /// for a send. A stream's rate is then bounded by its receiver rather than by the
    /// store's commits. Only the embedded store leases followers; they count towards the
    /// claim's `total` and their project's share, not towards their endpoint's room (a
    /// stream sends one at a time).
    pub followers: Vec<ClaimedDelivery>,
}

/// What a delivery sends, by flavour, with the key it is signed with (if any) as it was
/// when the event was accepted.
#[derive(Debug, Clone)]
pub enum Notification {
    Live {
        event: LiveEvent,
        signing: Option<LiveSigning>,
    },
    Rtc {
        app_id: String,
        event: RtcEvent,
        auth_key: Option<AuthKey>,
    },
}

/// One attempt as the delivery log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: OffsetDateTime,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// The first bytes of the receiver's answer.
    pub response_head: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Succeeded,
    RetryAt(OffsetDateTime),
    Dead,
    /// Not attempted: a follower ([`ClaimedDelivery::followers`]) handed back because a
    /// delivery before it in its stream did not succeed, or its lease had no time left.
    /// Its lease ends and its row stays as it was; no attempt is recorded.
    NotSent,
}

/// The outcome of one attempt, applied only if the lease it was made under still holds.
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery_id: i64,
    pub attempt: u32,
    pub lease_owner: String,
    pub record: AttemptRecord,
    pub next: AfterAttempt,
}

impl Completion {
    /// A follower handed back unsent ([`AfterAttempt::NotSent`]) at `at`.
    pub fn not_sent(delivery: &ClaimedDelivery, lease_owner: &str, at: OffsetDateTime) -> Self {
        Self {
            delivery_id: delivery.id,
            attempt: delivery.attempt,
            lease_owner: lease_owner.to_owned(),
            record: AttemptRecord {
                at,
                status_code: None,
                error: None,
                latency_ms: 0,
                response_head: None,
            },
            next: AfterAttempt::NotSent,
        }
    }

    /// This attempt's outcome replaced by the end of its delivery, for `reason`: what is
    /// recorded when the outcome itself cannot be, so that the delivery is not sent again
    /// and again. The reason is kept in the attempt, for the delivery log.
    pub fn ended_because(&self, reason: &str) -> Self {
        Self {
            delivery_id: self.delivery_id,
            attempt: self.attempt,
            lease_owner: self.lease_owner.clone(),
            record: AttemptRecord {
                at: self.record.at,
                status_code: self.record.status_code,
                error: Some(reason.replace('\0', "")),
                latency_ms: self.record.latency_ms,
                response_head: None,
            },
            next: AfterAttempt::Dead,
        }
    }
}

/// A delivery's status as the log API names it (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not yet tried, in flight, or waiting behind an earlier callback of its stream.
    Pending,
    Succeeded,
    /// Failed at least once and waiting for its next attempt.
    Failed,
    /// Out of attempts; kept for a manual retry.
    Dead,
    /// Its config was deleted before it went out.
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Succeeded,
            Self::Failed,
            Self::Dead,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// The queue states a status covers.
    pub(crate) fn states(self) -> StateList {
        match self {
            Self::Pending => StateList(&[
                DeliveryState::Blocked,
                DeliveryState::Pending,
                DeliveryState::Running,
            ]),
            Self::Succeeded => StateList(&[DeliveryState::Succeeded]),
            Self::Failed => StateList(&[DeliveryState::Retrying]),
            Self::Dead => StateList(&[DeliveryState::Dead]),
            Self::Cancelled => StateList(&[DeliveryState::Cancelled]),
        }
    }
}

/// The delivery log counts matches up to this many: a page costs the same with a week of
/// history as with an hour of it, where an exact count would read every delivery of the
/// project on every page.
pub const MOST_COUNTED_DELIVERIES: u64 = 10_000;

/// The delivery log's filters as the conditions they add to a query of `deliveries d`, the
/// same on every backend: by event through the event's id index (never by scanning the
/// project's history), by state through a literal list (the states are Herald's own
/// names), on the failing states' index where it applies. `$1` is the project, `$2` the
/// event id, bound whether or not it is set.
pub(crate) fn delivery_log_where(filter: &DeliveryFilter) -> String {
    let by_event = if filter.event_id.is_some() {
        "d.event_seq = (SELECT seq FROM events WHERE project_id = $1 AND event_id = $2)"
    } else {
        "CAST($2 AS TEXT) IS NULL"
    };
    let by_state = filter.status.map(state_term).unwrap_or_default();
    format!("WHERE d.project_id = $1 AND {by_event}{by_state}")
}

/// The condition on `d.state` that selects `status`. On failing states only, the partial
/// index's own term follows the status's, for SQLite to read `deliveries_failing_by_project`
/// (it keeps no statistics, and without the term read the project's whole history by id:
/// 0.7 ms became 401 ms at 1M); the other way round, it sorted the status's deliveries by
/// id rather than read them from the index in id order.
fn state_term(status: DeliveryStatus) -> String {
    let states = status.states();
    if is_failing(status) {
        format!(" AND d.state IN {states} AND d.state IN {}", state::FAILING)
    } else {
        format!(" AND d.state IN {states}")
    }
}

/// Whether the log's `filter` asks for failing states only, which the partial index
/// `deliveries_failing_by_project` holds.
pub(crate) fn failing_only(filter: &DeliveryFilter) -> bool {
    filter.status.is_some_and(is_failing)
}

fn is_failing(status: DeliveryStatus) -> bool {
    status
        .states()
        .0
        .iter()
        .all(|s| state::FAILING.contains(*s))
}

/// Most deliveries one bulk retry re-queues: a request's work stays bounded, and a larger
/// set is queued by repeating it ([`BulkRetried::more`]).
pub const BULK_RETRY_MOST: usize = 500;

/// The deliveries a bulk retry re-queues (SPEC §6): dead ones, or failed ones waiting for a
/// later retry, narrowed by the log's filters.
#[derive(Debug, Clone)]
pub struct RetryFilter {
    /// `Dead` or `Failed`.
    pub status: DeliveryStatus,
    /// Live events of this ingest domain (case-insensitive).
    pub publish_domain: Option<String>,
    /// Live events of this app.
    pub app: Option<String>,
    /// RTC deliveries of this app.
    pub app_id: Option<String>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created before.
    pub until: Option<OffsetDateTime>,
}

/// What a bulk retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRetried {
    pub queued: u64,
    /// More deliveries matched than one request re-queues: repeating it queues the rest.
    pub more: bool,
}

/// The query of a bulk retry's candidates, oldest first (so each stream's come back in
/// their order), [`BULK_RETRY_MOST`] + 1 of them; `json_text(field)` is the backend's
/// expression for a text field of the event's payload `e.payload`. Binds: $1 project,
/// $2 since ms, $3 until ms, $4 publish_domain, $5 app, $6 app_id, $7 now ms, $8 limit.
/// A failed delivery already due (re-queued by a repeat of the request) is not one: that is
/// what makes a repeat queue nothing twice.
pub(crate) fn bulk_retry_candidates(
    status: DeliveryStatus,
    json_text: impl Fn(&str) -> String,
) -> String {
    format!(
        "SELECT d.id FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.project_id = $1{by_state} \
         AND (d.state <> '{retrying}' OR d.next_attempt_at_ms > $7) \
         AND (CAST($2 AS BIGINT) IS NULL OR d.created_at_ms >= $2) \
         AND (CAST($3 AS BIGINT) IS NULL OR d.created_at_ms < $3) \
         AND (CAST($4 AS TEXT) IS NULL OR (e.flavour = 'live' AND lower({domain}) = lower($4))) \
         AND (CAST($5 AS TEXT) IS NULL OR (e.flavour = 'live' AND {app} = $5)) \
         AND (CAST($6 AS TEXT) IS NULL OR (e.flavour = 'rtc' AND d.config_id = $6)) \
         AND {target} ORDER BY d.id LIMIT $8",
        by_state = state_term(status),
        retrying = DeliveryState::Retrying,
        domain = json_text("publish_domain"),
        app = json_text("app"),
        target = crate::outcomes::TARGET_EXISTS,
    )
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<String>,
}

/// A delivery as the log API shows it.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: String,
    pub config_id: String,
    pub url: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub created_at: OffsetDateTime,
    /// When the next attempt is due; `None` once the delivery is finished.
    pub next_attempt_at: Option<OffsetDateTime>,
    pub attempts: Vec<AttemptRecord>,
}

/// The answer to a manual retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    Requeued,
    NotFound,
    /// Only dead and failed deliveries can be retried by hand.
    NotRetryable(DeliveryStatus),
    /// Its config was deleted: there is nobody to send it to any more.
    ConfigDeleted,
}

/// One endpoint's recent attempts (SPEC §6 endpoint health), by endpoint key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointAttempts {
    /// `{project} {host}` (see `CallbackUrl::endpoint`).
    pub endpoint: String,
    /// Attempts recorded since the window began.
    pub attempts: u64,
    /// Of those, the ones answered 2xx.
    pub successes: u64,
    /// The latest failed attempt's error since the error window began, and when.
    pub last_error: Option<(String, OffsetDateTime)>,
}

/// Queue depth by state and the age of the oldest due delivery, for metrics.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub by_state: Vec<(String, u64)>,
    pub oldest_due_at: Option<OffsetDateTime>,
}
