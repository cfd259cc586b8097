//! How many callbacks each endpoint may have in flight now: its full share
//! ([`crate::DeliverySettings::per_endpoint_in_flight`]) until its receiver answers 429, then
//! halved at each such answer and regained one step per round of successes (AIMD).
//!
//! A cut endpoint's concurrency is enforced where deliveries are claimed: the worker holds
//! at most that many of its deliveries (one round, instead of the two rounds it holds for an
//! endpoint at its full share), and never shrinks the endpoint's sending permits. So a
//! delivery claimed for a cut endpoint never waits for a permit at all, and one claimed
//! before the cut waits behind at most one round, as before: the lease rule
//! ([`crate::DeliverySettings::longest_hold`]) stays true whatever the cuts.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most hosts `herald_endpoint_concurrency` gets a series for, so that receivers cannot
/// grow the metrics without bound; cuts beyond it still apply, they are only not shown.
const MAX_HOSTS_SHOWN: usize = 256;

/// Each endpoint's concurrency now, shared by the dispatcher (which cuts and restores it,
/// and claims within it) and the API (which shows it).
#[derive(Debug)]
pub struct EndpointConcurrency {
    /// The concurrency of an endpoint that has not been cut.
    full: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Endpoints below their full share, by endpoint key (`{project} {host}`); an endpoint
    /// leaves the map when it is back to full.
    cut: HashMap<String, Cut>,
    /// Hosts with a `herald_endpoint_concurrency` series (at most [`MAX_HOSTS_SHOWN`]).
    shown: HashSet<String>,
    /// Callbacks on the wire now, by endpoint key; endpoints with none are not listed.
    sending: HashMap<String, u32>,
}

#[derive(Debug)]
struct Cut {
    limit: u32,
    /// Successes since the last step up: a round of `limit` of them earns one more.
    successes: u32,
    /// When the last cut was made: a 429 to a callback sent before it is an answer to the
    /// load that was already cut for, and does not cut again.
    at: Instant,
}

/// The host part of an endpoint key (`{project} {host}`).
pub fn endpoint_host(endpoint: &str) -> &str {
    endpoint.split_once(' ').map_or(endpoint, |(_, host)| host)
}

impl EndpointConcurrency {
    pub fn new(full: u32) -> Self {
        Self {
            full: full.max(1),
            inner: Mutex::default(),
        }
    }

    /// The full share of an endpoint that has not been cut.
    pub fn full(&self) -> u32 {
        self.full
    }

    /// `endpoint`'s concurrency now.
    pub fn limit(&self, endpoint: &str) -> u32 {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.cut.get(endpoint).map_or(self.full, |c| c.limit)
    }

    /// The endpoints below their full share, with their concurrency.
    pub fn cut_endpoints(&self) -> Vec<(String, u32)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .cut
            .iter()
            .map(|(e, c)| (e.clone(), c.limit))
            .collect()
    }

    /// Learns from an answer to a callback sent to `endpoint` at `sent_at`: a 429 halves
    /// the endpoint's concurrency (once per round of callbacks), a 2xx counts towards a
    /// step back up.
    pub fn learn(&self, endpoint: &str, sent_at: Instant, status: Option<u16>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = match status {
            Some(429) if self.full > 1 => {
                let cut = inner.cut.entry(endpoint.to_owned()).or_insert(Cut {
                    limit: self.full,
                    successes: 0,
                    at: sent_at,
                });
                if sent_at >= cut.at && cut.limit > 1 {
                    cut.limit = (cut.limit / 2).max(1);
                    cut.successes = 0;
                    cut.at = Instant::now();
                    true
                } else {
                    false
                }
            }
            Some(200..=299) => match inner.cut.get_mut(endpoint) {
                Some(cut) => {
                    cut.successes += 1;
                    if cut.successes >= cut.limit {
                        cut.limit += 1;
                        cut.successes = 0;
                        if cut.limit >= self.full {
                            inner.cut.remove(endpoint);
                        }
                        true
                    } else {
                        false
                    }
                }
                None => false,
            },
            _ => false,
        };
        if changed {
            let host = endpoint_host(endpoint);
            if let Some(limit) = inner.show(host, self.full) {
                metrics::gauge!("herald_endpoint_concurrency", "host" => host.to_owned())
                    .set(f64::from(limit));
            }
        }
    }

    /// Counts a callback to `endpoint` on the wire until the guard is dropped.
    pub fn sending(self: &std::sync::Arc<Self>, endpoint: &str) -> Sending {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner.sending.entry(endpoint.to_owned()).or_default() += 1;
        Sending {
            of: self.clone(),
            endpoint: endpoint.to_owned(),
        }
    }

    /// `project`'s hosts with callbacks on the wire or a cut concurrency: (concurrency
    /// now, callbacks on the wire). Hosts not listed are at [`Self::full`] with none.
    pub fn load_of_project(&self, project: &str) -> HashMap<String, (u32, u32)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut load: HashMap<String, (u32, u32)> = HashMap::new();
        let of_project = |e: &str| {
            e.split_once(' ')
                .filter(|(p, _)| *p == project)
                .map(|(_, host)| host.to_owned())
        };
        for (e, c) in &inner.cut {
            if let Some(host) = of_project(e) {
                load.entry(host).or_insert((self.full, 0)).0 = c.limit;
            }
        }
        for (e, n) in &inner.sending {
            if let Some(host) = of_project(e) {
                load.entry(host).or_insert((self.full, 0)).1 = *n;
            }
        }
        load
    }

    /// Concurrency now of each of `project`'s cut hosts; hosts not listed are at
    /// [`Self::full`].
    pub fn of_project(&self, project: &str) -> HashMap<String, u32> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .cut
            .iter()
            .filter_map(|(e, c)| {
                let (p, host) = e.split_once(' ')?;
                (p == project).then(|| (host.to_owned(), c.limit))
            })
            .collect()
    }
}

