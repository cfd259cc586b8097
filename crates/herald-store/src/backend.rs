//! The backend abstraction of the whole crate: [`SqlBackend`], what the SQL both backends
//! share needs of a backend, which the embedded store and PostgreSQL each implement (their
//! pools, master key and write transactions, and the little that differs between them).
//!
//! Most of the SQL is the same on SQLite and PostgreSQL (sqlx numbers `$N` parameters on
//! both), and the Rust around it differs only in the database type, so it is written once,
//! generic over sqlx's database traits, as a blanket impl for every [`SqlBackend`], one
//! module per part of [`Store`]: `credentials`, `live_configs`, `rtc_apps`,
//! `queue_status`, `retention` and `recording`. The delivery queue is not the same, and
//! each backend writes its own (`sqlite::delivery_queue`, `postgres::delivery_queue`).
//! Here too are the helpers that shared SQL uses, and [`Store`] itself.
//!
//! Rust does not carry a trait's `where` clauses over to the code that uses it, so each
//! blanket impl lists the sqlx bounds its own statements need.

use async_trait::async_trait;
use herald_core::hook::HookCall;
use herald_core::project::ProjectId;
use herald_core::secrets::MasterKey;
use herald_core::source::RecordingSource;
use sqlx::{Database, Encode, Executor, IntoArguments, Pool, Type};
use time::OffsetDateTime;

use crate::token_cache::TokenCache;

use crate::{
    Credentials, DeliveryQueue, LiveConfigs, QueueStatus, RecordingSources, Retention, RtcApps,
    Store, StoreError,
};

/// A write transaction with whatever the backend holds beside it (the embedded store's
/// writer gate).
pub(crate) struct WriteTx<'a, D: Database, G> {
    pub tx: sqlx::Transaction<'a, D>,
    pub _guard: G,
}

/// What the generic SQL needs of a backend.
#[async_trait]
pub(crate) trait SqlBackend: Send + Sync + 'static {
    type Db: Database;
    type Guard<'a>: Send
    where
        Self: 'a;
    /// Appended to a `SELECT` whose row must stay as read until commit: `FOR UPDATE` on
    /// PostgreSQL; nothing on SQLite, whose write transactions (`BEGIN IMMEDIATE`) are
    /// serial already.
    const LOCK_ROW: &'static str;
    /// Appended to a `SELECT` whose rows must stay as read until commit, leaving out rows
    /// another transaction holds rather than waiting for them: `FOR UPDATE SKIP LOCKED` on
    /// PostgreSQL; nothing on SQLite, where no other writer runs meanwhile.
    const LOCK_ROWS_OR_SKIP: &'static str;
    /// SQL for the ids in a JSON array of integers bound as `param` (`json_array`), as a
    /// subquery for `IN`: how both backends take a list as one parameter.
    fn ids_of_json(param: &str) -> String;
    /// SQL for the text field `field` of the event payload `e.payload` (JSON text).
    fn payload_text(field: &str) -> String;
    /// The deliveries by state (`state`, `n`), for the queue gauges: the embedded store
    /// keeps the counts as its triggers change them (`delivery_counts`, migration 0016);
    /// PostgreSQL counts the table, which the gauges then refresh less often as it grows.
    const COUNT_BY_STATE: &'static str;
    /// The column that orders RTC apps by creation: SQLite's `rowid`, a sequence (`seq`)
    /// on PostgreSQL.
    const RTC_APPS_IN_CREATION_ORDER_BY: &'static str;
    fn pool(&self) -> &Pool<Self::Db>;
    /// The workers' pool (see [`SqlBackend::queue_tx`]), where what they read about the
    /// queue is read too.
    fn queue_pool(&self) -> &Pool<Self::Db>;
    fn master(&self) -> &MasterKey;
    /// The deliveries leased in this process's memory, with the state their rows keep
    /// meanwhile (`pending` or `retrying`): the embedded store's. Where leases are written
    /// into the rows (PostgreSQL), none.
    fn leases_not_in_rows(&self) -> std::collections::HashMap<i64, &'static str> {
        std::collections::HashMap::new()
    }
    /// How many rows a statement changed. sqlx's generic interface has no `rows_affected`;
    /// each backend's own result type has.
    fn rows_affected(done: &<Self::Db as Database>::QueryResult) -> u64;
    /// Applies hooks in the commits the backend shares among concurrent writers, if it
    /// does (the embedded store): hooks join those commits rather than each waiting for a
    /// flush of its own. `None` where it does not: the caller commits them itself.
    async fn apply_hooks_in_group_commit(
        &self,
        _hooks: &[(RecordingSource, HookCall)],
        _now: OffsetDateTime,
    ) -> Option<Result<Vec<usize>, StoreError>> {
        None
    }
    /// Where the backend remembers the tokens it found, if it does (the embedded store,
    /// whose changes all happen on one machine).
    fn token_cache(&self) -> Option<&TokenCache> {
        None
    }
    /// A write transaction that is durable when it commits: sources, and the session
    /// changes a hook is answered after.
    async fn write_tx(&self) -> Result<WriteTx<'_, Self::Db, Self::Guard<'_>>, StoreError>;
    /// A write transaction on the workers' pool, whose commits skip the wait for the disk
    /// (`synchronous=NORMAL`, `synchronous_commit = off`): the tracker's bookkeeping
    /// (claims, done steps, ended sessions) and retention's deletes. Losing one to power
    /// loss only takes a step again, which its derived event ids make harmless, or leaves
    /// history for retention's next pass; the hooks' own commits, which wait for the
    /// disk, are not held up behind it.
    async fn queue_tx(&self) -> Result<WriteTx<'_, Self::Db, Self::Guard<'_>>, StoreError>;
    /// Cancels, inside `tx`, the deliveries not yet sent of a config or an app that was
    /// deleted, or of an app whose record callback was removed. Each backend keeps its
    /// delivery queue's rules: PostgreSQL locks the streams first.
    async fn cancel_open_deliveries(
        &self,
        tx: &mut sqlx::Transaction<'_, Self::Db>,
        target_id: &str,
    ) -> Result<(), StoreError>;
}

