//! The dispatcher: claims due deliveries within the concurrency limits, runs each attempt
//! in its own task, and records outcomes in batches.
//!
//! It wakes when the API commits new deliveries, when an attempt finishes, when the next
//! retry comes due, and at the latest after a jittered poll interval. No transaction is
//! open while a callback is in flight: claim and completion are separate short writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use herald_store::{AfterAttempt, ClaimLimits, ClaimedDelivery, Completion, Lease, Store};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::DeliverySettings;
use crate::attempt::attempt;
use crate::client::Sender;

/// Most deliveries leased by one claim, and most outcomes recorded by one write.
const BATCH: usize = 512;
/// How often leases are checked and queue metrics refreshed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// Deliveries this worker holds, by endpoint: sending, or claimed and waiting for one of
/// the endpoint's sending permits.
///
/// A worker claims up to twice an endpoint's cap and sends at most the cap at once, so
/// when a callback finishes the next one starts at once instead of after a round trip to
/// the store. A waiting delivery waits for at most one round of the endpoint's callbacks
/// (each bounded by the delivery timeout), well within its lease.
#[derive(Default)]
struct Held {
    by_endpoint: HashMap<String, (u32, Arc<Semaphore>)>,
    total: u32,
}

impl Held {
    /// Counts a claimed delivery and returns its endpoint's sending permits.
    fn add(&mut self, endpoint: &str, per_endpoint: u32) -> Arc<Semaphore> {
        let (n, permits) = self
            .by_endpoint
            .entry(endpoint.to_owned())
            .or_insert_with(|| (0, Arc::new(Semaphore::new(per_endpoint as usize))));
        *n += 1;
        self.total += 1;
        permits.clone()
    }

    fn remove(&mut self, endpoint: &str) {
        if let Some((n, _)) = self.by_endpoint.get_mut(endpoint) {
            *n -= 1;
            if *n == 0 {
                self.by_endpoint.remove(endpoint);
            }
        }
        self.total = self.total.saturating_sub(1);
    }

    fn counts(&self) -> HashMap<String, u32> {
        self.by_endpoint
            .iter()
            .map(|(e, (n, _))| (e.clone(), *n))
            .collect()
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    sender: Sender,
    settings: Arc<DeliverySettings>,
    /// Signalled after commits that may have made deliveries due.
    wake: Arc<Notify>,
    /// This process's name on the leases it takes.
    owner: Arc<str>,
    held: Arc<Mutex<Held>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        settings: DeliverySettings,
        wake: Arc<Notify>,
    ) -> reqwest::Result<Self> {
        let sender = Sender::new(settings.timeout, settings.allow_private_targets)?;
        let owner = format!(
            "pid{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Ok(Self {
            store,
            sender,
            settings: Arc::new(settings),
            wake,
            owner: owner.into(),
            held: Arc::default(),
        })
    }

    /// Runs until `cancel` fires, then lets in-flight attempts finish within `grace` and
    /// records their outcomes; what is left is picked up again after its lease expires.
    pub async fn run(self, cancel: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_outcomes(
            self.store.clone(),
            done_rx,
            self.wake.clone(),
        ));
        let maintenance = tokio::spawn(maintain(
            self.store.clone(),
            self.wake.clone(),
            cancel.clone(),
        ));
        let signals = tokio::spawn(relay_signals(
            self.store.clone(),
            self.wake.clone(),
            cancel.clone(),
        ));
        while !cancel.is_cancelled() {
            let (claimed, wanted) = match self.claim().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(error = %e, "claiming deliveries failed");
                    (Vec::new(), 1)
                }
            };
            let drained = claimed.len() < wanted;
            for (delivery, permits) in claimed {
                self.spawn_attempt(&tracker, delivery, permits, done_tx.clone());
            }
            if drained {
                let idle = self.idle_wait().await;
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(idle) => {}
                }
            }
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "attempts still in flight at shutdown; their leases will expire and they will be retried"
            );
        }
        drop(done_tx);
        if let Err(e) = recorder.await {
            tracing::error!(error = %e, "outcome recorder stopped abnormally");
        }
        maintenance.abort();
        signals.abort();
    }

    /// Leases as many due deliveries as there is room for. Returns them and how many
    /// were asked for: fewer back means the queue has nothing more due right now.
    async fn claim(
        &self,
    ) -> Result<(Vec<(ClaimedDelivery, Arc<Semaphore>)>, usize), herald_store::StoreError> {
        let (room, held) = {
            let guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let room = self.settings.max_in_flight.saturating_sub(guard.total);
            (
                usize::try_from(room).unwrap_or(0).min(BATCH),
                guard.counts(),
            )
        };
        if room == 0 {
            return Ok((Vec::new(), 1));
        }
        let now = OffsetDateTime::now_utc();
        let lease = Lease {
            owner: self.owner.to_string(),
            expires_at: now + self.settings.lease(),
        };
        let limits = ClaimLimits {
            total: room,
            per_endpoint: self.settings.per_endpoint_in_flight.saturating_mul(2),
            in_flight: &held,
        };
        let claimed = self.store.claim_due_deliveries(now, limits, &lease).await?;
        let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let claimed = claimed
            .into_iter()
            .map(|d| {
                let permits = guard.add(&d.endpoint, self.settings.per_endpoint_in_flight);
                (d, permits)
            })
            .collect();
        metrics::gauge!("herald_deliveries_in_flight").set(f64::from(guard.total));
        Ok((claimed, room))
    }

    fn spawn_attempt(
        &self,
        tracker: &TaskTracker,
        delivery: ClaimedDelivery,
        permits: Arc<Semaphore>,
        done: mpsc::UnboundedSender<Completion>,
    ) {
        let span = tracing::debug_span!(
            "delivery", delivery_id = delivery.id, event_id = %delivery.event_id,
            config_id = %delivery.config_id, attempt = delivery.attempt
        );
        let (sender, settings, owner) = (
            self.sender.clone(),
            self.settings.clone(),
            self.owner.clone(),
        );
        let (held, wake) = (self.held.clone(), self.wake.clone());
        tracker.spawn(
            async move {
                // The semaphore is never closed, so acquiring only waits for a permit.
                let permit = permits.acquire().await;
                let completion = attempt(&sender, &settings, &delivery, &owner).await;
                drop(permit);
                {
                    let mut guard = held.lock().unwrap_or_else(PoisonError::into_inner);
                    guard.remove(&delivery.endpoint);
                    metrics::gauge!("herald_deliveries_in_flight").set(f64::from(guard.total));
                }
                // The recorder outlives every attempt task, so the receiver is still there.
                let _ = done.send(completion);
                wake.notify_one();
            }
            .instrument(span),
        );
    }

    /// How long to sleep when nothing is due: until the next retry, at most a jittered
    /// poll interval (the fallback for wake-ups from other processes).
    async fn idle_wait(&self) -> Duration {
        let poll = self
            .settings
            .poll_interval
            .mul_f64(0.8 + 0.4 * rand::random::<f64>());
        match self.store.next_due_at().await {
            Ok(Some(at)) => {
                let until = at - OffsetDateTime::now_utc();
                Duration::try_from(until)
                    .unwrap_or(Duration::ZERO)
                    .min(poll)
            }
            Ok(None) => poll,
            Err(e) => {
                tracing::warn!(error = %e, "reading the next due time failed");
                poll
            }
        }
    }
}

