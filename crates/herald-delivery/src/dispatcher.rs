//! The dispatcher: claims due deliveries within the concurrency limits, runs each attempt
//! in its own task, and records outcomes in batches.
//!
//! It wakes when the API commits new deliveries, when an attempt finishes, when the next
//! retry comes due, and at the latest after a jittered poll interval. No transaction is
//! open while a callback is in flight: claim and completion are separate short writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use herald_store::{
    AfterAttempt, ClaimLimits, ClaimedDelivery, Completion, DeliveryState, DeliveryStatus, Lease,
    Recorded, Store, StoreError,
};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::DeliverySettings;
use crate::attempt::attempt;
use crate::client::Sender;
use crate::concurrency::EndpointConcurrency;

/// Most deliveries leased by one claim, and most outcomes recorded by one write.
const BATCH: usize = 512;
/// Most followers ([`ClaimedDelivery::followers`]) leased behind one due delivery: enough
/// that one busy stream sends dozens of callbacks per claim, few enough that a claim reads
/// a bounded number of rows.
const FOLLOWERS: usize = 256;
/// How often leases are checked and queue metrics refreshed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// Deliveries this worker holds, by endpoint and by project: claimed and waiting for one
/// of the endpoint's sending permits, sending, or sent and waiting for their outcome to be
/// recorded.
///
/// A worker claims up to twice an endpoint's cap and sends at most the cap at once, so
/// when a callback finishes the next one starts at once instead of after a round trip to
/// the store. A waiting delivery waits for at most one round of the endpoint's callbacks
/// (each bounded by the delivery timeout): the lease covers that wait and the send
/// ([`DeliverySettings::longest_hold`]).
///
/// A delivery holds two things. Its endpoint's and its project's share ([`Slot`]) are
/// given back when its attempt ends, so the endpoint's next callbacks are claimed while
/// the outcome waits for the next commit. Its place in the worker's `total`
/// ([`InFlight`]) is given back only once its outcome is recorded, so a store that cannot
/// write stops the sending at `max_in_flight` instead of piling outcomes up in memory.
#[derive(Default)]
struct Held {
    by_endpoint: HashMap<String, EndpointHeld>,
    /// Held by project: a project's share of the worker is bounded
    /// ([`DeliverySettings::per_project_in_flight`]).
    by_project: HashMap<String, u32>,
    total: u32,
    /// Slots given back (endpoint and project shares), and what a claim held back by a
    /// share waits for.
    released: Returns,
    /// Outcomes recorded (places in `total` given back), and what a claim that found
    /// `total` at `max_in_flight` waits for.
    recorded: Returns,
}

/// What the worker holds for one endpoint.
struct EndpointHeld {
    /// Claimed as due deliveries: what the endpoint's room in a claim counts.
    claimed: u32,
    /// Followers ([`ClaimedDelivery::followers`]) waiting for or in their send. They take
    /// no room of their endpoint's (a stream sends one at a time), but they keep its
    /// permits alive: a claim meanwhile must not start the endpoint afresh with permits
    /// of its own.
    following: u32,
    /// The endpoint's sending permits.
    permits: Arc<Semaphore>,
}

/// Room given back so far, counted, and the count at which a claim held back for want of
/// that room is to look again.
#[derive(Default)]
struct Returns {
    count: u64,
    wake_at: Option<u64>,
}

impl Returns {
    /// One more given back. Returns whether the worker should look at the queue again: the
    /// last claim was held back for want of this room, and enough has been made since.
    fn give_back(&mut self) -> bool {
        self.count += 1;
        let made = self.wake_at.is_some_and(|at| self.count >= at);
        if made {
            self.wake_at = None;
        }
        made
    }

    /// Records that a claim begun when the count was `since` was held back for want of
    /// this room: returns true when `room` came back since (the caller wakes the worker),
    /// else the [`Self::give_back`] that makes it `room` will wake it.
    fn want(&mut self, since: u64, room: u64) -> bool {
        let at = since.saturating_add(room);
        if self.count >= at {
            self.wake_at = None;
            true
        } else {
            self.wake_at = Some(at);
            false
        }
    }
}

