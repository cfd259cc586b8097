//! The ingest plan on SQLite: the ingests that share a commit ([`super::group_commit`]) are
//! planned as one set, so a commit of any size costs a fixed handful of statements:
//! earlier answers for repeated ids, one candidate query per distinct (domain, app), one
//! lookup per RTC app, one insert of events and one of deliveries per flavour.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use herald_core::config::rtc::AppId;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::matching::MatchCandidate;
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Sqlite, Transaction};
use time::OffsetDateTime;

use super::due_window::{Fresh, Pushes};
use super::{from_json_row, json_array};
use crate::accept::{
    Accepting, Flavour, NewDelivery, RtcCallback, answers_in_order, earlier_answers_of,
    live_match_keys, new_deliveries, plan_live, plan_rtc, stream_pairs,
};
use crate::rows::{CandidateRow, ClaimedRow, Target};
use crate::state::OPEN;
use crate::{Accepted, DeliveryState, StoreError};

async fn candidates(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    domain: &str,
    app: &str,
) -> Result<Vec<MatchCandidate<Target>>, StoreError> {
    sqlx::query_as::<_, CandidateRow>(
        "SELECT id, app, notify_event_subscription, notify_callback_url FROM live_callback_configs \
         WHERE project_id = ? AND publish_domain = ? AND app IN (?, '*')",
    )
    .bind(project.as_str())
    .bind(domain)
    .bind(app)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .map(|row| Ok(row.into_candidate()?))
    .collect()
}

/// The rows a new delivery copies its target from, joined on `j` (the batch).
fn target_source(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Live => {
            "SELECT c.notify_callback_url AS url, c.sign_type AS sign_type, c.key_sealed AS key_sealed, j.key, j.value \
             FROM json_each(?2) j JOIN live_callback_configs c ON c.id = json_extract(j.value, '$.config_id')"
        }
        // RTC signs with HMAC-SHA256 over the body; the sign type column is not read.
        Flavour::Rtc => {
            "SELECT a.callback_url AS url, 'HMACSHA256' AS sign_type, a.auth_key_sealed AS key_sealed, j.key, j.value \
             FROM json_each(?2) j JOIN rtc_apps a ON a.app_id = json_extract(j.value, '$.config_id')"
        }
    }
}

/// The stored answers of ids the project already used.
async fn earlier_answers<'e>(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    ids: impl Iterator<Item = &'e EventId>,
) -> Result<HashMap<String, u32>, StoreError> {
    let ids: Vec<&str> = ids.map(EventId::as_str).collect();
    let rows = sqlx::query(
        "SELECT event_id, deliveries FROM events WHERE project_id = ? \
         AND event_id IN (SELECT value FROM json_each(?))",
    )
    .bind(project.as_str())
    .bind(json_array(&ids))
    .fetch_all(&mut **tx)
    .await?;
    Ok(earlier_answers_of(&rows)?)
}

/// An accepted event as the insert reads it from its JSON batch. (Serialised straight
/// from borrowed fields: building `serde_json::Value`s first cost an allocation per field.)
#[derive(serde::Serialize)]
struct EventRow<'a> {
    id: &'a str,
    payload: &'a str,
    deliveries: u32,
}

/// Inserts the events and their deliveries: per (config, stream), the first new delivery
/// is pending unless the stream already has an open one, and every later one waits.
async fn accept(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: Vec<Accepting<'_>>,
    now_ms: i64,
    pushes: &mut Pushes,
) -> Result<(), StoreError> {
    if accepting.is_empty() {
        return Ok(());
    }
    let rows: Vec<EventRow<'_>> = accepting
        .iter()
        .map(|a| EventRow {
            id: a.id.as_str(),
            payload: &a.payload,
            deliveries: a.deliveries(),
        })
        .collect();
    // No `RETURNING`: sqlx hands each returned row over on its own. The deliveries find
    // their event's `seq` through the (project, event id) index instead.
    sqlx::query(
        "INSERT INTO events (project_id, event_id, flavour, payload, deliveries, accepted_at_ms) \
         SELECT ?1, json_extract(value, '$.id'), ?4, json_extract(value, '$.payload'), \
             json_extract(value, '$.deliveries'), ?2 \
         FROM json_each(?3) ORDER BY key",
    )
    .bind(project.as_str())
    .bind(now_ms)
    .bind(json_array(&rows))
    .bind(flavour.name())
    .execute(&mut **tx)
    .await?;
    insert_deliveries(tx, project, flavour, &accepting, now_ms, Some(pushes)).await?;
    Ok(())
}

