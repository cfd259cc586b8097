//! Test support (feature `testing`): a fresh PostgreSQL schema per test, dropped when the
//! test ends, on the server `HERALD_TEST_DATABASE_URL` names. Tests that need PostgreSQL
//! skip themselves when it is unset, saying so on stderr, except under `CI=true`, where a
//! missing database fails them: a suite that passes without running is no proof. `.ci/run`
//! always sets it.

use std::sync::atomic::{AtomicU32, Ordering};

use secrecy::SecretString;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::postgres::PgSettings;

/// The variable naming the server tests may create schemas on.
pub const TEST_DATABASE_URL: &str = "HERALD_TEST_DATABASE_URL";

/// A schema of its own for one test; every connection made with [`TestSchema::url`] uses
/// it (through `search_path`), migrations included.
pub struct TestSchema {
    base_url: String,
    pub name: String,
    /// The server's URL with `search_path` set to the schema.
    pub url: String,
}

impl TestSchema {
    /// `None` (the test skips, saying so) when `HERALD_TEST_DATABASE_URL` is unset or empty.
    /// Panics (failing the test) when it is unset under `CI=true`, or set but the schema
    /// cannot be made.
    pub async fn create() -> Option<Self> {
        let Some(base_url) = std::env::var(TEST_DATABASE_URL)
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and {TEST_DATABASE_URL} is unset: the PostgreSQL tests must run in CI"
            );
            // Straight to stderr, past the test harness's capture of `eprintln!`, so that a
            // passing run still says what it did not test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: a PostgreSQL test did not run ({TEST_DATABASE_URL} is unset; see the README)"
            );
            return None;
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "herald_test_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = match PgConnection::connect(&base_url).await {
            Ok(c) => c,
            Err(e) => panic!("{TEST_DATABASE_URL} is set but PostgreSQL is unreachable: {e}"),
        };
        drop_orphans(&mut admin).await;
        if let Err(e) = sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
        {
            panic!("creating test schema {name}: {e}");
        }
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        Some(Self {
            base_url,
            name,
            url,
        })
    }

    /// Settings for a store on this schema, with a small pool (tests run side by side).
    pub fn settings(&self, pool_size: u32) -> PgSettings {
        PgSettings {
            url: SecretString::from(self.url.clone()),
            pool_size,
        }
    }
}

/// Drops the schemas of test processes that are gone (the name carries the pid): a test
/// that panicked, or whose schema was still locked when it ended, leaves its schema here.
async fn drop_orphans(admin: &mut PgConnection) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'herald\\_test\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap_or_default();
    for name in names {
        let pid = name.split('_').nth(2).unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut *admin)
                .await;
        }
    }
}

impl Drop for TestSchema {
    /// Drops the schema on a thread of its own, as the test's runtime may be gone or busy.
    /// A server the test ran may still hold a transaction open on a runtime that this very
    /// drop blocks, so the drop gives up after a lock timeout and leaves the schema to
    /// [`drop_orphans`].
    fn drop(&mut self) {
        let (base_url, name) = (self.base_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&base_url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query("SET lock_timeout = '3s'")
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}
