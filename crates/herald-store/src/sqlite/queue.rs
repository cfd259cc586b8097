//! The delivery queue on SQLite.
//!
//! Life of a delivery: created `pending` (or `blocked` behind an open delivery of the
//! same config and stream) in the transaction that accepts its event; leased (`running`)
//! by a claim, one short `UPDATE … RETURNING`; finished by a batched, lease-guarded
//! completion that records the attempt and moves it to `succeeded`, `retrying` or `dead`
//! and, when it is finished, unblocks the next delivery of its stream. Writes use
//! `BEGIN IMMEDIATE` so concurrent writers queue on the busy timeout instead of failing.

use std::collections::HashMap;

use herald_core::event::{EventId, LiveEvent, RtcEvent};
use herald_core::live::{
    AppSelector, CallbackUrl, MatchCandidate, SignKey, SignType, Subscription, select_config,
};
use herald_core::notify::LiveSigning;
use herald_core::project::ProjectId;
use herald_core::rtc::{AppId, AuthKey};
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::SqliteStore;
use crate::rows::{CorruptRow, live_config_key_context, rtc_app_key_context, stored_project};
use crate::{
    Accepted, AfterAttempt, AttemptRecord, ClaimLimits, ClaimedDelivery, Completion,
    DeliveryFilter, DeliveryStatus, DeliveryView, Lease, Notification, Page, QueueStats,
    RetryOutcome, StoreError,
};

/// SQL true when a delivery's config (Live) or app record callback (RTC) still exists;
/// a delivery whose target is gone is cancelled rather than retried.
const TARGET_EXISTS: &str = "(EXISTS (SELECT 1 FROM live_callback_configs c WHERE c.id = deliveries.config_id) \
     OR EXISTS (SELECT 1 FROM rtc_apps a WHERE a.app_id = deliveries.config_id AND a.callback_url IS NOT NULL))";

/// The states in which a delivery still has to go out.
const OPEN: &str = "('blocked', 'pending', 'running', 'retrying')";

fn corrupt(table: &'static str, id: impl ToString, reason: impl ToString) -> StoreError {
    StoreError::Corrupt(CorruptRow {
        table,
        id: id.to_string(),
        reason: reason.to_string(),
    })
}

/// A config that may match an event: its id and URL, for the delivery.
type Target = (String, String);

async fn candidates(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    domain: &str,
    app: &str,
) -> Result<Vec<MatchCandidate<Target>>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, app, notify_event_subscription, notify_callback_url FROM live_callback_configs \
         WHERE project_id = ? AND publish_domain = ? AND app IN (?, '*')",
    )
    .bind(project.as_str())
    .bind(domain)
    .bind(app)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let bad = |e: herald_core::field::FieldError| corrupt("live_callback_configs", &id, e);
            let names: String = row.try_get("notify_event_subscription")?;
            let names: Vec<&str> = names.split(',').collect();
            let url: Option<String> = row.try_get("notify_callback_url")?;
            Ok(MatchCandidate {
                app: AppSelector::parse("app", row.try_get("app")?).map_err(bad)?,
                subscription: Subscription::parse("notify_event_subscription", &names)
                    .map_err(bad)?,
                has_url: url.is_some(),
                target: (id.clone(), url.unwrap_or_default()),
            })
        })
        .collect()
}

async fn stream_has_open_delivery(
    tx: &mut Transaction<'_, Sqlite>,
    config_id: &str,
    stream: &str,
    except: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE config_id = ? AND stream = ? AND id <> ? AND state IN {OPEN})"
    ))
    .bind(config_id)
    .bind(stream)
    .bind(except)
    .fetch_one(&mut **tx)
    .await?)
}

