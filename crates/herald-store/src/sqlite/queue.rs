//! The delivery queue on SQLite.
//!
//! Life of a delivery: created `pending` (or `blocked` behind an open delivery of the
//! same config and stream) in the transaction that accepts its event (the ingests that share
//! a commit are planned together, [`ingest_together`]); leased in memory by a claim
//! ([`super::leases`]), which reads the due index in pages of what the endpoints can take
//! ([`due_within_room`]) on a reader connection and writes nothing; finished by a batched
//! completion, applied under the lease that still holds, that records the attempt and moves
//! it to `succeeded`, `retrying` or `dead` and, when it is finished, unblocks the next
//! delivery of its stream. Every write transaction runs on the store's one writer
//! connection, in turn behind its write gate. (`running` is a state only rows written by
//! Herald before in-memory leases have; the rescue takes them back.)

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use herald_core::config::rtc::AppId;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::matching::MatchCandidate;
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::json_array;
use super::leases::Held;
use super::{BEGIN_DURABLE, BEGIN_QUEUE, SqliteStore};
use crate::accept::{
    Accepting, Flavour, LEASE_EXPIRED, OPEN_STATES, RtcCallback, TARGET_EXISTS, answers_in_order,
    batch_time_ms, live_match_keys, new_deliveries, next_state, plan_live, plan_rtc, rescued_state,
    stream_pairs,
};
use crate::queue::{MOST_COUNTED_DELIVERIES, delivery_log_where};
use crate::rows::{
    AttemptRow, CandidateRow, ClaimedRow, DeliveryRow, Target, delivery_views, finish_claim,
};
use crate::{
    Accepted, ClaimLimits, ClaimedDelivery, Completion, DeliveryFilter, DeliveryQueue,
    DeliveryStatus, DeliveryView, Lease, Page, Recorded, RetryOutcome, StoreError,
};

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

async fn stream_has_open_delivery(
    tx: &mut Transaction<'_, Sqlite>,
    config_id: &str,
    stream: &str,
    except: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE config_id = ? AND stream = ? AND id <> ? AND state IN {OPEN_STATES})"
    ))
    .bind(config_id)
    .bind(stream)
    .bind(except)
    .fetch_one(&mut **tx)
    .await?)
}

/// After an update of the deliveries `ids` (a JSON array), the oldest blocked delivery of
/// the streams (config, stream) of those that are now finished becomes due. The streams
/// are found here, in SQL, rather than returned by the update: sqlx hands returned rows
/// over one by one.
/// True when any became due.
async fn unblock_next_of_streams(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = 'pending', next_attempt_at_ms = ?1 WHERE id IN \
         (SELECT MIN(id) FROM deliveries WHERE state = 'blocked' AND (config_id, stream) IN \
             (SELECT config_id, stream FROM deliveries WHERE id IN (SELECT value FROM json_each(?2)) \
              AND state IN ('succeeded', 'dead', 'cancelled')) \
          GROUP BY config_id, stream)",
    )
    .bind(now_ms)
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
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
        .map(|a| serde_json::json!({"id": a.id.as_str(), "payload": a.payload, "deliveries": a.deliveries()}))
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
    .bind(serde_json::Value::Array(rows).to_string())
    .bind(flavour.name())
    .execute(&mut **tx)
    .await?;

    let pairs = stream_pairs(&accepting);
    if pairs.is_empty() {
        return Ok(());
    }
    // One row of JSON, not a row per busy stream.
    let busy: String = sqlx::query_scalar(&format!(
        "SELECT json_group_array(json_array(config_id, stream)) FROM ( \
             SELECT DISTINCT config_id, stream FROM deliveries WHERE state IN {OPEN_STATES} AND (config_id, stream) IN \
             (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)))"
    ))
    .bind(json_array(&pairs))
    .fetch_one(&mut **tx)
    .await?;
    let busy: HashSet<(String, String)> =
        serde_json::from_str(&busy).map_err(|e| crate::rows::CorruptRow {
            table: "deliveries",
            id: "the busy streams".into(),
            reason: e.to_string(),
        })?;
    let deliveries: Vec<serde_json::Value> = new_deliveries(&accepting, busy)?
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "event_id": d.event_id,
                "config_id": d.config_id,
                "stream": d.stream,
                "endpoint": d.endpoint,
                "state": d.state,
            })
        })
        .collect();
    sqlx::query(&format!(
        "INSERT INTO deliveries (project_id, event_seq, config_id, stream, endpoint, url, sign_type, \
         key_sealed, state, next_attempt_at_ms, created_at_ms) \
         SELECT ?3, (SELECT seq FROM events WHERE project_id = ?3 AND event_id = json_extract(t.value, '$.event_id')), \
             json_extract(t.value, '$.config_id'), \
             json_extract(t.value, '$.stream'), json_extract(t.value, '$.endpoint'), t.url, t.sign_type, \
             t.key_sealed, json_extract(t.value, '$.state'), ?1, ?1 \
         FROM ({}) t ORDER BY t.key",
        target_source(flavour)
    ))
    .bind(now_ms)
    .bind(serde_json::Value::Array(deliveries).to_string())
    .bind(project.as_str())
    .execute(&mut **tx)
    .await?;
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
    accept(tx, project, Flavour::Live, live, now_ms).await?;
    accept(tx, project, Flavour::Rtc, rtc, now_ms).await?;
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

