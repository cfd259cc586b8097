//! The claim on SQLite: due deliveries read on a reader connection, in pages of what the
//! endpoints can still take, each with the next deliveries of its stream behind it (its
//! followers, [`ClaimedDelivery::followers`]), and all leased in this process's memory
//! ([`super::leases`]). A claim writes nothing, and does not wait for the writer. While
//! the due window is exact ([`super::due_window`]) a claim takes from it instead, and
//! reads nothing either.

use std::collections::{HashMap, HashSet};

use herald_core::timefmt::unix_ms;
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::leases::Held;
use super::{SqliteStore, from_json_row, json_array};
use crate::deliveries::endpoint_project;
use crate::rows::{ClaimedRow, finish_claim};
use crate::state::{DUE, DeliveryState, NOT_SENT, OPEN};
use crate::{ClaimLimits, ClaimedDelivery, Lease, StoreError};

/// A due delivery the claim found, with its stream's next deliveries.
struct Due {
    id: i64,
    endpoint: String,
    retry: bool,
    followers: Vec<i64>,
}

/// Leases what is due within `limits` (see [`crate::DeliveryQueue::claim_due_deliveries`]):
/// from the due window alone while it is exact ([`super::due_window`]), else by SQL.
pub(super) async fn claim(
    store: &SqliteStore,
    now: OffsetDateTime,
    limits: ClaimLimits<'_>,
    lease: &Lease,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let _claiming = store.leases.claiming.lock().await;
    let now_ms = unix_ms(now);
    if store.window.is_exact(now_ms) {
        let (due, rows) = from_window(store, now_ms, &limits);
        let (claimed, all_taken) = lease_found(store, due, rows, lease, now).await?;
        if !all_taken {
            // What the window handed out and no lease took is due outside the window.
            store.window.lose_exactness();
        }
        return Ok(claimed);
    }
    let generation = store.window.generation();
    let leased = json_array(&store.leases.ids());
    let mut conn = store.pool.acquire().await?;
    let (mut due, complete) = due_within_room(&mut conn, now, &limits, &leased).await?;
    add_followers(&mut conn, &mut due, &limits).await?;
    let ids: Vec<i64> = (due.iter())
        .flat_map(|d| std::iter::once(d.id).chain(d.followers.iter().copied()))
        .collect();
    // Rows cancelled since the pages were read (their config was deleted) stay behind.
    // One row of JSON for all of them (`from_json_row`); a key goes as hex, since JSON has
    // no bytes.
    let rows: String = sqlx::query_scalar(&format!(
        "SELECT json_group_array(json_array(d.id, d.project_id, e.event_id, e.payload, e.flavour, \
             d.config_id, d.endpoint, d.url, d.sign_type, \
             CASE WHEN d.key_sealed IS NULL THEN NULL ELSE hex(d.key_sealed) END, d.attempts)) \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state IN {NOT_SENT}"
    ))
    .bind(json_array(&ids))
    .fetch_one(&mut *conn)
    .await?;
    // When the first retry falls due after this claim's time: the window is exact until
    // then. (A `pending` delivery is due when it is written, so one due later is one
    // written by ingest since the claim's time was taken, which pushed it to the window.)
    let next_due: Option<Option<i64>> = if complete {
        Some(
            sqlx::query_scalar(&format!(
                "SELECT MIN(next_attempt_at_ms) FROM deliveries \
                 WHERE state IN {DUE} AND state = '{retrying}' AND next_attempt_at_ms > ?",
                retrying = DeliveryState::Retrying,
            ))
            .bind(now_ms)
            .fetch_one(&mut *conn)
            .await?,
        )
    } else {
        None
    };
    drop(conn);
    let rows: Vec<ClaimedRow> = from_json_row(&rows, "a claim's deliveries")?;
    let rows: HashMap<i64, ClaimedRow> = rows.into_iter().map(|r| (r.id, r)).collect();
    let (claimed, all_taken) = lease_found(store, due, rows, lease, now).await?;
    if let Some(next_due) = next_due
        && all_taken
    {
        store
            .window
            .exact_since(generation, next_due.unwrap_or(i64::MAX));
    }
    Ok(claimed)
}

