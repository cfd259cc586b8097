//! The shared store: PostgreSQL, for several `herald serve` nodes on one database.
//!
//! Nodes coordinate only through the database. Claims lease deliveries with
//! `FOR UPDATE SKIP LOCKED` in one short statement; completions are guarded by the lease;
//! any node's rescuer returns expired leases; `NOTIFY` after commit (plus the worker's
//! jittered poll) wakes the other nodes. How per-stream order holds across nodes is set
//! out in [`queue`]. Queries are runtime-checked (`query().bind()`), so building needs no
//! database.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::live::LiveCallbackConfig;
use herald_core::project::ProjectId;
use herald_core::secrets::MasterKey;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use crate::rows::{LiveConfigRow, access_key_context, stored_project};
use crate::{
    AccessKey, AccessKeySummary, Credentials, LiveConfigFilter, LiveConfigs, Page, Store,
    StoreError,
};

mod queue;
mod rtc;

/// The channel on which commits that made deliveries due are announced to every node.
const WORK_CHANNEL: &str = "herald_work";

/// Connections of the worker's pool: one each for claiming, recording outcomes,
/// maintenance, and the idle look at the next due time.
pub const QUEUE_POOL_SIZE: u32 = 4;

/// The name and sealing context of the master-key check in `herald_meta`.
const KEY_CHECK: &str = "master_key_check";

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

/// Announces, at commit, that deliveries may have become due.
async fn notify_work(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict_or(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e),
    }
}

/// A page's bounds as SQL integers.
fn limit_offset(page: Page) -> (i64, i64) {
    (
        i64::try_from(page.limit).unwrap_or(i64::MAX),
        i64::try_from(page.offset).unwrap_or(i64::MAX),
    )
}

const LIVE_CONFIG_COLUMNS: &str = "id, project_id, publish_domain, app, notify_callback_url, \
     notify_event_subscription, sign_type, key_sealed, create_time_ms, update_time_ms";

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Credentials for PgStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        let sealed = self.master.seal(
            &access_key_context(&key.access_key),
            key.secret_key.expose_secret().as_bytes(),
        )?;
        sqlx::query(
            "INSERT INTO access_keys (access_key, project_id, secret_key_sealed, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.access_key)
        .bind(key.project_id.as_str())
        .bind(sealed)
        .bind(unix_ms(key.created_at))
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn find_access_key(&self, access_key: &str) -> Result<Option<AccessKey>, StoreError> {
        let row = sqlx::query(
            "SELECT project_id, secret_key_sealed, created_at_ms FROM access_keys WHERE access_key = $1",
        )
        .bind(access_key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get("secret_key_sealed")?;
        Ok(Some(AccessKey {
            access_key: access_key.to_owned(),
            project_id: stored_project("access_keys", access_key, row.try_get("project_id")?)?,
            secret_key: self
                .master
                .open_string(&access_key_context(access_key), &sealed)?,
            created_at: from_unix_ms(row.try_get("created_at_ms")?),
        }))
    }

    async fn list_access_keys(
        &self,
        project: Option<&ProjectId>,
    ) -> Result<Vec<AccessKeySummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT access_key, project_id, created_at_ms FROM access_keys \
             WHERE $1::text IS NULL OR project_id = $1 ORDER BY created_at_ms, access_key",
        )
        .bind(project.map(ProjectId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let access_key: String = row.try_get("access_key")?;
                let project_id: &str = row.try_get("project_id")?;
                Ok(AccessKeySummary {
                    project_id: stored_project("access_keys", &access_key, project_id)?,
                    access_key,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                })
            })
            .collect()
    }

    async fn delete_access_key(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM access_keys WHERE access_key = $1")
            .bind(access_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_token(
        &self,
        token_sha256: &str,
        project: &ProjectId,
        created_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (token_sha256, project_id, created_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(token_sha256)
        .bind(project.as_str())
        .bind(unix_ms(created_at))
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn find_token_project(
        &self,
        token_sha256: &str,
    ) -> Result<Option<ProjectId>, StoreError> {
        let project: Option<String> =
            sqlx::query_scalar("SELECT project_id FROM tokens WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(project
            .map(|p| stored_project("tokens", token_sha256, &p))
            .transpose()?)
    }
}

#[async_trait]
impl LiveConfigs for PgStore {
    async fn insert_live_config(&self, config: &LiveCallbackConfig) -> Result<(), StoreError> {
        let row = LiveConfigRow::from_config(config, &self.master)?;
        sqlx::query(&format!(
            "INSERT INTO live_callback_configs ({LIVE_CONFIG_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(row.id)
        .bind(row.project_id)
        .bind(row.publish_domain)
        .bind(row.app)
        .bind(row.notify_callback_url)
        .bind(row.notify_event_subscription)
        .bind(row.sign_type)
        .bind(row.key_sealed)
        .bind(row.create_time_ms)
        .bind(row.update_time_ms)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(())
    }

    async fn get_live_config(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<LiveCallbackConfig>, StoreError> {
        sqlx::query_as::<_, LiveConfigRow>(&format!(
            "SELECT {LIVE_CONFIG_COLUMNS} FROM live_callback_configs WHERE project_id = $1 AND id = $2"
        ))
        .bind(project.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.into_config(&self.master))
        .transpose()
    }

    async fn list_live_configs(
        &self,
        project: &ProjectId,
        filter: &LiveConfigFilter,
        page: Page,
    ) -> Result<(u64, Vec<LiveCallbackConfig>), StoreError> {
        const WHERE: &str = "WHERE project_id = $1 AND ($2::text IS NULL OR publish_domain = $2) \
                             AND ($3::text IS NULL OR app = $3)";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM live_callback_configs {WHERE}"
        ))
        .bind(project.as_str())
        .bind(filter.publish_domain.as_deref())
        .bind(filter.app.as_deref())
        .fetch_one(&self.pool)
        .await?;
        let (limit, offset) = limit_offset(page);
        let configs = sqlx::query_as::<_, LiveConfigRow>(&format!(
            "SELECT {LIVE_CONFIG_COLUMNS} FROM live_callback_configs {WHERE} ORDER BY seq LIMIT $4 OFFSET $5"
        ))
        .bind(project.as_str())
        .bind(filter.publish_domain.as_deref())
        .bind(filter.app.as_deref())
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| r.into_config(&self.master))
        .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), configs))
    }

    async fn update_live_config(&self, config: &LiveCallbackConfig) -> Result<bool, StoreError> {
        let row = LiveConfigRow::from_config(config, &self.master)?;
        let done = sqlx::query(
            "UPDATE live_callback_configs SET publish_domain = $1, app = $2, notify_callback_url = $3, \
             notify_event_subscription = $4, sign_type = $5, key_sealed = $6, update_time_ms = $7 \
             WHERE project_id = $8 AND id = $9",
        )
        .bind(row.publish_domain)
        .bind(row.app)
        .bind(row.notify_callback_url)
        .bind(row.notify_event_subscription)
        .bind(row.sign_type)
        .bind(row.key_sealed)
        .bind(row.update_time_ms)
        .bind(row.project_id)
        .bind(row.id)
        .execute(&self.pool)
        .await
        .map_err(conflict_or)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_live_config(&self, project: &ProjectId, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done =
            sqlx::query("DELETE FROM live_callback_configs WHERE project_id = $1 AND id = $2")
                .bind(project.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        let existed = done.rows_affected() > 0;
        if existed {
            queue::cancel_open_deliveries(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(existed)
    }
}
