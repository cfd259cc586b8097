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

/// The columns of [`crate::rows::LiveConfigRow`], in the order the insert binds them.
pub(crate) const LIVE_CONFIG_COLUMNS: &str = "id, project_id, publish_domain, app, notify_callback_url, \
     notify_event_subscription, sign_type, key_sealed, create_time_ms, update_time_ms";

/// Implements [`crate::Store`], [`crate::Credentials`], [`crate::LiveConfigs`],
/// [`crate::QueueStatus`] and [`crate::RtcApps`] for a store type, and gives it
/// `delete_and_cancel`. `rtc_apps_in_creation_order_by` is the column that orders RTC
/// apps by creation (SQLite's `rowid`, a sequence on PostgreSQL).
macro_rules! shared_records {
    ($store:ty, rtc_apps_in_creation_order_by: $rtc_order:literal) => {
        const _: () = {
            use async_trait::async_trait;
            use herald_core::config::live::LiveCallbackConfig;
            use herald_core::project::ProjectId;
            use herald_core::config::rtc::AppId;
            use herald_core::timefmt::unix_ms;
            use time::OffsetDateTime;

            use $crate::backend::{conflict_or, limit_offset};
            use $crate::records::LIVE_CONFIG_COLUMNS;
            use $crate::rows::{LiveConfigRow, RTC_APP_COLUMNS, RtcAppRow, rtc_app_key_context};
            use $crate::{
                LiveConfigFilter, LiveConfigs, Page, RecordCallback,
                RtcApp, RtcApps, Store, StoreError,
            };

            #[async_trait]
            impl Store for $store {
                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl LiveConfigs for $store {
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
                    const WHERE: &str = "WHERE project_id = $1 AND ($2 IS NULL OR publish_domain = $2) \
                                         AND ($3 IS NULL OR app = $3)";
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
                    $crate::backend::delete_and_cancel(
                        self,
                        "DELETE FROM live_callback_configs WHERE project_id = $1 AND id = $2",
                        project,
                        id,
                    )
                    .await
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
