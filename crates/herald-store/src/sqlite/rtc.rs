//! RTC apps and their record callback on SQLite.

use herald_core::live::CallbackUrl;
use herald_core::project::ProjectId;
use herald_core::rtc::{AppId, AppName, AuthKey};
use herald_core::timefmt::{from_unix_ms, unix_ms};
use secrecy::ExposeSecret;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::rows::{CorruptRow, rtc_app_key_context, stored_project};
use crate::{Page, RecordCallback, RtcApp, StoreError};

const COLUMNS: &str = "app_id, project_id, app_name, created_at_ms, callback_url, auth_key_sealed, callback_updated_at_ms";

impl SqliteStore {
    fn rtc_app(&self, row: &SqliteRow) -> Result<RtcApp, StoreError> {
        let app_id: String = row.try_get("app_id")?;
        let corrupt = |reason: String| CorruptRow {
            table: "rtc_apps",
            id: app_id.clone(),
            reason,
        };
        let url: Option<String> = row.try_get("callback_url")?;
        let sealed: Option<Vec<u8>> = row.try_get("auth_key_sealed")?;
        let callback = match url {
            None => None,
            Some(url) => {
                let auth_key = sealed
                    .map(|s| {
                        let key = self.master.open_string(&rtc_app_key_context(&app_id), &s)?;
                        AuthKey::parse("auth_key", key.expose_secret())
                            .map_err(|e| StoreError::from(corrupt(e.to_string())))
                    })
                    .transpose()?;
                Some(RecordCallback {
                    url: CallbackUrl::parse("url", &url, true)
                        .map_err(|e| corrupt(e.to_string()))?,
                    auth_key,
                })
            }
        };
        Ok(RtcApp {
            app_id: AppId::parse(&app_id).ok_or_else(|| corrupt("not an app id".into()))?,
            project_id: stored_project("rtc_apps", &app_id, row.try_get("project_id")?)?,
            app_name: AppName::parse("app_name", row.try_get("app_name")?)
                .map_err(|e| corrupt(e.to_string()))?,
            created_at: from_unix_ms(row.try_get("created_at_ms")?),
            callback,
            callback_updated_at: from_unix_ms(row.try_get("callback_updated_at_ms")?),
        })
    }

    pub(super) async fn insert_rtc_app_impl(&self, app: &RtcApp) -> Result<(), StoreError> {
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
        .map_err(super::conflict_or)?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn get_rtc_app_impl(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<Option<RtcApp>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rtc_apps WHERE project_id = ? AND app_id = ?"
        ))
        .bind(project.as_str())
        .bind(app_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| self.rtc_app(&r)).transpose()
    }

    pub(super) async fn list_rtc_apps_impl(
        &self,
        project: &ProjectId,
        page: Page,
    ) -> Result<(u64, Vec<RtcApp>), StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rtc_apps WHERE project_id = ?")
            .bind(project.as_str())
            .fetch_one(&self.pool)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rtc_apps WHERE project_id = ? ORDER BY rowid LIMIT ? OFFSET ?"
        ))
        .bind(project.as_str())
        .bind(i64::try_from(page.limit).unwrap_or(i64::MAX))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let apps = rows
            .iter()
            .map(|r| self.rtc_app(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(total).unwrap_or(0), apps))
    }

    pub(super) async fn delete_rtc_app_impl(
        &self,
        project: &ProjectId,
        app_id: &AppId,
    ) -> Result<bool, StoreError> {
        let (_gate, mut tx) = self.begin_write(&self.pool).await?;
        let done = sqlx::query("DELETE FROM rtc_apps WHERE project_id = ? AND app_id = ?")
            .bind(project.as_str())
            .bind(app_id.as_str())
            .execute(&mut *tx)
            .await?;
        let existed = done.rows_affected() > 0;
        if existed {
            Self::cancel_open_deliveries(&mut tx, app_id.as_str()).await?;
        }
        tx.commit().await?;
        Ok(existed)
    }

    pub(super) async fn set_record_callback_impl(
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
        self.get_rtc_app_impl(project, app_id).await
    }
}
