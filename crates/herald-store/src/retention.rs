//! Retention (SPEC §6) on both backends: the SQL that deletes finished history is the same
//! on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`Retention`] from the blanket
//! implementation below. It writes on the workers' pool.

use async_trait::async_trait;
use herald_core::timefmt::unix_ms;
use sqlx::{Database, Encode, Executor, IntoArguments, Type};
use time::OffsetDateTime;

use crate::backend::SqlBackend;
use crate::state::OPEN as OPEN_STATES;
use crate::{Retention, StoreError};

#[async_trait]
impl<B> Retention for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Type<B::Db>,
{
    /// Three deletes in one write transaction, each over the same pick (the
    /// oldest finished events, by the acceptance-time index): attempts, then
    /// deliveries, then the events, so no row is left pointing at a deleted one.
    async fn delete_finished_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let pick = format!(
            "SELECT e.seq FROM events e WHERE e.accepted_at_ms < $1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state IN {OPEN_STATES}) \
             ORDER BY e.accepted_at_ms, e.seq LIMIT $2"
        );
        let mut w = self.queue_tx().await?;
        for sql in [
            format!(
                "DELETE FROM delivery_attempts WHERE delivery_id IN \
                 (SELECT d.id FROM deliveries d WHERE d.event_seq IN ({pick}))"
            ),
            format!("DELETE FROM deliveries WHERE event_seq IN ({pick})"),
        ] {
            sqlx::query(&sql)
                .bind(unix_ms(before))
                .bind(i64::from(limit))
                .execute(&mut *w.tx)
                .await?;
        }
        let done = sqlx::query(&format!("DELETE FROM events WHERE seq IN ({pick})"))
            .bind(unix_ms(before))
            .bind(i64::from(limit))
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(B::rows_affected(&done))
    }
}
