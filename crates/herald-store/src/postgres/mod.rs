//! The shared store: PostgreSQL, for several `herald serve` nodes on one database.
//!
//! Nodes coordinate only through the database. Claims lease deliveries with
//! `FOR UPDATE SKIP LOCKED` in one short statement; completions are guarded by the lease;
//! any node's rescuer returns expired leases; `NOTIFY` after commit (plus the worker's
//! jittered poll) wakes the other nodes. How per-stream order holds across nodes is set
//! out in `delivery_queue` (the claim, the completion, the rescue, the log); the ingest
//! plan is in `ingest`. Queries are runtime-checked (`query().bind()`), so building needs
//! no database.

use std::str::FromStr;
use std::time::Duration;

use herald_core::secrets::MasterKey;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::StoreError;

mod delivery_queue;
mod ingest;
mod streams;

/// The channel on which commits that made deliveries due are announced to every node.
const WORK_CHANNEL: &str = "herald_work";

/// Connections of the worker's pool: one each for claiming, recording outcomes,
/// maintenance, and the idle look at the next due time.
pub const QUEUE_POOL_SIZE: u32 = 4;

use crate::KEY_CHECK;

/// How to reach the database.
#[derive(Clone)]
pub struct PgSettings {
    /// `postgres://…`; it may carry a password, so it is never logged.
    pub url: SecretString,
    /// Most connections this node opens for management and ingest. The worker has its
    /// own [`QUEUE_POOL_SIZE`], and one more is kept for `LISTEN`.
    pub pool_size: u32,
}

pub struct PgStore {
    /// Management and ingest. Commits are durable when they return (`synchronous_commit`
    /// as the server sets it, `on` by default), so a 201 or a 202 survives a crash.
    pool: PgPool,
    /// The workers' claims, completions and rescues, with `synchronous_commit = off`: a
    /// commit returns before its WAL is flushed. A server crash can lose the last few
    /// hundred milliseconds of them, which costs at most a re-sent callback (the lease
    /// is rescued and the delivery goes out again), never an accepted event. It cannot
    /// reorder a stream either: a synchronous commit (ingest) flushes all the WAL before
    /// it, so nothing ingest saw can be lost while ingest is kept. The embedded store
    /// makes the same trade with `synchronous=NORMAL`.
    queue_pool: PgPool,
    /// Seals secrets on the way in and opens them on the way out.
    master: MasterKey,
    /// The `LISTEN` connection's options: it is held for as long as the node runs, so it
    /// does not come out of the pool.
    listen_options: PgConnectOptions,
}

impl PgStore {
    /// Connects, applies migrations (sqlx serialises nodes that start together with an
    /// advisory lock), and checks that the master key is the one the database's secrets
    /// are sealed under.
    pub async fn open(settings: &PgSettings, master: MasterKey) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(settings.url.expose_secret())?.application_name("herald");
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let queue_pool = PgPoolOptions::new()
            .max_connections(QUEUE_POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone().options([("synchronous_commit", "off")]))
            .await?;
        let store = Self {
            pool,
            queue_pool,
            master,
            listen_options: options,
        };
        store.check_master_key().await?;
        Ok(store)
    }

    /// The first node seals a check value; every later one must be able to open it.
    async fn check_master_key(&self) -> Result<(), StoreError> {
        let sealed = self.master.seal(KEY_CHECK, b"herald")?;
        sqlx::query(
            "INSERT INTO herald_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(KEY_CHECK)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT value FROM herald_meta WHERE name = $1")
            .bind(KEY_CHECK)
            .fetch_one(&self.pool)
            .await?;
        self.master
            .open(KEY_CHECK, &stored)
            .map(drop)
            .map_err(|_| StoreError::MasterKeyMismatch)
    }

    async fn begin(&self) -> Result<Transaction<'_, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction on the worker's pool (see [`PgStore::queue_pool`]).
    async fn begin_queue(&self) -> Result<Transaction<'_, Postgres>, StoreError> {
        Ok(self.queue_pool.begin().await?)
    }
}

#[async_trait::async_trait]
impl crate::backend::SqlBackend for PgStore {
    type Db = Postgres;
    /// A write transaction has the embedded store's shape, but PostgreSQL needs no guard
    /// beside it.
    type Guard<'a> = ();
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const LOCK_ROWS_OR_SKIP: &'static str = " FOR UPDATE SKIP LOCKED";
    const RTC_APPS_IN_CREATION_ORDER_BY: &'static str = "seq";
    // Several nodes write the table at once: a count kept by triggers would be a row
    // every transaction that changes a delivery waits for (item 2 of issue 29 is this
    // store's layout).
    const COUNT_BY_STATE: &'static str =
        "SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state";

    fn payload_text(field: &str) -> String {
        format!("(e.payload::jsonb ->> '{field}')")
    }

    fn ids_of_json(param: &str) -> String {
        format!("(SELECT jsonb_array_elements_text({param}::jsonb)::bigint)")
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn queue_pool(&self) -> &PgPool {
        &self.queue_pool
    }

    fn master(&self) -> &MasterKey {
        &self.master
    }

    fn rows_affected(done: &sqlx::postgres::PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn write_tx(&self) -> Result<crate::backend::WriteTx<'_, Postgres, ()>, StoreError> {
        Ok(crate::backend::WriteTx {
            tx: self.pool.begin().await?,
            _guard: (),
        })
    }

    async fn queue_tx(&self) -> Result<crate::backend::WriteTx<'_, Postgres, ()>, StoreError> {
        Ok(crate::backend::WriteTx {
            tx: self.queue_pool.begin().await?,
            _guard: (),
        })
    }

    async fn cancel_open_deliveries(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        target_id: &str,
    ) -> Result<(), StoreError> {
        delivery_queue::cancel_open_deliveries(tx, target_id).await
    }
}

/// Announces, at commit, that deliveries may have become due.
async fn notify_work(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
