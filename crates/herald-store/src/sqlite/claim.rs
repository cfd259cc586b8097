//! The claim on SQLite: due deliveries read on a reader connection, in pages of what the
//! endpoints can still take, and leased in this process's memory ([`super::leases`]). A
//! claim writes nothing, and does not wait for the writer.

use std::collections::{HashMap, HashSet};

use herald_core::timefmt::unix_ms;
use sqlx::SqliteConnection;
use time::OffsetDateTime;

use super::leases::Held;
use super::{SqliteStore, json_array};
use crate::queue::endpoint_project;
use crate::rows::{ClaimedRow, finish_claim};
use crate::state::{DUE, DeliveryState};
use crate::{ClaimLimits, ClaimedDelivery, Lease, StoreError};

/// Leases what is due within `limits` (see [`crate::DeliveryQueue::claim_due_deliveries`]).
pub(super) async fn claim(
    store: &SqliteStore,
    now: OffsetDateTime,
    limits: ClaimLimits<'_>,
    lease: &Lease,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    let _claiming = store.leases.claiming.lock().await;
    let leased = json_array(&store.leases.ids());
    let mut conn = store.pool.acquire().await?;
    let due = due_within_room(&mut conn, now, &limits, &leased).await?;
    let retries: HashSet<i64> = (due.iter())
        .filter_map(|(id, retry)| retry.then_some(*id))
        .collect();
    let ids: Vec<i64> = due.iter().map(|(id, _)| *id).collect();
    // Rows cancelled since the pages were read (their config was deleted) stay behind.
    let rows = sqlx::query_as::<_, ClaimedRow>(&format!(
        "SELECT d.id, d.project_id, e.event_id, e.payload, e.flavour, d.config_id, d.endpoint, d.url, \
             d.sign_type, d.key_sealed, d.attempts + 1 AS attempts \
         FROM deliveries d JOIN events e ON e.seq = d.event_seq \
         WHERE d.id IN (SELECT value FROM json_each(?)) AND d.state IN {DUE} \
         ORDER BY d.next_attempt_at_ms, d.id"
    ))
    .bind(json_array(&ids))
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    let expires_at_ms = unix_ms(lease.expires_at);
    let claimed: Vec<ClaimedRow> = rows
        .into_iter()
        .filter(|row| {
            store.leases.take(
                row.id,
                Held {
                    owner: lease.owner.clone(),
                    expires_at_ms,
                    attempt: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                    state: if retries.contains(&row.id) {
                        DeliveryState::Retrying.as_str()
                    } else {
                        DeliveryState::Pending.as_str()
                    },
                },
            )
        })
        .collect();
    finish_claim(store, claimed, &store.master, &lease.owner, now).await
}

/// The due deliveries a claim takes, oldest due first, each endpoint within its room,
/// leaving out `leased` (a JSON array of ids): with whether each is a retry.
///
/// The due index is read in pages, each page one row of JSON (sqlx hands rows from its
/// SQLite thread one at a time, so one row per page is one hand-off). A page asks for no
/// more than the endpoints seen can still take, plus one endpoint's room for one not seen
/// yet, and every page leaves out the endpoints and the projects that are full (in flight,
/// or filled by this claim): a project at its share is skipped in SQL, so however many of
/// its deliveries are due first, the scan reaches the other projects' (the project is the
/// endpoint key's first part, [`endpoint_project`], so the due index alone answers it). So a claim of a few reads a few rows, however long the queue behind a busy
/// endpoint. The scan stops at 8 × the claim, so a claim stays bounded.
async fn due_within_room(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limits: &ClaimLimits<'_>,
    leased: &str,
) -> Result<Vec<(i64, bool)>, StoreError> {
    let budget = limits.total.saturating_mul(8);
    // Taken by this claim, by endpoint and by project.
    let mut taken: HashMap<String, u32> = HashMap::new();
    let mut taken_by_project: HashMap<String, u32> = HashMap::new();
    let mut due = Vec::new();
    let (mut scanned, mut after) = (0, (i64::MIN, i64::MIN));
    while due.len() < limits.total && scanned < budget {
        let seen: HashSet<&str> = (limits.in_flight.keys())
            .chain(taken.keys())
            .map(String::as_str)
            .collect();
        let left = |e: &str| {
            let used = taken.get(e).copied().unwrap_or(0);
            limits.room_of(e).saturating_sub(used)
        };
        let full: Vec<&str> = seen.iter().copied().filter(|e| left(e) == 0).collect();
        let project_left = |p: &str| {
            let used = taken_by_project.get(p).copied().unwrap_or(0);
            limits.project_room_of(p).saturating_sub(used)
        };
        let full_projects: Vec<&str> = (limits.project_in_flight.keys())
            .chain(taken_by_project.keys())
            .map(String::as_str)
            .filter(|p| project_left(p) == 0)
            .collect();
        let seen_room: u32 = seen.iter().map(|e| left(e)).sum();
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
                 AND endpoint NOT IN (SELECT value FROM json_each(?2)) \
                 AND substr(endpoint, 1, instr(endpoint, ' ') - 1) NOT IN (SELECT value FROM json_each(?7)) \
                 AND (next_attempt_at_ms, id) > (?3, ?4) \
                 AND id NOT IN (SELECT value FROM json_each(?6)) \
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
        let mut rows: Vec<(i64, String, i64, u8)> =
            serde_json::from_str(&page).map_err(|e| crate::rows::CorruptRow {
                table: "deliveries",
                id: "a claim's page".into(),
                reason: e.to_string(),
            })?;
        // json_group_array keeps the order its rows come in, which SQL does not promise.
        rows.sort_unstable_by_key(|(id, _, due, _)| (*due, *id));
        scanned += rows.len();
        for (id, endpoint, next, retry) in &rows {
            after = (*next, *id);
            let project = endpoint_project(endpoint);
            let project_used = taken_by_project.get(project).copied().unwrap_or(0);
            let used = taken.entry(endpoint.clone()).or_default();
            if *used < limits.room_of(endpoint)
                && project_used < limits.project_room_of(project)
                && due.len() < limits.total
            {
                *used += 1;
                *taken_by_project.entry(project.to_owned()).or_default() += 1;
                due.push((*id, *retry == 1));
            }
        }
        if rows.len() < page_size {
            break;
        }
    }
    Ok(due)
}
