//! The embedded store's leases, held in memory.
//!
//! One process owns a data dir (its lock keeps others out), so a lease has no reader
//! but this process and need not be written down: a claim reads due deliveries and
//! leases them here, without a write, and the delivery's row keeps its state (`pending`
//! or `retrying`) until the outcome is written. A crash loses the leases, not the
//! deliveries: their rows are still due when the next process starts, and they go out
//! again (at least once).
//!
//! Two rules keep a delivery from being claimed twice:
//! - a claim reads the leased ids before its queries, and leaves them out;
//! - a lease is given up only after the write that finishes its delivery has
//!   committed ([`Leases::release`]).
//!
//! So a delivery a claim does not see as leased was finished before the claim's
//! queries began, and they see its new state.
//!
//! Completions and rescues check and give up leases inside their write transactions,
//! which run one at a time behind the store's write gate, so a lease is ended once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::{Completion, DeliveryState};

/// A delivery leased by this process.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub owner: String,
    pub expires_at_ms: i64,
    /// The attempt being made: the row's `attempts` + 1.
    pub attempt: u32,
    /// The state the row keeps while the attempt is in flight: `pending` or `retrying`;
    /// `blocked` for a follower ([`crate::ClaimedDelivery::followers`]), leased in that
    /// state whatever its row becomes once the delivery before it is recorded.
    pub state: &'static str,
}

impl Held {
    /// Leased as a follower: not sent yet, or being sent. A config's deletion cancels it
    /// and ends its lease, where it leaves a due delivery's lease alone (that one is in
    /// flight).
    fn is_follower(&self) -> bool {
        self.state == DeliveryState::Blocked.as_str()
    }

    /// Held by `owner` for `attempt`.
    fn is_for(&self, owner: &str, attempt: u32) -> bool {
        self.owner == owner && self.attempt == attempt
    }
}

#[derive(Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<i64, Held>>,
    /// Claims run one at a time: each reads the leased ids, then leases what it found.
    pub claiming: tokio::sync::Mutex<()>,
}

impl Leases {
    fn held(&self) -> MutexGuard<'_, HashMap<i64, Held>> {
        // The map is left whole by every operation on it, so a panic elsewhere while it
        // was locked does not make it wrong.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The leased ids, for a claim to leave out.
    pub fn ids(&self) -> Vec<i64> {
        self.held().keys().copied().collect()
    }

    /// The ids leased as due deliveries (in flight) and as followers, apart: a
    /// cancellation leaves the first alone and ends the second.
    pub fn due_and_follower_ids(&self) -> (Vec<i64>, Vec<i64>) {
        let (due, followers): (Vec<_>, Vec<_>) = self
            .held()
            .iter()
            .map(|(id, h)| (*id, h.is_follower()))
            .partition(|(_, f)| !f);
        (
            due.into_iter().map(|(id, _)| id).collect(),
            followers.into_iter().map(|(id, _)| id).collect(),
        )
    }

    /// Whether `id` is leased to `owner` for `attempt`.
    pub fn holds(&self, id: i64, owner: &str, attempt: u32) -> bool {
        (self.held().get(&id)).is_some_and(|h| h.is_for(owner, attempt))
    }

    /// Whether `id` is leased.
    pub fn is_leased(&self, id: i64) -> bool {
        self.held().contains_key(&id)
    }

    /// Leases `id`; false when it is leased already.
    pub fn take(&self, id: i64, lease: Held) -> bool {
        match self.held().entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(lease);
                true
            }
        }
    }

    /// The completions made under a lease that still holds: same owner, same attempt.
    pub fn current<'c>(&self, completions: &'c [Completion]) -> Vec<&'c Completion> {
        let held = self.held();
        completions
            .iter()
            .filter(|c| {
                held.get(&c.delivery_id)
                    .is_some_and(|h| h.is_for(&c.lease_owner, c.attempt))
            })
            .collect()
    }

    /// The leases that expire before `before_ms`.
    pub fn expired(&self, before_ms: i64) -> Vec<(i64, Held)> {
        self.held()
            .iter()
            .filter(|(_, h)| h.expires_at_ms < before_ms)
            .map(|(id, h)| (*id, h.clone()))
            .collect()
    }

    /// Gives up the leases of `ids`, once the write that finished them has committed.
    pub fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held();
        for id in ids {
            held.remove(&id);
        }
    }

    /// The leased deliveries' ids and the state their rows keep, for queue statistics.
    pub fn states(&self) -> HashMap<i64, &'static str> {
        self.held().iter().map(|(id, h)| (*id, h.state)).collect()
    }
}
