//! The embedded store: SQLite in WAL mode in the data directory.
//!
//! `synchronous=FULL` makes every commit durable before it returns, so what Herald
//! acknowledges survives `kill -9` and power loss. Queries are runtime-checked
//! (`query().bind()`), so building needs no database.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::hook::HookCall;
use herald_core::secrets::MasterKey;
use herald_core::source::RecordingSource;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use time::OffsetDateTime;

use crate::StoreError;
pub(crate) use crate::backend::{from_json_row, json_array};
use crate::supervision::Supervisor;
use crate::token_cache::TokenCache;

mod checkpoint;
mod claim;
mod delivery_queue;
mod due_window;
mod group_commit;
mod ingest;
mod leases;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "herald.sqlite3";

pub struct SqliteStore {
    /// Readers (`synchronous=FULL`, for the few management writes that go without a
    /// transaction).
    pool: SqlitePool,
    /// The one connection every write transaction of this process runs on, in turn behind
    /// `write_gate`. SQLite writes one transaction at a time anyway; on one connection
    /// the pages a write touches stay in its cache, whereas a connection that sees another
    /// one's commit throws its whole page cache away (WAL mode) and reads it again.
    /// Each transaction sets its own durability as it begins ([`BEGIN_DURABLE`],
    /// [`BEGIN_QUEUE`]).
    writer: SqlitePool,
    /// Seals secrets on the way in and opens them on the way out.
    master: MasterKey,
    /// SQLite has one writer at a time. Left to itself, a second writer waits in SQLite's
    /// busy handler, which sleeps 1, 2, 5, 10… ms between tries: tens of milliseconds of
    /// idle latency under load, and no fairness between ingest and the workers. Writers
    /// in this process queue here instead, first come first served, and the busy timeout
    /// is left for other processes (the CLI).
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Ingest's and hooks' writer: concurrent ones share one commit (see [`group_commit`]).
    ingest_commits: group_commit::IngestCommits,
    /// The deliveries this process's worker holds (see [`leases`]).
    leases: Arc<leases::Leases>,
    /// The deliveries ingest committed, for claims without SQL (see [`due_window`]).
    window: Arc<due_window::DueWindow>,
    /// The tokens found so far, and how a revocation elsewhere reaches them.
    tokens: TokenCache,
    /// Ends the WAL checkpointer ([`checkpoint`]) with the store.
    _checkpoints: tokio_util::sync::DropGuard,
}

/// Begins a transaction whose commit is on disk before it returns (`synchronous=FULL`):
/// ingest and the management API, so that a 202 or a 201 survives power loss.
pub(crate) const BEGIN_DURABLE: &str = "PRAGMA synchronous = FULL; BEGIN IMMEDIATE";

/// Begins one of the workers' claims, completions and rescues (`synchronous=NORMAL`).
/// Losing one of these to power loss costs at most a re-sent callback (at-least-once
/// allows it), never an accepted event; and in WAL mode the next durable commit makes them
/// durable too. Skipping their flushes is what lets a single endpoint reach thousands of
/// callbacks per second.
pub(crate) const BEGIN_QUEUE: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