/// The due deliveries a claim takes from the due window, oldest first, each endpoint and
/// project within its room, with their followers from the window: the same choice
/// [`due_within_room`] and [`add_followers`] make by SQL. They leave the window here.
fn from_window(
    store: &SqliteStore,
    now_ms: i64,
    limits: &ClaimLimits<'_>,
) -> (Vec<Due>, HashMap<i64, ClaimedRow>) {
    let mut room = Room::new(limits);
    let mut due: Vec<Due> = (store.window)
        .due_heads(now_ms, limits.total, |endpoint| room.admit(endpoint))
        .into_iter()
        .map(|(id, endpoint)| Due {
            id,
            endpoint,
            retry: false,
            followers: Vec::new(),
        })
        .collect();
    let each = followers_each(&due, limits);
    let found = (due.iter())
        .map(|d| (d.id, store.window.behind(d.id, each)))
        .collect();
    share_followers(&mut due, found, each, limits);
    let mut rows = HashMap::new();
    for d in &mut due {
        let taken = store.window.take(d.id, &d.followers);
        // A follower the window no longer held ends the chain.
        d.followers.truncate(taken.len().saturating_sub(1));
        rows.extend(taken.into_iter().map(|r| (r.id, r)));
    }
    (due, rows)
}

/// Leases the due deliveries found and their followers (each row's attempt is its
/// `attempts` + 1), and turns them into deliveries to send. Also returns whether every
/// one found was leased.
async fn lease_found(
    store: &SqliteStore,
    due: Vec<Due>,
    mut rows: HashMap<i64, ClaimedRow>,
    lease: &Lease,
    now: OffsetDateTime,
) -> Result<(Vec<ClaimedDelivery>, bool), StoreError> {
    let expires_at_ms = unix_ms(lease.expires_at);
    let mut all_taken = true;
    let mut take = |row: &mut ClaimedRow, state: DeliveryState| {
        row.attempts += 1;
        let taken = store.leases.take(
            row.id,
            Held {
                owner: lease.owner.clone(),
                expires_at_ms,
                attempt: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                state: state.as_str(),
            },
        );
        all_taken &= taken;
        taken
    };
    let mut heads = Vec::with_capacity(due.len());
    let mut chains: HashMap<i64, Vec<ClaimedDelivery>> = HashMap::new();
    let mut leased = Vec::new();
    for d in due {
        let Some(mut row) = rows.remove(&d.id) else {
            continue;
        };
        let state = if d.retry {
            DeliveryState::Retrying
        } else {
            DeliveryState::Pending
        };
        if !take(&mut row, state) {
            continue;
        }
        leased.push(row.id);
        // A chain ends at the first follower that is gone (cancelled), leased already or
        // unreadable: the rest wait for their turn as due deliveries, where an unreadable
        // one is ended with a reason (`finish_claim`).
        let mut chain = Vec::new();
        for id in d.followers {
            let Some(mut follower) = rows.remove(&id) else {
                break;
            };
            if !take(&mut follower, DeliveryState::Blocked) {
                break;
            }
            leased.push(id);
            match follower.into_claimed(&store.master) {
                Ok(delivery) => chain.push(delivery),
                Err(e) => {
                    tracing::warn!(delivery_id = id, error = %e, "a stream's next delivery cannot be read; it waits for its turn");
                    store.leases.release([id]);
                    break;
                }
            }
        }
        chains.insert(row.id, chain);
        heads.push(row);
    }
    // Whatever the window held of these is leased now.
    store.window.leased_elsewhere(leased);
    let mut claimed = finish_claim(store, heads, &store.master, &lease.owner, now).await?;
    for delivery in &mut claimed {
        delivery.followers = chains.remove(&delivery.id).unwrap_or_default();
    }
    // The followers of a due delivery that could not be read (ended by `finish_claim`):
    // its stream has moved on, and they are due in their turn.
    store
        .leases
        .release(chains.into_values().flatten().map(|d| d.id));
    Ok((claimed, all_taken))
}

/// What a claim has taken so far, by endpoint and by project, against its limits.
struct Room<'l> {
    limits: &'l ClaimLimits<'l>,
    by_endpoint: HashMap<String, u32>,
    by_project: HashMap<String, u32>,
}

impl<'l> Room<'l> {
    fn new(limits: &'l ClaimLimits<'l>) -> Self {
        Self {
            limits,
            by_endpoint: HashMap::new(),
            by_project: HashMap::new(),
        }
    }

    /// The room `endpoint` has left.
    fn left(&self, endpoint: &str) -> u32 {
        let used = self.by_endpoint.get(endpoint).copied().unwrap_or(0);
        self.limits.room_of(endpoint).saturating_sub(used)
    }

