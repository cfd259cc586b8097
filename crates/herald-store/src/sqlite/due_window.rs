//! The embedded store's due window: the deliveries ingest has just committed, held in
//! memory with everything a claim hands out, so that while the window knows every due
//! delivery a claim takes them from here, without SQL (issue 29, item 1).
//!
//! **What it holds.** Ingest pushes the deliveries of each commit once it is durable
//! ([`DueWindow::push`]), each with its event and its target as a claim would read them.
//! They are kept by stream (config, stream): a stream is in the window from a delivery
//! that was `pending` when it was inserted (its stream had nothing open) on, with every
//! later one of that stream behind it, oldest first. A `blocked` delivery of a stream that
//! is not in the window stays out. The window holds at most [`MOST_HELD`] deliveries and
//! streams, and [`MOST_HELD_BYTES`]: what does not fit stays in SQLite, where the claim's
//! index scan finds it.
//!
//! **When it is exact.** A claim may take from the window alone only while every due
//! delivery that no lease holds is in it. That is known after a claim by SQL that read
//! the due index to its end and took everything it read: then nothing else was due, and
//! whatever became due since came from ingest, which pushed it here. Every other write
//! that makes a delivery due ends the exactness ([`DueWindow::lose_exactness`]), or,
//! for a retry due later, bounds it in time ([`DueWindow::completed`]). A claim by SQL
//! that ran while such a write happened does not make the window exact: it reads the
//! window's generation before its first query, and the write raises the generation
//! after its commit.
//!
//! **Order within a stream.** A stream's first delivery in the window is handed out only
//! when it is known to be the stream's oldest open one: pushed `pending`, or made
//! `pending` by the completion of the one before it ([`DueWindow::completed`]). The
//! deliveries behind it go out as its followers, in order. Writes that put an older
//! delivery back into a stream (a manual retry) or a newer one that ingest did not push
//! (a replay) empty the window ([`DueWindow::invalidate`]).
//!
//! **No delivery twice.** A delivery leaves the window when a claim leases it, by SQL or
//! from here, under the claims' lock. Ingest pushes under the store's write gate and leaves
//! out what a lease holds: a lease taken before the push cannot have ended yet, since its
//! outcome is written behind the same gate.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use herald_core::timefmt::unix_ms;

use crate::AfterAttempt;
use crate::rows::ClaimedRow;

/// Most deliveries, and most streams, the window holds.
pub(super) const MOST_HELD: usize = 4096;

/// Most bytes of deliveries the window holds (their events' stored form is most of it):
/// a delivery is about 1 KiB, but an event's text fields may make it tens.
const MOST_HELD_BYTES: usize = 8 << 20;

/// What a delivery takes in the window, near enough.
fn size_of(row: &ClaimedRow) -> usize {
    let text = [
        &row.project_id,
        &row.event_id,
        &row.payload,
        &row.flavour,
        &row.config_id,
        &row.endpoint,
        &row.url,
        &row.sign_type,
    ];
    let key = row.key_sealed.as_ref().map_or(0, Vec::len);
    text.iter().map(|t| t.len()).sum::<usize>() + key + std::mem::size_of::<ClaimedRow>()
}

/// A stream: its config (or RTC app) and its name.
type StreamKey = (String, String);

/// A delivery ingest committed, as it is pushed into the window.
pub(super) struct Fresh {
    pub stream: String,
    /// Inserted `pending` (its stream had nothing open), else `blocked`.
    pub pending: bool,
    /// When it is due (`next_attempt_at_ms`).
    pub due_ms: i64,
    /// The delivery as a claim reads it (`attempts` 0).
    pub row: ClaimedRow,
}

/// The deliveries one commit of ingest inserted, gathered for [`DueWindow::push`].
pub(super) struct Pushes {
    /// The window they go to: it says which it wants ([`DueWindow::wants`]).
    pub window: Arc<DueWindow>,
    pub fresh: Vec<Fresh>,
    /// A due delivery was left out (the window was full): it is due outside the window.
    pub due_left_out: bool,
    /// Some of the commit's deliveries could not be gathered: the window cannot know
    /// their streams, and starts again from SQLite.
    pub lost: bool,
}