/// Refuses a master key that does not open the database's secrets, as PostgreSQL does: the
/// first start seals a check value, every later one must open it. A database from before
/// the check has its key tried on a sealed secret it already holds before the check is
/// written, so that the wrong key is never the one recorded.
async fn check_master_key(pool: &SqlitePool, master: &MasterKey) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM herald_meta WHERE name = $1")
            .bind(crate::KEY_CHECK)
            .fetch_optional(pool)
            .await?;
    if let Some(stored) = stored {
        return master
            .open(crate::KEY_CHECK, &stored)
            .map(drop)
            .map_err(|_| StoreError::MasterKeyMismatch);
    }
    let existing: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT access_key, secret_key_sealed FROM access_keys LIMIT 1")
            .fetch_optional(pool)
            .await?;
    if let Some((access_key, sealed)) = existing
        && master
            .open(&crate::rows::access_key_context(&access_key), &sealed)
            .is_err()
    {
        return Err(StoreError::MasterKeyMismatch);
    }
    sqlx::query(
        "INSERT INTO herald_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(crate::KEY_CHECK)
    .bind(master.seal(crate::KEY_CHECK, b"herald")?)
    .execute(pool)
    .await?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations. Its
    /// background task runs unwatched: for commands and tests; a server opens it with
    /// [`SqliteStore::open_supervised`].
    pub async fn open(data_dir: &Path, master: MasterKey) -> Result<Self, StoreError> {
        Self::open_supervised(data_dir, master, &Supervisor::new()).await
    }

    /// [`SqliteStore::open`], with its background tasks (the ingest committer, the WAL
    /// checkpointer) under `tasks`, the server's supervision.
    pub async fn open_supervised(
        data_dir: &Path,
        master: MasterKey,
        tasks: &Supervisor,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(data_dir.join(DATABASE_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // WAL checkpoints are the checkpointer's, not the writers' ([`checkpoint`]).
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", checkpoint::WAL_SIZE_LIMIT);
        // A connection to a local file cannot go stale, so the pool's check before lending
        // one (a round trip to the connection's thread per acquire) is skipped.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        check_master_key(&pool, &master).await?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            // A multi-row write inside a transaction first copies each page it changes to
            // a statement journal, so that it can be undone alone if it fails half-way.
            // Kept in a temporary file, those copies were a write(2) each: a tenth of the
            // writer's time in b, a third of the bytes written. In memory they are a copy,
            // and a journal never outlives its statement. Only the writer: its statements
            // are bounded by a batch, whereas a reader's sort (the delivery log over a
            // million rows) would then be held in memory too (d: 101 → 202 MiB).
            .connect_with(options.pragma("temp_store", "memory"))
            .await?;
        let write_gate = Arc::new(tokio::sync::Mutex::new(()));
        let tokens = TokenCache::new(data_dir);
        if tokens.stamp().is_none() {
            // Without a stamp every lookup goes to the database: slower, never wrong.
            if let Err(e) = tokens.changed() {
                tracing::warn!(error = %e, "tokens will be looked up on every request");
            }
        }
        let leases = Arc::new(leases::Leases::default());
        let window = Arc::new(due_window::DueWindow::default());
        Ok(Self {
            ingest_commits: group_commit::IngestCommits::start(
                writer.clone(),
                write_gate.clone(),
                (window.clone(), leases.clone()),
                tasks,
            ),
            _checkpoints: checkpoint::start(pool.clone(), write_gate.clone(), tasks),
            pool,
            writer,
            master,
            write_gate,
            leases,
            window,
            tokens,
        })
    }

    /// Forgets what the store holds of the queue in memory (the due window), as a restart
    /// would: for tests that write to the database behind the store's back.
    #[cfg(feature = "testing")]
    pub fn forget_due_window(&self) {
        self.window.invalidate();
    }

    /// A write transaction begun with `begin` ([`BEGIN_DURABLE`] or [`BEGIN_QUEUE`]), taken
    /// in turn with this process's other writers. Keep the guard for as long as the
    /// transaction.
    async fn begin_write(
        &self,
        begin: &'static str,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, ()>,
            sqlx::Transaction<'_, sqlx::Sqlite>,
        ),
        StoreError,
    > {
        let gate = self.write_gate.lock().await;
        let tx = self.writer.begin_with(begin).await?;
        Ok((gate, tx))
    }
}

#[async_trait::async_trait]
impl crate::backend::SqlBackend for SqliteStore {
    type Db = sqlx::Sqlite;
    type Guard<'a> = tokio::sync::MutexGuard<'a, ()>;
    const LOCK_ROW: &'static str = "";
    const LOCK_ROWS_OR_SKIP: &'static str = "";
    const RTC_APPS_IN_CREATION_ORDER_BY: &'static str = "rowid";
    const COUNT_BY_STATE: &'static str = "SELECT state, n FROM delivery_counts WHERE n <> 0";

    async fn apply_hooks_in_group_commit(
        &self,
        hooks: &[(RecordingSource, HookCall)],
        now: OffsetDateTime,
    ) -> Option<Result<Vec<usize>, StoreError>> {
        Some(self.ingest_commits.hooks(hooks.to_vec(), now).await)
    }

    fn payload_text(field: &str) -> String {
        format!("json_extract(e.payload, '$.{field}')")
    }

    fn ids_of_json(param: &str) -> String {
        format!("(SELECT value FROM json_each({param}))")
    }

    fn token_cache(&self) -> Option<&TokenCache> {
        Some(&self.tokens)
    }

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// What the workers read about the queue is read by the readers: the writer is theirs
    /// only inside a transaction.
    fn queue_pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn master(&self) -> &MasterKey {
        &self.master
    }

    fn leases_not_in_rows(&self) -> std::collections::HashMap<i64, &'static str> {
        self.leases.states()
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn write_tx(
        &self,
    ) -> Result<crate::backend::WriteTx<'_, sqlx::Sqlite, Self::Guard<'_>>, StoreError> {
        let (guard, tx) = self.begin_write(BEGIN_DURABLE).await?;
        Ok(crate::backend::WriteTx { tx, _guard: guard })
    }

    async fn queue_tx(
        &self,
    ) -> Result<crate::backend::WriteTx<'_, sqlx::Sqlite, Self::Guard<'_>>, StoreError> {
        let (guard, tx) = self.begin_write(BEGIN_QUEUE).await?;
        Ok(crate::backend::WriteTx { tx, _guard: guard })
    }

    async fn cancel_open_deliveries(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        target_id: &str,
    ) -> Result<(), StoreError> {
        let (due, followers) = self.leases.due_and_follower_ids();
        let cancelled =
            delivery_queue::cancel_open_deliveries(tx, target_id, &due, &followers).await?;
        // The window may hold the config's deliveries; it starts again from SQLite.
        self.window.invalidate();
        // Followers are cancelled with the rest: their leases end now, so that they are not
        // sent (`follower_lease_holds`). Should the transaction not commit, they are
        // handed back unsent and due again as they were.
        self.leases.release(cancelled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        AfterAttempt, AttemptRecord, ClaimLimits, ClaimedDelivery, Completion, DeliveryQueue,
        Lease, LiveConfigs, RetryOutcome,
    };
    use herald_core::config::live::{LiveCallbackConfig, LiveConfigRequest};
    use herald_core::event::EventId;
    use herald_core::event::live::LiveEvent;
    use herald_core::project::ProjectId;
    use std::collections::HashMap;
    use time::OffsetDateTime;

    fn project() -> ProjectId {
        ProjectId::parse("project_id", "p").unwrap()
    }

    /// A store in `dir` with one config and one event accepted for it at `now`.
    async fn store_with_one_delivery(dir: &Path, now: OffsetDateTime) -> SqliteStore {
        let (master, _) = MasterKey::generate();
        let store = SqliteStore::open(dir, master).await.unwrap();
        let body = r#"{"publish_domain": "d.example.com", "app": "live",
            "notify_callback_url": "https://cb.example.com/cb"}"#;
        let config = LiveCallbackConfig {
            id: "cfg".into(),
            project_id: project(),
            spec: LiveConfigRequest::parse(body.as_bytes(), false)
                .unwrap()
                .into_new_spec(),
            create_time: now,
            update_time: now,
        };
        store.insert_live_config(&config).await.unwrap();
        ingest_one(&store, "e1", "s", now).await;
        store
    }

    /// [`store_with_one_delivery`], its delivery claimed and its outcome `next` recorded;
    /// with the delivery as it was claimed.
    async fn store_with_one_sent(
        dir: &Path,
        now: OffsetDateTime,
        next: AfterAttempt,
    ) -> (SqliteStore, ClaimedDelivery) {
        let store = store_with_one_delivery(dir, now).await;
        let sent = claim(&store, now).await.remove(0);
        store
            .complete_deliveries(&[outcome(&sent, now, next)])
            .await
            .unwrap();
        (store, sent)
    }

    /// A Live event `id` on `stream`, for the config of [`store_with_one_delivery`].
    fn live_event(id: &str, stream: &str) -> (EventId, LiveEvent) {
        let event = serde_json::json!({"event_type": "RECORD_FILE_COMPLETE", "publish_domain": "d.example.com",
            "app": "live", "stream": stream, "download_url": "https://obs.example.com/f.mp4"});
        (
            EventId::parse("event_id", id).unwrap(),
            LiveEvent::parse("", &event).unwrap(),
        )
    }

    async fn claim(store: &SqliteStore, now: OffsetDateTime) -> Vec<ClaimedDelivery> {
        claim_with(store, now, 10, 0).await
    }

    /// A claim of up to `total` (10 per endpoint), each with up to `followers`.
    async fn claim_with(
        store: &SqliteStore,
        now: OffsetDateTime,
        total: usize,
        followers: usize,
    ) -> Vec<ClaimedDelivery> {
        let in_flight = HashMap::new();
        let limits = ClaimLimits {
            total,
            per_endpoint: 10,
            in_flight: &in_flight,
            per_project: u32::try_from(total).unwrap(),
            project_in_flight: &in_flight,
            followers,
        };
        let lease = Lease {
            owner: "w".into(),
            expires_at: now + time::Duration::seconds(30),
        };
        store
            .claim_due_deliveries(now, limits, &lease)
            .await
            .unwrap()
    }

    /// The one delivery's row as the readers see it: state and attempts.
    async fn row(store: &SqliteStore) -> (String, i64) {
        sqlx::query_as("SELECT state, attempts FROM deliveries")
            .fetch_one(&store.pool)
            .await
            .unwrap()
    }

    /// A claim leases in memory: it writes nothing, so it goes ahead while a write holds
    /// the writer, and the row stays `pending` until the outcome is written; the lease
    /// keeps a second claim off it until then.
    #[tokio::test]
    async fn a_claim_leases_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let store = store_with_one_delivery(dir.path(), now).await;
        let writing = store.write_gate.lock().await;
        let claimed = tokio::time::timeout(Duration::from_secs(10), claim(&store, now))
            .await
            .expect("the claim waited for the writer");
        drop(writing);
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempt, 1);
        assert_eq!(row(&store).await, ("pending".into(), 0));
        assert!(claim(&store, now).await.is_empty());

        let done = Completion {
            delivery_id: claimed[0].id,
            attempt: 1,
            lease_owner: "w".into(),
            record: AttemptRecord {
                at: now,
                status_code: Some(200),
                error: None,
                latency_ms: 3,
                response_head: None,
            },
            next: AfterAttempt::Succeeded,
        };
        assert_eq!(
            store
                .complete_deliveries(std::slice::from_ref(&done))
                .await
                .unwrap()
                .applied,
            1
        );
        assert_eq!(row(&store).await, ("succeeded".into(), 1));
        // The lease ended with its outcome: the same outcome again is not applied.
        assert_eq!(store.complete_deliveries(&[done]).await.unwrap().applied, 0);
    }

    /// Accepts one event `id` on `stream` at `now`.
    async fn ingest_one(store: &SqliteStore, id: &str, stream: &str, now: OffsetDateTime) {
        let event = live_event(id, stream);
        let accepted = store.ingest_live(&project(), &[event], now).await.unwrap();
        assert_eq!(accepted[0].deliveries, 1);
    }

    fn outcome(delivery: &ClaimedDelivery, at: OffsetDateTime, next: AfterAttempt) -> Completion {
        Completion {
            delivery_id: delivery.id,
            attempt: delivery.attempt,
            lease_owner: "w".into(),
            record: AttemptRecord {
                at,
                status_code: Some(200),
                error: None,
                latency_ms: 3,
                response_head: None,
            },
            next,
        }
    }

    /// Once a claim by SQL has read the due index to its end, the due window is exact, and
    /// claims take what ingest pushed from it, without SQL. The proof that they read no row:
    /// an event's stored payload broken behind the window's back goes out as accepted
    /// (a claim by SQL would end it as unreadable). A stream's next delivery goes out only
    /// after the one before it; a retry written ends the exactness at its due time.
    #[tokio::test]
    async fn claims_take_from_the_due_window_once_it_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let store = store_with_one_delivery(dir.path(), now).await;
        let now_ms = herald_core::timefmt::unix_ms(now);
        assert!(!store.window.is_exact(now_ms), "a new store knows nothing");
        let first = claim(&store, now).await;
        assert_eq!(first.len(), 1);
        assert!(
            store.window.is_exact(now_ms),
            "the claim read everything due"
        );
        store
            .complete_deliveries(&[outcome(&first[0], now, AfterAttempt::Succeeded)])
            .await
            .unwrap();

        ingest_one(&store, "e2", "s2", now).await;
        ingest_one(&store, "e3", "s2", now).await;
        assert_eq!(store.window.len(), 2);
        sqlx::query("UPDATE events SET payload = 'not json' WHERE event_id IN ('e2', 'e3')")
            .execute(&store.pool)
            .await
            .unwrap();
        let e2 = claim(&store, now).await;
        assert_eq!(e2.len(), 1, "e3 waits for e2");
        assert_eq!(e2[0].event_id, "e2");
        assert_eq!(store.window.len(), 1);
        store
            .complete_deliveries(&[outcome(&e2[0], now, AfterAttempt::Succeeded)])
            .await
            .unwrap();
        let e3 = claim(&store, now).await;
        assert_eq!(e3.len(), 1);
        assert_eq!(e3[0].event_id, "e3");
        assert!(store.window.is_exact(now_ms));

        let retry_at = now + time::Duration::seconds(5);
        store
            .complete_deliveries(&[outcome(&e3[0], now, AfterAttempt::RetryAt(retry_at))])
            .await
            .unwrap();
        assert!(store.window.is_exact(now_ms));
        let retry_ms = herald_core::timefmt::unix_ms(retry_at);
        assert!(!store.window.is_exact(retry_ms));
        // The retry is claimed by SQL, which reads the broken payload: it is ended.
        assert!(claim(&store, retry_at).await.is_empty());
        let state: String = sqlx::query_scalar(
            "SELECT d.state FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE e.event_id = 'e3'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(state, "dead");
    }

    /// Accepts events `ids` on stream `long` at `now`, in one request.
    async fn ingest_on_long(store: &SqliteStore, ids: &[String], now: OffsetDateTime) {
        let events: Vec<_> = ids.iter().map(|id| live_event(id, "long")).collect();
        store.ingest_live(&project(), &events, now).await.unwrap();
    }

    /// Claims the one stream's next chain (with up to 256 followers), records it sent, and
    /// returns its event ids in the order handed out.
    async fn send_one_chain(store: &SqliteStore, now: OffsetDateTime) -> Vec<String> {
        let claimed = claim_with(store, now, 300, 256).await;
        assert_eq!(claimed.len(), 1, "one stream, one chain at a time");
        let chain: Vec<&ClaimedDelivery> = std::iter::once(&claimed[0])
            .chain(&claimed[0].followers)
            .collect();
        let done: Vec<Completion> = (chain.iter())
            .map(|d| outcome(d, now, AfterAttempt::Succeeded))
            .collect();
        store.complete_deliveries(&done).await.unwrap();
        chain.iter().map(|d| d.event_id.clone()).collect()
    }

    /// One stream with more waiting than the due window holds, a chain sent (room in the
    /// window again), then more: what did not fit stays out without leaving a gap in the
    /// stream, so the chains the claims hand out (from the window or by SQL) keep the
    /// stream's order, and nothing goes out twice. (Ingest once left a delivery of a
    /// stream in the window out when the window was full, and the next one in: the window
    /// then sent the stream out of order, and its claims by SQL sent some twice.)
    #[tokio::test]
    async fn a_stream_longer_than_the_window_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (store, _) = store_with_one_sent(dir.path(), now, AfterAttempt::Succeeded).await;
        let count = due_window::MOST_HELD + 1000;
        let ids: Vec<String> = (0..count).map(|i| format!("long-{i:05}")).collect();
        let (before, after) = ids.split_at(due_window::MOST_HELD + 300);
        for batch in before.chunks(500) {
            ingest_on_long(&store, batch, now).await;
        }
        let mut sent = send_one_chain(&store, now).await;
        for batch in after.chunks(500) {
            ingest_on_long(&store, batch, now).await;
        }
        while sent.len() < count {
            let chain = send_one_chain(&store, now).await;
            assert!(!chain.is_empty());
            sent.extend(chain);
        }
        let first_wrong = sent.iter().zip(&ids).position(|(s, i)| s != i);
        assert_eq!(
            (first_wrong, sent.len()),
            (None, count),
            "in acceptance order, each once"
        );
        assert!(claim(&store, now).await.is_empty());
    }

    /// A data dir from before migration 0017, whose by-stream index was keyed by the
    /// config's id (made here from today's by undoing the migration): after the upgrade its
    /// open deliveries keep their streams' order, a new event waits behind them, and a
    /// delivery that had finished before joins its stream again when retried by hand.
    #[tokio::test]
    async fn streams_keep_their_order_across_the_upgrade_to_config_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (store, dead) = store_with_one_sent(dir.path(), now, AfterAttempt::Dead).await;
        for (id, stream) in [("e2", "s"), ("e3", "s"), ("e4", "t")] {
            ingest_one(&store, id, stream, now).await;
        }
        let master = store.master.clone();
        store.pool.close().await;
        drop(store);

        let url = format!("sqlite://{}", dir.path().join(DATABASE_FILE).display());
        let old = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "DROP INDEX deliveries_open_by_stream; \
             ALTER TABLE deliveries DROP COLUMN config_n; \
             DROP TABLE stream_configs; \
             CREATE INDEX deliveries_open_by_stream ON deliveries (config_id, stream, id) \
                 WHERE state IN ('blocked', 'pending', 'running', 'retrying'); \
             DELETE FROM _sqlx_migrations WHERE version = 17;",
        )
        .execute(&old)
        .await
        .unwrap();
        old.close().await;

        let store = SqliteStore::open(dir.path(), master).await.unwrap();
        let numbered: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT e.event_id, d.config_n FROM deliveries d JOIN events e ON e.seq = d.event_seq \
             ORDER BY d.id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            numbered,
            [
                ("e1".to_owned(), None),
                ("e2".to_owned(), Some(1)),
                ("e3".to_owned(), Some(1)),
                ("e4".to_owned(), Some(1)),
            ],
            "the open deliveries numbered, the finished one not"
        );
        ingest_one(&store, "e5", "s", now).await;
        assert!(matches!(
            store
                .retry_delivery(&project(), dead.id, now)
                .await
                .unwrap(),
            RetryOutcome::Requeued
        ));

        // Stream s, one at a time in id order (e1 retried is its oldest); t beside it.
        let mut sent = Vec::new();
        loop {
            let claimed = claim(&store, now).await;
            if claimed.is_empty() {
                break;
            }
            let on_s = claimed.iter().filter(|d| d.event_id != "e4").count();
            assert!(on_s <= 1, "two of stream s at once: {claimed:?}");
            sent.extend(claimed.iter().map(|d| d.event_id.clone()));
            let done: Vec<Completion> = claimed
                .iter()
                .map(|d| outcome(d, now, AfterAttempt::Succeeded))
                .collect();
            store.complete_deliveries(&done).await.unwrap();
        }
        sent.retain(|e| e != "e4");
        assert_eq!(sent, ["e2", "e1", "e3", "e5"]);
    }

    /// The counts the queue gauges read (`delivery_counts`, kept by triggers) against a
    /// count of the table, after each kind of change: ingest (pending and blocked), an
    /// outcome of each kind with the unblocking it brings, a lease written into a row and
    /// its rescue, a config's deletion (cancelled), retention's deletes.
    #[tokio::test]
    async fn the_counts_by_state_follow_every_change() {
        async fn counts_agree(store: &SqliteStore, step: &str) {
            let table: Vec<(String, i64)> = sqlx::query_as(
                "SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state",
            )
            .fetch_all(&store.pool)
            .await
            .unwrap();
            let mut kept: Vec<(String, i64)> =
                sqlx::query_as(<SqliteStore as crate::backend::SqlBackend>::COUNT_BY_STATE)
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            kept.sort();
            assert_eq!(kept, table, "after {step}");
        }
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let store = store_with_one_delivery(dir.path(), now).await;
        let events: Vec<_> = [("e2", "s"), ("e3", "s"), ("e4", "t"), ("e5", "u")]
            .into_iter()
            .map(|(id, stream)| live_event(id, stream))
            .collect();
        store.ingest_live(&project(), &events, now).await.unwrap();
        counts_agree(&store, "ingest").await;

        let claimed = claim(&store, now).await;
        assert_eq!(claimed.len(), 3, "the heads of s, t and u");
        let outcome = |d: &ClaimedDelivery, next: AfterAttempt| Completion {
            delivery_id: d.id,
            attempt: d.attempt,
            lease_owner: "w".into(),
            record: AttemptRecord {
                at: now,
                status_code: Some(500),
                error: None,
                latency_ms: 1,
                response_head: None,
            },
            next,
        };
        let outcomes = [
            outcome(&claimed[0], AfterAttempt::Succeeded),
            outcome(&claimed[1], AfterAttempt::RetryAt(now)),
            outcome(&claimed[2], AfterAttempt::Dead),
        ];
        assert_eq!(
            store.complete_deliveries(&outcomes).await.unwrap().applied,
            3
        );
        counts_agree(&store, "outcomes and an unblocking").await;

        sqlx::query(
            "UPDATE deliveries SET state = 'running', lease_owner = 'old', lease_expires_at_ms = 0 \
             WHERE state = 'retrying'",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        counts_agree(&store, "a lease written into a row").await;
        assert_eq!(store.rescue_expired_leases(now, now, 5).await.unwrap(), 1);
        counts_agree(&store, "its rescue").await;

        assert!(store.delete_live_config(&project(), "cfg").await.unwrap());
        counts_agree(&store, "the config's deletion").await;
        let later = now + time::Duration::seconds(1);
        let deleted = crate::Retention::delete_finished_events(&store, later, 100);
        assert_eq!(deleted.await.unwrap(), 5);
        counts_agree(&store, "retention's delete").await;
    }

    /// Leases end with the process: a delivery in flight when it stopped is due at once in
    /// the next one, as the same attempt.
    #[tokio::test]
    async fn leases_end_with_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let store = store_with_one_delivery(dir.path(), now).await;
        let first = claim(&store, now).await;
        assert_eq!(first.len(), 1);
        let master = store.master.clone();
        drop(store);

        let next = SqliteStore::open(dir.path(), master).await.unwrap();
        let again = claim(&next, now).await;
        assert_eq!(
            again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
            [(first[0].id, 1)]
        );
    }

    /// Herald before in-memory leases wrote them into the rows (`running`); a data dir it
    /// left with a delivery in flight has it rescued like an expired lease: the lost
    /// attempt logged, the delivery due again as the next attempt.
    #[tokio::test]
    async fn leases_written_into_rows_are_rescued() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let store = store_with_one_delivery(dir.path(), now).await;
        sqlx::query(
            "UPDATE deliveries SET state = 'running', lease_owner = 'old', lease_expires_at_ms = 0, attempts = 1",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        assert!(claim(&store, now).await.is_empty());
        assert_eq!(store.rescue_expired_leases(now, now, 5).await.unwrap(), 1);
        assert_eq!(row(&store).await, ("retrying".into(), 1));
        let lost: String =
            sqlx::query_scalar("SELECT error FROM delivery_attempts WHERE attempt = 1")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert!(lost.contains("lease expired"), "{lost}");
        let again = claim(&store, now).await;
        assert_eq!(again.iter().map(|d| d.attempt).collect::<Vec<_>>(), [2]);
    }

    /// `PRAGMA synchronous` of the writer connection, as its last transaction left it.
    async fn writer_synchronous(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .unwrap()
    }

    /// Ingest commits with `synchronous=FULL` (2): its 202 must survive power loss; the
    /// workers' writes (a rescue, here) on the same connection with `NORMAL` (1).
    #[tokio::test]
    async fn each_transaction_sets_its_own_durability() {
        let dir = tempfile::tempdir().unwrap();
        let (master, _) = MasterKey::generate();
        let store = SqliteStore::open(dir.path(), master).await.unwrap();
        let now = OffsetDateTime::now_utc();
        store.rescue_expired_leases(now, now, 1).await.unwrap();
        assert_eq!(writer_synchronous(&store).await, 1);
        let project = ProjectId::parse("project_id", "p").unwrap();
        let body = serde_json::json!({"event_type": "RECORD_OVER", "publish_domain": "d.example.com",
            "app": "live", "stream": "s"});
        let event = (
            EventId::parse("event_id", "e1").unwrap(),
            LiveEvent::parse("", &body).unwrap(),
        );
        store.ingest_live(&project, &[event], now).await.unwrap();
        assert_eq!(writer_synchronous(&store).await, 2);
    }

    /// A token found once is not looked up again, yet its revocation by another process
    /// on the same data directory (`herald tokens revoke` beside a running server) is
    /// refused at the next request.
    #[tokio::test]
    async fn a_revocation_elsewhere_reaches_the_remembered_tokens_at_once() {
        use crate::{Credentials, NewToken};
        use herald_core::secrets::token_digest;

        let dir = tempfile::tempdir().unwrap();
        let (master, _) = MasterKey::generate();
        let server = SqliteStore::open(dir.path(), master.clone()).await.unwrap();
        let cli = SqliteStore::open(dir.path(), master).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let digest = token_digest("t");
        let token = NewToken {
            sha256: &digest,
            project_id: &project(),
            created_at: now,
            expires_at: None,
        };
        cli.insert_token(&token).await.unwrap();
        assert_eq!(
            server.find_token_project(&digest, now).await.unwrap(),
            Some(project())
        );
        // Remembered: found even with the row gone behind the store's back.
        sqlx::query("DELETE FROM tokens")
            .execute(&cli.pool)
            .await
            .unwrap();
        assert_eq!(
            server.find_token_project(&digest, now).await.unwrap(),
            Some(project())
        );
        cli.insert_token(&token).await.unwrap();
        assert!(cli.delete_token(token.id()).await.unwrap());
        assert_eq!(server.find_token_project(&digest, now).await.unwrap(), None);
    }
}
