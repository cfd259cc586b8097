//! The delivery queue on PostgreSQL, shared by every node.
//!
//! A delivery's life is the embedded store's (see `sqlite::delivery_queue`): created
//! `pending` or `blocked` with its event, leased (`running`) by a claim, finished by a
//! lease-guarded completion that unblocks the next of its stream. What changes is that
//! several nodes write at once, under READ COMMITTED:
//!
//! - **Claims** lease rows with `FOR UPDATE SKIP LOCKED` in one statement, so two nodes
//!   never lease the same delivery and never wait for each other.
//! - **Per-stream order.** At most one delivery of a (config, stream) is ever out of
//!   `blocked`, so two nodes can never have two of one stream in flight. Keeping that true
//!   needs the writers that decide "is this stream busy?" (ingest, manual retry) and those
//!   that end a stream's head and unblock the next (completion, rescue, cancellation) to
//!   see each other's commits: each takes a transaction-scoped advisory lock per stream
//!   ([`lock_streams`], in `streams`) and reads after it has the lock.
//! - **No deadlocks.** Every writer takes its locks in one order: the config or app row
//!   (ingest shares it, a deletion takes it), then the streams' advisory locks in key
//!   order, then delivery rows. Claims lock only delivery rows, and skip locked ones.
//! - **Targets.** Ingest holds `FOR KEY SHARE` (Live) or `FOR SHARE` (RTC) on the configs
//!   it matched until it commits, so deleting a config (or an app's callback) waits for
//!   it and then cancels its deliveries too.
//! - **Wake-ups**: `pg_notify` inside each transaction that makes deliveries due, sent by
//!   PostgreSQL at commit to every node's `LISTEN` connection.

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
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::ingest::{accept, commit_ingest, earlier_answers};
use super::streams::{lock_streams, streams_of, unblock_next_of_streams};
use super::{PgStore, WORK_CHANNEL, notify_work};
use crate::accept::{Flavour, RtcCallback, live_match_keys, plan_live, plan_rtc};
use crate::backend::limit_offset;
use crate::deliveries::{MOST_COUNTED_DELIVERIES, RetryFilter, delivery_log_where};
use crate::history::replay_plan;
use crate::outcomes::{
    LEASE_EXPIRED, TARGET_EXISTS, batch_time_ms, finished_streams, next_state, rescued_state,
    success_from_b,
};
use crate::rows::{
    AttemptRow, CandidateRow, ClaimedRow, DELIVERY_ROW_COLUMNS, DeliveryRow, Target,
    delivery_views, finish_claim, stored_state,
};
use crate::state::{DUE, NOT_SENT, OPEN};
use crate::{
    Accepted, AfterAttempt, ClaimLimits, ClaimedDelivery, Completion, DeliveryFilter,
    DeliveryQueue, DeliveryState, DeliveryStatus, DeliveryView, Lease, Page, Recorded,
    ReplayTarget, Replayed, RetryOutcome, StoreError,
};

#[async_trait]
impl DeliveryQueue for PgStore {
    async fn ingest_live(
        &self,
        project: &ProjectId,
        events: &[(EventId, LiveEvent)],
        now: OffsetDateTime,
    ) -> Result<Vec<Accepted>, StoreError> {
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        let mut tx = self.begin().await?;
        let mut answers = earlier_answers(&mut tx, project, &ids).await?;
        let mut candidates = HashMap::new();
        for key in live_match_keys(events, &answers) {
            let rows = sqlx::query_as::<_, CandidateRow>(
                "SELECT id, app, notify_event_subscription, notify_callback_url FROM live_callback_configs \
                 WHERE project_id = $1 AND publish_domain = $2 AND app IN ($3, '*') \
                 ORDER BY id FOR KEY SHARE",
            )
            .bind(project.as_str())
            .bind(key.0)
            .bind(key.1)
            .fetch_all(&mut *tx)
            .await?;
            let found: Vec<MatchCandidate<Target>> = rows
                .into_iter()
                .map(CandidateRow::into_candidate)
                .collect::<Result<_, _>>()?;
            candidates.insert(key, found);
        }
        let accepting = plan_live(events, &mut answers, &candidates)?;
        let raced = accept(&mut tx, project, Flavour::Live, accepting, unix_ms(now)).await?;
        commit_ingest(tx, project, events.iter().map(|(id, _)| id), raced, answers).await
    }

