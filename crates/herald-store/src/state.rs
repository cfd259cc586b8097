//! A delivery's state in the queue: the one list of the names `deliveries.state` holds
//! (its CHECK constraint lists the same ones), the groups of them that statements filter
//! on, written into SQL as literal lists derived from here, and what the log API calls
//! each one ([`DeliveryStatus`]).

use std::fmt;

use crate::DeliveryStatus;

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waits behind an open delivery of the same (config, stream).
    Blocked,
    /// Not yet tried; due at `next_attempt_at`.
    Pending,
    /// Leased in the row (PostgreSQL; the embedded store leases in memory and keeps the
    /// row `pending` or `retrying`).
    Running,
    /// Failed at least once; due again at `next_attempt_at`.
    Retrying,
    Succeeded,
    /// Out of attempts; kept for a manual retry.
    Dead,
    /// Its config or app callback was deleted before it went out.
    Cancelled,
}

/// The name stored is not one of Herald's states.
#[derive(Debug, thiserror::Error)]
#[error("unknown delivery state {0:?}")]
pub struct UnknownState(pub String);

impl DeliveryState {
    /// Every state, in the order the schema's CHECK constraint lists them.
    pub const ALL: [Self; 7] = [
        Self::Blocked,
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// A stored name back; an unknown one is an error, never a guess.
    pub fn parse(raw: &str) -> Result<Self, UnknownState> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| UnknownState(raw.to_owned()))
    }

    /// What the delivery log calls it.
    pub fn status(self) -> DeliveryStatus {
        match self {
            Self::Blocked | Self::Pending | Self::Running => DeliveryStatus::Pending,
            Self::Retrying => DeliveryStatus::Failed,
            Self::Succeeded => DeliveryStatus::Succeeded,
            Self::Dead => DeliveryStatus::Dead,
            Self::Cancelled => DeliveryStatus::Cancelled,
        }
    }

    /// Finished: nothing will be sent for it unless someone retries it by hand.
    pub fn is_finished(self) -> bool {
        FINISHED.0.contains(&self)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group of states written into SQL as `('a', 'b')`. Each group keeps the order of
/// [`DeliveryState::ALL`], which is the order the partial indexes' `WHERE state IN (…)`
/// lists them in: SQLite uses a partial index only for a term that repeats its
/// condition, list order included.
#[derive(Debug, Clone, Copy)]
pub struct StateList(pub &'static [DeliveryState]);

impl StateList {
    pub fn contains(self, state: DeliveryState) -> bool {
        self.0.contains(&state)
    }
}

impl fmt::Display for StateList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(")?;
        for (i, state) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "'{state}'")?;
        }
        f.write_str(")")
    }
}

/// Still to go out: its event must be kept, and its stream's next delivery waits.
pub const OPEN: StateList = StateList(&[
    DeliveryState::Blocked,
    DeliveryState::Pending,
    DeliveryState::Running,
    DeliveryState::Retrying,
]);

/// Due when their time comes: what a claim takes, and what the embedded store's rows keep
/// while leased in memory.
pub const DUE: StateList = StateList(&[DeliveryState::Pending, DeliveryState::Retrying]);

/// Not yet sent: what a deleted config's cancellation ends.
pub const NOT_SENT: StateList = StateList(&[
    DeliveryState::Blocked,
    DeliveryState::Pending,
    DeliveryState::Retrying,
]);

/// Finished: what retention may delete, and what lets a stream's next delivery go.
pub const FINISHED: StateList = StateList(&[
    DeliveryState::Succeeded,
    DeliveryState::Dead,
    DeliveryState::Cancelled,
]);

/// Reached only by failing (or by losing the config), in the order the partial index
/// `deliveries_failing_by_project` lists them.
pub const FAILING: StateList = StateList(&[
    DeliveryState::Retrying,
    DeliveryState::Dead,
    DeliveryState::Cancelled,
]);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_state_parses_back_and_nothing_else_does() {
        for state in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(state.as_str()).unwrap(), state);
        }
        assert!(DeliveryState::parse("").is_err());
        assert!(DeliveryState::parse("Pending").is_err());
        assert!(DeliveryState::parse("failed").is_err());
    }

    /// The lists repeat the partial indexes' conditions word for word (the migrations').
    #[test]
    fn lists_are_written_as_the_indexes_write_them() {
        assert_eq!(
            OPEN.to_string(),
            "('blocked', 'pending', 'running', 'retrying')"
        );
        assert_eq!(DUE.to_string(), "('pending', 'retrying')");
        assert_eq!(FAILING.to_string(), "('retrying', 'dead', 'cancelled')");
        assert_eq!(FINISHED.to_string(), "('succeeded', 'dead', 'cancelled')");
        let schema = include_str!("../migrations/sqlite/0002_delivery.sql");
        let check: String = DeliveryState::ALL
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(schema.contains(&check), "{check}");
        for list in [OPEN, DUE] {
            assert!(schema.contains(&format!("state IN {list}")), "{list}");
        }
    }

    #[test]
    fn open_and_finished_split_every_state() {
        for state in DeliveryState::ALL {
            assert_ne!(OPEN.contains(state), state.is_finished(), "{state}");
        }
    }
}
