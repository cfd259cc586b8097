//! Retention (SPEC §6): the cleaner that deletes finished history older than the operator
//! keeps, so that events, deliveries and attempts do not grow without bound.

use std::time::Duration;

use herald_store::Retention;
use herald_store::supervision::Rounds;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Most events one delete removes: a pass is many short transactions, never one long one
/// that would hold ingest and the workers up.
const BATCH: u32 = 1000;
/// The longest wait between passes (SPEC: at least once a minute).
const MOST_BETWEEN_PASSES: Duration = Duration::from_secs(60);

/// Deletes finished events accepted more than `keep` ago, with their deliveries and
/// attempts, until `cancel` fires. Runs a pass every minute, or every `keep / 2` when that
/// is shorter (a short retention is a test or a small disk: it is honoured closely).
pub async fn run(store: &(dyn Retention + Sync), keep: Duration, cancel: CancellationToken) {
    let every = (keep / 2).clamp(Duration::from_secs(1), MOST_BETWEEN_PASSES);
    let mut rounds = Rounds::new(every, cancel.clone());
    while rounds.next().await {
        let before = OffsetDateTime::now_utc() - keep;
        let deleted = clean(store, before, &cancel).await;
        if deleted > 0 {
            tracing::debug!(deleted, "retention: deleted finished events");
        }
    }
}

/// One pass: batches until one comes back short. Returns how many events it deleted.
pub async fn clean(
    store: &(dyn Retention + Sync),
    before: OffsetDateTime,
    cancel: &CancellationToken,
) -> u64 {
    let mut total = 0;
    while !cancel.is_cancelled() {
        match store.delete_finished_events(before, BATCH).await {
            Ok(n) => {
                metrics::counter!("herald_retention_deleted_total").increment(n);
                total += n;
                if n < u64::from(BATCH) {
                    break;
                }
                // Let ingest and the workers have the store between batches.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: deleting finished events failed; trying again at the next pass");
                break;
            }
        }
    }
    total
}
