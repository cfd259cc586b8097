//! The embedded store: SQLite in WAL mode in the data directory.
//!
//! `synchronous=FULL` makes every commit durable before it returns, so what Herald
//! acknowledges survives `kill -9` and power loss. Queries are runtime-checked
//! (`query().bind()`), so building needs no database.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::live::LiveCallbackConfig;
use herald_core::project::ProjectId;
use herald_core::secrets::MasterKey;
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;

use crate::rows::{LiveConfigRow, access_key_context, stored_project};
use crate::{
    AccessKey, AccessKeySummary, Credentials, LiveConfigFilter, LiveConfigs, Page, Store,
    StoreError,
};

mod queue;
mod rtc;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "herald.sqlite3";

pub struct SqliteStore {
    /// `synchronous=FULL`: every commit is on disk before it returns. Ingest and the
    /// management API write here, so a 202 or a 201 survives power loss.
    pool: SqlitePool,
    /// `synchronous=NORMAL`: the workers' claims, completions and rescues. Losing one of
    /// these to power loss costs at most a re-sent callback (at-least-once allows it),
    /// never an accepted event; and in WAL mode the next FULL commit makes them durable
    /// too. Skipping their fsyncs is what lets a single endpoint reach thousands of
    /// callbacks per second.
    queue_pool: SqlitePool,
    /// Seals secrets on the way in and opens them on the way out.
    master: MasterKey,
    /// SQLite has one writer at a time. Left to itself, a second writer waits in SQLite's
    /// busy handler, which sleeps 1, 2, 5, 10… ms between tries: tens of milliseconds of
    /// idle latency under load, and no fairness between ingest and the workers. Writers
    /// in this process queue here instead, first come first served, and the busy timeout
    /// is left for other processes (the CLI).
    write_gate: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub async fn open(data_dir: &Path, master: MasterKey) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(data_dir.join(DATABASE_FILE))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let queue_pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await?;
        Ok(Self {
            pool,
            queue_pool,
            master,
            write_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// A write transaction on `pool`, taken in turn with this process's other writers.
    /// Keep the guard for as long as the transaction.
    async fn begin_write<'p>(
        &self,
        pool: &'p SqlitePool,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, ()>,
            sqlx::Transaction<'p, sqlx::Sqlite>,
        ),
        StoreError,
    > {
        let gate = self.write_gate.lock().await;
        let tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((gate, tx))
    }
}

/// A slice as JSON text, for `json_each(?)`: how SQLite takes a batch as one parameter.
/// Serialising strings and numbers cannot fail; the empty array is only the type
/// system's due.
pub(crate) fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict_or(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Database(e),
    }
}

const LIVE_CONFIG_COLUMNS: &str = "id, project_id, publish_domain, app, notify_callback_url, \
     notify_event_subscription, sign_type, key_sealed, create_time_ms, update_time_ms";

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Credentials for SqliteStore {
    async fn insert_access_key(&self, key: &AccessKey) -> Result<(), StoreError> {
        let sealed = self.master.seal(
            &access_key_context(&key.access_key),
            key.secret_key.expose_secret().as_bytes(),
        )?;
        sqlx::query(
            "INSERT INTO access_keys (access_key, project_id, secret_key_sealed, created_at_ms) \
             VALUES (?, ?, ?, ?)",
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
            "SELECT project_id, secret_key_sealed, created_at_ms FROM access_keys WHERE access_key = ?",
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
             WHERE ?1 IS NULL OR project_id = ?1 ORDER BY created_at_ms, access_key",
        )
        .bind(project.map(ProjectId::as_str))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let access_key: String = row.try_get("access_key")?;
                Ok(AccessKeySummary {
                    project_id: stored_project(
                        "access_keys",
                        &access_key,
                        row.try_get("project_id")?,
                    )?,
                    access_key,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                })
            })
            .collect()
    }

    async fn delete_access_key(&self, access_key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM access_keys WHERE access_key = ?")
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
            "INSERT INTO tokens (token_sha256, project_id, created_at_ms) VALUES (?, ?, ?)",
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
            sqlx::query_scalar("SELECT project_id FROM tokens WHERE token_sha256 = ?")
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(project
            .map(|p| stored_project("tokens", token_sha256, &p))
            .transpose()?)
    }
}

#[async_trait]
impl LiveConfigs for SqliteStore {
    async fn insert_live_config(&self, config: &LiveCallbackConfig) -> Result<(), StoreError> {
        let row = LiveConfigRow::from_config(config, &self.master)?;
        sqlx::query(&format!(
            "INSERT INTO live_callback_configs ({LIVE_CONFIG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        let row = sqlx::query_as::<_, LiveConfigRow>(&format!(
            "SELECT {LIVE_CONFIG_COLUMNS} FROM live_callback_configs WHERE project_id = ? AND id = ?"
        ))
        .bind(project.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.into_config(&self.master)).transpose()
    }

    async fn list_live_configs(
        &self,
        project: &ProjectId,
        filter: &LiveConfigFilter,
        page: Page,
    ) -> Result<(u64, Vec<LiveCallbackConfig>), StoreError> {
        const WHERE: &str = "WHERE project_id = ?1 AND (?2 IS NULL OR publish_domain = ?2) \
                             AND (?3 IS NULL OR app = ?3)";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM live_callback_configs {WHERE}"
        ))
        .bind(project.as_str())
        .bind(filter.publish_domain.as_deref())
        .bind(filter.app.as_deref())
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query_as::<_, LiveConfigRow>(&format!(
            "SELECT {LIVE_CONFIG_COLUMNS} FROM live_callback_configs {WHERE} ORDER BY seq LIMIT ?4 OFFSET ?5"
        ))
        .bind(project.as_str())
        .bind(filter.publish_domain.as_deref())
        .bind(filter.app.as_deref())
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let configs = rows
            .into_iter()
            .map(|r| r.into_config(&self.master))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), configs))
    }

    async fn update_live_config(&self, config: &LiveCallbackConfig) -> Result<bool, StoreError> {
        let row = LiveConfigRow::from_config(config, &self.master)?;
        let done = sqlx::query(
            "UPDATE live_callback_configs SET publish_domain = ?, app = ?, notify_callback_url = ?, \
             notify_event_subscription = ?, sign_type = ?, key_sealed = ?, update_time_ms = ? \
             WHERE project_id = ? AND id = ?",
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
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        let done = sqlx::query("DELETE FROM live_callback_configs WHERE project_id = ? AND id = ?")
            .bind(project.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let existed = done.rows_affected() > 0;
        if existed {
            Self::cancel_open_deliveries(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(existed)
    }
}
