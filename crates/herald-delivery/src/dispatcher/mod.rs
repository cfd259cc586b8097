//! The dispatcher: claims due deliveries within the concurrency limits, runs each attempt
//! in its own task, and records outcomes in batches.
//!
//! It wakes when the API commits new deliveries, when an attempt finishes, when the next
//! retry comes due, and at the latest after a jittered poll interval. No transaction is
//! open while a callback is in flight: claim and completion are separate short writes.
//!
//! Here are the claim loop and the chains that send what it claimed; what the worker holds
//! and gives back is in `room`, the recording of outcomes in `outcomes`, and the rescue of
//! expired leases, the queue gauges and other nodes' wake-ups in `maintenance`.

mod maintenance;
mod outcomes;
mod room;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use herald_store::{AfterAttempt, ClaimLimits, ClaimedDelivery, Completion, Lease, Store};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::maintenance::{maintain, relay_signals};
use self::outcomes::record_outcomes;
use self::room::{Held, InFlight, Slot, room_worth_a_claim};
use crate::DeliverySettings;
use crate::attempt::attempt;
use crate::client::Sender;
use crate::concurrency::EndpointConcurrency;

/// Most deliveries leased by one claim, and most outcomes recorded by one write.
const BATCH: usize = 512;
/// Most followers ([`ClaimedDelivery::followers`]) leased behind one due delivery: enough
/// that one busy stream sends hundreds of callbacks per claim, few enough that a claim reads
/// a bounded number of rows.
const FOLLOWERS: usize = 256;

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
        // The chains' tasks, waited for at shutdown (not the recording `Tracker`).
        let chains = TaskTracker::new();
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
                self.spawn_chain(&chains, chain, done_tx.clone(), cancel.clone());
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
        chains.close();
        if tokio::time::timeout(grace, chains.wait()).await.is_err() {
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
    /// deleted), its send can end within the lease's hold and the server is not stopping.
    /// What is not sent is handed back ([`AfterAttempt::NotSent`]).
    fn spawn_chain(
        &self,
        chains: &TaskTracker,
        chain: Chain,
        done: mpsc::Sender<Outcome>,
        stopping: CancellationToken,
    ) {
        let (store, sender, settings, owner, concurrency) = (
            self.store.clone(),
            self.sender.clone(),
            self.settings.clone(),
            self.owner.clone(),
            self.concurrency.clone(),
        );
        chains.spawn(async move {
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
                // Once the server is stopping, followers go back unsent: the shutdown grace
                // is for what is on the wire, not for a stream's whole backlog.
                let may_send = first
                    || (std::time::Instant::now().checked_add(settings.timeout))
                        .is_some_and(|end| end <= deadline)
                        && store.follower_lease_holds(&delivery, &owner)
                        && !stopping.is_cancelled();
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
