//! What the worker and `/metrics` read about the delivery queue, on both backends: the SQL
//! is the same on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`QueueStatus`] from
//! the blanket implementation below. It reads on the workers' pool.

use async_trait::async_trait;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use time::OffsetDateTime;

use crate::backend::SqlBackend;
use crate::{QueueStats, QueueStatus, StoreError};

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
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM deliveries WHERE state IN ('pending', 'retrying') \
             AND next_attempt_at_ms > $1",
        )
        .bind(unix_ms(now))
        .fetch_one(self.queue_pool())
        .await?;
        Ok(ms.map(from_unix_ms))
    }

    async fn queue_stats(&self, now: OffsetDateTime) -> Result<QueueStats, StoreError> {
        let by_state = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
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
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at_ms) FROM deliveries WHERE state IN ('pending', 'retrying') \
             AND next_attempt_at_ms <= $1",
        )
        .bind(unix_ms(now))
        .fetch_one(self.queue_pool())
        .await?;
        Ok(QueueStats {
            by_state,
            oldest_due_at: oldest.map(from_unix_ms),
        })
    }
}
