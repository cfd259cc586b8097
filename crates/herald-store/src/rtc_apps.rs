//! RTC apps and their record callback (SPEC §2) on both backends: the SQL is the same on
//! SQLite and PostgreSQL but for the column that orders apps by creation
//! ([`SqlBackend::RTC_APPS_IN_CREATION_ORDER_BY`]), so every [`SqlBackend`] gets
//! [`RtcApps`] from the blanket implementation below.

use async_trait::async_trait;
use herald_core::config::rtc::AppId;
use herald_core::project::ProjectId;
use herald_core::timefmt::unix_ms;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Type};
use time::OffsetDateTime;

use crate::backend::{SqlBackend, conflict_or, delete_and_cancel, limit_offset};
use crate::rows::{RTC_APP_COLUMNS, RtcAppRow, rtc_app_key_context};
use crate::{Page, RecordCallback, RtcApp, RtcApps, StoreError};

#[async_trait]
impl<B> RtcApps for B
where
    B: SqlBackend,
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    for<'q> i64: Encode<'q, B::Db> + Decode<'q, B::Db> + Type<B::Db>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<String>: Encode<'q, B::Db>,
    String: Type<B::Db>,
    for<'q> Option<Vec<u8>>: Encode<'q, B::Db>,
    Vec<u8>: Type<B::Db>,
    for<'r> RtcAppRow: FromRow<'r, <B::Db as Database>::Row>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
{
    async fn insert_rtc_app(&self, app: &RtcApp) -> Result<(), StoreError> {
        let mut w = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO rtc_apps (app_id, project_id, app_name, created_at_ms, callback_updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(app.app_id.as_str())
        .bind(app.project_id.as_str())
        .bind(app.app_name.as_str())
        .bind(unix_ms(app.created_at))
        .bind(unix_ms(app.callback_updated_at))
        .execute(&mut *w.tx)
        .await
        .map_err(conflict_or)?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn get_rtc_app(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<Option<RtcApp>, StoreError> {
        sqlx::query_as::<_, RtcAppRow>(&format!(
            "SELECT {RTC_APP_COLUMNS} FROM rtc_apps WHERE project_id = $1 AND app_id = $2"
        ))
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(self.pool())
        .await?
        .map(|r| r.into_app(self.master()))
        .transpose()
    }

    async fn list_rtc_apps(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<RtcApp>), StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rtc_apps WHERE project_id = $1")
            .bind(project.as_str())
            .fetch_one(self.pool())
            .await?;
        let (limit, offset) = limit_offset(page);
        let apps = sqlx::query_as::<_, RtcAppRow>(&format!(
            "SELECT {RTC_APP_COLUMNS} FROM rtc_apps WHERE project_id = $1 ORDER BY {} LIMIT $2 OFFSET $3",
            B::RTC_APPS_IN_CREATION_ORDER_BY
        ))
        .bind(project.as_str())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .map(|r| r.into_app(self.master()))
        .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), apps))
    }

    async fn delete_rtc_app(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<bool, StoreError> {
        delete_and_cancel(
            self,
            "DELETE FROM rtc_apps WHERE project_id = $1 AND app_id = $2",
            project,
            app_id.as_str(),
        )
        .await
    }

    async fn set_record_callback(
        &self,
        project: &ProjectId,
        app_id: &AppId,
        callback: Option<&RecordCallback>,
        at: OffsetDateTime,
    ) -> Result<Option<RtcApp>, StoreError> {
        let sealed = callback
            .and_then(|c| c.auth_key.as_ref())
            .map(|k| {
                self.master()
                    .seal(&rtc_app_key_context(app_id.as_str()), k.expose().as_bytes())
            })
            .transpose()?;
        let mut w = self.write_tx().await?;
        let row = sqlx::query_as::<_, RtcAppRow>(&format!(
            "UPDATE rtc_apps SET callback_url = $1, auth_key_sealed = $2, callback_updated_at_ms = $3, \
             notify_event_subscription = $4 WHERE project_id = $5 AND app_id = $6 RETURNING {RTC_APP_COLUMNS}"
        ))
        .bind(callback.map(|c| c.url.as_str()))
        .bind(sealed)
        .bind(unix_ms(at))
        .bind(callback.map(|c| c.subscription.names().join(",")))
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if callback.is_none() {
            // Without a callback there is nowhere to send what has not gone out yet.
            self.cancel_open_deliveries(&mut w.tx, app_id.as_str())
                .await?;
        }
        w.tx.commit().await?;
        row.into_app(self.master()).map(Some)
    }
}