    /// The room `project` has left.
    fn project_left(&self, project: &str) -> u32 {
        let used = self.by_project.get(project).copied().unwrap_or(0);
        self.limits.project_room_of(project).saturating_sub(used)
    }

    /// Takes one delivery for `endpoint` if it and its project have room left.
    fn admit(&mut self, endpoint: &str) -> bool {
        let project = endpoint_project(endpoint);
        if self.left(endpoint) == 0 || self.project_left(project) == 0 {
            return false;
        }
        *self.by_endpoint.entry(endpoint.to_owned()).or_default() += 1;
        *self.by_project.entry(project.to_owned()).or_default() += 1;
        true
    }
}

/// How many followers each due delivery may have at most: the claim's room left shared
/// evenly between them, at most `limits.followers`; 0 for none.
fn followers_each(due: &[Due], limits: &ClaimLimits<'_>) -> usize {
    let left = limits.total.saturating_sub(due.len());
    if due.is_empty() || left == 0 || limits.followers == 0 {
        return 0;
    }
    (left / due.len()).clamp(1, limits.followers)
}

/// Gives each due delivery the followers `found` for it (its stream's next deliveries,
/// oldest first, at most `each`), within what the claim has left in all and in each
/// project's share (followers count towards both, not towards their endpoint's room: a
/// stream sends one at a time).
fn share_followers(
    due: &mut [Due],
    mut found: HashMap<i64, Vec<i64>>,
    each: usize,
    limits: &ClaimLimits<'_>,
) {
    let mut left = limits.total.saturating_sub(due.len());
    let mut project_left: HashMap<String, usize> = HashMap::new();
    for d in due.iter() {
        let project = endpoint_project(&d.endpoint);
        let room = project_left.entry(project.to_owned()).or_insert_with(|| {
            usize::try_from(limits.project_room_of(project)).unwrap_or(usize::MAX)
        });
        *room = room.saturating_sub(1);
    }
    for d in due.iter_mut() {
        let mut followers = found.remove(&d.id).unwrap_or_default();
        let room = project_left.get_mut(endpoint_project(&d.endpoint));
        followers.truncate(each.min(left).min(room.as_deref().map_or(0, |r| *r)));
        left -= followers.len();
        if let Some(room) = room {
            *room -= followers.len();
        }
        d.followers = followers;
    }
}

/// Finds each due delivery's followers: the oldest blocked deliveries of its stream, one
/// probe of the by-stream index per due delivery (its `state IN` term is what lets SQLite
/// use that partial index), as many as [`followers_each`] allows, then shared out by
/// [`share_followers`].
async fn add_followers(
    conn: &mut SqliteConnection,
    due: &mut [Due],
    limits: &ClaimLimits<'_>,
) -> Result<(), StoreError> {
    let each = followers_each(due, limits);
    if each == 0 {
        return Ok(());
    }
    let heads: Vec<i64> = due.iter().map(|d| d.id).collect();
    let found: String = sqlx::query_scalar(&format!(
        "SELECT json_group_array(json_array(h.value, json((SELECT json_group_array(id) FROM ( \
             SELECT b.id FROM deliveries b WHERE b.state IN {OPEN} AND b.state = '{blocked}' \
             AND b.config_n = d.config_n AND b.stream = d.stream ORDER BY b.id LIMIT ?2))))) \
         FROM json_each(?1) h JOIN deliveries d ON d.id = h.value",
        blocked = DeliveryState::Blocked,
    ))
    .bind(json_array(&heads))
    .bind(i64::try_from(each).unwrap_or(i64::MAX))
    .fetch_one(&mut *conn)
    .await?;
    let found: Vec<(i64, Vec<i64>)> = from_json_row(&found, "a claim's followers")?;
    let found = (found.into_iter())
        .map(|(id, mut followers)| {
            // The by-stream index is ordered by id; the JSON array keeps that order only
            // by SQLite's habit, so it is sorted again.
            followers.sort_unstable();
            (id, followers)
        })
        .collect();
    share_followers(due, found, each, limits);
    Ok(())
}

