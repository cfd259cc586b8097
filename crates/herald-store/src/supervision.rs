//! Supervision of the background tasks a server depends on: the embedded store's ingest
//! committer, retention, the recording tracker. A bare `tokio::spawn` of one of them ends
//! silently when it panics, and the server goes on answering `/readyz` with 200 while
//! ingest fails, history grows or recordings wait forever.
//!
//! A [`Supervisor`] spawns each task by name from a function that makes a fresh run of it.
//! A run that panics is logged and started again after a back-off that doubles; a task
//! that panics more than [`RestartPolicy::most_restarts`] times in a row (a run that lasts
//! [`RestartPolicy::healthy_after`] starts the count again) is given up on and marked
//! failed: [`Supervisor::failed_tasks`] names it for `/readyz`, and
//! [`Supervisor::failure`] resolves, for `herald serve` to exit non-zero and be restarted
//! by its own supervisor (systemd). A run that returns is done: tasks return when they are
//! told to stop.
//!
//! It lives in the store crate because the lowest of these tasks runs inside the store,
//! and every crate that starts one depends on this one.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often, and how soon, a panicked task is started again.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Restarts in a row before the task is given up on.
    pub most_restarts: u32,
    /// The wait before the first restart; it doubles with each one after.
    pub first_backoff: Duration,
    /// A run that lasted this long proved the task can run: the count starts again.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    /// Three restarts, 0.25 s, 0.5 s and 1 s after each panic: a passing fault is ridden
    /// out, and a task that cannot run fails the process within seconds.
    fn default() -> Self {
        Self {
            most_restarts: 3,
            first_backoff: Duration::from_millis(250),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// Spawns and watches named background tasks; cheap to clone (clones share the tasks).
#[derive(Clone, Default)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    policy: RestartPolicy,
    /// The tasks given up on, in the order they failed.
    failed: Mutex<Vec<&'static str>>,
    /// Cancelled when the first task is given up on.
    failure: CancellationToken,
    /// Runs to make panic, by task (tests of what a panic does: `inject_panics`).
    #[cfg(feature = "testing")]
    faults: Mutex<std::collections::HashMap<&'static str, u32>>,
}

impl Inner {
    fn failed(&self) -> MutexGuard<'_, Vec<&'static str>> {
        // The list is whole after every push, so a panic elsewhere cannot leave it wrong.
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn give_up(&self, name: &'static str) {
        self.failed().push(name);
        self.failure.cancel();
    }

    #[cfg(feature = "testing")]
    fn take_fault(&self, name: &'static str) -> bool {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        match faults.get_mut(name) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::with_policy(RestartPolicy::default())
    }

    pub fn with_policy(policy: RestartPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                ..Inner::default()
            }),
        }
    }

    /// Runs `make()` as the task `name`, and again after each run that panics, within the
    /// policy. Must be called inside a Tokio runtime.
    pub fn spawn<F, Fut>(&self, name: &'static str, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let policy = inner.policy;
            let mut restarts = 0u32;
            loop {
                let started = Instant::now();
                let run = make();
                #[cfg(feature = "testing")]
                let run = {
                    let injected = inner.take_fault(name);
                    async move {
                        assert!(!injected, "a panic injected into {name}");
                        run.await;
                    }
                };
                // A run of its own: its panic ends the run, not this loop.
                let ended = tokio::spawn(run).await;
                let panic = match ended {
                    Ok(()) => return,
                    // The runtime is shutting down.
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => panic_message(e.into_panic()),
                };
                if started.elapsed() >= policy.healthy_after {
                    restarts = 0;
                }
                if restarts >= policy.most_restarts {
                    tracing::error!(task = name, %panic, restarts, "a background task keeps panicking: giving up on it");
                    inner.give_up(name);
                    return;
                }
                let backoff = policy.first_backoff.saturating_mul(1 << restarts.min(16));
                restarts += 1;
                tracing::error!(task = name, %panic, restarts, ?backoff, "a background task panicked: restarting it");
                tokio::time::sleep(backoff).await;
            }
        });
    }

    /// The tasks that could not be kept running, in the order they failed.
    pub fn failed_tasks(&self) -> Vec<&'static str> {
        self.inner.failed().clone()
    }

    /// Resolves, with its name, once a task could not be kept running.
    pub async fn failure(&self) -> &'static str {
        self.inner.failure.cancelled().await;
        self.inner
            .failed()
            .first()
            .copied()
            .unwrap_or("a background task")
    }

    /// Makes the next `runs` runs of the task `name` panic as they start: for tests of what
    /// a panic of that task does to the server. Call it before the task is spawned.
    #[cfg(feature = "testing")]
    pub fn inject_panics(&self, name: &'static str, runs: u32) {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, runs);
    }
}