/// How many slots given back a claim held back by room waits for: half of what a claim
/// gives an endpoint (its sending permits). Claiming at the first slot given back cost a
/// claim per few callbacks, each reading past everything in flight; waiting for half
/// leaves the endpoint its permits' worth of claimed deliveries, so its callbacks do not
/// pause. Never more than the slots a held-back claim leaves held, or the wake-up could
/// never come.
fn room_worth_a_claim(endpoint_cap: u32, max_in_flight: u32) -> u64 {
    u64::from((endpoint_cap.min(max_in_flight) / 2).max(1))
}

impl Held {
    /// Counts a claimed delivery (a follower when `following`) and returns its endpoint's
    /// sending permits.
    fn add(
        &mut self,
        endpoint: &str,
        project: &str,
        per_endpoint: u32,
        following: bool,
    ) -> Arc<Semaphore> {
        let held = self
            .by_endpoint
            .entry(endpoint.to_owned())
            .or_insert_with(|| EndpointHeld {
                claimed: 0,
                following: 0,
                permits: Arc::new(Semaphore::new(per_endpoint as usize)),
            });
        if following {
            held.following += 1;
        } else {
            held.claimed += 1;
        }
        *self.by_project.entry(project.to_owned()).or_default() += 1;
        self.total += 1;
        held.permits.clone()
    }

    /// Gives a delivery's endpoint and project share back. Returns whether the worker
    /// should look at the queue again: the last claim was held back for want of room, and
    /// enough has been made since.
    fn remove(&mut self, endpoint: &str, project: &str, following: bool) -> bool {
        if let Some(held) = self.by_endpoint.get_mut(endpoint) {
            let n = if following {
                &mut held.following
            } else {
                &mut held.claimed
            };
            *n = n.saturating_sub(1);
            if held.claimed == 0 && held.following == 0 {
                self.by_endpoint.remove(endpoint);
            }
        }
        if let Some(n) = self.by_project.get_mut(project) {
            *n -= 1;
            if *n == 0 {
                self.by_project.remove(project);
            }
        }
        self.released.give_back()
    }

    /// Gives a delivery's place in `total` back, its outcome recorded. Returns whether the
    /// worker should look at the queue again: the last claim found no room in `total`,
    /// and enough has been made since.
    fn remove_in_flight(&mut self) -> bool {
        self.total = self.total.saturating_sub(1);
        self.recorded.give_back()
    }

    /// What each endpoint holds of its room in a claim (followers take none).
    fn counts(&self) -> HashMap<String, u32> {
        (self.by_endpoint.iter())
            .filter(|(_, held)| held.claimed > 0)
            .map(|(e, held)| (e.clone(), held.claimed))
            .collect()
    }

    /// Whether some project was at its share by the counts a claim went by, after it.
    fn project_full(&self, per_project: u32) -> bool {
        self.by_project.values().any(|n| *n >= per_project)
    }
}

/// A claimed delivery's endpoint and project share in [`Held`], given back when its attempt
/// ends, or when its attempt's task ends without one, a panic included: a slot can never
/// leak. If the last claim was held back for want of room and this slot makes enough of it
/// ([`room_worth_a_claim`]), the worker looks at the queue again; otherwise there is
/// nothing a look would find that the commits' own wake-ups do not announce (the next
/// delivery of its stream comes due when the outcome is recorded, which wakes the worker).
struct Slot {
    held: Arc<Mutex<Held>>,
    endpoint: String,
    project: String,
    /// A follower's: no room of its endpoint's ([`EndpointHeld::following`]).
    following: bool,
    wake: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let room_made = guard.remove(&self.endpoint, &self.project, self.following);
        drop(guard);
        if room_made {
            self.wake.notify_one();
        }
    }
}

/// A claimed delivery's place in the worker's `total`: it travels with the outcome and is
/// given back once the outcome is recorded (or when dropped unrecorded, a panic included).
struct InFlight {
    held: Arc<Mutex<Held>>,
    wake: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let room_made = guard.remove_in_flight();
        metrics::gauge!("herald_deliveries_in_flight").set(f64::from(guard.total));
        drop(guard);
        if room_made {
            self.wake.notify_one();
        }
    }
}