/// Writes outcomes in batches: whatever has arrived while the last write ran.
async fn record_outcomes(
    store: Arc<dyn Store>,
    mut done: mpsc::UnboundedReceiver<Completion>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while done.recv_many(&mut batch, BATCH).await > 0 {
        loop {
            match store.complete_deliveries(&batch).await {
                Ok(applied) => {
                    if applied < batch.len() as u64 {
                        tracing::info!(
                            stale = batch.len() as u64 - applied,
                            "outcomes of expired leases were discarded"
                        );
                    }
                    break;
                }
                Err(e) => {
                    // Keep the outcomes: if the store stays down, the leases expire and the
                    // deliveries are retried, so nothing is lost either way.
                    tracing::error!(error = %e, "recording outcomes failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        for c in &batch {
            let outcome = match c.next {
                AfterAttempt::Succeeded => "succeeded",
                AfterAttempt::RetryAt(_) => "retrying",
                AfterAttempt::Dead => "dead",
            };
            metrics::counter!("herald_deliveries_completed_total", "outcome" => outcome)
                .increment(1);
        }
        batch.clear();
        // Finished deliveries may have unblocked the next of their stream.
        wake.notify_one();
    }
}

/// Wakes the worker when other nodes make deliveries due, for as long as it runs; when the
/// store's signals fail, says so and tries again (the poll still finds the work meanwhile).
async fn relay_signals(store: Arc<dyn Store>, wake: Arc<Notify>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        match store.relay_work_signals(wake.clone(), cancel.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "listening for work from other nodes failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Rescues expired leases and refreshes the queue gauges.
async fn maintain(store: Arc<dyn Store>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    while !cancel.is_cancelled() {
        tick.tick().await;
        let now = OffsetDateTime::now_utc();
        match store.rescue_expired_leases(now, now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    rescued = n,
                    "deliveries whose worker stopped mid-attempt were re-queued"
                );
                wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "rescuing expired leases failed"),
        }
        match store.queue_stats(now).await {
            Ok(stats) => {
                for (state, n) in stats.by_state {
                    metrics::gauge!("herald_deliveries", "state" => state).set(n as f64);
                }
                let age = stats
                    .oldest_due_at
                    .map_or(0.0, |at| (now - at).as_seconds_f64().max(0.0));
                metrics::gauge!("herald_oldest_due_delivery_age_seconds").set(age);
            }
            Err(e) => tracing::warn!(error = %e, "reading queue statistics failed"),
        }
    }
}
