//! Recording outcomes: the task that writes them in batches as attempts end, and the
//! fallback that writes a refused batch one outcome at a time, so that an outcome the
//! store cannot take ends only its own delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_store::{AfterAttempt, Completion, DeliveryStatus, Recorded, Store, StoreError};
use tokio::sync::{Notify, mpsc};

use super::{BATCH, Outcome};

/// Writes outcomes in batches: whatever has arrived while the last write ran. Wakes the
/// worker when a batch made a stream's next delivery due or scheduled a retry (the worker
/// then learns when to look next); otherwise there is nothing new for a claim to find.
pub(super) async fn record_outcomes(
    store: Arc<dyn Store>,
    mut done: mpsc::Receiver<Outcome>,
    wake: Arc<Notify>,
    retry_scheduled: Arc<AtomicBool>,
) {
    let mut received = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while done.recv_many(&mut received, BATCH).await > 0 {
        let (completions, places): (Vec<_>, Vec<_>) = received.drain(..).unzip();
        batch.extend(completions);
        let made_due = record_batch(store.as_ref(), &batch).await;
        // Recorded: the room is free for the next claim.
        drop(places);
        let mut retrying = false;
        for c in &batch {
            let outcome = match c.next {
                AfterAttempt::NotSent => continue,
                AfterAttempt::Succeeded => "succeeded",
                // The delivery log's name for a delivery waiting for its next attempt.
                AfterAttempt::RetryAt(_) => {
                    retrying = true;
                    DeliveryStatus::Failed.as_str()
                }
                AfterAttempt::Dead => "dead",
            };
            metrics::counter!("herald_deliveries_completed_total", "outcome" => outcome)
                .increment(1);
        }
        batch.clear();
        if retrying {
            retry_scheduled.store(true, Ordering::Release);
        }
        if made_due || retrying {
            wake.notify_one();
        }
    }
}

/// Where outcomes are written: the store (and, in tests, a store that refuses some).
pub(crate) trait OutcomeStore: Sync {
    fn complete<'a>(&'a self, batch: &'a [Completion]) -> Completing<'a>;
}

/// What [`OutcomeStore::complete`] returns: the store's own (boxed) future.
pub(crate) type Completing<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Recorded, StoreError>> + Send + 'a>>;

impl OutcomeStore for dyn Store {
    fn complete<'a>(&'a self, batch: &'a [Completion]) -> Completing<'a> {
        self.complete_deliveries(batch)
    }
}

/// Records a batch of outcomes. When the store refuses the batch, each outcome is written
/// on its own ([`record_one`]), so that one outcome the store cannot take does not hold up
/// the others, nor send their callbacks again. Returns whether the outcomes may have made
/// deliveries due (always, after a refusal: the store did not say).
pub(crate) async fn record_batch(
    store: &(impl OutcomeStore + ?Sized),
    batch: &[Completion],
) -> bool {
    match store.complete(batch).await {
        Ok(recorded) => {
            let attempted = (batch.iter())
                .filter(|c| c.next != AfterAttempt::NotSent)
                .count() as u64;
            if recorded.applied < attempted {
                tracing::info!(
                    stale = attempted - recorded.applied,
                    "outcomes of expired leases were discarded"
                );
            }
            recorded.made_due
        }
        Err(e) => {
            tracing::warn!(error = %e, n = batch.len(), "recording outcomes failed; recording them one by one");
            for completion in batch {
                record_one(store, completion).await;
            }
            true
        }
    }
}

/// Records one outcome. A store that fails to write (a pool timeout, a busy database, a
/// dropped connection, a full disk) is tried again with back-off, with the real outcome,
/// for as long as it takes: the delivery's place in flight is held meanwhile, so a store that cannot
/// write stops the sending instead of filling memory (and if the lease expires first, the
/// rescuer re-queues the delivery; nothing is lost either way). Only when the store refuses
/// the outcome's data ([`StoreError::is_about_the_data`]: a poison pill, which would fail
/// forever) is it reduced to "dead, and why", kept for a manual retry.
async fn record_one(store: &(impl OutcomeStore + ?Sized), completion: &Completion) {
    let mut backoff = Backoff::default();
    let mut outcome = std::borrow::Cow::Borrowed(completion);
    loop {
        let refused = match store.complete(std::slice::from_ref(outcome.as_ref())).await {
            Ok(_) => {
                if matches!(outcome, std::borrow::Cow::Owned(_)) {
                    tracing::error!(
                        delivery_id = completion.delivery_id,
                        "an outcome the store refused ended its delivery (dead, kept for a manual retry)"
                    );
                }
                return;
            }
            Err(e) => e,
        };
        if refused.is_about_the_data() && matches!(outcome, std::borrow::Cow::Borrowed(_)) {
            tracing::warn!(
                delivery_id = completion.delivery_id, error = %refused,
                "the store refused an outcome's data; ending its delivery"
            );
            outcome = std::borrow::Cow::Owned(
                completion.ended_because(&format!("the outcome could not be recorded: {refused}")),
            );
            continue;
        }
        let wait = backoff.next();
        tracing::error!(
            delivery_id = completion.delivery_id, error = %refused, retry_in = ?wait,
            "recording an outcome failed; trying again"
        );
        tokio::time::sleep(wait).await;
    }
}

