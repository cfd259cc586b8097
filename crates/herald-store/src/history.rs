//! The queue's history read back for bulk retries and replays: the same SQL on every
//! backend, written once, generic over the backend's database (see [`crate::backend`]).
//! Each backend's delivery queue then does what differs: re-queueing under its own locks,
//! inserting the replayed deliveries its own way.

use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};
use time::OffsetDateTime;

use crate::accept::{Flavour, REPLAY_EVENTS, StoredEvent};
use crate::backend::SqlBackend;
use crate::deliveries::{RetryFilter, bulk_retry_candidates};
use crate::{REPLAY_MOST, StoreError};

/// The deliveries a bulk retry re-queues, oldest first, at most `limit`
/// ([`crate::DeliveryQueue::bulk_retry_ids`]).
pub(crate) async fn bulk_retry_ids<B>(
    store: &B,
    project: &ProjectId,
    filter: &RetryFilter,
    now: OffsetDateTime,
    limit: usize,
) -> Result<Vec<i64>, StoreError>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db> + Type<B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    Ok(
        sqlx::query_scalar(&bulk_retry_candidates(filter.status, B::payload_text))
            .bind(project.as_str())
            .bind(filter.since.map(unix_ms))
            .bind(filter.until.map(unix_ms))
            .bind(filter.publish_domain.as_deref())
            .bind(filter.app.as_deref())
            .bind(filter.app_id.as_deref())
            .bind(unix_ms(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(store.pool())
            .await?,
    )
}

/// The project's retained events of `flavour` accepted in `[since, until)`, in acceptance
/// order, read on `conn` (inside the replay's transaction); `None` when there are more
/// than [`REPLAY_MOST`].
pub(crate) async fn replay_events<B>(
    conn: &mut <B::Db as Database>::Connection,
    project: &ProjectId,
    flavour: Flavour,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Option<Vec<StoredEvent>>, StoreError>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    (i64, String, String): for<'r> sqlx::FromRow<'r, <B::Db as Database>::Row>,
{
    let rows: Vec<(i64, String, String)> = sqlx::query_as(REPLAY_EVENTS)
        .bind(project.as_str())
        .bind(flavour.name())
        .bind(unix_ms(since))
        .bind(unix_ms(until))
        .bind(i64::try_from(REPLAY_MOST + 1).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() > REPLAY_MOST {
        return Ok(None);
    }
    rows.into_iter()
        .map(|(seq, id, payload)| StoredEvent::new(seq, &id, payload))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}
