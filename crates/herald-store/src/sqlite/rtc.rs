//! RTC apps and their record callback on SQLite.

use async_trait::async_trait;
use herald_core::project::ProjectId;
use herald_core::rtc::AppId;
use herald_core::timefmt::unix_ms;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::rows::{RTC_APP_COLUMNS, RtcAppRow, rtc_app_key_context};
use crate::{Page, RecordCallback, RtcApp, RtcApps, StoreError};

#[async_trait]
impl RtcApps for SqliteStore {
    async fn insert_rtc_app(&self, app: &RtcApp) -> Result<(), StoreError> {
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        sqlx::query(
            "INSERT INTO rtc_apps (app_id, project_id, app_name, created_at_ms, callback_updated_at_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(app.app_id.as_str())
        .bind(app.project_id.as_str())
        .bind(app.app_name.as_str())
        .bind(unix_ms(app.created_at))
        .bind(unix_ms(app.callback_updated_at))
        .execute(&mut *tx)
        .await
        .map_err(crate::records::conflict_or)?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_rtc_app(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<Option<RtcApp>, StoreError> {
        let row = sqlx::query_as::<_, RtcAppRow>(&format!(
            "SELECT {RTC_APP_COLUMNS} FROM rtc_apps WHERE project_id = ? AND app_id = ?"
        ))
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.into_app(&self.master)).transpose()
    }

    async fn list_rtc_apps(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<RtcApp>), StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rtc_apps WHERE project_id = ?")
            .bind(project.as_str())
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query_as::<_, RtcAppRow>(&format!(
            "SELECT {RTC_APP_COLUMNS} FROM rtc_apps WHERE project_id = ? ORDER BY rowid LIMIT ? OFFSET ?"
        ))
        .bind(project.as_str())
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let apps = rows
            .into_iter()
            .map(|r| r.into_app(&self.master))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), apps))
    }

    async fn delete_rtc_app(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<bool, StoreError> {
        self.delete_and_cancel(
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
                self.master
                    .seal(&rtc_app_key_context(app_id.as_str()), k.expose().as_bytes())
            })
            .transpose()?;
        let (gate, mut tx) = self.begin_write(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE rtc_apps SET callback_url = ?, auth_key_sealed = ?, callback_updated_at_ms = ? \
             WHERE project_id = ? AND app_id = ?",
        )
        .bind(callback.map(|c| c.url.as_str()))
        .bind(sealed)
        .bind(unix_ms(at))
        .bind(project.as_str())
        .bind(app_id.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        if callback.is_none() {
            // Without a callback there is nowhere to send what has not gone out yet.
            Self::cancel_open_deliveries(&mut tx, app_id.as_str()).await?;
        }
        tx.commit().await?;
        drop(gate);
        self.get_rtc_app(project, app_id).await
    }
}