/// Waits between tries at a store that failed: 50 ms, doubling up to 5 s.
#[derive(Default)]
struct Backoff {
    tries: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = Duration::from_millis(50).saturating_mul(1 << self.tries.min(7));
        self.tries = self.tries.saturating_add(1);
        wait.min(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    // Test helpers: a failed unwrap is a failed test, which is what it should be.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use herald_core::config::live::{LiveCallbackConfig, LiveConfigRequest};
    use herald_core::event::EventId;
    use herald_core::event::live::LiveEvent;
    use herald_core::project::ProjectId;
    use herald_core::secrets::MasterKey;
    use herald_store::postgres::PgStore;
    use herald_store::sqlite::SqliteStore;
    use herald_store::testing::TestSchema;
    use herald_store::{AttemptRecord, ClaimLimits, DeliveryFilter, Lease, Page};
    use time::OffsetDateTime;

    use super::*;

    /// The real store, except that it refuses the outcome of one delivery that carries the
    /// receiver's answer (as PostgreSQL refused a NUL byte in one), and refuses everything
    /// while it is "down".
    struct Refusing<'a> {
        store: &'a dyn Store,
        poison: i64,
        down_for: AtomicU32,
    }

    impl OutcomeStore for Refusing<'_> {
        fn complete<'a>(&'a self, batch: &'a [Completion]) -> Completing<'a> {
            Box::pin(async move {
                if self
                    .down_for
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    // What a dropped connection or a pool timeout looks like.
                    return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
                }
                if batch
                    .iter()
                    .any(|c| c.delivery_id == self.poison && c.record.response_head.is_some())
                {
                    return Err(StoreError::Database(sqlx::Error::Database(Box::new(
                        BadData,
                    ))));
                }
                self.store.complete_deliveries(batch).await
            })
        }
    }

    /// PostgreSQL's refusal of a NUL byte in text: SQLSTATE 22021, a data exception.
    #[derive(Debug)]
    struct BadData;

    impl std::fmt::Display for BadData {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("invalid byte sequence for encoding UTF8: 0x00")
        }
    }

    impl std::error::Error for BadData {}

    impl sqlx::error::DatabaseError for BadData {
        fn message(&self) -> &str {
            "invalid byte sequence for encoding UTF8: 0x00"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some("22021".into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn project() -> ProjectId {
        ProjectId::parse("project_id", "p1").unwrap()
    }

    /// Three deliveries on three streams, claimed by worker `w`, and their outcomes: each
    /// a success with the receiver's answer.
    async fn three_outcomes(store: &dyn Store) -> Vec<Completion> {
        let now = OffsetDateTime::now_utc();
        let body = br#"{"publish_domain": "d.example.com", "app": "*", "notify_callback_url": "https://cb.example.com/x"}"#;
        let config = LiveCallbackConfig {
            id: "cfg".into(),
            project_id: project(),
            spec: LiveConfigRequest::parse(body, false)
                .unwrap()
                .into_new_spec(),
            create_time: now,
            update_time: now,
        };
        store.insert_live_config(&config).await.unwrap();
        let events: Vec<_> = ["e1", "e2", "e3"]
            .iter()
            .map(|id| {
                let event = serde_json::json!({"event_type": "RECORD_FILE_COMPLETE",
                    "publish_domain": "d.example.com", "app": "live", "stream": id});
                (
                    EventId::parse("event_id", id).unwrap(),
                    LiveEvent::parse("", &event).unwrap(),
                )
            })
            .collect();
        store.ingest_live(&project(), &events, now).await.unwrap();
        let lease = Lease {
            owner: "w".into(),
            expires_at: now + time::Duration::minutes(5),
        };
        let none = HashMap::new();
        let limits = ClaimLimits {
            total: 10,
            per_endpoint: 10,
            in_flight: &none,
            per_project: 10,
            project_in_flight: &none,
            followers: 0,
        };
        let mut claimed = store
            .claim_due_deliveries(now, limits, &lease)
            .await
            .unwrap();
        claimed.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        assert_eq!(claimed.len(), 3);
        claimed
            .iter()
            .map(|d| Completion {
                delivery_id: d.id,
                attempt: d.attempt,
                lease_owner: "w".into(),
                record: AttemptRecord {
                    at: now,
                    status_code: Some(200),
                    error: None,
                    latency_ms: 3,
                    response_head: Some("ok".into()),
                },
                next: AfterAttempt::Succeeded,
            })
            .collect()
    }

    /// (event id, status, first attempt's error) of every delivery, by event id.
    async fn statuses(store: &dyn Store) -> Vec<(String, DeliveryStatus, Option<String>)> {
        let page = Page {
            offset: 0,
            limit: 100,
        };
        let (_, views) = store
            .list_deliveries(&project(), &DeliveryFilter::default(), page)
            .await
            .unwrap();
        let mut found: Vec<_> = views
            .into_iter()
            .map(|v| (v.event_id, v.status, v.attempts[0].error.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// No poison pills: one outcome the store refuses ends its own delivery (dead, with the
    /// reason) and the others of its batch are recorded as they were.
    async fn a_refused_outcome_ends_only_its_delivery(store: &dyn Store) {
        let batch = three_outcomes(store).await;
        let refusing = Refusing {
            store,
            poison: batch[1].delivery_id,
            down_for: AtomicU32::new(0),
        };
        record_batch(&refusing, &batch).await;
        let found = statuses(store).await;
        assert_eq!(found[0].1, DeliveryStatus::Succeeded);
        assert_eq!(found[2].1, DeliveryStatus::Succeeded);
        assert_eq!(
            (found[1].0.as_str(), found[1].1),
            ("e2", DeliveryStatus::Dead)
        );
        let reason = found[1].2.clone().unwrap();
        assert!(
            reason.starts_with("the outcome could not be recorded: ") && reason.contains("0x00"),
            "{reason}"
        );
    }

    /// A store that fails to write is not a poison pill, however many tries it fails (the
    /// batch, then each outcome, then again): outcomes wait for it and are recorded as they
    /// were, none ends its delivery.
    async fn outcomes_wait_for_a_store_that_is_down(store: &dyn Store) {
        let batch = three_outcomes(store).await;
        let refusing = Refusing {
            store,
            poison: -1,
            down_for: AtomicU32::new(2),
        };
        record_batch(&refusing, &batch).await;
        assert_eq!(
            statuses(store).await,
            [
                ("e1".into(), DeliveryStatus::Succeeded, None),
                ("e2".into(), DeliveryStatus::Succeeded, None),
                ("e3".into(), DeliveryStatus::Succeeded, None),
            ]
        );
    }

    async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), MasterKey::generate().0)
            .await
            .unwrap();
        (store, dir)
    }

    async fn postgres() -> Option<(PgStore, TestSchema)> {
        let schema = TestSchema::create().await?;
        let store = PgStore::open(&schema.settings(4), MasterKey::generate().0)
            .await
            .unwrap();
        Some((store, schema))
    }

    #[tokio::test]
    async fn sqlite_a_refused_outcome_ends_only_its_delivery() {
        let (store, _dir) = sqlite().await;
        a_refused_outcome_ends_only_its_delivery(&store).await;
    }

    #[tokio::test]
    async fn postgres_a_refused_outcome_ends_only_its_delivery() {
        if let Some((store, _schema)) = postgres().await {
            a_refused_outcome_ends_only_its_delivery(&store).await;
        }
    }

    #[tokio::test]
    async fn sqlite_outcomes_wait_for_a_store_that_is_down() {
        let (store, _dir) = sqlite().await;
        outcomes_wait_for_a_store_that_is_down(&store).await;
    }

    #[tokio::test]
    async fn postgres_outcomes_wait_for_a_store_that_is_down() {
        if let Some((store, _schema)) = postgres().await {
            outcomes_wait_for_a_store_that_is_down(&store).await;
        }
    }
}
