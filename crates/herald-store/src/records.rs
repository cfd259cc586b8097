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

            use $crate::{Store, StoreError};

            #[async_trait]
            impl Store for $store {
                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }
            }
        };
    };
}

pub(crate) use shared_records;
