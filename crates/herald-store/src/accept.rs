//! The backend-neutral steps of accepting events: which events are new, which config each
//! goes to, which of their deliveries may go out at once and which wait behind an earlier
//! one of their stream. Backends do the reading and writing around these steps, each in
//! its own SQL. What happens to a delivery afterwards is in [`crate::outcomes`].

use std::collections::{HashMap, HashSet};

use herald_core::config::callback_url::CallbackUrl;
use herald_core::config::rtc::RtcSubscription;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::matching::{MatchCandidate, select_config, select_rtc_callback};
use herald_core::project::ProjectId;

use crate::rows::{CorruptRow, Target, stored_rtc_subscription};
use crate::{Accepted, DeliveryState, StoreError};

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
