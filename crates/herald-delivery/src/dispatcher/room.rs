//! What the worker holds and the room it has left: the counts a claim goes by ([`Held`]),
//! and the guards that give a claimed delivery's share ([`Slot`]) and its place in flight
//! ([`InFlight`]) back, a panic included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, Semaphore};

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
///
/// [`DeliverySettings::longest_hold`]: crate::DeliverySettings::longest_hold
#[derive(Default)]
pub(super) struct Held {
    pub(super) by_endpoint: HashMap<String, EndpointHeld>,
    /// Held by project: a project's share of the worker is bounded
    /// ([`DeliverySettings::per_project_in_flight`]).
    ///
    /// [`DeliverySettings::per_project_in_flight`]: crate::DeliverySettings::per_project_in_flight
    pub(super) by_project: HashMap<String, u32>,
    pub(super) total: u32,
    /// Slots given back (endpoint and project shares), and what a claim held back by a
    /// share waits for.
    pub(super) released: Returns,
    /// Outcomes recorded (places in `total` given back), and what a claim that found
    /// `total` at `max_in_flight` waits for.
    pub(super) recorded: Returns,
}

/// What the worker holds for one endpoint.
pub(super) struct EndpointHeld {
    /// Claimed as due deliveries: what the endpoint's room in a claim counts.
    claimed: u32,
    /// Followers ([`ClaimedDelivery::followers`]) waiting for or in their send. They take
    /// no room of their endpoint's (a stream sends one at a time), but they keep its
    /// permits alive: a claim meanwhile must not start the endpoint afresh with permits
    /// of its own.
    ///
    /// [`ClaimedDelivery::followers`]: herald_store::ClaimedDelivery::followers
    following: u32,
    /// The endpoint's sending permits.
    permits: Arc<Semaphore>,
}

/// Room given back so far, counted, and the count at which a claim held back for want of
/// that room is to look again.
#[derive(Default)]
pub(super) struct Returns {
    pub(super) count: u64,
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
    pub(super) fn want(&mut self, since: u64, room: u64) -> bool {
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
pub(super) fn room_worth_a_claim(endpoint_cap: u32, max_in_flight: u32) -> u64 {
    u64::from((endpoint_cap.min(max_in_flight) / 2).max(1))
}

impl Held {
    /// Counts a claimed delivery (a follower when `following`) and returns its endpoint's
    /// sending permits.
    pub(super) fn add(
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
    pub(super) fn counts(&self) -> HashMap<String, u32> {
        (self.by_endpoint.iter())
            .filter(|(_, held)| held.claimed > 0)
            .map(|(e, held)| (e.clone(), held.claimed))
            .collect()
    }

    /// Whether some project was at its share by the counts a claim went by, after it.
    pub(super) fn project_full(&self, per_project: u32) -> bool {
        self.by_project.values().any(|n| *n >= per_project)
    }
}

/// A claimed delivery's endpoint and project share in [`Held`], given back when its attempt
/// ends, or when its attempt's task ends without one, a panic included: a slot can never
/// leak. If the last claim was held back for want of room and this slot makes enough of it
/// ([`room_worth_a_claim`]), the worker looks at the queue again; otherwise there is
/// nothing a look would find that the commits' own wake-ups do not announce (the next
/// delivery of its stream comes due when the outcome is recorded, which wakes the worker).
pub(super) struct Slot {
    pub(super) held: Arc<Mutex<Held>>,
    pub(super) endpoint: String,
    pub(super) project: String,
    /// A follower's: no room of its endpoint's ([`EndpointHeld::following`]).
    pub(super) following: bool,
    pub(super) wake: Arc<Notify>,
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
pub(super) struct InFlight {
    pub(super) held: Arc<Mutex<Held>>,
    pub(super) wake: Arc<Notify>,
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

#[cfg(test)]
mod tests {
    // Test helpers: a failed unwrap is a failed test, which is what it should be.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

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
