//! The delivery queue on SQLite: the [`DeliveryQueue`] implementation, the completion, the
//! rescue, the delivery log and manual retries. Ingest and the claim have modules of their
//! own.
//!
//! Life of a delivery: created `pending` (or `blocked` behind an open delivery of the
//! same config and stream) in the transaction that accepts its event (the ingests that share
//! a commit are planned together, [`super::ingest`]); leased in memory by a claim
//! ([`super::leases`]), which reads the due index in pages of what the endpoints can take
//! ([`super::claim`]) on a reader connection and writes nothing; finished by a batched
//! completion, applied under the lease that still holds, that records the attempt and moves
//! it to `succeeded`, `retrying` or `dead` and, when it is finished, unblocks the next
//! delivery of its stream. Every write transaction runs on the store's one writer
//! connection, in turn behind its write gate. (`running` is a state only rows written by
//! Herald before in-memory leases have; the rescue takes them back.)

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;

use herald_core::config::rtc::AppId;
use herald_core::event::EventId;
use herald_core::event::live::LiveEvent;
use herald_core::event::rtc::RtcEvent;
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ingest::{Batch, BatchAnswer};
use super::{BEGIN_DURABLE, BEGIN_QUEUE, SqliteStore, claim, from_json_row, json_array};
use crate::deliveries::{MOST_COUNTED_DELIVERIES, RetryFilter, delivery_log_where, failing_only};
use crate::history::replay_plan;
use crate::outcomes::{
    LEASE_EXPIRED, TARGET_EXISTS, batch_time_ms, next_state, rescued_state, success_from_b,
};
use crate::rows::{AttemptRow, DELIVERY_ROW_COLUMNS, DeliveryRow, delivery_views, stored_state};
use crate::state::{DUE, FINISHED, NOT_SENT, OPEN};
use crate::{
    Accepted, AfterAttempt, ClaimLimits, ClaimedDelivery, Completion, DeliveryFilter,
    DeliveryQueue, DeliveryState, DeliveryStatus, DeliveryView, Lease, Page, Recorded,
    ReplayTarget, Replayed, RetryOutcome, StoreError,
};

async fn stream_has_open_delivery(
    tx: &mut Transaction<'_, Sqlite>,
    config_id: &str,
    stream: &str,
    except: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE \
             config_n = (SELECT n FROM stream_configs WHERE config_id = ?) \
             AND stream = ? AND id <> ? AND state IN {OPEN})"
    ))
    .bind(config_id)
    .bind(stream)
    .bind(except)
    .fetch_one(&mut **tx)
    .await?)
}

/// After an update of the deliveries `ids` (a JSON array), each stream (config, stream) of
/// those now finished moves on: its oldest open delivery becomes due if it is `blocked`.
/// If it is not (a follower that failed right after the delivery before it succeeded, in
/// the same batch, is due again), the stream waits for it. The streams are found here, in
/// SQL, rather than returned by the update: sqlx hands returned rows over one by one.
/// Returns the deliveries that became due (one row of JSON, for the due window).
async fn unblock_next_of_streams(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &str,
    now_ms: i64,
) -> Result<Vec<i64>, StoreError> {
    // One probe of the by-stream index per stream for its oldest open delivery: `MIN(id) …
    // GROUP BY` read every open delivery of each stream, and sorted them (7 ms a batch with
    // 150 waiting per stream).
    let (pending, blocked) = (DeliveryState::Pending, DeliveryState::Blocked);
    let next: String = sqlx::query_scalar(&format!(
        "SELECT json_group_array(n.id) FROM ( \
             SELECT (SELECT o.id FROM deliveries o WHERE o.state IN {OPEN} \
                     AND o.config_n = f.config_n AND o.stream = f.stream ORDER BY o.id LIMIT 1) AS id \
             FROM (SELECT DISTINCT config_n, stream FROM deliveries \
                   WHERE id IN (SELECT value FROM json_each(?1)) AND state IN {FINISHED}) f) n \
         JOIN deliveries d ON d.id = n.id AND d.state = '{blocked}'",
    ))
    .bind(ids)
    .fetch_one(&mut **tx)
    .await?;
    let next: Vec<i64> = from_json_row(&next, "the streams' next deliveries")?;
    if !next.is_empty() {
        sqlx::query(&format!(
            "UPDATE deliveries SET state = '{pending}', next_attempt_at_ms = ?1 \
             WHERE id IN (SELECT value FROM json_each(?2))",
        ))
        .bind(now_ms)
        .bind(json_array(&next))
        .execute(&mut **tx)
        .await?;
    }
    Ok(next)
}