/// After deliveries finished, the oldest blocked delivery of each of their (config,
/// stream) pairs, a JSON array of `[config_id, stream]`, becomes due.
async fn unblock_next_of_streams(
    tx: &mut Transaction<'_, Sqlite>,
    pairs: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET state = 'pending', next_attempt_at_ms = ?1 WHERE id IN \
         (SELECT MIN(id) FROM deliveries WHERE state = 'blocked' AND (config_id, stream) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2)) \
          GROUP BY config_id, stream)",
    )
    .bind(now_ms)
    .bind(pairs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A claimed delivery's event as stored: its id, payload and flavour.
type StoredEvent = (String, String, String);

fn claimed(
    row: &SqliteRow,
    events: &HashMap<i64, StoredEvent>,
    store: &SqliteStore,
) -> Result<ClaimedDelivery, StoreError> {
    let id: i64 = row.try_get("id")?;
    let event_seq: i64 = row.try_get("event_seq")?;
    let config_id: String = row.try_get("config_id")?;
    let (event_id, payload, flavour) = events
        .get(&event_seq)
        .ok_or_else(|| corrupt("deliveries", id, "its event is missing"))?;
    let bad_event = |e: &dyn std::fmt::Display| corrupt("events", event_seq, e);
    let payload: serde_json::Value = serde_json::from_str(payload).map_err(|e| bad_event(&e))?;
    let key_sealed: Option<Vec<u8>> = row.try_get("key_sealed")?;
    let notification = if flavour == "rtc" {
        let auth_key = key_sealed
            .map(|sealed| {
                let key = store
                    .master
                    .open_string(&rtc_app_key_context(&config_id), &sealed)?;
                AuthKey::parse("auth_key", key.expose_secret())
                    .map_err(|e| corrupt("deliveries", id, e))
            })
            .transpose()?;
        Notification::Rtc {
            event: RtcEvent::parse("", &payload).map_err(|e| bad_event(&e))?,
            app_id: config_id.clone(),
            auth_key,
        }
    } else {
        let sign_type = SignType::parse("sign_type", row.try_get("sign_type")?)
            .map_err(|e| corrupt("deliveries", id, e))?;
        let signing = key_sealed
            .map(|sealed| {
                let key = store
                    .master
                    .open_string(&live_config_key_context(&config_id), &sealed)?;
                let key = SignKey::parse("key", key.expose_secret())
                    .map_err(|e| corrupt("deliveries", id, e))?;
                Ok::<_, StoreError>(LiveSigning { sign_type, key })
            })
            .transpose()?;
        Notification::Live {
            event: LiveEvent::parse("", &payload).map_err(|e| bad_event(&e))?,
            signing,
        }
    };
    let project: String = row.try_get("project_id")?;
    Ok(ClaimedDelivery {
        id,
        project_id: stored_project("deliveries", &id.to_string(), &project)?,
        event_id: event_id.clone(),
        config_id,
        endpoint: row.try_get("endpoint")?,
        url: row.try_get("url")?,
        attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        notification,
    })
}

/// A slice as JSON text, for `json_each(?)`. Serialising strings and numbers cannot fail;
/// the empty array is only the type system's due.
fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// One answer per event, in request order; a repeated id repeats its answer.
fn answers_in_order<'e>(
    ids: impl Iterator<Item = &'e EventId>,
    answers: &HashMap<String, u32>,
) -> Vec<Accepted> {
    ids.map(|id| Accepted {
        event_id: id.as_str().to_owned(),
        deliveries: answers.get(id.as_str()).copied().unwrap_or(0),
    })
    .collect()
}

/// The flavour of an event, and where its deliveries take their URL, sign type and key.
#[derive(Debug, Clone, Copy)]
enum Flavour {
    Live,
    Rtc,
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Rtc => "rtc",
        }
    }

    /// The rows a new delivery copies its target from, joined on `j` (the batch).
    fn target_source(self) -> &'static str {
        match self {
            Self::Live => {
                "SELECT c.notify_callback_url AS url, c.sign_type AS sign_type, c.key_sealed AS key_sealed, j.key, j.value \
                 FROM json_each(?2) j JOIN live_callback_configs c ON c.id = json_extract(j.value, '$.config_id')"
            }
            // RTC signs with HMAC-SHA256 over the body; the sign type column is not read.
            Self::Rtc => {
                "SELECT a.callback_url AS url, 'HMACSHA256' AS sign_type, a.auth_key_sealed AS key_sealed, j.key, j.value \
                 FROM json_each(?2) j JOIN rtc_apps a ON a.app_id = json_extract(j.value, '$.config_id')"
            }
        }
    }
}

/// An event being accepted: its id, its stored form, its stream, and the config or app
/// whose callback it goes to (with that callback's URL), if any.
struct Accepting<'a> {
    id: &'a EventId,
    payload: String,
    stream: &'a str,
    target: Option<Target>,
}