impl Pushes {
    pub fn new(window: Arc<DueWindow>) -> Self {
        Self {
            window,
            fresh: Vec::new(),
            due_left_out: false,
            lost: false,
        }
    }

    /// An empty one for a part of the commit (a savepoint), for the same window.
    pub fn part(&self) -> Self {
        Self::new(self.window.clone())
    }

    /// Adds what a part of the commit (a savepoint that held) gathered.
    pub fn extend(&mut self, other: Self) {
        self.fresh.extend(other.fresh);
        self.due_left_out |= other.due_left_out;
        self.lost |= other.lost;
    }
}

/// A stream in the window.
#[derive(Default)]
struct Stream {
    /// Its open deliveries that no lease holds, oldest first, up to its newest.
    waiting: VecDeque<ClaimedRow>,
    /// The first of `waiting` is `pending` and the stream's oldest open delivery: it may
    /// go out once `head_due_ms` has come. False while a delivery of the stream before it
    /// is in flight.
    head_due: bool,
    head_due_ms: i64,
}

#[derive(Default)]
struct Window {
    /// Raised by every write that makes a delivery due outside the window.
    generation: u64,
    /// While `Some(t)` and the time is before `t`, every due delivery that no lease holds
    /// is in the window (`t` is when the first retry written meanwhile falls due).
    exact_until_ms: Option<i64>,
    streams: HashMap<StreamKey, Stream>,
    /// The first deliveries of streams whose `head_due` is set, oldest first.
    due_heads: BTreeMap<i64, StreamKey>,
    /// Every delivery held, with its stream.
    held: HashMap<i64, StreamKey>,
    /// What they take ([`size_of`]).
    bytes: usize,
    /// The deliveries claimed out of the window whose outcome is not written yet, with
    /// their stream: a retry takes its stream out ([`DueWindow::completed`]).
    in_flight: HashMap<i64, StreamKey>,
}

impl Window {
    fn lose_exactness(&mut self) {
        self.generation += 1;
        self.exact_until_ms = None;
    }

    /// A delivery is due again at `at_ms`, outside the window: the window is exact until
    /// then at most.
    fn due_later(&mut self, at_ms: i64) {
        self.generation += 1;
        self.exact_until_ms = self.exact_until_ms.map(|t| t.min(at_ms));
    }

    fn invalidate(&mut self) {
        self.lose_exactness();
        self.streams.clear();
        self.due_heads.clear();
        self.held.clear();
        self.bytes = 0;
        self.in_flight.clear();
    }

    /// Whether a delivery of `size` bytes would not fit.
    fn is_full(&self, size: usize) -> bool {
        self.held.len() >= MOST_HELD || self.bytes + size > MOST_HELD_BYTES
    }

    /// Takes `id` off the front of its stream, if it is there; false when the window holds
    /// it elsewhere (it no longer knows the stream's order).
    fn pop_front(&mut self, id: i64) -> Option<ClaimedRow> {
        let key = self.held.get(&id)?.clone();
        let stream = self.streams.get_mut(&key)?;
        if stream.waiting.front().map(|r| r.id) != Some(id) {
            return None;
        }
        self.held.remove(&id);
        self.due_heads.remove(&id);
        stream.head_due = false;
        let row = stream.waiting.pop_front()?;
        self.bytes -= size_of(&row);
        self.in_flight.insert(id, key);
        Some(row)
    }

    /// Keeps `fresh` unless the window is full; the streams that have nothing waiting go
    /// first when there are too many.
    fn push(&mut self, fresh: Fresh) {
        let key = (fresh.row.config_id.clone(), fresh.stream);
        let id = fresh.row.id;
        let size = size_of(&fresh.row);
        if self.is_full(size) {
            // It stays in SQLite; if it is due, only the index scan finds it now.
            if fresh.pending {
                self.lose_exactness();
            } else if let Some(stream) = self.streams.remove(&key) {
                // The stream's order would have a gap: it leaves the window.
                self.forget(stream);
            }
            return;
        }
        if fresh.pending {
            if self
                .streams
                .get(&key)
                .is_some_and(|s| !s.waiting.is_empty())
            {
                // A stream with open deliveries cannot get a `pending` one: the window is
                // wrong about it, so it starts again from what SQLite says.
                self.invalidate();
                return;
            }
            if self.streams.len() >= MOST_HELD {
                self.streams.retain(|_, s| !s.waiting.is_empty());
            }
            self.streams.insert(
                key.clone(),
                Stream {
                    waiting: VecDeque::from([fresh.row]),
                    head_due: true,
                    head_due_ms: fresh.due_ms,
                },
            );
            self.due_heads.insert(id, key.clone());
            self.held.insert(id, key);
            self.bytes += size;
        } else if let Some(stream) = self.streams.get_mut(&key) {
            stream.waiting.push_back(fresh.row);
            self.held.insert(id, key);
            self.bytes += size;
        }
    }

