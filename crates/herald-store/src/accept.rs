//! The backend-neutral steps of accepting events and finishing attempts: which events are
//! new, which config each goes to, which of their deliveries may go out at once and which
//! wait behind an earlier one of their stream. Backends do the reading and writing around
//! these steps, each in its own SQL.

use std::collections::{HashMap, HashSet};

use herald_core::config::callback_url::CallbackUrl;
use herald_core::config::rtc::RtcSubscription;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::matching::{MatchCandidate, select_config, select_rtc_callback};
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;

use crate::rows::{CorruptRow, Target, stored_rtc_subscription};
use crate::{Accepted, AfterAttempt, Completion, DeliveryState, StoreError};

/// SQL true when the delivery `d`'s config (Live) or app record callback (RTC) still
/// exists; a delivery whose target is gone is cancelled rather than retried. Statements
/// using it name the delivery row `d`.
pub(crate) const TARGET_EXISTS: &str = "(EXISTS (SELECT 1 FROM live_callback_configs c WHERE c.id = d.config_id) \
     OR EXISTS (SELECT 1 FROM rtc_apps a WHERE a.app_id = d.config_id AND a.callback_url IS NOT NULL))";

/// SQL: the state a rescued delivery `d` moves to. Cancelled when its target is gone; dead
/// when the attempt its worker died in (number `attempts`, an SQL expression) was its last
/// (`max_attempts` is the parameter that holds the number of attempts), so that a delivery
/// that kills its worker every time is not sent forever; else retried.
pub(crate) fn rescued_state(attempts: &str, max_attempts: &str) -> String {
    let (cancelled, dead, retrying) = (
        DeliveryState::Cancelled,
        DeliveryState::Dead,
        DeliveryState::Retrying,
    );
    format!(
        "CASE WHEN NOT {TARGET_EXISTS} THEN '{cancelled}' WHEN {attempts} >= {max_attempts} THEN '{dead}' \
         ELSE '{retrying}' END"
    )
}

/// `(config_id, stream)` of the rows an update returned whose new `state` finished them
/// (anything but `retrying`): the streams whose next delivery may go out now. Generic over
/// the backend's row type. (The embedded store finds them in SQL instead.)
pub(crate) fn finished_streams<R: sqlx::Row>(
    rows: &[R],
) -> Result<Vec<(String, String)>, sqlx::Error>
where
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    let mut finished = Vec::new();
    for row in rows {
        let state = DeliveryState::parse(row.try_get::<&str, _>("state")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if state != DeliveryState::Retrying {
            finished.push((row.try_get("config_id")?, row.try_get("stream")?));
        }
    }
    Ok(finished)
}

/// The stored answers (`event_id`, `deliveries`) of ids a project already used, as both
/// backends read them from `events`. Generic over the backend's row type.
pub(crate) fn earlier_answers_of<R: sqlx::Row>(
    rows: &[R],
) -> Result<HashMap<String, u32>, sqlx::Error>
where
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    &'static str: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("event_id")?,
                u32::try_from(r.try_get::<i64, _>("deliveries")?).unwrap_or(0),
            ))
        })
        .collect()
}

/// The flavour of an event, as `events.flavour` stores it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flavour {
    Live,
    Rtc,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Rtc => "rtc",
        }
    }
}

/// An event being accepted: its id, its stored form, its stream, and the config or app
/// whose callback it goes to (with that callback's URL), if any.
pub(crate) struct Accepting<'a> {
    pub id: &'a EventId,
    pub payload: String,
    pub stream: &'a str,
    pub target: Option<Target>,
}

impl<'a> Accepting<'a> {
    pub(crate) fn new(
        id: &'a EventId,
        fields: &serde_json::Map<String, serde_json::Value>,
        stream: &'a str,
        target: Option<Target>,
    ) -> Result<Self, StoreError> {
        let payload = serde_json::to_string(fields).map_err(|e| CorruptRow {
            table: "events",
            id: id.as_str().to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            id,
            payload,
            stream,
            target,
        })
    }

    /// How many deliveries acceptance creates for it (the answer repeated to a retry).
    pub fn deliveries(&self) -> u32 {
        u32::from(self.target.is_some())
    }
}

