//! The worker's upkeep beside the claim loop: other nodes' wake-ups relayed, expired leases
//! rescued, and the queue gauges refreshed.

use std::sync::Arc;
use std::time::Duration;

use herald_store::supervision::Rounds;
use herald_store::{DeliveryState, DeliveryStatus, Store};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often leases are checked and queue metrics refreshed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// The queue gauges may cost at most this share of a core. The embedded store keeps its
/// counts by state as they change, so its gauges cost next to nothing at any size; on
/// PostgreSQL counting a large queue by state reads all of it, which every 5 s would be a
/// quarter of a core on an idle node at 10M deliveries.
const GAUGES_SHARE: u32 = 100;

/// When the queue gauges are refreshed next, after a count that took `took`: every
/// maintenance round while counting is cheap, less often as the queue grows, so that it
/// costs at most 1 / [`GAUGES_SHARE`] of a core; at least once an hour.
fn gauges_again_after(took: Duration) -> Duration {
    (took.saturating_mul(GAUGES_SHARE)).clamp(MAINTENANCE_EVERY, Duration::from_secs(3600))
}

/// Wakes the worker when other nodes make deliveries due, for as long as it runs; when the
/// store's signals fail, says so and tries again (the poll still finds the work meanwhile).
pub(super) async fn relay_signals(
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
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
pub(super) async fn maintain(
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    max_attempts: u32,
    cancel: CancellationToken,
) {
    let mut rounds = Rounds::new(MAINTENANCE_EVERY, cancel);
    let mut gauges_due = tokio::time::Instant::now();
    while rounds.next().await {
        let now = OffsetDateTime::now_utc();
        match store.rescue_expired_leases(now, now, max_attempts).await {
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
        if tokio::time::Instant::now() < gauges_due {
            continue;
        }
        let counting = tokio::time::Instant::now();
        let counted = store.queue_stats(now).await;
        gauges_due = tokio::time::Instant::now() + gauges_again_after(counting.elapsed());
        match counted {
            Ok(stats) => {
                for (status, n) in count_by_status(&stats.by_state) {
                    metrics::gauge!("herald_deliveries", "state" => status.as_str()).set(n as f64);
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

/// The queue's counts under the delivery log's names (`pending`, `failed`, …), each of them
/// present (a state with no rows left counts 0 rather than keeping its last value).
fn count_by_status(by_state: &[(String, u64)]) -> Vec<(DeliveryStatus, u64)> {
    let mut counts: Vec<(DeliveryStatus, u64)> = DeliveryState::ALL
        .iter()
        .map(|state| (state.status(), 0))
        .collect();
    counts.dedup_by_key(|(status, _)| *status);
    for (state, n) in by_state {
        let Ok(state) = DeliveryState::parse(state) else {
            continue;
        };
        if let Some(count) = counts.iter_mut().find(|(s, _)| *s == state.status()) {
            count.1 += n;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    // Test helpers: a failed unwrap is a failed test, which is what it should be.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A cheap count is refreshed every round; one that took 1.2 s (10M deliveries) waits
    /// 2 minutes: at most 1% of a core either way.
    #[test]
    fn the_gauges_cost_at_most_a_hundredth_of_a_core() {
        assert_eq!(
            gauges_again_after(Duration::from_millis(3)),
            MAINTENANCE_EVERY
        );
        assert_eq!(
            gauges_again_after(Duration::from_millis(1200)),
            Duration::from_secs(120)
        );
        assert_eq!(gauges_again_after(Duration::MAX), Duration::from_secs(3600));
    }

    /// `herald_deliveries{state}` uses the delivery log's names: `failed`, not `retrying`.
    #[test]
    fn queue_gauges_use_the_delivery_logs_names() {
        let counts = count_by_status(&[
            ("blocked".into(), 1),
            ("pending".into(), 2),
            ("running".into(), 3),
            ("retrying".into(), 4),
            ("dead".into(), 5),
        ]);
        let named: Vec<(&str, u64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        assert_eq!(
            named,
            [
                ("pending", 6),
                ("failed", 4),
                ("succeeded", 0),
                ("dead", 5),
                ("cancelled", 0)
            ]
        );
    }
}