/// An outcome as the completion reads it from its JSON batch, serialised straight from
/// the completion's fields as a JSON array, in the order of the fields: the statements read
/// it by position (`v ->> 0` is `id`). SQLite finds an array's element faster than an
/// object's key: with arrays the outcome update of 32 rows took 209 µs rather than
/// 261 µs, and 788 rather than 1,005 µs for 128 (SQLite 3.51, a copy of a bench
/// database; docs/benchmarks.md).
struct OutcomeRow<'a> {
    id: i64,
    attempt: u32,
    state: DeliveryState,
    next: i64,
    at: i64,
    status_code: Option<u16>,
    error: Option<&'a str>,
    latency_ms: u64,
    response_head: Option<&'a str>,
}

impl serde::Serialize for OutcomeRow<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (
            self.id,
            self.attempt,
            self.state,
            self.next,
            self.at,
            self.status_code,
            self.error,
            self.latency_ms,
            self.response_head,
        )
            .serialize(serializer)
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    /// Set-based, so a batch of any size costs a fixed handful of statements: earlier
    /// answers for repeated ids, one candidate query per distinct (domain, app), then
    /// the inserts ([`super::ingest`]).
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
        claim::claim(self, now, limits, lease).await
    }

    fn follower_lease_holds(&self, delivery: &ClaimedDelivery, lease_owner: &str) -> bool {
        self.leases
            .holds(delivery.id, lease_owner, delivery.attempt)
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
        let rows: Vec<OutcomeRow<'_>> = current
            .iter()
            .filter_map(|c| {
                let (state, next) = next_state(c)?;
                Some(OutcomeRow {
                    id: c.delivery_id,
                    attempt: c.attempt,
                    state,
                    next,
                    at: unix_ms(c.record.at),
                    status_code: c.record.status_code,
                    error: c.record.error.as_deref(),
                    latency_ms: c.record.latency_ms,
                    response_head: c.record.response_head.as_deref(),
                })
            })
            .collect();
        // A retry of a deleted config's delivery is cancelled instead. Only rows still in
        // the state a lease keeps them in (a follower's: `blocked`) move: a claim that read
        // a row just before a config's deletion cancelled it may lease it just after, and
        // its outcome must not turn the cancelled delivery into a sent one. A success is
        // kept in the row itself, so a first-try success is this one change. The rows that
        // move are read first, as one row of JSON (the write transaction is the only
        // writer, so the update moves exactly these): a `RETURNING` row per outcome, which
        // sqlx hands over one by one, cost more than the update's own work.
        // The ids alone, not the whole batch: SQLite parses what it is given, and for 128
        // outcomes that was 144 µs against 47 µs (measured on a copy of a bench database).
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let moved: String = sqlx::query_scalar(&format!(
            "SELECT json_group_array(d.id) FROM deliveries d \
             WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state IN {NOT_SENT}"
        ))
        .bind(json_array(&ids))
        .fetch_one(&mut *tx)
        .await?;
        let moved: HashSet<i64> = from_json_row(&moved, "the completed deliveries")?;
        sqlx::query(&format!(
            "WITH b AS MATERIALIZED (SELECT v ->> 0 AS id, v ->> 1 AS attempt, \
                 v ->> 2 AS state, v ->> 3 AS next, v ->> 4 AS at, \
                 v ->> 5 AS status_code, v ->> 7 AS latency_ms, \
                 v ->> 8 AS response_head \
                 FROM (SELECT jsonb(value) AS v FROM json_each(?))) \
             UPDATE deliveries AS d SET attempts = b.attempt, next_attempt_at_ms = b.next, \
                 state = CASE WHEN b.state = '{retrying}' AND NOT {TARGET_EXISTS} THEN '{cancelled}' ELSE b.state END, \
                 {success} \
             FROM b WHERE d.id = b.id AND d.state IN {NOT_SENT}",
            retrying = DeliveryState::Retrying,
            cancelled = DeliveryState::Cancelled,
            success = success_from_b(),
        ))
        .bind(json_array(&rows))
        .execute(&mut *tx)
        .await?;
        let rows: Vec<&OutcomeRow<'_>> = rows.iter().filter(|r| moved.contains(&r.id)).collect();
        let failed: Vec<&&OutcomeRow<'_>> = rows
            .iter()
            .filter(|r| r.state != DeliveryState::Succeeded)
            .collect();
        if !failed.is_empty() {
            sqlx::query(
                "INSERT OR IGNORE INTO delivery_attempts \
                     (delivery_id, attempt, at_ms, status_code, error, latency_ms, response_head) \
                 SELECT v ->> 0, v ->> 1, v ->> 4, v ->> 5, v ->> 6, v ->> 7, v ->> 8 \
                 FROM (SELECT jsonb(value) AS v FROM json_each(?))",
            )
            .bind(json_array(&failed))
            .execute(&mut *tx)
            .await?;
        }
        // Followers handed back unsent keep their rows as they are: only their leases end,
        // below. (A deleted config's followers were cancelled with its other deliveries,
        // and their leases ended then.)
        let applied = rows.len();
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let made_due_at = batch_time_ms(completions);
        let made_due = unblock_next_of_streams(&mut tx, &json_array(&ids), made_due_at).await?;
        tx.commit().await?;
        // Every lease of the batch ends, those whose row had moved on included.
        self.leases.release(current.iter().map(|c| c.delivery_id));
        // Then the window learns what became due (the write gate is still held, so no
        // ingest pushes meanwhile): a follower handed back unsent is no longer leased.
        let outcomes: Vec<(i64, AfterAttempt)> =
            current.iter().map(|c| (c.delivery_id, c.next)).collect();
        self.window
            .completed(&outcomes, &made_due, made_due_at, |id| {
                self.leases.is_leased(id)
            });
        Ok(Recorded {
            applied: u64::try_from(applied).unwrap_or(0),
            made_due: !made_due.is_empty(),
        })
    }

    /// Ends the in-memory leases that expired, and the leases a process before in-memory
    /// leases wrote into the rows (`running`): each such attempt is logged as lost, and
    /// its delivery retried, dead or cancelled as [`rescued_state`] says. Like a
    /// completion, it moves only rows still in the state their lease keeps them in.
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
             WHERE d.id = l.id AND d.state IN {DUE} RETURNING id, attempts",
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
                 WHERE state = '{}' AND lease_expires_at_ms < ?2 RETURNING id, attempts",
                rescued_state("d.attempts", "?3"),
                DeliveryState::Running
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
        // Rescued deliveries are due again outside the window.
        if !rescued.is_empty() {
            self.window.invalidate();
        }
        Ok(u64::try_from(rescued.len()).unwrap_or(0))
    }

    async fn list_deliveries(
        &self,
        project: &ProjectId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<(u64, Vec<DeliveryView>), StoreError> {
        let filtered = delivery_log_where(filter);
        // SQLite keeps no statistics of the table to choose by, and one of its guesses for
        // the failing states (by project in id order, reading every delivery of the
        // project to find the few failing ones) took 0.4 s on d2's million deliveries;
        // the partial index takes a millisecond. An event id is narrower still: its own
        // index is left to SQLite.
        let index = if failing_only(filter) && filter.event_id.is_none() {
            "INDEXED BY deliveries_failing_by_project"
        } else {
            ""
        };
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries d {index} {filtered} LIMIT $3)"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(i64::try_from(MOST_COUNTED_DELIVERIES).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_ROW_COLUMNS} \
             FROM deliveries d {index} JOIN events e ON e.seq = d.event_seq {filtered} ORDER BY d.id DESC LIMIT $3 OFFSET $4"
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
        let views = delivery_views(rows, attempts)?;
        Ok((u64::try_from(total).unwrap_or(0), views))
    }

    async fn bulk_retry_ids(
        &self,
        project: &ProjectId,
        filter: &RetryFilter,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        crate::history::bulk_retry_ids(self, project, filter, now, limit).await
    }

    async fn replay(
        &self,
        project: &ProjectId,
        target: &ReplayTarget,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Replayed, StoreError> {
        let Some(plan) = replay_plan(self, project, target).await? else {
            return Ok(Replayed::NotFound);
        };
        let flavour = plan.flavour();
        let (_gate, mut tx) = self.begin_write(BEGIN_DURABLE).await?;
        let Some(events) =
            crate::history::replay_events::<Self>(&mut tx, project, flavour, since, until).await?
        else {
            return Ok(Replayed::TooMany);
        };
        let events = plan.matching(events)?;
        let queued = super::ingest::insert_deliveries(
            &mut tx,
            project,
            flavour,
            &plan.accepting(&events),
            unix_ms(now),
            None,
        )
        .await?;
        tx.commit().await?;
        // The replayed deliveries join their streams behind the window's back.
        if queued > 0 {
            self.window.invalidate();
        }
        Ok(Replayed::Queued(queued))
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
        let status = stored_state(id, row.try_get("state")?)?.status();
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
            DeliveryState::Retrying
        } else if stream_has_open_delivery(&mut tx, &config_id, &stream, id).await? {
            DeliveryState::Blocked
        } else {
            DeliveryState::Pending
        };
        // A delivery finished before migration 0017 has no number for the by-stream index.
        super::ingest::number_configs(&mut tx, &json_array(&[[&config_id, &stream]])).await?;
        sqlx::query(
            "UPDATE deliveries SET state = ?, next_attempt_at_ms = ?, \
                 config_n = (SELECT n FROM stream_configs WHERE config_id = deliveries.config_id) \
             WHERE id = ?",
        )
        .bind(next_state.as_str())
        .bind(unix_ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // An old delivery back in its stream, before what the window holds of it.
        self.window.invalidate();
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
/// (`in_flight`), whose outcome is recorded when it comes, as if their config still existed.
/// Returns which of the leased `followers` it cancelled (their leases must end).
pub(super) async fn cancel_open_deliveries(
    tx: &mut Transaction<'_, Sqlite>,
    config_id: &str,
    in_flight: &[i64],
    followers: &[i64],
) -> Result<Vec<i64>, StoreError> {
    // The by-stream index holds the open deliveries, and its `state IN` term is what lets
    // SQLite read the config's there rather than the whole table.
    sqlx::query(&format!(
        "UPDATE deliveries SET state = '{}' WHERE config_n = (SELECT n FROM stream_configs WHERE config_id = ?) \
         AND state IN {OPEN} AND state IN {NOT_SENT} AND id NOT IN (SELECT value FROM json_each(?))",
        DeliveryState::Cancelled
    ))
    .bind(config_id)
    .bind(json_array(in_flight))
    .execute(&mut **tx)
    .await?;
    if followers.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) \
         AND config_id = ? AND state = '{}'",
        DeliveryState::Cancelled
    ))
    .bind(json_array(followers))
    .bind(config_id)
    .fetch_all(&mut **tx)
    .await?)
}
