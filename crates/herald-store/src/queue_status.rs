//! What the worker and `/metrics` read about the delivery queue, on both backends: the SQL
//! is the same on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`QueueStatus`] from
//! the blanket implementation below. It reads on the workers' pool.

use async_trait::async_trait;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use time::OffsetDateTime;

use crate::backend::SqlBackend;
use crate::state::DUE;
use crate::{DeliveryState, EndpointAttempts, QueueStats, QueueStatus, StoreError};
use herald_core::config::callback_url::CallbackUrl;
use herald_core::project::ProjectId;
use std::collections::BTreeMap;

#[async_trait]
impl<B> QueueStatus for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<String>: Decode<'q, B::Db>,
    for<'r> &'r str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    async fn next_due_after(
        &self,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MIN(next_attempt_at_ms) FROM deliveries WHERE state IN {DUE} \
             AND next_attempt_at_ms > $1"
        ))
        .bind(unix_ms(now))
        .fetch_one(self.queue_pool())
        .await?;
        Ok(ms.map(from_unix_ms))
    }

    /// Deliveries leased in memory ([`SqlBackend::leases_not_in_rows`]) count as `running`,
    /// not in the state their rows keep, and are not the oldest due.
    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let leased = self.leases_not_in_rows();
        let mut by_state: Vec<(String, u64)> = sqlx::query(B::COUNT_BY_STATE)
            .fetch_all(self.queue_pool())
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("state")?,
                    u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()?;
        if !leased.is_empty() {
            for (state, n) in &mut by_state {
                let in_flight = leased.values().filter(|s| **s == state.as_str()).count();
                *n = n.saturating_sub(in_flight as u64);
            }
            let running = DeliveryState::Running.as_str();
            by_state.retain(|(state, _)| state != running);
            by_state.push((running.into(), leased.len() as u64));
        }
        // The first due row that is not leased: at most all the leased ones come before it.
        let oldest: Option<i64> = sqlx::query(&format!(
            "SELECT id, next_attempt_at_ms FROM deliveries WHERE state IN {DUE} \
             AND next_attempt_at_ms <= $1 ORDER BY next_attempt_at_ms, id LIMIT $2"
        ))
        .bind(unix_ms(now))
        .bind(i64::try_from(leased.len() + 1).unwrap_or(i64::MAX))
        .fetch_all(self.queue_pool())
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("id")?, r.try_get("next_attempt_at_ms")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?
        .into_iter()
        .find(|(id, _)| !leased.contains_key(id))
        .map(|(_, due)| due);
        Ok(QueueStats {
            by_state,
            oldest_due_at: oldest.map(from_unix_ms),
        })
    }

    /// An attempt at `t` leaves its delivery's `next_attempt_at_ms` at `t` or later for
    /// good (the outcome sets it to when it finished or to the retry; a manual retry to
    /// a later now), so the window's attempts are those of deliveries due since it began.
    async fn endpoint_attempts(
        &self,
        project: &ProjectId,
        since: OffsetDateTime,
        errors_since: OffsetDateTime,
    ) -> Result<Vec<EndpointAttempts>, StoreError> {
        let mut by_endpoint: BTreeMap<String, EndpointAttempts> = BTreeMap::new();
        let urls: Vec<String> = sqlx::query_scalar(
            "SELECT notify_callback_url FROM live_callback_configs \
                 WHERE project_id = $1 AND notify_callback_url IS NOT NULL \
             UNION SELECT callback_url FROM rtc_apps WHERE project_id = $1 AND callback_url IS NOT NULL",
        )
        .bind(project.as_str())
        .fetch_all(self.pool())
        .await?;
        for url in urls {
            if let Ok(url) = CallbackUrl::parse("url", &url, true) {
                endpoint_entry(&mut by_endpoint, url.endpoint(project));
            }
        }
        // The failed attempts are rows of delivery_attempts (so were the successes of
        // deliveries finished before issue 29); a success is kept in its delivery's row.
        let counts = sqlx::query(
            "SELECT endpoint, COUNT(*) AS n, SUM(ok) AS ok FROM ( \
                 SELECT d.endpoint AS endpoint, \
                     CASE WHEN a.status_code >= 200 AND a.status_code < 300 THEN 1 ELSE 0 END AS ok \
                 FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id \
                 WHERE d.project_id = $1 AND d.next_attempt_at_ms >= $2 AND a.at_ms >= $2 \
                 UNION ALL SELECT d.endpoint, 1 FROM deliveries d \
                 WHERE d.project_id = $1 AND d.next_attempt_at_ms >= $2 AND d.success_at_ms >= $2) attempts \
             GROUP BY endpoint",
        )
        .bind(project.as_str())
        .bind(unix_ms(since))
        .fetch_all(self.pool())
        .await?;
        for row in counts {
            let e = endpoint_entry(&mut by_endpoint, row.try_get("endpoint")?);
            e.attempts = u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0);
            e.successes = u64::try_from(row.try_get::<i64, _>("ok")?).unwrap_or(0);
        }
        let errors = sqlx::query(
            "SELECT d.endpoint AS endpoint, a.error AS error, a.at_ms AS at_ms \
             FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id \
             WHERE d.project_id = $1 AND d.next_attempt_at_ms >= $2 AND a.at_ms >= $2 \
                 AND a.error IS NOT NULL \
             ORDER BY a.at_ms DESC LIMIT 1000",
        )
        .bind(project.as_str())
        .bind(unix_ms(errors_since))
        .fetch_all(self.pool())
        .await?;
        for row in errors {
            let e = endpoint_entry(&mut by_endpoint, row.try_get("endpoint")?);
            if e.last_error.is_none() {
                let error: Option<String> = row.try_get("error")?;
                let at: i64 = row.try_get("at_ms")?;
                e.last_error = error.map(|error| (error, from_unix_ms(at)));
            }
        }
        Ok(by_endpoint.into_values().collect())
    }
}

/// `endpoint`'s figures in `by_endpoint`, empty until something is counted.
fn endpoint_entry(
    by_endpoint: &mut BTreeMap<String, EndpointAttempts>,
    endpoint: String,
) -> &mut EndpointAttempts {
    by_endpoint
        .entry(endpoint.clone())
        .or_insert(EndpointAttempts {
            endpoint,
            ..EndpointAttempts::default()
        })
}