/// The due deliveries a claim takes, oldest due first, each endpoint within its room,
/// leaving out `leased` (a JSON array of ids), without their followers yet; and whether
/// it read every due delivery no lease holds and took them all (then the due window may
/// become exact, [`super::due_window`]).
///
/// The due index is read in pages, each page one row of JSON (sqlx hands rows from its
/// SQLite thread one at a time, so one row per page is one hand-off). A page asks for no
/// more than the endpoints seen can still take, plus one endpoint's room for one not seen
/// yet, and every page leaves out the endpoints and the projects that are full (in flight,
/// or filled by this claim): a project at its share is skipped in SQL, so however many of
/// its deliveries are due first, the scan reaches the other projects' (the project is the
/// endpoint key's first part, [`endpoint_project`], so the due index alone answers it).
/// So a claim of a few reads a few rows, however long the queue behind a busy endpoint. The scan stops at 8 × the claim, so a claim stays bounded.
///
/// The deliveries in flight keep their rows `pending` (they are leased in memory), so they
/// are at the front of the due index and every page steps over them. SQLite tests the
/// terms the index covers in the order they are written, so the leased ids come first:
/// a leased row is then left out before its endpoint and project are looked at. With 512
/// leased at the front, a page of 32 took 224 µs rather than 305 µs (SQLite 3.51, a copy
/// of a bench database; docs/benchmarks.md, "What a claim pays for the deliveries in
/// flight").
async fn due_within_room(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limits: &ClaimLimits<'_>,
    leased: &str,
) -> Result<(Vec<Due>, bool), StoreError> {
    let budget = limits.total.saturating_mul(8);
    let mut room = Room::new(limits);
    let mut due = Vec::new();
    let (mut scanned, mut after) = (0, (i64::MIN, i64::MIN));
    // Whether every due delivery no lease holds was read, and taken.
    let mut complete = true;
    loop {
        if due.len() >= limits.total || scanned >= budget {
            complete = false;
            break;
        }
        let seen: HashSet<&str> = (limits.in_flight.keys())
            .chain(room.by_endpoint.keys())
            .map(String::as_str)
            .collect();
        let full: Vec<&str> = seen.iter().copied().filter(|e| room.left(e) == 0).collect();
        let full_projects: Vec<&str> = (limits.project_in_flight.keys())
            .chain(room.by_project.keys())
            .map(String::as_str)
            .filter(|p| room.project_left(p) == 0)
            .collect();
        // What the pages leave out of full endpoints and projects is not read.
        complete &= full.is_empty() && full_projects.is_empty();
        let seen_room: u32 = seen.iter().map(|e| room.left(e)).sum();
        let page_size = (limits.total - due.len())
            .min(
                usize::try_from(seen_room.saturating_add(limits.per_endpoint))
                    .unwrap_or(usize::MAX),
            )
            .min(budget - scanned)
            .max(1);
        let page: String = sqlx::query_scalar(&format!(
            "SELECT json_group_array(json_array(id, endpoint, next_attempt_at_ms, state = '{retrying}')) FROM ( \
                 SELECT id, endpoint, next_attempt_at_ms, state FROM deliveries \
                 WHERE state IN {DUE} AND next_attempt_at_ms <= ?1 \
                 AND id NOT IN (SELECT value FROM json_each(?6)) \
                 AND endpoint NOT IN (SELECT value FROM json_each(?2)) \
                 AND substr(endpoint, 1, instr(endpoint, ' ') - 1) NOT IN (SELECT value FROM json_each(?7)) \
                 AND (next_attempt_at_ms, id) > (?3, ?4) \
                 ORDER BY next_attempt_at_ms, id LIMIT ?5)",
            retrying = DeliveryState::Retrying,
        ))
        .bind(unix_ms(now))
        .bind(json_array(&full))
        .bind(after.0)
        .bind(after.1)
        .bind(i64::try_from(page_size).unwrap_or(i64::MAX))
        .bind(leased)
        .bind(json_array(&full_projects))
        .fetch_one(&mut *conn)
        .await?;
        let mut rows: Vec<(i64, String, i64, u8)> = from_json_row(&page, "a claim's page")?;
        // json_group_array keeps the order its rows come in, which SQL does not promise.
        rows.sort_unstable_by_key(|(id, _, due, _)| (*due, *id));
        scanned += rows.len();
        for (id, endpoint, next, retry) in &rows {
            after = (*next, *id);
            if due.len() < limits.total && room.admit(endpoint) {
                due.push(Due {
                    id: *id,
                    endpoint: endpoint.clone(),
                    retry: *retry == 1,
                    followers: Vec::new(),
                });
            } else {
                complete = false;
            }
        }
        if rows.len() < page_size {
            break;
        }
    }
    Ok((due, complete))
}
