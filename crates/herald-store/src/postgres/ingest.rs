//! The ingest plan on PostgreSQL: a batch's earlier answers, its deliveries inserted as a
//! set under the locks of the configs matched and of the streams they touch, and the
//! answers of ids another node accepted first.

use std::collections::{HashMap, HashSet};

use herald_core::event::EventId;
use herald_core::project::ProjectId;
use sqlx::{Postgres, Row, Transaction};

use super::notify_work;
use super::streams::lock_streams;
use crate::accept::{
    Accepting, Flavour, answers_in_order, earlier_answers_of, new_deliveries, stream_pairs,
};
use crate::rows::CorruptRow;
use crate::state::OPEN;
use crate::{Accepted, DeliveryState, StoreError};

/// The stored answers of ids the project already used.
pub(super) async fn earlier_answers(
    tx: &mut Transaction<'_, Postgres>,
    project: &ProjectId,
    ids: &[&str],
) -> Result<HashMap<String, u32>, StoreError> {
    let rows = sqlx::query(
        "SELECT event_id, deliveries FROM events WHERE project_id = $1 AND event_id = ANY($2)",
    )
    .bind(project.as_str())
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(earlier_answers_of(&rows)?)
}

/// The config columns a new delivery copies its signing from, by flavour. The URL comes
/// from the match itself, so that it agrees with the endpoint computed from it.
fn signing_source(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Live => "SELECT id, sign_type, key_sealed FROM live_callback_configs",
        // RTC signs with HMAC-SHA256 over the body; the sign type column is not read.
        Flavour::Rtc => {
            "SELECT app_id AS id, 'HMACSHA256' AS sign_type, auth_key_sealed AS key_sealed FROM rtc_apps"
        }
    }
}

/// Inserts the events and their deliveries (see [`crate::accept::new_deliveries`]) and
/// returns the ids another node accepted first, between this transaction's look at the
/// earlier answers and its insert: those keep the other node's answer and get nothing here.
pub(super) async fn accept(
    tx: &mut Transaction<'_, Postgres>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: Vec<Accepting<'_>>,
    now_ms: i64,
) -> Result<Vec<String>, StoreError> {
    if accepting.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = accepting.iter().map(|a| a.id.as_str()).collect();
    let payloads: Vec<&str> = accepting.iter().map(|a| a.payload.as_str()).collect();
    let counts: Vec<i64> = accepting
        .iter()
        .map(|a| i64::from(a.deliveries()))
        .collect();
    // In id order, so that two nodes accepting overlapping batches wait on each other's
    // ids in the same order instead of deadlocking.
    let seqs: HashMap<String, i64> = sqlx::query(
        "INSERT INTO events (project_id, event_id, flavour, payload, deliveries, accepted_at_ms) \
         SELECT $1, id, $2, payload, n, $3 FROM unnest($4::text[], $5::text[], $6::bigint[]) AS t(id, payload, n) \
         ORDER BY id \
         ON CONFLICT (project_id, event_id) DO NOTHING RETURNING event_id, seq",
    )
    .bind(project.as_str())
    .bind(flavour.name())
    .bind(now_ms)
    .bind(&ids)
    .bind(&payloads)
    .bind(&counts)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("event_id")?, r.try_get("seq")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let (accepting, raced): (Vec<_>, Vec<_>) = accepting
        .into_iter()
        .partition(|a| seqs.contains_key(a.id.as_str()));
    let raced = raced.iter().map(|a| a.id.as_str().to_owned()).collect();
    insert_deliveries(tx, project, flavour, &accepting, &seqs, now_ms).await?;
    Ok(raced)
}

/// Inserts the deliveries of `accepting` (events stored, `seqs` their `seq` by event id)
/// under the locks of their streams: per (config, stream), the first is pending unless the
/// stream already has an open delivery, and every later one waits. A target deleted
/// meanwhile gets none. Returns how many were inserted.
pub(super) async fn insert_deliveries(
    tx: &mut Transaction<'_, Postgres>,
    project: &ProjectId,
    flavour: Flavour,
    accepting: &[Accepting<'_>],
    seqs: &HashMap<String, i64>,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let pairs = stream_pairs(accepting);
    lock_streams(tx, pairs.iter().map(|[c, s]| (*c, *s))).await?;
    let (configs, streams): (Vec<&str>, Vec<&str>) = pairs.iter().map(|[c, s]| (*c, *s)).unzip();
    // One index probe per stream.
    let busy: HashSet<(String, String)> = sqlx::query(&format!(
        "SELECT DISTINCT t.c AS config_id, t.s AS stream FROM unnest($1::text[], $2::text[]) AS t(c, s) \
         WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.config_id = t.c AND d.stream = t.s \
             AND d.state IN {OPEN})"
    ))
    .bind(configs)
    .bind(streams)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("config_id")?, r.try_get("stream")?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let deliveries = new_deliveries(project, accepting, busy)?;
    if deliveries.is_empty() {
        return Ok(0);
    }
    let seq_of = |event_id: &str| {
        seqs.get(event_id).copied().ok_or_else(|| CorruptRow {
            table: "events",
            id: event_id.to_owned(),
            reason: "insert returned no seq".into(),
        })
    };
    let event_seqs: Vec<i64> = deliveries
        .iter()
        .map(|d| seq_of(d.event_id))
        .collect::<Result<_, _>>()?;
    let inserted = sqlx::query(&format!(
        "INSERT INTO deliveries (project_id, event_seq, config_id, stream, endpoint, url, sign_type, \
             key_sealed, state, next_attempt_at_ms, created_at_ms) \
         SELECT $1, t.seq, t.config_id, t.stream, t.endpoint, t.url, c.sign_type, c.key_sealed, t.state, $2, $2 \
         FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
             WITH ORDINALITY AS t(seq, config_id, stream, endpoint, url, state, ord) \
         JOIN ({}) c ON c.id = t.config_id \
         ORDER BY t.ord",
        signing_source(flavour)
    ))
    .bind(project.as_str())
    .bind(now_ms)
    .bind(event_seqs)
    .bind(deliveries.iter().map(|d| d.config_id).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.stream).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.endpoint.as_str()).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.url).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.state.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    if deliveries.iter().any(|d| d.state == DeliveryState::Pending) {
        notify_work(tx).await?;
    }
    Ok(inserted.rows_affected())
}

/// Finishes an ingest: what another node accepted first is answered as it was there.
pub(super) async fn commit_ingest<'e>(
    mut tx: Transaction<'_, Postgres>,
    project: &ProjectId,
    ids: impl Iterator<Item = &'e EventId>,
    raced: Vec<String>,
    mut answers: HashMap<String, u32>,
) -> Result<Vec<Accepted>, StoreError> {
    if !raced.is_empty() {
        let raced: Vec<&str> = raced.iter().map(String::as_str).collect();
        answers.extend(earlier_answers(&mut tx, project, &raced).await?);
    }
    tx.commit().await?;
    Ok(answers_in_order(ids, &answers))
}