/// The due deliveries a claim takes, oldest due first, each endpoint within its room,
/// leaving out `leased` (a JSON array of ids): with whether each is a retry.
///
/// The due index is read in pages, each page one row of JSON (sqlx hands rows from its
/// SQLite thread one at a time, so one row per page is one hand-off). A page asks for no
/// more than the endpoints seen can still take, plus one endpoint's room for one not seen
/// yet, and every page leaves out the endpoints that are full (in flight, or filled by this
/// claim). So a claim of a few reads a few rows, however long the queue behind a busy
/// endpoint. The scan stops at 8 × the claim, so a claim stays bounded.
async fn due_within_room(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limits: &ClaimLimits<'_>,
    leased: &str,
) -> Result<Vec<(i64, bool)>, StoreError> {
    let budget = limits.total.saturating_mul(8);
    // Taken by this claim, by endpoint.
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut due = Vec::new();
    let (mut scanned, mut after) = (0, (i64::MIN, i64::MIN));
    while due.len() < limits.total && scanned < budget {
        let seen: HashSet<&str> = (limits.in_flight.keys())
            .chain(taken.keys())
            .map(String::as_str)
            .collect();
        let left = |e: &str| {
            let used = taken.get(e).copied().unwrap_or(0);
            limits.room_of(e).saturating_sub(used)
        };
        let full: Vec<&str> = seen.iter().copied().filter(|e| left(e) == 0).collect();
        let seen_room: u32 = seen.iter().map(|e| left(e)).sum();
        let page_size = (limits.total - due.len())
            .min(
                usize::try_from(seen_room.saturating_add(limits.per_endpoint))
                    .unwrap_or(usize::MAX),
            )
            .min(budget - scanned)
            .max(1);
        let page: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(id, endpoint, next_attempt_at_ms, state = 'retrying')) FROM ( \
                 SELECT id, endpoint, next_attempt_at_ms, state FROM deliveries \
                 WHERE state IN ('pending', 'retrying') AND next_attempt_at_ms <= ?1 \
                 AND endpoint NOT IN (SELECT value FROM json_each(?2)) \
                 AND (next_attempt_at_ms, id) > (?3, ?4) \
                 AND id NOT IN (SELECT value FROM json_each(?6)) \
                 ORDER BY next_attempt_at_ms, id LIMIT ?5)",
        )
        .bind(unix_ms(now))
        .bind(json_array(&full))
        .bind(after.0)
        .bind(after.1)
        .bind(i64::try_from(page_size).unwrap_or(i64::MAX))
        .bind(leased)
        .fetch_one(&mut *conn)
        .await?;
        let mut rows: Vec<(i64, String, i64, u8)> =
            serde_json::from_str(&page).map_err(|e| crate::rows::CorruptRow {
                table: "deliveries",
                id: "a claim's page".into(),
                reason: e.to_string(),
            })?;
        // json_group_array keeps the order its rows come in, which SQL does not promise.
        rows.sort_unstable_by_key(|(id, _, due, _)| (*due, *id));
        scanned += rows.len();
        for (id, endpoint, next, retry) in &rows {
            after = (*next, *id);
            let used = taken.entry(endpoint.clone()).or_default();
            if *used < limits.room_of(endpoint) && due.len() < limits.total {
                *used += 1;
                due.push((*id, *retry == 1));
            }
        }
        if rows.len() < page_size {
            break;
        }
    }
    Ok(due)
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    /// Set-based, so a batch of any size costs a fixed handful of statements: earlier
    /// answers for repeated ids, one candidate query per distinct (domain, app), then
    /// [`accept`]'s inserts.
    async fn ingest_live(
        &self,
        project: &ProjectId,
        events: &[(EventId, LiveEvent)],
        now: OffsetDateTime,
    ) -> Result<Vec<Accepted>, StoreError> {
        match self
            .ingest_commits
            .events(project.clone(), Batch::Live(events.to_vec()), now)
            .await?
        {
            BatchAnswer::Live(accepted) => Ok(accepted),
            // A Live batch is answered as one.
            BatchAnswer::Rtc(_) => Ok(Vec::new()),
        }
    }

    async fn ingest_rtc(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        events: &[(EventId, RtcEvent)],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Accepted>>, StoreError> {
        let batch = Batch::Rtc(app_id.clone(), events.to_vec());
        match self
            .ingest_commits
            .events(project.clone(), batch, now)
            .await?
        {
            BatchAnswer::Rtc(accepted) => Ok(accepted),
            // An RTC batch is answered as one.
            BatchAnswer::Live(_) => Ok(None),
        }
    }

    /// Reads on a reader connection and leases in memory ([`super::leases`]): a claim
    /// writes nothing, and does not wait for the writer.
    async fn claim_due_deliveries(
        &self,
        now: OffsetDateTime,
        limits: ClaimLimits<'_>,
        lease: &Lease,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let _claiming = self.leases.claiming.lock().await;
        let leased = json_array(&self.leases.ids());
        let mut conn = self.pool.acquire().await?;
        let due = due_within_room(&mut conn, now, &limits, &leased).await?;
        let retries: HashSet<i64> = (due.iter())
            .filter_map(|(id, retry)| retry.then_some(*id))
            .collect();
        let ids: Vec<i64> = due.iter().map(|(id, _)| *id).collect();
        // Rows cancelled since the pages were read (their config was deleted) stay behind.
        let rows = sqlx::query_as::<_, ClaimedRow>(
            "SELECT d.id, d.project_id, e.event_id, e.payload, e.flavour, d.config_id, d.endpoint, d.url, \
                 d.sign_type, d.key_sealed, d.attempts + 1 AS attempts \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state IN ('pending', 'retrying') \
             ORDER BY d.next_attempt_at_ms, d.id",
        )
        .bind(json_array(&ids))
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        let expires_at_ms = unix_ms(lease.expires_at);
        let claimed: Vec<ClaimedRow> = rows
            .into_iter()
            .filter(|row| {
                self.leases.take(
                    row.id,
                    Held {
                        owner: lease.owner.clone(),
                        expires_at_ms,
                        attempt: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                        state: if retries.contains(&row.id) {
                            "retrying"
                        } else {
                            "pending"
                        },
                    },
                )
            })
            .collect();
        finish_claim(self, claimed, &self.master, &lease.owner, now).await
    }

    /// Set-based like ingest: the outcomes made under a lease that still holds, in one
    /// update, one insert of their attempts and one update unblocking the next delivery
    /// of the streams they finished; their leases are given up once that has committed.
    async fn complete_deliveries(
        &self,
        completions: &[Completion],
    ) -> Result<Recorded, StoreError> {
        if completions.is_empty() {
            return Ok(Recorded::default());
        }
        let (_gate, mut tx) = self.begin_write(BEGIN_QUEUE).await?;
        let current = self.leases.current(completions);
        if current.is_empty() {
            return Ok(Recorded::default());
        }
        let rows: Vec<serde_json::Value> = current
            .iter()
            .map(|c| {
                let (state, next_ms) = next_state(c);
                serde_json::json!({
                    "id": c.delivery_id, "attempt": c.attempt, "state": state, "next": next_ms,
                    "at": unix_ms(c.record.at), "status_code": c.record.status_code, "error": c.record.error,
                    "latency_ms": c.record.latency_ms, "response_head": c.record.response_head,
                })
            })
            .collect();
        let batch = serde_json::Value::Array(rows).to_string();
        // A retry of a deleted config's delivery is cancelled instead.
        sqlx::query(&format!(
            "WITH b AS MATERIALIZED (SELECT v ->> 'id' AS id, v ->> 'attempt' AS attempt, \
                 v ->> 'state' AS state, v ->> 'next' AS next FROM (SELECT jsonb(value) AS v FROM json_each(?))) \
             UPDATE deliveries AS d SET attempts = b.attempt, next_attempt_at_ms = b.next, \
                 state = CASE WHEN b.state = 'retrying' AND NOT {TARGET_EXISTS} THEN 'cancelled' ELSE b.state END \
             FROM b WHERE d.id = b.id"
        ))
        .bind(&batch)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO delivery_attempts \
                 (delivery_id, attempt, at_ms, status_code, error, latency_ms, response_head) \
             SELECT v ->> 'id', v ->> 'attempt', v ->> 'at', v ->> 'status_code', v ->> 'error', \
                 v ->> 'latency_ms', v ->> 'response_head' \
             FROM (SELECT jsonb(value) AS v FROM json_each(?))",
        )
        .bind(&batch)
        .execute(&mut *tx)
        .await?;
        let ids: Vec<i64> = current.iter().map(|c| c.delivery_id).collect();
        let made_due =
            unblock_next_of_streams(&mut tx, &json_array(&ids), batch_time_ms(completions)).await?;
        tx.commit().await?;
        self.leases.release(ids);
        Ok(Recorded {
            applied: u64::try_from(current.len()).unwrap_or(0),
            made_due,
        })
    }

    /// Ends the in-memory leases that expired, and the leases a process before in-memory
    /// leases wrote into the rows (`running`): each such attempt is logged as lost, and
    /// its delivery retried, dead or cancelled as [`rescued_state`] says.
    async fn rescue_expired_leases(
        &self,
        expired_before: OffsetDateTime,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let now_ms = unix_ms(now);
        let (_gate, mut tx) = self.begin_write(BEGIN_QUEUE).await?;
        let expired = self.leases.expired(unix_ms(expired_before));
        let lost: Vec<(i64, u32)> = expired.iter().map(|(id, h)| (*id, h.attempt)).collect();
        let mut rescued = sqlx::query(&format!(
            "UPDATE deliveries AS d SET attempts = l.attempt, next_attempt_at_ms = ?1, state = {} \
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS attempt FROM json_each(?2)) l \
             WHERE d.id = l.id RETURNING id, attempts",
            rescued_state("l.attempt", "?3")
        ))
        .bind(now_ms)
        .bind(json_array(&lost))
        .bind(i64::from(max_attempts))
        .fetch_all(&mut *tx)
        .await?;
        rescued.extend(
            sqlx::query(&format!(
                "UPDATE deliveries AS d SET next_attempt_at_ms = ?1, lease_owner = NULL, lease_expires_at_ms = NULL, \
                 state = {} \
                 WHERE state = 'running' AND lease_expires_at_ms < ?2 RETURNING id, attempts",
                rescued_state("d.attempts", "?3")
            ))
            .bind(now_ms)
            .bind(unix_ms(expired_before))
            .bind(i64::from(max_attempts))
            .fetch_all(&mut *tx)
            .await?,
        );
        let attempts: Vec<(i64, i64)> = rescued
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("attempts")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        sqlx::query(
            "INSERT OR IGNORE INTO delivery_attempts (delivery_id, attempt, at_ms, error, latency_ms) \
             SELECT value ->> 0, value ->> 1, ?2, ?3, 0 FROM json_each(?1)",
        )
        .bind(json_array(&attempts))
        .bind(now_ms)
        .bind(LEASE_EXPIRED)
        .execute(&mut *tx)
        .await?;
        // A rescued delivery that is finished (its config was deleted, or it has no attempt
        // left) lets its stream move on.
        let ids: Vec<i64> = attempts.iter().map(|(id, _)| *id).collect();
        unblock_next_of_streams(&mut tx, &json_array(&ids), now_ms).await?;
        tx.commit().await?;
        self.leases.release(expired.into_iter().map(|(id, _)| id));
        Ok(u64::try_from(rescued.len()).unwrap_or(0))
    }

    async fn list_deliveries(
        &self,
        project: &ProjectId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<(u64, Vec<DeliveryView>), StoreError> {
        let filtered = delivery_log_where(filter);
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries d {filtered} LIMIT $3)"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(i64::try_from(MOST_COUNTED_DELIVERIES).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT d.id, e.event_id, d.config_id, d.url, e.payload, \
             d.state, d.created_at_ms, d.next_attempt_at_ms \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq {filtered} ORDER BY d.id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts = sqlx::query_as::<_, AttemptRow>(
            "SELECT delivery_id, at_ms, status_code, error, latency_ms, response_head FROM delivery_attempts \
             WHERE delivery_id IN (SELECT value FROM json_each(?)) ORDER BY delivery_id, attempt",
        )
        .bind(json_array(&ids))
        .fetch_all(&self.pool)
        .await?;
        let views = delivery_views(rows, attempts);
        Ok((u64::try_from(total).unwrap_or(0), views))
    }

    async fn retry_delivery(
        &self,
        project: &ProjectId,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<RetryOutcome, StoreError> {
        let (_gate, mut tx) = self.begin_write(BEGIN_DURABLE).await?;
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
            "SELECT {TARGET_EXISTS} FROM deliveries d WHERE d.id = ?"
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

    async fn relay_work_signals(
        &self,
        _wake: Arc<Notify>,
        _cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        // The data dir's lock keeps other servers out, and the CLI writes only
        // credentials, so every delivery is made due in this process, which wakes its
        // worker itself.
        Ok(())
    }
}

/// Cancels a deleted config's deliveries that have not gone out: not those in flight
/// (`leased`), whose outcome is recorded when it comes, as if their config still existed.
pub(super) async fn cancel_open_deliveries(
    tx: &mut Transaction<'_, Sqlite>,
    config_id: &str,
    leased: &[i64],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET state = 'cancelled' WHERE config_id = ? \
         AND state IN ('blocked', 'pending', 'retrying') AND id NOT IN (SELECT value FROM json_each(?))",
    )
    .bind(config_id)
    .bind(json_array(leased))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
