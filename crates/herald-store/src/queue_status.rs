//! What the worker and `/metrics` read about the delivery queue, on both backends: the SQL
//! is the same on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`QueueStatus`] from
//! the blanket implementation below. It reads on the workers' pool.

use async_trait::async_trait;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use time::OffsetDateTime;

use crate::backend::SqlBackend;
use crate::state::DUE;
use crate::{DeliveryState, QueueStats, QueueStatus, StoreError};

#[async_trait]
impl<B> QueueStatus for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Decode<'q, B::Db> + Type<B::Db>,
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

    /// Deliveries leased in memory ([`SqlBackend::leased_in_memory`]) count as `running`,
    /// not in the state their rows keep, and are not the oldest due.
    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let leased = self.leased_in_memory();
        let mut by_state: Vec<(String, u64)> =
            sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
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
}
