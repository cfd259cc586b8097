//! The queue's history read back for bulk retries and replays: which deliveries a bulk
//! retry re-queues, which events a replay sends where (its plan), and the SQL that reads
//! them, the same on every backend, written once, generic over the backend's database
//! (see [`crate::backend`]). Each backend's delivery queue then does what differs:
//! re-queueing under its own locks, inserting the replayed deliveries its own way.

use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::matching::{MatchCandidate, select_config, select_rtc_callback};
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};
use time::OffsetDateTime;

use crate::StoreError;
use crate::accept::{Accepting, Flavour};
use crate::backend::SqlBackend;
use crate::deliveries::{RetryFilter, bulk_retry_candidates};
use crate::rows::CorruptRow;

/// The deliveries a bulk retry re-queues, oldest first, at most `limit`
/// ([`crate::DeliveryQueue::bulk_retry_ids`]).
pub(crate) async fn bulk_retry_ids<B>(
    store: &B,
    project: &ProjectId,
    filter: &RetryFilter,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Vec<i64>, StoreError>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db> + Type<B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    Ok(
        sqlx::query_scalar(&bulk_retry_candidates(filter.status, B::payload_text))
            .bind(project.as_str())
            .bind(filter.since.map(unix_ms))
            .bind(filter.until.map(unix_ms))
            .bind(filter.publish_domain.as_deref())
            .bind(filter.app.as_deref())
            .bind(filter.app_id.as_deref())
            .bind(unix_ms(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(store.pool())
            .await?,
    )
}

/// The project's retained events of `flavour` accepted in `[since, until)`, in acceptance
/// order, read on `conn` (inside the replay's transaction); `None` when there are more
/// than [`REPLAY_MOST`].
pub(crate) async fn replay_events<B>(
    conn: &mut <B::Db as Database>::Connection,
    project: &ProjectId,
    flavour: Flavour,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Option<Vec<StoredEvent>>, StoreError>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    (i64, String, String): for<'r> sqlx::FromRow<'r, <B::Db as Database>::Row>,
{
    let rows: Vec<(i64, String, String)> = sqlx::query_as(REPLAY_EVENTS)
        .bind(project.as_str())
        .bind(flavour.name())
        .bind(unix_ms(since))
        .bind(unix_ms(until))
        .bind(i64::try_from(REPLAY_MOST + 1).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() > REPLAY_MOST {
        return Ok(None);
    }
    rows.into_iter()
        .map(|(seq, id, payload)| StoredEvent::new(seq, &id, payload))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Most events one replay may cover: a request's work stays bounded; a longer range is
/// replayed in parts.
pub const REPLAY_MOST: usize = 10_000;

/// A replay's target: a Live config, or an RTC app's record callback.
#[derive(Debug, Clone)]
pub enum ReplayTarget {
    Live(String),
    Rtc(herald_core::config::rtc::AppId),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// New deliveries created.
    Queued(u64),
    /// No such config or app (in this project).
    NotFound,
    /// The range holds more than [`REPLAY_MOST`] events.
    TooMany,
}

/// A retained event read back for a replay.
pub(crate) struct StoredEvent {
    pub seq: i64,
    pub id: EventId,
    pub payload: String,
    /// Filled in by [`ReplayPlan::matching`].
    pub stream: String,
}

impl StoredEvent {
    pub fn new(seq: i64, id: &str, payload: String) -> Result<Self, StoreError> {
        let id = EventId::parse("event_id", id).map_err(|e| CorruptRow {
            table: "events",
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            seq,
            id,
            payload,
            stream: String::new(),
        })
    }
}

/// Which events a replay sends where: the target's matching rules as they are now.
pub(crate) enum ReplayPlan {
    Live(herald_core::config::live::LiveCallbackConfig),
    Rtc(crate::RtcApp),
}

impl ReplayPlan {
    pub fn flavour(&self) -> Flavour {
        match self {
            Self::Live(_) => Flavour::Live,
            Self::Rtc(_) => Flavour::Rtc,
        }
    }

    /// The events the target matches now (a Live config: its domain, its app or `*`, its
    /// subscription and a URL; an app: its record callback's subscription), each with its
    /// stream filled in, in the order given.
    pub fn matching(&self, events: Vec<StoredEvent>) -> Result<Vec<StoredEvent>, StoreError> {
        let mut kept = Vec::new();
        for mut e in events {
            let value: serde_json::Value =
                serde_json::from_str(&e.payload).map_err(|err| CorruptRow {
                    table: "events",
                    id: e.id.as_str().to_owned(),
                    reason: err.to_string(),
                })?;
            let corrupt = |err: herald_core::field::FieldError| CorruptRow {
                table: "events",
                id: e.id.as_str().to_owned(),
                reason: err.to_string(),
            };
            let (matched, stream) = match self {
                Self::Live(config) => {
                    let event = LiveEvent::parse("", &value).map_err(corrupt)?;
                    let spec = &config.spec;
                    let candidate = MatchCandidate {
                        app: spec.app.clone(),
                        subscription: spec.subscription.clone(),
                        has_url: spec.notify_callback_url.is_some(),
                        target: (),
                    };
                    let matched = event
                        .publish_domain
                        .eq_ignore_ascii_case(spec.publish_domain.as_str())
                        && select_config(vec![candidate], &event.app, event.event_type).is_some();
                    (matched, event.stream)
                }
                Self::Rtc(app) => {
                    let event = RtcEvent::parse("", &value).map_err(corrupt)?;
                    let matched = select_rtc_callback(
                        app.callback.as_ref().map(|c| (&c.subscription, ())),
                        event.event_type,
                    )
                    .is_some();
                    (matched, event.stream_name)
                }
            };
            if matched {
                e.stream = stream;
                kept.push(e);
            }
        }
        Ok(kept)
    }

    /// The deliveries to create for the matched `events`.
    pub fn accepting<'e>(&self, events: &'e [StoredEvent]) -> Vec<Accepting<'e>> {
        let target = match self {
            Self::Live(c) => c
                .spec
                .notify_callback_url
                .as_ref()
                .map(|u| (c.id.clone(), u.as_str().to_owned())),
            Self::Rtc(a) => a
                .callback
                .as_ref()
                .map(|c| (a.app_id.as_str().to_owned(), c.url.as_str().to_owned())),
        };
        events
            .iter()
            .map(|e| Accepting {
                id: &e.id,
                payload: String::new(),
                stream: &e.stream,
                target: target.clone(),
            })
            .collect()
    }
}

/// The target's plan, or `None` when the project has no such config or app.
pub(crate) async fn replay_plan<S: crate::LiveConfigs + crate::RtcApps + Sync + ?Sized>(
    store: &S,
    project: &ProjectId,
    target: &ReplayTarget,
) -> Result<Option<ReplayPlan>, StoreError> {
    Ok(match target {
        ReplayTarget::Live(id) => store
            .get_live_config(project, id)
            .await?
            .map(ReplayPlan::Live),
        ReplayTarget::Rtc(app_id) => store
            .get_rtc_app(project, app_id)
            .await?
            .map(ReplayPlan::Rtc),
    })
}

/// The SQL of a replay's events: the project's of one flavour accepted in a range, in
/// acceptance order, one more than [`REPLAY_MOST`]. Binds: $1 project, $2 flavour,
/// $3 since ms, $4 until ms, $5 limit.
pub(crate) const REPLAY_EVENTS: &str = "SELECT seq, event_id, payload FROM events \
     WHERE project_id = $1 AND flavour = $2 AND accepted_at_ms >= $3 AND accepted_at_ms < $4 \
     ORDER BY seq LIMIT $5";