impl<'a> Accepting<'a> {
    fn new(
        id: &'a EventId,
        fields: &serde_json::Map<String, serde_json::Value>,
        stream: &'a str,
        target: Option<Target>,
    ) -> Result<Self, StoreError> {
        let payload =
            serde_json::to_string(fields).map_err(|e| corrupt("events", id.as_str(), e))?;
        Ok(Self {
            id,
            payload,
            stream,
            target,
        })
    }
}

/// The stored answers of ids the project already used.
async fn earlier_answers<'e>(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    ids: impl Iterator<Item = &'e EventId>,
) -> Result<HashMap<String, u32>, StoreError> {
    let ids: Vec<&str> = ids.map(EventId::as_str).collect();
    Ok(sqlx::query(
        "SELECT event_id, deliveries FROM events WHERE project_id = ? \
         AND event_id IN (SELECT value FROM json_each(?))",
    )
    .bind(project.as_str())
    .bind(json_array(&ids))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("event_id")?,
            u32::try_from(r.try_get::<i64, _>("deliveries")?).unwrap_or(0),
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?)
}

/// Inserts the events and their deliveries: per (config, stream), the first new delivery
/// is pending unless the stream already has an open one, and every later one waits.
async fn accept(
    tx: &mut Transaction<'_, Sqlite>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: Vec<Accepting<'_>>,
    now_ms: i64,
) -> Result<(), StoreError> {
    if accepting.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = accepting
        .iter()
        .map(|a| serde_json::json!({"id": a.id.as_str(), "payload": a.payload, "deliveries": u32::from(a.target.is_some())}))
        .collect();
    let seqs: HashMap<String, i64> = sqlx::query(
        "INSERT INTO events (project_id, event_id, flavour, payload, deliveries, accepted_at_ms) \
         SELECT ?1, json_extract(value, '$.id'), ?4, json_extract(value, '$.payload'), \
             json_extract(value, '$.deliveries'), ?2 \
         FROM json_each(?3) ORDER BY key RETURNING event_id, seq",
    )
    .bind(project.as_str())
    .bind(now_ms)
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(flavour.name())
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("event_id")?, r.try_get("seq")?)))
    .collect::<Result<_, sqlx::Error>>()?;

    let matched: Vec<_> = accepting
        .iter()
        .filter_map(|a| {
            a.target
                .as_ref()
                .map(|(config_id, url)| (a, config_id, url))
        })
        .collect();
    if matched.is_empty() {
        return Ok(());
    }
    let pairs: Vec<[&str; 2]> = matched
        .iter()
        .map(|(a, c, _)| [c.as_str(), a.stream])
        .collect();
    let mut busy: std::collections::HashSet<(String, String)> = sqlx::query(&format!(
        "SELECT DISTINCT config_id, stream FROM deliveries WHERE state IN {OPEN} AND (config_id, stream) IN \
         (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))"
    ))
    .bind(json_array(&pairs))
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("config_id")?, r.try_get("stream")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let mut endpoints: HashMap<&str, String> = HashMap::new();
    let mut deliveries = Vec::with_capacity(matched.len());
    for (a, config_id, url) in matched {
        let endpoint = match endpoints.get(config_id.as_str()) {
            Some(endpoint) => endpoint.clone(),
            None => {
                let endpoint = CallbackUrl::parse("url", url, true)
                    .map(|u| u.endpoint())
                    .map_err(|e| corrupt("deliveries", config_id, e))?;
                endpoints.insert(config_id, endpoint.clone());
                endpoint
            }
        };
        let first_in_stream = busy.insert((config_id.clone(), a.stream.to_owned()));
        deliveries.push(serde_json::json!({
            "seq": seqs.get(a.id.as_str()).ok_or_else(|| corrupt("events", a.id.as_str(), "insert returned no seq"))?,
            "config_id": config_id,
            "stream": a.stream,
            "endpoint": endpoint,
            "state": if first_in_stream { "pending" } else { "blocked" },
        }));
    }
    sqlx::query(&format!(
        "INSERT INTO deliveries (project_id, event_seq, config_id, stream, endpoint, url, sign_type, \
         key_sealed, state, next_attempt_at_ms, created_at_ms) \
         SELECT ?3, json_extract(t.value, '$.seq'), json_extract(t.value, '$.config_id'), \
             json_extract(t.value, '$.stream'), json_extract(t.value, '$.endpoint'), t.url, t.sign_type, \
             t.key_sealed, json_extract(t.value, '$.state'), ?1, ?1 \
         FROM ({}) t ORDER BY t.key",
        flavour.target_source()
    ))
    .bind(now_ms)
    .bind(serde_json::Value::Array(deliveries).to_string())
    .bind(project.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl SqliteStore {
    /// Set-based, so a batch of any size costs a fixed handful of statements: earlier
    /// answers for repeated ids, one candidate query per distinct (domain, app), then
    /// [`accept`]'s inserts.
    pub(super) async fn ingest_live_impl(
        &self,
        project: &ProjectId,
        events: &[(EventId, LiveEvent)],
        now: OffsetDateTime,
    ) -> Result<Vec<Accepted>, StoreError> {
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        let mut answers =
            earlier_answers(&mut tx, project, events.iter().map(|(id, _)| id)).await?;
        // Match each new event (the first of any id repeated in the batch).
        let mut candidates_by_key: HashMap<(&str, &str), Vec<MatchCandidate<Target>>> =
            HashMap::new();
        let mut accepting = Vec::new();
        for (event_id, event) in events {
            if answers.contains_key(event_id.as_str()) {
                continue;
            }
            let key = (event.publish_domain.as_str(), event.app.as_str());
            if let std::collections::hash_map::Entry::Vacant(slot) = candidates_by_key.entry(key) {
                slot.insert(candidates(&mut tx, project, key.0, key.1).await?);
            }
            let target = candidates_by_key
                .get(&key)
                .and_then(|c| select_config(c.clone(), &event.app, event.event_type));
            answers.insert(event_id.as_str().to_owned(), u32::from(target.is_some()));
            accepting.push(Accepting::new(
                event_id,
                &event.fields,
                &event.stream,
                target,
            )?);
        }
        accept(&mut tx, project, Flavour::Live, accepting, unix_ms(now)).await?;
        tx.commit().await?;
        Ok(answers_in_order(events.iter().map(|(id, _)| id), &answers))
    }

    pub(super) async fn ingest_rtc_impl(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        events: &[(EventId, RtcEvent)],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Accepted>>, StoreError> {
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        let callback_url: Option<Option<String>> = sqlx::query_scalar(
            "SELECT callback_url FROM rtc_apps WHERE project_id = ? AND app_id = ?",
        )
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(callback_url) = callback_url else {
            return Ok(None);
        };
        let mut answers =
            earlier_answers(&mut tx, project, events.iter().map(|(id, _)| id)).await?;
        let mut accepting = Vec::new();
        for (event_id, event) in events {
            if answers.contains_key(event_id.as_str()) {
                continue;
            }
            // Every record callback subscribes to all three RTC event types.
            let target = callback_url
                .clone()
                .map(|url| (app_id.as_str().to_owned(), url));
            answers.insert(event_id.as_str().to_owned(), u32::from(target.is_some()));
            accepting.push(Accepting::new(
                event_id,
                &event.fields,
                &event.stream_name,
                target,
            )?);
        }
        accept(&mut tx, project, Flavour::Rtc, accepting, unix_ms(now)).await?;
        tx.commit().await?;
        Ok(Some(answers_in_order(
            events.iter().map(|(id, _)| id),
            &answers,
        )))
    }

    pub(super) async fn claim_due_deliveries_impl(
        &self,
        now: OffsetDateTime,
        limits: ClaimLimits<'_>,
        lease: &Lease,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        // Room left per endpoint that has deliveries in flight; others have the full cap.
        let room: HashMap<&str, u32> = limits
            .in_flight
            .iter()
            .map(|(endpoint, n)| (endpoint.as_str(), limits.per_endpoint.saturating_sub(*n)))
            .collect();
        let room = serde_json::to_string(&room).unwrap_or_else(|_| "{}".into());
        let total = i64::try_from(limits.total).unwrap_or(i64::MAX);
        let (_gate, mut tx) = self.begin_write(&self.queue_pool).await?;
        // The inner scan skips full endpoints before its LIMIT, so their backlog cannot fill
        // it; the window function then keeps each endpoint within its room.
        let rows = sqlx::query(
            "WITH room (endpoint, n) AS MATERIALIZED (SELECT key, value FROM json_each(?4)) \
             UPDATE deliveries SET state = 'running', lease_owner = ?1, lease_expires_at_ms = ?2, \
             attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM ( \
                 SELECT d.id, d.next_attempt_at_ms, \
                     ROW_NUMBER() OVER (PARTITION BY d.endpoint ORDER BY d.next_attempt_at_ms, d.id) AS nth, \
                     COALESCE(room.n, ?5) AS room \
                 FROM (SELECT id, endpoint, next_attempt_at_ms FROM deliveries \
                     WHERE state IN ('pending', 'retrying') AND next_attempt_at_ms <= ?3 \
                     AND endpoint NOT IN (SELECT endpoint FROM room WHERE n = 0) \
                     ORDER BY next_attempt_at_ms, id LIMIT ?6) d \
                 LEFT JOIN room ON room.endpoint = d.endpoint) \
                 WHERE nth <= room ORDER BY next_attempt_at_ms, id LIMIT ?7) \
             RETURNING id, project_id, event_seq, config_id, endpoint, url, sign_type, key_sealed, attempts",
        )
        .bind(&lease.owner)
        .bind(unix_ms(lease.expires_at))
        .bind(unix_ms(now))
        .bind(room)
        .bind(i64::from(limits.per_endpoint))
        .bind(total.saturating_mul(8))
        .bind(total)
        .fetch_all(&mut *tx)
        .await?;
        let seqs: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("event_seq"))
            .collect::<Result<_, _>>()?;
        let events: HashMap<i64, StoredEvent> = sqlx::query(
            "SELECT seq, event_id, payload, flavour FROM events WHERE seq IN (SELECT value FROM json_each(?))",
        )
        .bind(json_array(&seqs))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("seq")?, (r.try_get("event_id")?, r.try_get("payload")?, r.try_get("flavour")?))))
        .collect::<Result<_, sqlx::Error>>()?;
        tx.commit().await?;
        rows.iter().map(|row| claimed(row, &events, self)).collect()
    }

    /// Set-based like ingest: one guarded update for the whole batch, one insert of the
    /// attempts that counted, one update unblocking the next delivery of finished streams.
    pub(super) async fn complete_deliveries_impl(
        &self,
        completions: &[Completion],
    ) -> Result<u64, StoreError> {
        if completions.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = completions
            .iter()
            .map(|c| {
                let at_ms = unix_ms(c.record.at);
                let (state, next_ms) = match c.next {
                    AfterAttempt::Succeeded => ("succeeded", at_ms),
                    AfterAttempt::RetryAt(at) => ("retrying", unix_ms(at)),
                    AfterAttempt::Dead => ("dead", at_ms),
                };
                serde_json::json!({
                    "id": c.delivery_id, "attempt": c.attempt, "owner": c.lease_owner, "state": state,
                    "next": next_ms, "at": at_ms, "status_code": c.record.status_code, "error": c.record.error,
                    "latency_ms": c.record.latency_ms, "response_head": c.record.response_head,
                })
            })
            .collect();
        let batch = serde_json::Value::Array(rows).to_string();
        let (_gate, mut tx) = self.begin_write(&self.queue_pool).await?;
        // Applied only where the lease still holds; a retry of a deleted config's delivery
        // is cancelled instead.
        let moved = sqlx::query(&format!(
            "WITH b AS MATERIALIZED (SELECT v ->> 'id' AS id, v ->> 'attempt' AS attempt, v ->> 'owner' AS owner, \
                 v ->> 'state' AS state, v ->> 'next' AS next FROM (SELECT jsonb(value) AS v FROM json_each(?))) \
             UPDATE deliveries SET lease_owner = NULL, lease_expires_at_ms = NULL, next_attempt_at_ms = b.next, \
                 state = CASE WHEN b.state = 'retrying' AND NOT {TARGET_EXISTS} THEN 'cancelled' ELSE b.state END \
             FROM b \
             WHERE deliveries.id = b.id AND deliveries.state = 'running' \
                 AND deliveries.lease_owner = b.owner AND deliveries.attempts = b.attempt \
             RETURNING deliveries.id, deliveries.config_id, deliveries.stream, deliveries.state"
        ))
        .bind(&batch)
        .fetch_all(&mut *tx)
        .await?;
        let applied: Vec<i64> = moved
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT OR IGNORE INTO delivery_attempts \
                 (delivery_id, attempt, at_ms, status_code, error, latency_ms, response_head) \
             SELECT v ->> 'id', v ->> 'attempt', v ->> 'at', v ->> 'status_code', v ->> 'error', \
                 v ->> 'latency_ms', v ->> 'response_head' \
             FROM (SELECT jsonb(value) AS v FROM json_each(?1)) \
             WHERE v ->> 'id' IN (SELECT value FROM json_each(?2))",
        )
        .bind(&batch)
        .bind(json_array(&applied))
        .execute(&mut *tx)
        .await?;
        let finished: Vec<[String; 2]> = moved
            .iter()
            .filter(|r| {
                r.try_get::<String, _>("state")
                    .is_ok_and(|s| s != "retrying")
            })
            .map(|r| Ok([r.try_get("config_id")?, r.try_get("stream")?]))
            .collect::<Result<_, sqlx::Error>>()?;
        if !finished.is_empty() {
            let now_ms = completions
                .iter()
                .map(|c| unix_ms(c.record.at))
                .max()
                .unwrap_or(0);
            unblock_next_of_streams(&mut tx, &json_array(&finished), now_ms).await?;
        }
        tx.commit().await?;
        Ok(u64::try_from(applied.len()).unwrap_or(0))
    }

    pub(super) async fn rescue_expired_leases_impl(
        &self,
        expired_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let now_ms = unix_ms(now);
        let (_gate, mut tx) = self.begin_write(&self.queue_pool).await?;
        let rescued = sqlx::query(&format!(
            "UPDATE deliveries SET next_attempt_at_ms = ?1, lease_owner = NULL, lease_expires_at_ms = NULL, \
             state = CASE WHEN {TARGET_EXISTS} THEN 'retrying' ELSE 'cancelled' END \
             WHERE state = 'running' AND lease_expires_at_ms < ?2 RETURNING id, attempts, config_id, stream, state"
        ))
        .bind(now_ms)
        .bind(unix_ms(expired_before))
        .fetch_all(&mut *tx)
        .await?;
        for row in &rescued {
            sqlx::query(
                "INSERT OR IGNORE INTO delivery_attempts (delivery_id, attempt, at_ms, error, latency_ms) \
                 VALUES (?, ?, ?, 'lease expired: the worker stopped before recording the outcome', 0)",
            )
            .bind(row.try_get::<i64, _>("id")?)
            .bind(row.try_get::<i64, _>("attempts")?)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        // A rescued delivery whose config was deleted is finished: its stream moves on.
        let cancelled: Vec<[String; 2]> = rescued
            .iter()
            .filter(|r| {
                r.try_get::<String, _>("state")
                    .is_ok_and(|s| s == "cancelled")
            })
            .map(|r| Ok([r.try_get("config_id")?, r.try_get("stream")?]))
            .collect::<Result<_, sqlx::Error>>()?;
        if !cancelled.is_empty() {
            unblock_next_of_streams(&mut tx, &json_array(&cancelled), now_ms).await?;
        }
        tx.commit().await?;
        Ok(u64::try_from(rescued.len()).unwrap_or(0))
    }

    pub(super) async fn next_due_at_impl(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM deliveries WHERE state IN ('pending', 'retrying')",
        )
        .fetch_one(&self.queue_pool)
        .await?;
        Ok(ms.map(from_unix_ms))
    }

    pub(super) async fn list_deliveries_impl(
        &self,
        project: &ProjectId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<(u64, Vec<DeliveryView>), StoreError> {
        let states = filter.status.map(|s| json_array(s.states()));
        const WHERE: &str = "WHERE d.project_id = ?1 AND (?2 IS NULL OR e.event_id = ?2) \
                             AND (?3 IS NULL OR d.state IN (SELECT value FROM json_each(?3)))";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM deliveries d JOIN events e ON e.seq = d.event_seq {WHERE}"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(states.as_deref())
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT d.id, e.event_id, d.config_id, d.url, json_extract(e.payload, '$.event_type') AS event_type, \
             d.state, d.created_at_ms, d.next_attempt_at_ms \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq {WHERE} ORDER BY d.id DESC LIMIT ?4 OFFSET ?5"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(states.as_deref())
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let mut attempts: HashMap<i64, Vec<AttemptRecord>> = HashMap::new();
        let attempt_rows = sqlx::query(
            "SELECT delivery_id, at_ms, status_code, error, latency_ms, response_head FROM delivery_attempts \
             WHERE delivery_id IN (SELECT value FROM json_each(?)) ORDER BY delivery_id, attempt",
        )
        .bind(json_array(&ids))
        .fetch_all(&self.pool)
        .await?;
        for row in &attempt_rows {
            attempts
                .entry(row.try_get("delivery_id")?)
                .or_default()
                .push(AttemptRecord {
                    at: from_unix_ms(row.try_get("at_ms")?),
                    status_code: row
                        .try_get::<Option<i64>, _>("status_code")?
                        .and_then(|c| u16::try_from(c).ok()),
                    error: row.try_get("error")?,
                    latency_ms: u64::try_from(row.try_get::<i64, _>("latency_ms")?).unwrap_or(0),
                    response_head: row.try_get("response_head")?,
                });
        }
        let views = rows
            .iter()
            .map(|row| {
                let id: i64 = row.try_get("id")?;
                let status = DeliveryStatus::of_state(row.try_get("state")?);
                let open = matches!(status, DeliveryStatus::Pending | DeliveryStatus::Failed);
                Ok(DeliveryView {
                    id,
                    event_id: row.try_get("event_id")?,
                    config_id: row.try_get("config_id")?,
                    url: row.try_get("url")?,
                    event_type: row
                        .try_get::<Option<String>, _>("event_type")?
                        .unwrap_or_default(),
                    status,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                    next_attempt_at: open
                        .then(|| row.try_get("next_attempt_at_ms").map(from_unix_ms))
                        .transpose()?,
                    attempts: attempts.remove(&id).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((u64::try_from(total).unwrap_or(0), views))
    }

    pub(super) async fn retry_delivery_impl(
        &self,
        project: &ProjectId,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<RetryOutcome, StoreError> {
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        let row = sqlx::query(
            "SELECT state, config_id, stream FROM deliveries WHERE project_id = ? AND id = ?",
        )
        .bind(project.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RetryOutcome::NotFound);
        };
        let state: String = row.try_get("state")?;
        let status = DeliveryStatus::of_state(&state);
        if !matches!(status, DeliveryStatus::Dead | DeliveryStatus::Failed) {
            return Ok(RetryOutcome::NotRetryable(status));
        }
        let config_id: String = row.try_get("config_id")?;
        let stream: String = row.try_get("stream")?;
        let config_exists: bool = sqlx::query_scalar(&format!(
            "SELECT {TARGET_EXISTS} FROM deliveries WHERE id = ?"
        ))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if !config_exists {
            return Ok(RetryOutcome::ConfigDeleted);
        }
        // A dead delivery re-enters its stream's queue: it waits if another is open there.
        let next_state = if status == DeliveryStatus::Failed {
            "retrying"
        } else if stream_has_open_delivery(&mut tx, &config_id, &stream, id).await? {
            "blocked"
        } else {
            "pending"
        };
        sqlx::query("UPDATE deliveries SET state = ?, next_attempt_at_ms = ? WHERE id = ?")
            .bind(next_state)
            .bind(unix_ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RetryOutcome::Requeued)
    }

    pub(super) async fn queue_stats_impl(
        &self,
        now: OffsetDateTime,
    ) -> Result<QueueStats, StoreError> {
        let by_state = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
            .fetch_all(&self.queue_pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("state")?,
                    u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM deliveries WHERE state IN ('pending', 'retrying') AND next_attempt_at_ms <= ?",
        )
        .bind(unix_ms(now))
        .fetch_one(&self.queue_pool)
        .await?;
        Ok(QueueStats {
            by_state,
            oldest_due_at: oldest.map(from_unix_ms),
        })
    }

    /// Cancels a deleted config's deliveries that have not gone out.
    pub(super) async fn cancel_open_deliveries(
        tx: &mut Transaction<'_, Sqlite>,
        config_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE deliveries SET state = 'cancelled' WHERE config_id = ? AND state IN ('blocked', 'pending', 'retrying')")
            .bind(config_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
