//! Live-flavour callback configurations (SPEC §1) on both backends: the SQL is the same on
//! SQLite and PostgreSQL, so every [`SqlBackend`] gets [`LiveConfigs`] from the blanket
//! implementation below.

use async_trait::async_trait;
use herald_core::config::live::LiveCallbackConfig;
use herald_core::project::ProjectId;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};

use crate::backend::{SqlBackend, conflict_or, delete_and_cancel, limit_offset};
use crate::rows::LiveConfigRow;
use crate::{LiveConfigFilter, LiveConfigs, Page, StoreError};

/// The columns of [`LiveConfigRow`], in the order the insert binds them.
const LIVE_CONFIG_COLUMNS: &str = "id, project_id, publish_domain, app, notify_callback_url, \
     notify_event_subscription, sign_type, key_sealed, create_time_ms, update_time_ms";

#[async_trait]
impl<B> LiveConfigs for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> String: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<String>: Encode<'q, B::Db>,
    for<'q> Option<Vec<u8>>: Encode<'q, B::Db>,
    Vec<u8>: Type<B::Db>,
    for<'r> LiveConfigRow: FromRow<'r, <B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    async fn insert_live_config(&self, config: &LiveCallbackConfig) -> Result<(), StoreError> {
        let row = LiveConfigRow::from_config(config, self.master())?;
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
        .execute(self.pool())
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
        .fetch_optional(self.pool())
        .await?
        .map(|r| r.into_config(self.master()))
        .transpose()
    }

    async fn list_live_configs(
        &self,
        project: &ProjectId,
        filter: &LiveConfigFilter,
        page: Page,
    ) -> Result<(u64, Vec<LiveCallbackConfig>), StoreError> {
        const WHERE: &str = "WHERE project_id = $1 AND ($2 IS NULL OR publish_domain = $2) \
                             AND ($3 IS NULL OR app = $3)";
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM live_callback_configs {WHERE}"
        ))
        .bind(project.as_str())
        .bind(filter.publish_domain.as_deref())
        .bind(filter.app.as_deref())
        .fetch_one(self.pool())
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
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|r| r.into_config(self.master()))
        .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), configs))
    }

    async fn update_live_config(&self, config: &LiveCallbackConfig) -> Result<bool, StoreError> {
        let row = LiveConfigRow::from_config(config, self.master())?;
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
        .execute(self.pool())
        .await
        .map_err(conflict_or)?;
        Ok(B::rows_affected(&done) > 0)
    }

    async fn delete_live_config(&self, project: &ProjectId, id: &str) -> Result<bool, StoreError> {
        delete_and_cancel(
            self,
            "DELETE FROM live_callback_configs WHERE project_id = $1 AND id = $2",
            project,
            id,
        )
        .await
    }
}