/// A claimed delivery, its share ([`Slot`]) and its place in flight ([`InFlight`]).
type Link = (ClaimedDelivery, Slot, InFlight);

/// An outcome on its way to the recorder, with its place in flight.
type Outcome = (Completion, InFlight);

/// A due delivery and its followers, sent in order by one task ([`Dispatcher::spawn_chain`]).
struct Chain {
    links: Vec<Link>,
    /// The endpoint's sending permits.
    permits: Arc<Semaphore>,
    /// When the hold the chain's leases cover ends ([`DeliverySettings::longest_hold`]).
    deadline: std::time::Instant,
}

/// Hands a chain's unsent followers back: their shares at once, their places with their
/// outcome (their leases end when it is recorded).
async fn hand_back(links: impl Iterator<Item = Link>, owner: &str, done: &mpsc::Sender<Outcome>) {
    for (delivery, slot, in_flight) in links {
        drop(slot);
        let _ = done
            .send((
                Completion::not_sent(&delivery, owner, OffsetDateTime::now_utc()),
                in_flight,
            ))
            .await;
    }
}

/// A part of the delivery worker stopped while the server was meant to run.
#[derive(Debug, thiserror::Error)]
#[error("the delivery worker stopped: {0} ended unexpectedly")]
pub struct WorkerStopped(&'static str);

pub struct Dispatcher {
    store: Arc<dyn Store>,
    sender: Sender,
    settings: Arc<DeliverySettings>,
    /// Signalled after commits that may have made deliveries due.
    wake: Arc<Notify>,
    /// This process's name on the leases it takes.
    owner: Arc<str>,
    held: Arc<Mutex<Held>>,
    next_due: Mutex<NextDue>,
    /// Set by the outcome recorder when it scheduled a retry: [`NextDue`] is out of date.
    retry_scheduled: Arc<AtomicBool>,
    /// Each endpoint's concurrency now: claims hold a cut endpoint to it.
    concurrency: Arc<EndpointConcurrency>,
}

/// When the next delivery not due yet (a retry) comes due, as last read from the store.
/// The worker reads it again only when it may have changed: a retry scheduled here, the
/// time read has come, or a poll interval passed without a wake-up (another process may
/// have scheduled one). Everything else that makes deliveries due makes them due at once,
/// and wakes the worker.
#[derive(Default)]
struct NextDue {
    /// `None` inside: nothing is scheduled.
    read: Option<Option<OffsetDateTime>>,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        settings: DeliverySettings,
        wake: Arc<Notify>,
        concurrency: Arc<EndpointConcurrency>,
    ) -> Result<Self, rustls::Error> {
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
            next_due: Mutex::default(),
            retry_scheduled: Arc::default(),
            concurrency,
        })
    }

    /// Runs until `cancel` fires, then lets in-flight attempts finish within `grace` and
    /// records their outcomes; what is left is picked up again after its lease expires.
    /// Returns an error when a part of the worker (the outcome recorder, the maintenance
    /// task) stopped on its own: the caller must not go on as if callbacks were flowing.
    pub async fn run(
        self,
        cancel: CancellationToken,
        grace: Duration,
    ) -> Result<(), WorkerStopped> {
        let tracker = TaskTracker::new();
        // Each outcome carries its place in flight, and there are `max_in_flight` of them:
        // the channel never holds more, so a send never waits.
        let (done_tx, done_rx) = mpsc::channel(
            usize::try_from(self.settings.max_in_flight)
                .unwrap_or(BATCH)
                .max(1),
        );
        let mut recorder = tokio::spawn(record_outcomes(
            self.store.clone(),
            done_rx,
            self.wake.clone(),
            self.retry_scheduled.clone(),
        ));
        let maintenance = tokio::spawn(maintain(
            self.store.clone(),
            self.wake.clone(),
            self.settings.retry_schedule.attempts(),
            cancel.clone(),
        ));
        let signals = tokio::spawn(relay_signals(
            self.store.clone(),
            self.wake.clone(),
            cancel.clone(),
        ));
        let mut stopped = None;
        while !cancel.is_cancelled() {
            if recorder.is_finished() {
                stopped = Some(WorkerStopped("the outcome recorder"));
                break;
            }
            // Maintenance ends by itself when `cancel` fires: only before that is it a fault.
            if maintenance.is_finished() && !cancel.is_cancelled() {
                stopped = Some(WorkerStopped("lease rescue and queue metrics"));
                break;
            }
            // A claim sees every commit made before it begins, so a wake-up stored by then
            // asks for nothing this claim will not do. The tasks woken with the commit that
            // woke the worker (an ingest commit answers all its requests at once, and each
            // announces new work) get their turn first, and what they stored is dropped:
            // otherwise each commit cost a second claim that found nothing new.
            tokio::task::yield_now().await;
            let _ = self.wake.notified().now_or_never();
            let (claimed, wanted) = match self.claim().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::error!(error = %e, "claiming deliveries failed");
                    (Vec::new(), 1)
                }
            };
            let drained = claimed.iter().map(|c| c.links.len()).sum::<usize>() < wanted;
            for chain in claimed {
                self.spawn_chain(&tracker, chain, done_tx.clone());
            }
            if drained {
                // A short claim means that nothing else is due, or that what is due
                // belongs to endpoints at their cap: either way the next look is worth
                // taking only when an attempt ends, new work is committed, or a retry
                // comes due.
                let idle = self.idle_wait().await;
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(idle) => self.forget_next_due(),
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
        if stopped.is_none() {
            match tokio::time::timeout(grace, &mut recorder).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "outcome recorder stopped abnormally");
                }
                Err(_) => tracing::warn!("outcomes not recorded at shutdown will be retried"),
            }
        }
        recorder.abort();
        maintenance.abort();
        signals.abort();
        match stopped {
            Some(part) => {
                tracing::error!(part = part.0, "the delivery worker stopped");
                Err(part)
            }
            None => Ok(()),
        }
    }

    /// Leases as many due deliveries (followers included) as there is room for. Returns
    /// them and how many were asked for: fewer back means the queue has nothing more due
    /// right now.
    async fn claim(&self) -> Result<(Vec<Chain>, usize), herald_store::StoreError> {
        let endpoint_cap = self.settings.endpoint_claim();
        // A cut endpoint is claimed for up to its concurrency now (one round): counted as
        // holding the rest of a full claim, it has just that much room.
        let cut = self.concurrency.cut_endpoints();
        let smallest_claim = cut
            .iter()
            .map(|(_, limit)| *limit)
            .min()
            .map_or(endpoint_cap, |limit| limit.min(endpoint_cap));
        // A held-back cut endpoint leaves only its concurrency held: wait for no more.
        let worth = room_worth_a_claim(
            endpoint_cap.min(smallest_claim.saturating_mul(2)),
            self.settings.max_in_flight,
        );
        let (room, held, by_project, released) = {
            let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            let room = self.settings.max_in_flight.saturating_sub(guard.total);
            if room == 0 {
                // Counted from now, no room has come back yet: the outcome recorded that
                // makes `worth` of it wakes the worker.
                let since = guard.recorded.count;
                guard.recorded.want(since, worth);
                return Ok((Vec::new(), 1));
            }
            (
                usize::try_from(room).unwrap_or(0).min(BATCH),
                guard.counts(),
                guard.by_project.clone(),
                guard.released.count,
            )
        };
        let now = OffsetDateTime::now_utc();
        let lease = Lease {
            owner: self.owner.to_string(),
            expires_at: now + self.settings.lease(),
        };
        // A follower is sent only if its send ends within the hold its lease covers.
        let started = std::time::Instant::now();
        let deadline = (self.settings.longest_hold())
            .and_then(|hold| started.checked_add(hold))
            .unwrap_or(started);
        let per_project = self.settings.per_project_in_flight;
        let mut held = held;
        for (endpoint, limit) in cut {
            *held.entry(endpoint).or_default() += endpoint_cap.saturating_sub(limit);
        }
        let limits = ClaimLimits {
            total: room,
            per_endpoint: endpoint_cap,
            in_flight: &held,
            per_project,
            project_in_flight: &by_project,
            followers: FOLLOWERS,
        };
        let claimed = self.store.claim_due_deliveries(now, limits, &lease).await?;
        // Held back by room: an endpoint at what a claim gives it, or a project at its
        // share, by the counts this claim went by. (When the worker's own room was the
        // limit, the claim came back full and the worker claims again at once.)
        let mut after = Held {
            by_project,
            ..Held::default()
        };
        let mut endpoints = held;
        for d in &claimed {
            *endpoints.entry(d.endpoint.clone()).or_default() += 1;
            for link in std::iter::once(d).chain(&d.followers) {
                *after
                    .by_project
                    .entry(link.project_id.to_string())
                    .or_default() += 1;
            }
        }
        let held_back =
            endpoints.values().any(|n| *n >= endpoint_cap) || after.project_full(per_project);
        let mut guard = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        // Slots given back while the claim ran woke no one: they count towards the room.
        if held_back && guard.released.want(released, worth) {
            self.wake.notify_one();
        }
        let per_endpoint = self.settings.per_endpoint_in_flight;
        let chains = claimed
            .into_iter()
            .map(|mut head| {
                let followers = std::mem::take(&mut head.followers);
                let permits = guard.add(
                    &head.endpoint,
                    head.project_id.as_str(),
                    per_endpoint,
                    false,
                );
                let mut links = vec![self.link(head, false)];
                for follower in followers {
                    guard.add(
                        &follower.endpoint,
                        follower.project_id.as_str(),
                        per_endpoint,
                        true,
                    );
                    links.push(self.link(follower, true));
                }
                Chain {
                    links,
                    permits,
                    deadline,
                }
            })
            .collect();
        metrics::gauge!("herald_deliveries_in_flight").set(f64::from(guard.total));
        Ok((chains, room))
    }

    /// A claimed delivery with its share and its place, counted in [`Held`] by the caller.
    fn link(&self, delivery: ClaimedDelivery, following: bool) -> Link {
        let slot = Slot {
            held: self.held.clone(),
            endpoint: delivery.endpoint.clone(),
            project: delivery.project_id.to_string(),
            following,
            wake: self.wake.clone(),
        };
        let in_flight = InFlight {
            held: self.held.clone(),
            wake: self.wake.clone(),
        };
        (delivery, slot, in_flight)
    }

    /// Sends a chain's deliveries one after the other: the due one, then each follower
    /// once the one before it succeeded, if its lease still holds (its config was not
    /// deleted) and its send can end within the lease's hold. What is not sent is handed
    /// back ([`AfterAttempt::NotSent`]).
    fn spawn_chain(&self, tracker: &TaskTracker, chain: Chain, done: mpsc::Sender<Outcome>) {
        let (store, sender, settings, owner, concurrency) = (
            self.store.clone(),
            self.sender.clone(),
            self.settings.clone(),
            self.owner.clone(),
            self.concurrency.clone(),
        );
        tracker.spawn(async move {
            let Chain {
                links,
                permits,
                deadline,
            } = chain;
            let mut links = links.into_iter();
            let mut first = true;
            while let Some((delivery, slot, in_flight)) = links.next() {
                // The semaphore is never closed, so acquiring only waits for a permit.
                let permit = permits.acquire().await;
                let may_send = first
                    || (std::time::Instant::now().checked_add(settings.timeout))
                        .is_some_and(|end| end <= deadline)
                        && store.follower_lease_holds(&delivery, &owner);
                if !may_send {
                    drop(permit);
                    let rest = std::iter::once((delivery, slot, in_flight)).chain(links);
                    hand_back(rest, &owner, &done).await;
                    return;
                }
                first = false;
                let span = tracing::debug_span!(
                    "delivery", delivery_id = delivery.id, event_id = %delivery.event_id,
                    config_id = %delivery.config_id, attempt = delivery.attempt
                );
                let sent_at = std::time::Instant::now();
                let sending = concurrency.sending(&delivery.endpoint);
                let completion = attempt(&sender, &settings, &delivery, &owner)
                    .instrument(span)
                    .await;
                drop(sending);
                drop(permit);
                concurrency.learn(&delivery.endpoint, sent_at, completion.record.status_code);
                let succeeded = completion.next == AfterAttempt::Succeeded;
                // The endpoint's next callbacks may be claimed while this outcome waits for
                // its commit; its place in flight goes with it and is given back once it is
                // recorded. The recorder outlives every attempt task, so the receiver is
                // still there, and the channel has room for every place.
                drop(slot);
                let _ = done.send((completion, in_flight)).await;
                if !succeeded {
                    hand_back(links, &owner, &done).await;
                    return;
                }
            }
        });
    }

    /// How long to sleep when nothing can be claimed: until the next delivery comes due,
    /// at most a jittered poll interval (the fallback for wake-ups from other processes).
    /// What is due already but was not claimed belongs to endpoints at their cap; an
    /// attempt that ends wakes the worker for it, so it is not a reason to look again now.
    async fn idle_wait(&self) -> Duration {
        let poll = self
            .settings
            .poll_interval
            .mul_f64(0.8 + 0.4 * rand::random::<f64>());
        let now = OffsetDateTime::now_utc();
        if self.retry_scheduled.swap(false, Ordering::AcqRel) {
            self.forget_next_due();
        }
        let known = {
            let next_due = self.next_due.lock().unwrap_or_else(PoisonError::into_inner);
            next_due.read.filter(|at| at.is_none_or(|at| at > now))
        };
        let next = match known {
            Some(next) => next,
            None => match self.store.next_due_after(now).await {
                Ok(next) => {
                    self.next_due
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .read = Some(next);
                    next
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the next due time failed");
                    return poll;
                }
            },
        };
        match next {
            Some(at) => Duration::try_from(at - OffsetDateTime::now_utc())
                .unwrap_or(Duration::ZERO)
                .min(poll),
            None => poll,
        }
    }

    /// The next due time must be read from the store again.
    fn forget_next_due(&self) {
        self.next_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read = None;
    }
}

