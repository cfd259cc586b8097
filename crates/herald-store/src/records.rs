//! What both backends store the same way, written once: credentials, Live configs, RTC
//! apps, the queue's status, and the deletion of a config or app with the deliveries it
//! leaves. The SQL is the same on
//! SQLite and PostgreSQL (sqlx numbers `$N` parameters on both), and the Rust around it
//! differs only in the pool's type, so [`shared_records!`] expands it for each store.
//!
//! A store type using it has `pool` (its management pool), `queue_pool` (its workers')
//! and `master` fields, and two
//! items of its own: `begin_write(&pool)` (a write transaction, with whatever guard the
//! backend needs held beside it) and `cancel_open_deliveries(&mut tx, target_id)`.

/// Implements [`crate::Store`], [`crate::Credentials`], [`crate::LiveConfigs`],
/// [`crate::QueueStatus`] and [`crate::RtcApps`] for a store type, and gives it
/// `delete_and_cancel`. `rtc_apps_in_creation_order_by` is the column that orders RTC
/// apps by creation (SQLite's `rowid`, a sequence on PostgreSQL).
macro_rules! shared_records {
    ($store:ty, rtc_apps_in_creation_order_by: $rtc_order:literal) => {
        const _: () = {
            use async_trait::async_trait;
            use herald_core::project::ProjectId;
            use herald_core::config::rtc::AppId;
            use herald_core::timefmt::unix_ms;
            use time::OffsetDateTime;

            use $crate::backend::{conflict_or, limit_offset};
            use $crate::rows::{RTC_APP_COLUMNS, RtcAppRow, rtc_app_key_context};
            use $crate::{
                Page, RecordCallback, RtcApp, RtcApps, Store, StoreError,
            };

            #[async_trait]
            impl Store for $store {
                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl RtcApps for $store {
                async fn insert_rtc_app(&self, app: &RtcApp) -> Result<(), StoreError> {
                    let (_guard, mut tx) = self.begin_write(&self.pool).await?;
                    sqlx::query(
                        "INSERT INTO rtc_apps (app_id, project_id, app_name, created_at_ms, callback_updated_at_ms) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(app.app_id.as_str())
                    .bind(app.project_id.as_str())
                    .bind(app.app_name.as_str())
                    .bind(unix_ms(app.created_at))
                    .bind(unix_ms(app.callback_updated_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(conflict_or)?;
                    tx.commit().await?;
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
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.into_app(&self.master))
                    .transpose()
                }

                async fn list_rtc_apps(
                    &self,
                    project: &ProjectId,
                    page: Page,
                ) -> Result<(u64, Vec<RtcApp>), StoreError> {
                    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rtc_apps WHERE project_id = $1")
                        .bind(project.as_str())
                        .fetch_one(&self.pool)
                        .await?;
                    let (limit, offset) = limit_offset(page);
                    let apps = sqlx::query_as::<_, RtcAppRow>(&format!(
                        "SELECT {RTC_APP_COLUMNS} FROM rtc_apps WHERE project_id = $1 ORDER BY {} LIMIT $2 OFFSET $3",
                        $rtc_order
                    ))
                    .bind(project.as_str())
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await?
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
                    $crate::backend::delete_and_cancel(
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
                            self.master
                                .seal(&rtc_app_key_context(app_id.as_str()), k.expose().as_bytes())
                        })
                        .transpose()?;
                    let (_guard, mut tx) = self.begin_write(&self.pool).await?;
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
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    if callback.is_none() {
                        // Without a callback there is nowhere to send what has not gone out yet.
                        <Self as $crate::backend::SqlBackend>::cancel_open_deliveries(&mut tx, app_id.as_str()).await?;
                    }
                    tx.commit().await?;
                    row.into_app(&self.master).map(Some)
                }
            }
        };
    };
}

pub(crate) use shared_records;