    async fn ingest_rtc(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        events: &[(EventId, RtcEvent)],
        now: OffsetDateTime,
    ) -> Result<Option<Vec<Accepted>>, StoreError> {
        let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        let mut tx = self.begin().await?;
        let app: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT callback_url, notify_event_subscription FROM rtc_apps WHERE project_id = $1 AND app_id = $2 FOR SHARE",
        )
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((url, subscription)) = app else {
            return Ok(None);
        };
        let callback = RtcCallback::from_columns(app_id.as_str(), url, subscription.as_deref())?;
        let mut answers = earlier_answers(&mut tx, project, &ids).await?;
        let accepting = plan_rtc(events, &mut answers, app_id.as_str(), callback.as_ref())?;
        let raced = accept(&mut tx, project, Flavour::Rtc, accepting, unix_ms(now)).await?;
        commit_ingest(tx, project, events.iter().map(|(id, _)| id), raced, answers)
            .await
            .map(Some)
    }

    async fn claim_due_deliveries(
        &self,
        now: OffsetDateTime,
        limits: ClaimLimits<'_>,
        lease: &Lease,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let (room, total) = (limits.room_json(), limits.total_sql());
        // One statement, so no transaction is held open. The scan skips full endpoints and
        // full projects before its LIMIT (so a project at its share, however much of it is
        // due first, never hides the others' work from the scan); the window functions keep
        // each endpoint, then each project, within its room. Only the rows picked are
        // locked, skipping those another node is leasing at this very moment (a row lock is
        // a logged write: locking the whole scan cost more than the rest of the claim). A
        // claim that loses rows to another node comes back short and looks again on the
        // next wake-up.
        let rows = sqlx::query_as::<_, ClaimedRow>(&format!(
            "WITH room AS (SELECT key AS endpoint, value::bigint AS n FROM jsonb_each_text($4::jsonb)), \
             project_room AS (SELECT key AS project_id, value::bigint AS n FROM jsonb_each_text($8::jsonb)), \
             scan AS MATERIALIZED (SELECT id, endpoint, project_id, next_attempt_at_ms FROM deliveries \
                 WHERE state IN {DUE} AND next_attempt_at_ms <= $3 \
                 AND endpoint NOT IN (SELECT endpoint FROM room WHERE n = 0) \
                 AND project_id NOT IN (SELECT project_id FROM project_room WHERE n = 0) \
                 ORDER BY next_attempt_at_ms, id LIMIT $6), \
             within_endpoints AS (SELECT id, project_id, next_attempt_at_ms FROM ( \
                 SELECT s.id, s.project_id, s.next_attempt_at_ms, \
                     ROW_NUMBER() OVER (PARTITION BY s.endpoint ORDER BY s.next_attempt_at_ms, s.id) AS nth, \
                     COALESCE(room.n, $5) AS room \
                 FROM scan s LEFT JOIN room ON room.endpoint = s.endpoint) ranked \
                 WHERE nth <= room), \
             picked AS MATERIALIZED (SELECT id FROM ( \
                 SELECT w.id, w.next_attempt_at_ms, \
                     ROW_NUMBER() OVER (PARTITION BY w.project_id ORDER BY w.next_attempt_at_ms, w.id) AS nth, \
                     COALESCE(pr.n, $9) AS room \
                 FROM within_endpoints w LEFT JOIN project_room pr ON pr.project_id = w.project_id) ranked \
                 WHERE nth <= room ORDER BY next_attempt_at_ms, id LIMIT $7), \
             locked AS (SELECT d.id FROM deliveries d WHERE d.id = ANY(ARRAY(SELECT id FROM picked)) \
                 AND d.state IN {DUE} FOR UPDATE SKIP LOCKED), \
             leased AS (UPDATE deliveries d SET state = '{running}', lease_owner = $1, \
                     lease_expires_at_ms = $2, attempts = d.attempts + 1 \
                 FROM locked l, events e WHERE d.id = l.id AND e.seq = d.event_seq \
                 RETURNING d.id, d.project_id, e.event_id, e.payload, e.flavour, d.config_id, d.endpoint, \
                     d.url, d.sign_type, d.key_sealed, d.attempts, d.next_attempt_at_ms) \
             SELECT * FROM leased ORDER BY next_attempt_at_ms, id",
            running = DeliveryState::Running,
        ))
        .bind(&lease.owner)
        .bind(unix_ms(lease.expires_at))
        .bind(unix_ms(now))
        .bind(room)
        .bind(i64::from(limits.per_endpoint))
        .bind(total.saturating_mul(8))
        .bind(total)
        .bind(limits.project_room_json())
        .bind(i64::from(limits.per_project))
        .fetch_all(&self.queue_pool)
        .await?;
        finish_claim(self, rows, &self.master, &lease.owner, now).await
    }

    /// Set-based: one guarded update for the whole batch, one insert of the attempts
    /// that counted, one update unblocking the next delivery of finished streams.
    async fn complete_deliveries(
        &self,
        completions: &[Completion],
    ) -> Result<Recorded, StoreError> {
        // PostgreSQL's claims lease no followers, so no delivery of its comes back unsent;
        // were one to, it would keep its lease until the rescue re-queued it.
        let (attempted, next): (Vec<&Completion>, Vec<(DeliveryState, i64)>) = completions
            .iter()
            .filter_map(|c| next_state(c).map(|next| (c, next)))
            .unzip();
        if attempted.is_empty() {
            return Ok(Recorded::default());
        }
        let ids: Vec<i64> = attempted.iter().map(|c| c.delivery_id).collect();
        let mut tx = self.begin_queue().await?;
        // Streams first, then rows, as every writer takes them: a config's deletion, which
        // cancels under the same locks, then either sees this batch's retries or is seen
        // by its target check below.
        let streams = streams_of(&mut tx, &ids).await?;
        lock_streams(
            &mut tx,
            streams.iter().map(|(c, s)| (c.as_str(), s.as_str())),
        )
        .await?;
        // Applied only where the lease still holds; a retry of a deleted config's delivery
        // is cancelled instead. (`d.id = ANY($1)` makes PostgreSQL look the batch up by
        // primary key rather than match it against every running delivery.) A success is
        // kept in the row itself, so a first-try success writes no attempt row.
        let moved = sqlx::query(&format!(
            "UPDATE deliveries d SET lease_owner = NULL, lease_expires_at_ms = NULL, next_attempt_at_ms = b.next, \
                 state = CASE WHEN b.state = '{retrying}' AND NOT {TARGET_EXISTS} THEN '{cancelled}' ELSE b.state END, \
                 {success} \
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], \
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::text[]) \
                 AS b(id, attempt, owner, state, next, at, status_code, latency_ms, response_head) \
             WHERE d.id = ANY($1) AND d.id = b.id AND d.state = '{running}' AND d.lease_owner = b.owner \
                 AND d.attempts = b.attempt \
             RETURNING d.id, d.config_id, d.stream, d.state",
            retrying = DeliveryState::Retrying,
            cancelled = DeliveryState::Cancelled,
            running = DeliveryState::Running,
            success = success_from_b(),
        ))
        .bind(&ids)
        .bind(attempted.iter().map(|c| i64::from(c.attempt)).collect::<Vec<_>>())
        .bind(attempted.iter().map(|c| c.lease_owner.as_str()).collect::<Vec<_>>())
        .bind(next.iter().map(|(state, _)| state.as_str()).collect::<Vec<_>>())
        .bind(next.iter().map(|(_, at)| *at).collect::<Vec<_>>())
        .bind(attempted.iter().map(|c| unix_ms(c.record.at)).collect::<Vec<_>>())
        .bind(attempted.iter().map(|c| c.record.status_code.map(i64::from)).collect::<Vec<_>>())
        .bind(attempted.iter().map(|c| latency_ms(c)).collect::<Vec<_>>())
        .bind(attempted.iter().map(|c| c.record.response_head.as_deref()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let applied: HashSet<i64> = moved
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let failed: Vec<&Completion> = attempted
            .into_iter()
            .filter(|c| applied.contains(&c.delivery_id) && c.next != AfterAttempt::Succeeded)
            .collect();
        if !failed.is_empty() {
            sqlx::query(
                "INSERT INTO delivery_attempts (delivery_id, attempt, at_ms, status_code, error, latency_ms, response_head) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::text[]) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(failed.iter().map(|c| c.delivery_id).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| i64::from(c.attempt)).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| unix_ms(c.record.at)).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| c.record.status_code.map(i64::from)).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| c.record.error.as_deref()).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| latency_ms(c)).collect::<Vec<_>>())
            .bind(failed.iter().map(|c| c.record.response_head.as_deref()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let finished = finished_streams(&moved)?;
        let made_due =
            unblock_next_of_streams(&mut tx, &finished, batch_time_ms(completions)).await?;
        if made_due {
            notify_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(Recorded {
            applied: u64::try_from(applied.len()).unwrap_or(0),
            made_due,
        })
    }

    async fn rescue_expired_leases(
        &self,
        expired_before: OffsetDateTime,
        now: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, StoreError> {
        let now_ms = unix_ms(now);
        let expired: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM deliveries WHERE state = '{}' AND lease_expires_at_ms < $1",
            DeliveryState::Running
        ))
        .bind(unix_ms(expired_before))
        .fetch_all(&self.queue_pool)
        .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_queue().await?;
        // Streams first, then rows, as every writer takes them. The update checks the
        // lease again: its owner may have finished, or another node rescued it, meanwhile.
        let streams = streams_of(&mut tx, &expired).await?;
        lock_streams(
            &mut tx,
            streams.iter().map(|(c, s)| (c.as_str(), s.as_str())),
        )
        .await?;
        let rescued = sqlx::query(&format!(
            "UPDATE deliveries d SET next_attempt_at_ms = $1, lease_owner = NULL, lease_expires_at_ms = NULL, \
                 state = {} \
             WHERE d.id = ANY($4) AND d.state = '{}' AND d.lease_expires_at_ms < $2 \
             RETURNING d.id, d.attempts, d.config_id, d.stream, d.state",
            rescued_state("d.attempts", "$3"),
            DeliveryState::Running
        ))
        .bind(now_ms)
        .bind(unix_ms(expired_before))
        .bind(i64::from(max_attempts))
        .bind(&expired)
        .fetch_all(&mut *tx)
        .await?;
        if rescued.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = rescued
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        let attempts: Vec<i64> = rescued
            .iter()
            .map(|r| r.try_get("attempts"))
            .collect::<Result<_, _>>()?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, at_ms, error, latency_ms) \
             SELECT id, attempt, $3, $4, 0 FROM unnest($1::bigint[], $2::bigint[]) AS t(id, attempt) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(attempts)
        .bind(now_ms)
        .bind(LEASE_EXPIRED)
        .execute(&mut *tx)
        .await?;
        // A rescued delivery that is finished (its config was deleted, or it has no attempt
        // left) lets its stream move on.
        unblock_next_of_streams(&mut tx, &finished_streams(&rescued)?, now_ms).await?;
        notify_work(&mut tx).await?;
        tx.commit().await?;
        Ok(u64::try_from(ids.len()).unwrap_or(0))
    }

    async fn list_deliveries(
        &self,
        project: &ProjectId,
        filter: &DeliveryFilter,
        page: Page,
    ) -> Result<(u64, Vec<DeliveryView>), StoreError> {
        let filtered = delivery_log_where(filter);
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM deliveries d {filtered} LIMIT $3) counted"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(i64::try_from(MOST_COUNTED_DELIVERIES).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        let (limit, offset) = limit_offset(page);
        let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
            "SELECT {DELIVERY_ROW_COLUMNS} \
             FROM deliveries d JOIN events e ON e.seq = d.event_seq {filtered} ORDER BY d.id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(project.as_str())
        .bind(filter.event_id.as_deref())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let attempts = sqlx::query_as::<_, AttemptRow>(
            "SELECT delivery_id, at_ms, status_code, error, latency_ms, response_head FROM delivery_attempts \
             WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok((
            u64::try_from(total).unwrap_or(0),
            delivery_views(rows, attempts)?,
        ))
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
        let mut tx = self.begin().await?;
        let Some(events) =
            crate::history::replay_events::<Self>(&mut tx, project, flavour, since, until).await?
        else {
            return Ok(Replayed::TooMany);
        };
        let events = plan.matching(events)?;
        let seqs = events
            .iter()
            .map(|e| (e.id.as_str().to_owned(), e.seq))
            .collect();
        let queued = super::ingest::insert_deliveries(
            &mut tx,
            project,
            flavour,
            &plan.accepting(&events),
            &seqs,
            unix_ms(now),
        )
        .await?;
        tx.commit().await?;
        Ok(Replayed::Queued(queued))
    }

    async fn retry_delivery(
        &self,
        project: &ProjectId,
        id: i64,
        now: OffsetDateTime,
    ) -> Result<RetryOutcome, StoreError> {
        let mut tx = self.begin().await?;
        // A delivery's config and stream never change: read them, then lock the stream
        // before the row, in the order every other writer of the stream takes them.
        let found = sqlx::query(
            "SELECT config_id, stream FROM deliveries WHERE project_id = $1 AND id = $2",
        )
        .bind(project.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(found) = found else {
            return Ok(RetryOutcome::NotFound);
        };
        let config_id: String = found.try_get("config_id")?;
        let stream: String = found.try_get("stream")?;
        lock_streams(&mut tx, [(config_id.as_str(), stream.as_str())]).await?;
        let row = sqlx::query(&format!(
            "SELECT d.state, {TARGET_EXISTS} AS target_exists, EXISTS (SELECT 1 FROM deliveries o \
                 WHERE o.config_id = d.config_id AND o.stream = d.stream AND o.id <> d.id AND o.state IN {OPEN}) AS busy \
             FROM deliveries d WHERE d.id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        // Retention may have deleted it (a finished delivery) since it was found.
        let Some(row) = row else {
            return Ok(RetryOutcome::NotFound);
        };
        let status = stored_state(id, row.try_get("state")?)?.status();
        if !matches!(status, DeliveryStatus::Dead | DeliveryStatus::Failed) {
            return Ok(RetryOutcome::NotRetryable(status));
        }
        if !row.try_get::<bool, _>("target_exists")? {
            return Ok(RetryOutcome::ConfigDeleted);
        }
        // A dead delivery re-enters its stream's queue: it waits if another is open there.
        let next_state = if status == DeliveryStatus::Failed {
            DeliveryState::Retrying
        } else if row.try_get::<bool, _>("busy")? {
            DeliveryState::Blocked
        } else {
            DeliveryState::Pending
        };
        sqlx::query("UPDATE deliveries SET state = $1, next_attempt_at_ms = $2 WHERE id = $3")
            .bind(next_state.as_str())
            .bind(unix_ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if next_state != DeliveryState::Blocked {
            notify_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(RetryOutcome::Requeued)
    }

    async fn relay_work_signals(
        &self,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        let connection = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(self.listen_options.clone());
        let mut listener = PgListener::connect_with(&connection).await?;
        listener.listen(WORK_CHANNEL).await?;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(_) => wake.notify_one(),
                    // The connection dropped and will be re-made on the next call; what
                    // was announced meanwhile is lost, so look at the queue now.
                    None => {
                        tracing::warn!("the LISTEN connection to PostgreSQL dropped; reconnecting");
                        wake.notify_one();
                    }
                },
            }
        }
    }
}

/// Cancels the deliveries of a deleted config (or app callback) that have not gone out.
/// The caller has already deleted or changed the target row, so no ingest can add to its
/// streams any more; the streams are locked so that no completion unblocks one of them
/// meanwhile.
pub(super) async fn cancel_open_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    config_id: &str,
) -> Result<(), StoreError> {
    let streams: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT stream FROM deliveries WHERE config_id = $1 AND state IN {OPEN}"
    ))
    .bind(config_id)
    .fetch_all(&mut **tx)
    .await?;
    lock_streams(tx, streams.iter().map(|s| (config_id, s.as_str()))).await?;
    sqlx::query(&format!(
        "UPDATE deliveries SET state = '{}' WHERE config_id = $1 AND state IN {NOT_SENT}",
        DeliveryState::Cancelled
    ))
    .bind(config_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An attempt's latency as PostgreSQL stores it.
fn latency_ms(completion: &Completion) -> i64 {
    i64::try_from(completion.record.latency_ms).unwrap_or(i64::MAX)
}