/// Writes outcomes in batches: whatever has arrived while the last write ran. Wakes the
/// worker when a batch made a stream's next delivery due or scheduled a retry (the worker
/// then learns when to look next); otherwise there is nothing new for a claim to find.
async fn record_outcomes(
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
async fn maintain(
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    max_attempts: u32,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    while !cancel.is_cancelled() {
        tick.tick().await;
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
        match store.queue_stats(now).await {
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

    use std::sync::atomic::{AtomicU32, Ordering};

    use herald_core::config::live::{LiveCallbackConfig, LiveConfigRequest};
    use herald_core::event::EventId;
    use herald_core::event::live::LiveEvent;
    use herald_core::project::ProjectId;
    use herald_core::secrets::MasterKey;
    use herald_store::postgres::PgStore;
    use herald_store::sqlite::SqliteStore;
    use herald_store::testing::TestSchema;
    use herald_store::{AttemptRecord, DeliveryFilter, Page};

    use super::*;

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

    /// Holds one delivery of an endpoint and returns its slot and its place in flight.
    fn one_delivery(held: &Arc<Mutex<Held>>, wake: &Arc<Notify>) -> (Slot, InFlight) {
        let endpoint = "p1 cb.example.com";
        held.lock().unwrap().add(endpoint, "p1", 2, false);
        let slot = Slot {
            held: held.clone(),
            endpoint: endpoint.into(),
            project: "p1".into(),
            following: false,
            wake: wake.clone(),
        };
        let in_flight = InFlight {
            held: held.clone(),
            wake: wake.clone(),
        };
        (slot, in_flight)
    }

    /// Whether the worker has been woken (a stored wake-up completes at the first poll).
    async fn woken(wake: &Notify) -> bool {
        tokio::time::timeout(Duration::ZERO, wake.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_panicking_attempt_gives_its_slot_back_and_wakes_the_worker() {
        let held = Arc::new(Mutex::new(Held::default()));
        let wake = Arc::new(Notify::new());
        let delivery = one_delivery(&held, &wake);
        assert!(!held.lock().unwrap().released.want(0, 1));
        let task = tokio::spawn(async move {
            let _delivery = delivery;
            panic!("an attempt panicked");
        });
        assert!(task.await.unwrap_err().is_panic());
        let left = {
            let guard = held.lock().unwrap();
            (guard.total, guard.by_endpoint.len(), guard.released.count)
        };
        assert_eq!(left, (0, 0, 1));
        assert!(woken(&wake).await, "the worker was not woken");
    }

    /// A slot given back wakes the worker only where the last claim was held back for
    /// room, once the room it waits for has been made, and once for that claim.
    #[tokio::test]
    async fn a_slot_wakes_the_worker_only_when_a_claim_waited_for_room() {
        let held = Arc::new(Mutex::new(Held::default()));
        let wake = Arc::new(Notify::new());
        drop(one_delivery(&held, &wake));
        assert!(
            !woken(&wake).await,
            "woken although no claim waited for room"
        );
        let (slots, places): (Vec<Slot>, Vec<InFlight>) =
            (0..3).map(|_| one_delivery(&held, &wake)).unzip();
        let since = held.lock().unwrap().released.count;
        assert!(!held.lock().unwrap().released.want(since, 2));
        let mut slots = slots.into_iter();
        drop(slots.next());
        assert!(!woken(&wake).await, "woken before the room was made");
        drop(slots.next());
        assert!(woken(&wake).await, "not woken when the room was made");
        drop(slots.next());
        assert!(!woken(&wake).await, "woken twice for one claim");
        assert_eq!(
            held.lock().unwrap().total,
            3,
            "their outcomes are not recorded"
        );
        drop(places);
        assert_eq!(held.lock().unwrap().total, 0);
    }

    /// A claim that found the worker's `total` full waits for outcomes to be recorded, not
    /// for attempts to end: a store that cannot write keeps the worker from sending more.
    #[tokio::test]
    async fn a_full_worker_is_woken_by_recorded_outcomes_only() {
        let held = Arc::new(Mutex::new(Held::default()));
        let wake = Arc::new(Notify::new());
        let (slots, places): (Vec<Slot>, Vec<InFlight>) =
            (0..2).map(|_| one_delivery(&held, &wake)).unzip();
        let since = held.lock().unwrap().recorded.count;
        assert!(!held.lock().unwrap().recorded.want(since, 1));
        drop(slots);
        assert!(
            !woken(&wake).await,
            "woken by attempts that ended unrecorded"
        );
        assert_eq!(held.lock().unwrap().total, 2);
        let mut places = places.into_iter();
        drop(places.next());
        assert!(woken(&wake).await, "not woken when an outcome was recorded");
        drop(places.next());
        assert!(!woken(&wake).await, "woken twice for one claim");
        assert_eq!(held.lock().unwrap().total, 0);
    }

    /// Room made while a claim ran counts: a claim held back after enough slots came back
    /// is told to look again at once, and leaves no wake-up behind.
    #[test]
    fn room_made_during_a_claim_counts() {
        let mut held = Held::default();
        for _ in 0..3 {
            held.add("p1 cb.example.com", "p1", 2, false);
        }
        let since = held.released.count;
        assert!(!held.remove("p1 cb.example.com", "p1", false));
        assert!(!held.remove("p1 cb.example.com", "p1", false));
        assert!(held.released.want(since, 2));
        assert!(!held.remove("p1 cb.example.com", "p1", false));
    }

    /// The room a held-back claim waits for is never more than it leaves held, however the
    /// limits are set, so the wake-up always comes.
    #[test]
    fn the_room_waited_for_is_always_made() {
        for (endpoint_cap, max_in_flight) in [(1, 1), (2, 512), (64, 512), (64, 8), (1000, 3)] {
            let worth = room_worth_a_claim(endpoint_cap, max_in_flight);
            assert!(worth >= 1);
            assert!(worth <= u64::from(endpoint_cap.min(max_in_flight)));
        }
    }
}