/// The text a panic was raised with.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(not text)".to_owned(), |s| (*s).to_owned()),
    }
}

/// The rounds of a periodic background task (the WAL checkpointer, retention, the
/// dispatcher's maintenance): the first at once, then one every `period`, until `stop` is
/// cancelled. A round that overran its period delays the next one rather than bunching the
/// rounds it missed.
pub struct Rounds {
    tick: tokio::time::Interval,
    stop: CancellationToken,
}

impl Rounds {
    pub fn new(period: Duration, stop: CancellationToken) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { tick, stop }
    }

    /// Waits for the next round: true when it is due, false once `stop` is cancelled.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Short waits, so that these tests take real time (the crate does not build Tokio's
    /// paused clock) and little of it.
    fn policy() -> RestartPolicy {
        RestartPolicy {
            most_restarts: 3,
            first_backoff: Duration::from_millis(20),
            healthy_after: Duration::from_secs(60),
        }
    }

    /// A task that panics twice is started again each time, after 20 ms then 40 ms, and
    /// nothing is marked failed.
    #[tokio::test]
    async fn a_task_that_panics_is_restarted_after_a_growing_backoff() {
        let tasks = Supervisor::with_policy(policy());
        let runs = Arc::new(AtomicU32::new(0));
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut done = Some(done);
        let counted = runs.clone();
        let begun = Instant::now();
        tasks.spawn("flaky", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let done = if n == 2 { done.take() } else { None };
            async move {
                assert!(n >= 2, "run {n} fails");
                if let Some(done) = done {
                    let _ = done.send(Instant::now());
                }
            }
        });
        let at = finished.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(at - begun >= Duration::from_millis(60), "{:?}", at - begun);
        assert!(tasks.failed_tasks().is_empty());
    }

    /// A task that always panics is given up on after its restarts: named as failed, and
    /// `failure` resolves with its name. Another task is not disturbed.
    #[tokio::test]
    async fn a_task_that_keeps_panicking_is_marked_failed() {
        let tasks = Supervisor::with_policy(policy());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        tasks.spawn("broken", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { panic!("always") }
        });
        let calm = CancellationToken::new();
        let stop = calm.clone();
        tasks.spawn("calm", move || {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        });
        assert_eq!(tasks.failure().await, "broken");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "the first run and three restarts"
        );
        assert_eq!(tasks.failed_tasks(), ["broken"]);
        calm.cancel();
    }

    /// A run that lasted long enough before it panicked proved the task healthy: its
    /// count of restarts starts again, so rare panics never add up to a failure.
    #[tokio::test]
    async fn rare_panics_do_not_add_up() {
        let tasks = Supervisor::with_policy(RestartPolicy {
            healthy_after: Duration::from_millis(30),
            ..policy()
        });
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut done = Some(done);
        tasks.spawn("rare", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let done = if n == 10 { done.take() } else { None };
            async move {
                if let Some(done) = done {
                    let _ = done.send(());
                    return;
                }
                // The task's own work, which outlasts `healthy_after`; not synchronisation.
                tokio::time::sleep(Duration::from_millis(40)).await;
                panic!("after a healthy run");
            }
        });
        finished.await.unwrap();
        assert!(tasks.failed_tasks().is_empty());
    }

    /// The first round is due at once; a cancel ends the wait for the next one then, not
    /// when its period is over (an hour here: the outer timeout only keeps a broken
    /// `Rounds` from hanging the test).
    #[tokio::test]
    async fn rounds_start_at_once_and_stop_when_told() {
        let stop = CancellationToken::new();
        let mut rounds = Rounds::new(Duration::from_secs(3600), stop.clone());
        let bound = Duration::from_secs(10);
        assert!(tokio::time::timeout(bound, rounds.next()).await.unwrap());
        let waiting = tokio::spawn(async move { rounds.next().await });
        stop.cancel();
        assert!(!tokio::time::timeout(bound, waiting).await.unwrap().unwrap());
    }

    /// A round that overran several periods is followed by one round at once and then a
    /// full period's wait: the rounds it missed are not run back to back (Tokio's default,
    /// `Burst`, would run three at once here).
    #[tokio::test]
    async fn a_slow_round_delays_the_next_rather_than_bunching_them() {
        let period = Duration::from_millis(30);
        let mut rounds = Rounds::new(period, CancellationToken::new());
        assert!(rounds.next().await);
        // The round's own work, three periods and more; not synchronisation.
        tokio::time::sleep(period * 3 + period / 3).await;
        assert!(rounds.next().await);
        let after_catch_up = Instant::now();
        assert!(rounds.next().await);
        let gap = after_catch_up.elapsed();
        assert!(gap >= period * 2 / 3, "the next round came after {gap:?}");
    }
}