    /// Drops a stream taken out of `streams`; its due first delivery, if any, is then due
    /// outside the window.
    fn forget(&mut self, stream: Stream) {
        if stream.head_due {
            self.lose_exactness();
        }
        for row in stream.waiting {
            self.held.remove(&row.id);
            self.due_heads.remove(&row.id);
            self.bytes -= size_of(&row);
        }
    }
}

/// See the module's description.
#[derive(Default)]
pub(super) struct DueWindow(Mutex<Window>);

impl DueWindow {
    fn window(&self) -> MutexGuard<'_, Window> {
        // Every operation leaves the window whole or invalidated, so a panic elsewhere
        // while it was locked does not make it wrong.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The generation a claim by SQL reads before its first query.
    pub fn generation(&self) -> u64 {
        self.window().generation
    }

    /// Empties the window and ends its exactness: for writes that change a stream's order
    /// behind the window's back (rescues, manual retries, replays, cancellations).
    pub fn invalidate(&self) {
        self.window().invalidate();
    }

    /// A delivery became due that the window does not hold.
    pub fn lose_exactness(&self) {
        self.window().lose_exactness();
    }

    /// After a claim by SQL that began at `generation`, read the due index to its end and
    /// took all it read: exact until `until_ms` (the next due time after the claim's),
    /// unless a write made something due meanwhile.
    pub fn exact_since(&self, generation: u64, until_ms: i64) {
        let mut window = self.window();
        if window.generation == generation {
            window.exact_until_ms = Some(until_ms);
        }
    }

    /// Whether a claim at `now_ms` may take from the window alone.
    pub fn is_exact(&self, now_ms: i64) -> bool {
        self.window().exact_until_ms.is_some_and(|t| now_ms < t)
    }

    /// Takes in the deliveries of a durable commit, leaving out those `leased` says a
    /// claim holds already. Call with the write gate held.
    pub fn push(&self, pushes: Pushes, leased: impl Fn(i64) -> bool) {
        let mut window = self.window();
        if pushes.lost {
            window.invalidate();
            return;
        }
        if pushes.due_left_out {
            window.lose_exactness();
        }
        for f in pushes.fresh {
            if !leased(f.row.id) {
                window.push(f);
            }
        }
    }

    /// The first deliveries due at `now_ms` that `admit` takes (given their endpoints),
    /// oldest first, up to `most`.
    pub fn due_heads(
        &self,
        now_ms: i64,
        most: usize,
        mut admit: impl FnMut(&str) -> bool,
    ) -> Vec<(i64, String)> {
        let window = self.window();
        let mut heads = Vec::new();
        for (id, key) in &window.due_heads {
            if heads.len() >= most {
                break;
            }
            let Some(stream) = window.streams.get(key) else {
                continue;
            };
            if let Some(head) = stream.waiting.front()
                && stream.head_due_ms <= now_ms
                && admit(&head.endpoint)
            {
                heads.push((*id, head.endpoint.clone()));
            }
        }
        heads
    }

    /// The ids behind `head` in its stream, up to `most`.
    pub fn behind(&self, head: i64, most: usize) -> Vec<i64> {
        let window = self.window();
        let Some(stream) = window.held.get(&head).and_then(|k| window.streams.get(k)) else {
            return Vec::new();
        };
        stream
            .waiting
            .iter()
            .skip(1)
            .take(most)
            .map(|r| r.id)
            .collect()
    }

