//! The per-stream lock protocol on PostgreSQL, which ingest and the delivery queue both
//! follow: whoever decides whether a (config, stream) is busy, or ends its head and
//! unblocks the next, holds the stream's advisory lock first (the rules and the lock order
//! are set out in `delivery_queue`).

use sqlx::{Postgres, Row, Transaction};

use crate::state::OPEN;
use crate::{DeliveryState, StoreError};

/// Takes the advisory lock of each `(config_id, stream)` until the transaction ends, in
/// key order. (PostgreSQL evaluates a volatile function in the select list after the
/// `ORDER BY`, so the locks are taken in that order.) A hash collision only makes two
/// streams take turns.
pub(super) async fn lock_streams<'p>(
    tx: &mut Transaction<'_, Postgres>,
    pairs: impl IntoIterator<Item = (&'p str, &'p str)>,
) -> Result<(), StoreError> {
    let (configs, streams): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    if configs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
             (SELECT DISTINCT hashtextextended(c || chr(31) || s, 0) AS k \
              FROM unnest($1::text[], $2::text[]) AS t(c, s)) keys \
         ORDER BY k",
    )
    .bind(configs)
    .bind(streams)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// After deliveries finished, each of their streams moves on: its oldest open delivery
/// becomes due if it is blocked, read under the streams' locks. True when any did.
pub(super) async fn unblock_next_of_streams(
    tx: &mut Transaction<'_, Postgres>,
    pairs: &[(String, String)],
    now_ms: i64,
) -> Result<bool, StoreError> {
    if pairs.is_empty() {
        return Ok(false);
    }
    lock_streams(tx, pairs.iter().map(|(c, s)| (c.as_str(), s.as_str()))).await?;
    let (configs, streams): (Vec<&str>, Vec<&str>) =
        pairs.iter().map(|(c, s)| (c.as_str(), s.as_str())).unzip();
    // One probe of the by-stream index per stream for its oldest open delivery, which
    // becomes due if it is blocked, then one per id: the plain `id IN (SELECT MIN(id) …
    // GROUP BY …)` read every open row of each stream and joined them to a scan of the
    // whole table.
    let (pending, blocked) = (DeliveryState::Pending, DeliveryState::Blocked);
    let done = sqlx::query(&format!(
        "UPDATE deliveries SET state = '{pending}', next_attempt_at_ms = $1 \
         WHERE state = '{blocked}' AND id = ANY(ARRAY( \
             SELECT (SELECT o.id FROM deliveries o WHERE o.state IN {OPEN} \
                     AND o.config_id = t.c AND o.stream = t.s ORDER BY o.id LIMIT 1) \
             FROM unnest($2::text[], $3::text[]) AS t(c, s)))",
    ))
    .bind(now_ms)
    .bind(configs)
    .bind(streams)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The `(config_id, stream)` of the deliveries `ids`, read without locking: a delivery's
/// config and stream never change, so writers can lock its stream before its row.
pub(super) async fn streams_of(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query("SELECT DISTINCT config_id, stream FROM deliveries WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("config_id")?, r.try_get("stream")?)))
            .collect::<Result<_, sqlx::Error>>()?,
    )
}