/// The (domain, app) pairs whose configs the new Live events need as match candidates.
pub(crate) fn live_match_keys<'e>(
    events: &'e [(EventId, LiveEvent)],
    answers: &HashMap<String, u32>,
) -> Vec<(&'e str, &'e str)> {
    let mut keys: Vec<(&str, &str)> = events
        .iter()
        .filter(|(id, _)| !answers.contains_key(id.as_str()))
        .map(|(_, e)| (e.publish_domain.as_str(), e.app.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Matches each new Live event (the first of any id repeated in the batch) against the
/// candidates of its (domain, app), and records its answer.
pub(crate) fn plan_live<'e>(
    events: &'e [(EventId, LiveEvent)],
    answers: &mut HashMap<String, u32>,
    candidates: &HashMap<(&str, &str), Vec<MatchCandidate<Target>>>,
) -> Result<Vec<Accepting<'e>>, StoreError> {
    let mut accepting = Vec::new();
    for (event_id, event) in events {
        if answers.contains_key(event_id.as_str()) {
            continue;
        }
        let key = (event.publish_domain.as_str(), event.app.as_str());
        let target = candidates
            .get(&key)
            .and_then(|c| select_config(c.clone(), &event.app, event.event_type));
        let a = Accepting::new(event_id, &event.fields, &event.stream, target)?;
        answers.insert(event_id.as_str().to_owned(), a.deliveries());
        accepting.push(a);
    }
    Ok(accepting)
}

/// An app's record callback as ingest reads it: where it goes and what it is sent.
pub(crate) struct RtcCallback {
    pub url: String,
    pub subscription: RtcSubscription,
}

impl RtcCallback {
    /// From `rtc_apps.callback_url` and `notify_event_subscription`; `None` without a URL.
    pub fn from_columns(
        app_id: &str,
        url: Option<String>,
        subscription: Option<&str>,
    ) -> Result<Option<Self>, CorruptRow> {
        let Some(url) = url else { return Ok(None) };
        let subscription = stored_rtc_subscription(subscription).map_err(|e| CorruptRow {
            table: "rtc_apps",
            id: app_id.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Some(Self { url, subscription }))
    }
}

/// Every new RTC event whose type the app's record callback subscribes to goes there.
pub(crate) fn plan_rtc<'e>(
    events: &'e [(EventId, RtcEvent)],
    answers: &mut HashMap<String, u32>,
    app_id: &str,
    callback: Option<&RtcCallback>,
) -> Result<Vec<Accepting<'e>>, StoreError> {
    let mut accepting = Vec::new();
    for (event_id, event) in events {
        if answers.contains_key(event_id.as_str()) {
            continue;
        }
        let target = select_rtc_callback(callback.map(|c| (&c.subscription, c)), event.event_type)
            .map(|c| (app_id.to_owned(), c.url.clone()));
        let a = Accepting::new(event_id, &event.fields, &event.stream_name, target)?;
        answers.insert(event_id.as_str().to_owned(), a.deliveries());
        accepting.push(a);
    }
    Ok(accepting)
}

/// The `[config_id, stream]` pairs the accepted events create deliveries in.
pub(crate) fn stream_pairs<'a>(accepting: &'a [Accepting<'_>]) -> Vec<[&'a str; 2]> {
    accepting
        .iter()
        .filter_map(|a| a.target.as_ref().map(|(c, _)| [c.as_str(), a.stream]))
        .collect()
}

/// A delivery to create for an accepted event.
#[derive(serde::Serialize)]
pub(crate) struct NewDelivery<'a> {
    pub event_id: &'a str,
    pub config_id: &'a str,
    pub stream: &'a str,
    /// Where it goes: the URL its config or app had when the event was matched. (The
    /// embedded store reads it from the config in the insert itself.)
    #[serde(skip)]
    pub url: &'a str,
    /// The project and the URL's host: the unit of per-endpoint concurrency
    /// ([`CallbackUrl::endpoint`]).
    pub endpoint: String,
    /// `pending` for the first of its stream when the stream has nothing open, else
    /// `blocked` behind the one before it.
    pub state: DeliveryState,
}

/// The deliveries of the accepted events, in acceptance order. `busy` holds the
/// `(config_id, stream)` pairs that already have an open delivery.
pub(crate) fn new_deliveries<'a>(
    project: &ProjectId,
    accepting: &'a [Accepting<'_>],
    mut busy: HashSet<(String, String)>,
) -> Result<Vec<NewDelivery<'a>>, StoreError> {
    let mut endpoints: HashMap<&str, String> = HashMap::new();
    let mut deliveries = Vec::new();
    for a in accepting {
        let Some((config_id, url)) = &a.target else {
            continue;
        };
        let endpoint = match endpoints.get(config_id.as_str()) {
            Some(endpoint) => endpoint.clone(),
            None => {
                let endpoint = CallbackUrl::parse("url", url, true)
                    .map(|u| u.endpoint(project))
                    .map_err(|e| CorruptRow {
                        table: "deliveries",
                        id: config_id.clone(),
                        reason: e.to_string(),
                    })?;
                endpoints.insert(config_id, endpoint.clone());
                endpoint
            }
        };
        let first_in_stream = busy.insert((config_id.clone(), a.stream.to_owned()));
        deliveries.push(NewDelivery {
            event_id: a.id.as_str(),
            config_id,
            stream: a.stream,
            url: url.as_str(),
            endpoint,
            state: if first_in_stream {
                DeliveryState::Pending
            } else {
                DeliveryState::Blocked
            },
        });
    }
    Ok(deliveries)
}

/// One answer per event, in request order; a repeated id repeats its answer.
pub(crate) fn answers_in_order<'e>(
    ids: impl Iterator<Item = &'e EventId>,
    answers: &HashMap<String, u32>,
) -> Vec<Accepted> {
    ids.map(|id| Accepted {
        event_id: id.as_str().to_owned(),
        deliveries: answers.get(id.as_str()).copied().unwrap_or(0),
    })
    .collect()
}

/// An attempt's outcome as the queue stores it: the state it moves the delivery to, and
/// when the delivery is next due (for a finished one, when it finished). `None` for a
/// follower handed back unsent, which moves nothing.
pub(crate) fn next_state(completion: &Completion) -> Option<(DeliveryState, i64)> {
    let at_ms = unix_ms(completion.record.at);
    match completion.next {
        AfterAttempt::Succeeded => Some((DeliveryState::Succeeded, at_ms)),
        AfterAttempt::RetryAt(at) => Some((DeliveryState::Retrying, unix_ms(at))),
        AfterAttempt::Dead => Some((DeliveryState::Dead, at_ms)),
        AfterAttempt::NotSent => None,
    }
}

/// The time a batch of outcomes is applied at: the latest of their attempts.
pub(crate) fn batch_time_ms(completions: &[Completion]) -> i64 {
    completions
        .iter()
        .map(|c| unix_ms(c.record.at))
        .max()
        .unwrap_or(0)
}

/// The error an attempt whose lease expired is logged with.
pub(crate) const LEASE_EXPIRED: &str =
    "lease expired: the worker stopped before recording the outcome";

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