/// A backend with all the parts of the store, its delivery queue among them, is a store.
#[async_trait]
impl<B> Store for B
where
    B: SqlBackend
        + Credentials
        + LiveConfigs
        + DeliveryQueue
        + QueueStatus
        + RecordingSources
        + Retention
        + RtcApps,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}

/// Deletes a config or an app (`sql` binds the project, then the id) and
/// cancels its deliveries not yet sent, in one transaction. True when it
/// existed.
pub(crate) async fn delete_and_cancel<B>(
    store: &B,
    sql: &str,
    project: &ProjectId,
    id: &str,
) -> Result<bool, StoreError>
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
{
    let mut w = store.write_tx().await?;
    let done = sqlx::query(sql)
        .bind(project.as_str())
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
    let existed = B::rows_affected(&done) > 0;
    if existed {
        store.cancel_open_deliveries(&mut w.tx, id).await?;
    }
    w.tx.commit().await?;
    Ok(existed)
}

/// Maps a unique-constraint violation to [`crate::StoreError::Conflict`].
pub(crate) fn conflict_or(e: sqlx::Error) -> crate::StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => crate::StoreError::Conflict,
        _ => crate::StoreError::Database(e),
    }
}

/// A page's bounds as SQL integers.
pub(crate) fn limit_offset(page: crate::Page) -> (i64, i64) {
    (
        i64::try_from(page.limit).unwrap_or(i64::MAX),
        i64::try_from(page.offset).unwrap_or(i64::MAX),
    )
}

/// A slice as JSON text: how SQLite (`json_each(?)`) and shared SQL
/// ([`SqlBackend::ids_of_json`]) take a batch as one parameter.
/// Serialising strings and numbers cannot fail; the empty array is only the type
/// system's due.
pub(crate) fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// The other way: a query's results read back from the one row of JSON its
/// `json_group_array` made (sqlx hands each result row over on its own, which for a batch
/// costs more than the query). `what` names the results in the error, should the text
/// not be what the query makes.
pub(crate) fn from_json_row<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, crate::rows::CorruptRow> {
    serde_json::from_str(text).map_err(|e| crate::rows::CorruptRow {
        table: "deliveries",
        id: what.into(),
        reason: e.to_string(),
    })
}
