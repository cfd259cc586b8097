//! Retention (SPEC §6) on both backends: the SQL that deletes finished history is the same
//! on SQLite and PostgreSQL, so every [`SqlBackend`] gets [`Retention`] from the blanket
//! implementation below. It writes on the workers' pool.
//!
//! The events to delete are picked once, and everything after works on that list: under
//! PostgreSQL's READ COMMITTED each statement sees the commits made before it began, so
//! a pick repeated per statement could pick an event that a completion or a manual retry
//! changed in between (an attempt left pointing at a deleted delivery, or a reopened
//! delivery whose attempts are gone). The picked events' deliveries are then locked, and
//! an event is deleted only if every one of its deliveries is locked and finished: a
//! delivery another writer holds (PostgreSQL skips it rather than wait) or that was
//! reopened keeps its event for a later pass. Each delete repeats the guard as well, so
//! that nothing open is ever deleted.

use std::collections::HashMap;

use async_trait::async_trait;
use herald_core::timefmt::unix_ms;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use time::OffsetDateTime;

use crate::backend::{SqlBackend, json_array};
use crate::rows::stored_state;
use crate::state::{FINISHED, OPEN};
use crate::{Retention, StoreError};

/// What retention learnt of one picked event's deliveries.
#[derive(Default)]
struct Picked {
    /// Its deliveries, as many as there are.
    siblings: i64,
    /// Those locked here, and whether each is finished.
    locked: Vec<(i64, bool)>,
}

#[async_trait]
impl<B> Retention for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'r> &'r str: ColumnIndex<<B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    /// One pick of the oldest finished events (by the acceptance-time index), one locking
    /// read of their deliveries, then three deletes by those lists in one write
    /// transaction: attempts, then deliveries, then the events, so no row is left
    /// pointing at a deleted one.
    async fn delete_finished_events(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut w = self.queue_tx().await?;
        let events: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT e.seq FROM events e WHERE e.accepted_at_ms < $1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries o WHERE o.event_seq = e.seq AND o.state IN {OPEN}) \
             ORDER BY e.accepted_at_ms, e.seq LIMIT $2"
        ))
        .bind(unix_ms(before))
        .bind(i64::from(limit))
        .fetch_all(&mut *w.tx)
        .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut picked: HashMap<i64, Picked> =
            events.iter().map(|seq| (*seq, Picked::default())).collect();
        let rows = sqlx::query(&format!(
            "SELECT d.id, d.event_seq, d.state, \
                 (SELECT COUNT(*) FROM deliveries x WHERE x.event_seq = d.event_seq) AS siblings \
             FROM deliveries d WHERE d.event_seq IN {} ORDER BY d.id{}",
            B::ids_of_json("$1"),
            B::LOCK_ROWS_OR_SKIP
        ))
        .bind(json_array(&events))
        .fetch_all(&mut *w.tx)
        .await?;
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            let state: String = row.try_get("state")?;
            let finished = stored_state(id, &state)?.is_finished();
            if let Some(event) = picked.get_mut(&row.try_get::<i64, _>("event_seq")?) {
                event.siblings = row.try_get("siblings")?;
                event.locked.push((id, finished));
            }
        }
        let (mut events, mut deliveries) = (Vec::new(), Vec::new());
        for (seq, event) in picked {
            let whole = i64::try_from(event.locked.len()).unwrap_or(i64::MAX) == event.siblings;
            if whole && event.locked.iter().all(|(_, finished)| *finished) {
                events.push(seq);
                deliveries.extend(event.locked.into_iter().map(|(id, _)| id));
            }
        }
        let (events, deliveries) = (json_array(&events), json_array(&deliveries));
        sqlx::query(&format!(
            "DELETE FROM delivery_attempts WHERE delivery_id IN \
             (SELECT d.id FROM deliveries d WHERE d.id IN {} AND d.state IN {FINISHED})",
            B::ids_of_json("$1")
        ))
        .bind(&deliveries)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(&format!(
            "DELETE FROM deliveries WHERE id IN {} AND state IN {FINISHED}",
            B::ids_of_json("$1")
        ))
        .bind(&deliveries)
        .execute(&mut *w.tx)
        .await?;
        let done = sqlx::query(&format!(
            "DELETE FROM events WHERE seq IN {} \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq)",
            B::ids_of_json("$1")
        ))
        .bind(&events)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(B::rows_affected(&done))
    }
}