    /// Takes `head` and then `followers` off the front of their stream, for a claim from
    /// the window: the head only if it is still due, each follower only while the ones
    /// before it were taken. Returns what it took, in order.
    pub fn take(&self, head: i64, followers: &[i64]) -> Vec<ClaimedRow> {
        let mut window = self.window();
        if !window.due_heads.contains_key(&head) {
            // Cancelled since the claim looked.
            return Vec::new();
        }
        let mut taken = Vec::with_capacity(1 + followers.len());
        for id in std::iter::once(head).chain(followers.iter().copied()) {
            match window.pop_front(id) {
                Some(row) => taken.push(row),
                None => break,
            }
        }
        taken
    }

    /// A claim by SQL leased `ids`: those the window holds leave it. Each must be the
    /// first of its stream (a claim takes a stream's deliveries in order); if one is not,
    /// the window no longer knows that stream's order, and starts again.
    pub fn leased_elsewhere(&self, ids: impl IntoIterator<Item = i64>) {
        let mut window = self.window();
        for id in ids {
            if window.held.contains_key(&id) && window.pop_front(id).is_none() {
                window.invalidate();
                return;
            }
        }
    }

    /// Which of a commit's deliveries (config, stream, inserted `pending`), in insert
    /// order, the window would keep: a due one while it has room; a blocked one when its
    /// stream is in the window or joins it earlier in the list, room or not (one left out
    /// would leave a gap in its stream: [`DueWindow::push`] takes a stream that does not
    /// fit out whole). Ingest gathers only those; the push decides again, since claims
    /// may have changed the window meanwhile (they only ever take streams out).
    pub fn wants<'d>(
        &self,
        deliveries: impl Iterator<Item = (&'d str, &'d str, bool)>,
    ) -> Vec<bool> {
        let window = self.window();
        let mut joining: HashSet<(&str, &str)> = HashSet::new();
        let mut room = MOST_HELD.saturating_sub(window.held.len());
        deliveries
            .map(|(config, stream, pending)| {
                if pending {
                    let fits = room > 0;
                    if fits {
                        room -= 1;
                        joining.insert((config, stream));
                    }
                    fits
                } else {
                    joining.contains(&(config, stream))
                        || (window.streams).contains_key(&(config.to_owned(), stream.to_owned()))
                }
            })
            .collect()
    }

    /// After a completion committed and gave up its leases. `outcomes` are those made
    /// under a lease that still held, by delivery:
    /// - a success or a death lets the stream move on;
    /// - a retry leaves its stream waiting on a delivery outside the window, so the stream
    ///   leaves the window, which stays exact only until the retry falls due;
    /// - a delivery handed back unsent: its stream leaves too, and the window is no longer
    ///   exact (one handed back in its turn is due again, outside the window).
    ///
    /// `made_due` are the deliveries the completion made `pending`, due at `at_ms` (each
    /// its stream's next). One the window holds is its stream's due head now; one a lease
    /// holds is on its way; any other is due outside the window. All of it under one
    /// lock, so that no claim sees the window between these steps.
    pub fn completed(
        &self,
        outcomes: &[(i64, AfterAttempt)],
        made_due: &[i64],
        at_ms: i64,
        leased: impl Fn(i64) -> bool,
    ) {
        let mut window = self.window();
        for &(id, next) in outcomes {
            let stream = window.in_flight.remove(&id);
            let waits_outside = match next {
                AfterAttempt::Succeeded | AfterAttempt::Dead => false,
                AfterAttempt::RetryAt(at) => {
                    window.due_later(unix_ms(at));
                    true
                }
                AfterAttempt::NotSent => {
                    window.lose_exactness();
                    true
                }
            };
            if waits_outside
                && let Some(stream) = stream.and_then(|key| window.streams.remove(&key))
            {
                window.forget(stream);
            }
        }
        if window.in_flight.len() > 4 * MOST_HELD {
            // Leases ended without an outcome (a follower that could not be read): start
            // again rather than keep their streams for ever.
            window.invalidate();
        }
        for &id in made_due {
            let front = (window.held.get(&id))
                .and_then(|key| Some((key.clone(), window.streams.get(key)?.waiting.front()?.id)));
            match front {
                Some((key, front)) if front == id => {
                    if let Some(stream) = window.streams.get_mut(&key) {
                        stream.head_due = true;
                        stream.head_due_ms = at_ms;
                    }
                    window.due_heads.insert(id, key);
                }
                // Held, but not first: the window is wrong about its stream.
                Some(_) => window.invalidate(),
                None if leased(id) => {}
                None => window.lose_exactness(),
            }
        }
    }

    /// How many deliveries the window holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.window().held.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn row(id: i64, config: &str) -> ClaimedRow {
        ClaimedRow {
            id,
            project_id: "p".into(),
            event_id: format!("e{id}"),
            payload: "{}".into(),
            flavour: "live".into(),
            config_id: config.into(),
            endpoint: "p host".into(),
            url: "http://host/".into(),
            sign_type: "HMACSHA256".into(),
            key_sealed: None,
            attempts: 0,
        }
    }

    fn fresh(id: i64, stream: &str, pending: bool) -> Fresh {
        Fresh {
            stream: stream.into(),
            pending,
            due_ms: 10,
            row: row(id, "c"),
        }
    }

    fn pushed(fresh: Vec<Fresh>) -> Pushes {
        Pushes {
            fresh,
            ..Pushes::new(Arc::default())
        }
    }

    /// An exact window holding stream a (1, 2 behind it) and stream b (3).
    fn two_streams() -> DueWindow {
        let window = DueWindow::default();
        window.exact_since(0, i64::MAX);
        let fresh = vec![
            fresh(1, "a", true),
            fresh(2, "a", false),
            fresh(3, "b", true),
        ];
        window.push(pushed(fresh), |_| false);
        window
    }

    fn at_ms(ms: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms)
    }

    /// A retry of a delivery not from the window, due at `ms`, recorded.
    fn retried(window: &DueWindow, ms: i64) {
        window.completed(&[(-1, AfterAttempt::RetryAt(at_ms(ms)))], &[], 0, |_| false);
    }

    fn ids(rows: &[ClaimedRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_stream_goes_out_in_order_and_its_next_only_after_its_head() {
        let window = two_streams();
        // Blocked behind a stream the window does not know: left out.
        window.push(pushed(vec![fresh(4, "z", false)]), |_| false);
        assert_eq!(window.len(), 3);
        let heads = |now| -> Vec<i64> {
            window
                .due_heads(now, 10, |_| true)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert!(heads(9).is_empty(), "not due before their time");
        assert_eq!(heads(10), [1, 3]);
        assert_eq!(window.behind(1, 8), [2]);
        assert_eq!(ids(&window.take(1, &[])), [1]);
        // 2 waits for 1's completion.
        assert_eq!(heads(10), [3]);
        window.completed(&[(1, AfterAttempt::Succeeded)], &[2], 20, |_| false);
        assert!(window.is_exact(0), "2 was held, so the window stays exact");
        assert_eq!(heads(19), [3]);
        assert_eq!(heads(20), [2, 3]);
        assert_eq!(ids(&window.take(2, &[])), [2]);
        // A delivery made due that the window does not hold ends the exactness, unless a
        // lease holds it.
        window.completed(&[], &[99], 20, |id| id == 99);
        assert!(window.is_exact(0));
        window.completed(&[], &[4], 20, |_| false);
        assert!(!window.is_exact(0));
    }

    #[test]
    fn a_claim_by_sql_makes_it_exact_only_if_nothing_changed_meanwhile() {
        let window = DueWindow::default();
        assert!(!window.is_exact(0), "a new window knows nothing");
        let generation = window.generation();
        retried(&window, 50);
        window.exact_since(generation, 100);
        assert!(!window.is_exact(0), "a retry was written during the claim");
        window.exact_since(window.generation(), 100);
        assert!(window.is_exact(99));
        assert!(!window.is_exact(100), "the next due time ends it");
        retried(&window, 60);
        assert!(window.is_exact(59) && !window.is_exact(60));
    }

    #[test]
    fn leased_deliveries_stay_out_and_leave_when_leased_elsewhere() {
        let window = DueWindow::default();
        window.push(
            pushed(vec![fresh(1, "a", true), fresh(2, "a", false)]),
            |id| id == 1,
        );
        assert_eq!(window.len(), 0, "1 is leased, and 2 is blocked behind it");
        window.push(
            pushed(vec![fresh(3, "b", true), fresh(4, "b", false)]),
            |_| false,
        );
        window.leased_elsewhere([3, 4]);
        assert_eq!(window.len(), 0);
        window.push(
            pushed(vec![fresh(5, "c", true), fresh(6, "c", false)]),
            |_| false,
        );
        // Leasing 6 without 5 breaks the stream's order: the window starts again.
        window.exact_since(window.generation(), i64::MAX);
        window.leased_elsewhere([6]);
        assert_eq!(window.len(), 0);
        assert!(!window.is_exact(0));
    }

    #[test]
    fn it_stays_bounded_and_loses_exactness_for_what_it_cannot_hold() {
        let window = DueWindow::default();
        window.exact_since(0, i64::MAX);
        let many: Vec<Fresh> = (0..MOST_HELD as i64)
            .map(|i| fresh(i, &format!("s{i}"), true))
            .collect();
        window.push(pushed(many), |_| false);
        assert!(window.is_exact(0));
        window.push(pushed(vec![fresh(1_000_000, "x", true)]), |_| false);
        assert_eq!(window.len(), MOST_HELD);
        assert!(!window.is_exact(0), "a due delivery stayed outside");
    }

    #[test]
    fn a_stream_waiting_on_a_retry_leaves_the_window() {
        let window = two_streams();
        assert_eq!(ids(&window.take(1, &[])), [1]);
        assert_eq!(ids(&window.take(3, &[])), [3]);
        // 1 is retried: 2 waits for it, outside the window; 3 succeeded.
        let retry = AfterAttempt::RetryAt(at_ms(3_600_000));
        window.completed(&[(1, retry), (3, AfterAttempt::Succeeded)], &[], 20, |_| {
            false
        });
        assert_eq!(window.len(), 0, "stream a left the window");
        let wanted = window.wants(
            [
                ("c", "a", false),
                ("c", "b", false),
                ("c", "n", true),
                ("c", "n", false),
            ]
            .into_iter(),
        );
        assert_eq!(wanted, [false, true, true, true]);
        window.push(pushed(vec![fresh(4, "a", false)]), |_| false);
        assert_eq!(window.len(), 0, "a's next ones stay out");
        assert!(window.is_exact(0));
        // Full: a due one is left out, a blocked one of a stream held is not (leaving it out
        // would leave a gap in its stream).
        let full: Vec<Fresh> = (10..10 + MOST_HELD as i64)
            .map(|i| fresh(i, &format!("s{i}"), true))
            .collect();
        window.push(pushed(full), |_| false);
        let wanted = window.wants([("c", "s10", false), ("c", "m", true)].into_iter());
        assert_eq!(
            wanted,
            [true, false],
            "a blocked one of a stream held is wanted even when full"
        );
    }

    #[test]
    fn it_holds_no_more_bytes_than_its_bound() {
        let window = DueWindow::default();
        window.exact_since(0, i64::MAX);
        let big = |id: i64| {
            let mut f = fresh(id, &format!("s{id}"), true);
            f.row.payload = "x".repeat(1 << 20);
            f
        };
        window.push(pushed((0..7).map(big).collect()), |_| false);
        assert_eq!(window.len(), 7);
        assert!(window.is_exact(0));
        window.push(pushed(vec![big(7), big(8)]), |_| false);
        assert_eq!(window.len(), 7, "the eighth MiB and more stayed out");
        assert!(!window.is_exact(0));
        assert_eq!(window.take(0, &[]).len(), 1);
        window.push(pushed(vec![big(9)]), |_| false);
        assert_eq!(window.len(), 7, "a taken one made room");
    }

    #[test]
    fn a_head_cancelled_meanwhile_is_not_taken() {
        let window = DueWindow::default();
        window.push(
            pushed(vec![fresh(1, "a", true), fresh(2, "a", false)]),
            |_| false,
        );
        window.invalidate();
        assert!(window.take(1, &[2]).is_empty());
    }
}