/// Gives each config of `pairs` (`[[config_id, stream], …]` as JSON) its number for the
/// by-stream index (migration 0017), before a delivery of it is created or opened again; a
/// config that has one already keeps it.
pub(super) async fn number_configs(
    tx: &mut Transaction<'_, Sqlite>,
    pairs: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR IGNORE INTO stream_configs (config_id) \
         SELECT DISTINCT json_extract(value, '$[0]') FROM json_each(?)",
    )
    .bind(pairs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts the deliveries of `accepting` (events already stored): per (config, stream),
/// the first is pending unless the stream already has an open delivery, and every later
/// one waits. A target deleted meanwhile gets none. Returns how many were inserted; with
/// `pushes`, gathers them for the due window ([`gather`]).
pub(super) async fn insert_deliveries(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: &[Accepting<'_>],
    now_ms: i64,
    pushes: Option<&mut Pushes>,
) -> Result<u64, StoreError> {
    let pairs = stream_pairs(accepting);
    if pairs.is_empty() {
        return Ok(0);
    }
    let pairs = json_array(&pairs);
    number_configs(tx, &pairs).await?;
    // One row of JSON, not a row per busy stream; one index probe per stream (a `DISTINCT`
    // over the open deliveries read every one of each stream).
    let busy: String = sqlx::query_scalar(&format!(
        "SELECT json_group_array(json_array(p.c, p.s)) FROM ( \
             SELECT DISTINCT json_extract(value, '$[0]') AS c, json_extract(value, '$[1]') AS s FROM json_each(?)) p \
         JOIN stream_configs k ON k.config_id = p.c \
         WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.config_n = k.n AND d.stream = p.s AND d.state IN {OPEN})"
    ))
    .bind(pairs.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let busy: HashSet<(String, String)> = from_json_row(&busy, "the busy streams")?;
    let deliveries = new_deliveries(project, accepting, busy)?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO deliveries (project_id, event_seq, config_id, stream, endpoint, url, sign_type, \
         key_sealed, state, next_attempt_at_ms, created_at_ms, config_n) \
         SELECT ?3, (SELECT seq FROM events WHERE project_id = ?3 AND event_id = json_extract(t.value, '$.event_id')), \
             json_extract(t.value, '$.config_id'), \
             json_extract(t.value, '$.stream'), json_extract(t.value, '$.endpoint'), t.url, t.sign_type, \
             t.key_sealed, json_extract(t.value, '$.state'), ?1, ?1, \
             (SELECT n FROM stream_configs WHERE config_id = json_extract(t.value, '$.config_id')) \
         FROM ({}) t ORDER BY t.key",
        target_source(flavour)
    ))
    .bind(now_ms)
    .bind(json_array(&deliveries))
    .bind(project.as_str())
    .execute(&mut **tx)
    .await?;
    if let Some(pushes) = pushes {
        let inserted = (&deliveries[..], &inserted, now_ms);
        gather(tx, project, flavour, accepting, inserted, pushes).await?;
    }
    Ok(inserted.rows_affected())
}

/// Gathers the deliveries just inserted that the due window wants ([`DueWindow::wants`]),
/// each as a claim would read it. The insert hands out its ids in order, one after
/// another (`AUTOINCREMENT`, one writer), so they are the last `rows_affected` ids up to
/// `last_insert_rowid`; what the insert copied from the config (its URL, sign type and
/// sealed key) is read back by those ids. Should the rows read back not match the
/// deliveries planned, the commit's deliveries are marked lost and the window starts
/// again from SQLite.
///
/// [`DueWindow::wants`]: super::due_window::DueWindow::wants
async fn gather(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: &[Accepting<'_>],
    (deliveries, inserted, now_ms): (&[NewDelivery<'_>], &SqliteQueryResult, i64),
    pushes: &mut Pushes,
) -> Result<(), StoreError> {
    if usize::try_from(inserted.rows_affected()).ok() != Some(deliveries.len()) {
        pushes.lost = true;
        return Ok(());
    }
    let first = inserted.last_insert_rowid() - i64::try_from(deliveries.len()).unwrap_or(0) + 1;
    let wanted = (pushes.window).wants(
        (deliveries.iter()).map(|d| (d.config_id, d.stream, d.state == DeliveryState::Pending)),
    );
    pushes.due_left_out |= (deliveries.iter().zip(&wanted))
        .any(|(d, wanted)| d.state == DeliveryState::Pending && !wanted);
    let ids: Vec<i64> = (wanted.iter().zip(first..))
        .filter_map(|(wanted, id)| wanted.then_some(id))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let copied: String = sqlx::query_scalar(
        "SELECT json_group_array(json_array(id, config_id, url, sign_type, \
             CASE WHEN key_sealed IS NULL THEN NULL ELSE hex(key_sealed) END)) \
         FROM deliveries WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(json_array(&ids))
    .fetch_one(&mut **tx)
    .await?;
    let copied: Vec<(i64, String, String, String, Option<String>)> =
        from_json_row(&copied, "the deliveries inserted")?;
    let mut copied: HashMap<i64, _> = copied.into_iter().map(|c| (c.0, c)).collect();
    let payloads: HashMap<&str, &str> = (accepting.iter())
        .map(|a| (a.id.as_str(), a.payload.as_str()))
        .collect();
    for ((d, id), wanted) in deliveries.iter().zip(first..).zip(wanted) {
        if !wanted {
            continue;
        }
        // A wanted id not read back: the ids were not the ones the insert gave out.
        let Some((_, config_id, url, sign_type, key)) = copied.remove(&id) else {
            pushes.lost = true;
            return Ok(());
        };
        let (Some(payload), Ok(key_sealed), true) = (
            payloads.get(d.event_id),
            key.as_deref().map(hex::decode).transpose(),
            config_id == d.config_id,
        ) else {
            pushes.lost = true;
            return Ok(());
        };
        pushes.fresh.push(Fresh {
            stream: d.stream.to_owned(),
            pending: d.state == DeliveryState::Pending,
            due_ms: now_ms,
            row: ClaimedRow {
                id,
                project_id: project.as_str().to_owned(),
                event_id: d.event_id.to_owned(),
                payload: (*payload).to_owned(),
                flavour: flavour.name().to_owned(),
                config_id,
                endpoint: d.endpoint.clone(),
                url,
                sign_type,
                key_sealed,
                attempts: 0,
            },
        });
    }
    Ok(())
}

/// One request's events, as [`ingest_together`] takes them.
pub(super) enum Batch {
    Live(Vec<(EventId, LiveEvent)>),
    /// An RTC app's events.
    Rtc(AppId, Vec<(EventId, RtcEvent)>),
}

impl Batch {
    fn ids(&self) -> Vec<&EventId> {
        match self {
            Self::Live(events) => events.iter().map(|(id, _)| id).collect(),
            Self::Rtc(_, events) => events.iter().map(|(id, _)| id).collect(),
        }
    }
}

/// A request's answers: one per event in request order; for RTC, `None` when there is no
/// such app.
pub(super) enum BatchAnswer {
    Live(Vec<Accepted>),
    Rtc(Option<Vec<Accepted>>),
}

/// Accepts several requests of one project inside `tx`, in order, as if each ran after
/// the one before it: an id repeated in a later request gets the earlier one's answer.
/// Set-based across the requests too, so a commit of many single-event requests costs the
/// same handful of statements as one request: earlier answers for all their ids, one
/// candidate query per distinct (domain, app), one lookup per RTC app, then [`accept`]'s
/// inserts once per flavour.
pub(super) async fn ingest_together(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    batches: &[&Batch],
    now: OffsetDateTime,
    pushes: &mut Pushes,
) -> Result<Vec<BatchAnswer>, StoreError> {
    let ids = batches.iter().flat_map(|b| b.ids());
    let mut answers = earlier_answers(tx, project, ids).await?;
    let mut candidates_by_key = HashMap::new();
    let mut apps = HashMap::new();
    for batch in batches {
        match batch {
            Batch::Live(events) => {
                for key in live_match_keys(events, &answers) {
                    if let Entry::Vacant(slot) = candidates_by_key.entry(key) {
                        slot.insert(candidates(tx, project, key.0, key.1).await?);
                    }
                }
            }
            Batch::Rtc(app_id, _) => {
                if let Entry::Vacant(slot) = apps.entry(app_id.as_str()) {
                    slot.insert(rtc_callback(tx, project, app_id).await?);
                }
            }
        }
    }
    let (mut live, mut rtc) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        out.push(match batch {
            Batch::Live(events) => {
                live.extend(plan_live(events, &mut answers, &candidates_by_key)?);
                BatchAnswer::Live(answers_in_order(batch.ids().into_iter(), &answers))
            }
            Batch::Rtc(app_id, events) => match apps.get(app_id.as_str()) {
                Some(Some(callback)) => {
                    let callback = callback.as_ref();
                    rtc.extend(plan_rtc(events, &mut answers, app_id.as_str(), callback)?);
                    BatchAnswer::Rtc(Some(answers_in_order(batch.ids().into_iter(), &answers)))
                }
                _ => BatchAnswer::Rtc(None),
            },
        });
    }
    let now_ms = unix_ms(now);
    accept(tx, project, Flavour::Live, live, now_ms, pushes).await?;
    accept(tx, project, Flavour::Rtc, rtc, now_ms, pushes).await?;
    Ok(out)
}

/// The app's record callback: `None` when there is no such app, `Some(None)` when it has
/// no callback.
async fn rtc_callback(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    app_id: &AppId,
) -> Result<Option<Option<RtcCallback>>, StoreError> {
    let app: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT callback_url, notify_event_subscription FROM rtc_apps WHERE project_id = ? AND app_id = ?",
    )
    .bind(project.as_str())
    .bind(app_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    app.map(|(url, subscription)| {
        RtcCallback::from_columns(app_id.as_str(), url, subscription.as_deref())
            .map_err(StoreError::from)
    })
    .transpose()
}