/// A callback on the wire, counted by [`EndpointConcurrency::sending`].
pub struct Sending {
    of: std::sync::Arc<EndpointConcurrency>,
    endpoint: String,
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut inner = self.of.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = inner.sending.get_mut(&self.endpoint) {
            *n -= 1;
            if *n == 0 {
                inner.sending.remove(&self.endpoint);
            }
        }
    }
}

impl Inner {
    /// The concurrency `herald_endpoint_concurrency{host}` shows (the lowest of the
    /// host's endpoints in this process), or `None` when the host gets no series.
    fn show(&mut self, host: &str, full: u32) -> Option<u32> {
        if !self.shown.contains(host) {
            if self.shown.len() >= MAX_HOSTS_SHOWN {
                return None;
            }
            self.shown.insert(host.to_owned());
        }
        let lowest = self
            .cut
            .iter()
            .filter(|(e, _)| endpoint_host(e) == host)
            .map(|(_, c)| c.limit)
            .min();
        Some(lowest.unwrap_or(full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "p1 cb.example.com";

    #[test]
    fn a_429_halves_once_per_round_and_successes_restore_step_by_step() {
        let c = EndpointConcurrency::new(8);
        let sent = Instant::now();
        c.learn(E, sent, Some(429));
        assert_eq!(c.limit(E), 4);
        // Answers to callbacks sent before the cut do not cut again.
        c.learn(E, sent, Some(429));
        assert_eq!(c.limit(E), 4);
        c.learn(E, Instant::now(), Some(429));
        assert_eq!(c.limit(E), 2);
        c.learn(E, Instant::now(), Some(429));
        c.learn(E, Instant::now(), Some(429));
        assert_eq!(c.limit(E), 1, "never below one");
        assert_eq!(c.of_project("p1").get("cb.example.com"), Some(&1));
        assert!(c.of_project("p2").is_empty());
        let mut seen = vec![c.limit(E)];
        while c.limit(E) < 8 {
            c.learn(E, Instant::now(), Some(200));
            if seen.last() != Some(&c.limit(E)) {
                seen.push(c.limit(E));
            }
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(c.cut_endpoints().is_empty());
        {
            let c = std::sync::Arc::new(EndpointConcurrency::new(8));
            let _one = c.sending(E);
            let _two = c.sending(E);
            assert_eq!(c.load_of_project("p1").get("cb.example.com"), Some(&(8, 2)));
            drop(_two);
            drop(_one);
            assert!(c.load_of_project("p1").is_empty());
        }
        // Other answers change nothing.
        c.learn(E, Instant::now(), Some(503));
        c.learn(E, Instant::now(), None);
        assert_eq!(c.limit(E), 8);
    }
}
