//! Where the store lives, from the operator's settings: the embedded store in the data
//! dir, or a shared database named by `HERALD_DATABASE_URL`, chosen by the URL's scheme.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use herald_core::secrets::MasterKey;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::postgres::{PgSettings, PgStore};
use crate::sqlite::SqliteStore;
use crate::supervision::Supervisor;
use crate::{Store, StoreError};

pub enum StoreLocation {
    /// SQLite in the data dir, used by one process at a time.
    Embedded { data_dir: PathBuf },
    /// PostgreSQL, shared by any number of nodes.
    Postgres(PgSettings),
}

impl StoreLocation {
    /// The embedded store unless `database_url` is set (and not empty). Errors never
    /// repeat the URL: it may carry a password.
    pub fn from_settings(
        database_url: Option<&str>,
        data_dir: &Path,
        pool_size: u32,
    ) -> Result<Self, StoreError> {
        let Some(url) = database_url.filter(|u| !u.trim().is_empty()) else {
            return Ok(Self::Embedded {
                data_dir: data_dir.to_owned(),
            });
        };
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => {
                PgConnectOptions::from_str(url).map_err(|e| {
                    StoreError::BadLocation(format!("not a valid PostgreSQL URL ({e})"))
                })?;
                if pool_size == 0 {
                    return Err(StoreError::BadLocation(
                        "HERALD_DATABASE_POOL_SIZE must be at least 1".into(),
                    ));
                }
                Ok(Self::Postgres(PgSettings {
                    url: SecretString::from(url.to_owned()),
                    pool_size,
                }))
            }
            Some(scheme) => Err(StoreError::BadLocation(format!(
                "the {scheme:?} scheme is not supported: use postgres://, or unset it for the embedded store"
            ))),
            None => Err(StoreError::BadLocation(
                "expected a URL such as postgres://user@host:5432/herald".into(),
            )),
        }
    }

    /// True when other `herald serve` processes may use the store at the same time, so
    /// that leases left in it may belong to a live node.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Where the store is, for logs: never the credentials.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded { data_dir } => format!("embedded store in {}", data_dir.display()),
            Self::Postgres(pg) => match PgConnectOptions::from_str(pg.url.expose_secret()) {
                Ok(o) => format!(
                    "PostgreSQL at {}:{}/{}",
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or("(default database)")
                ),
                Err(_) => "PostgreSQL".into(),
            },
        }
    }

    /// Opens the store, creating or migrating it as needed; its background tasks, if it
    /// has any (the embedded store's ingest committer), run under `tasks`.
    pub async fn open(
        &self,
        master: MasterKey,
        tasks: &Supervisor,
    ) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            Self::Embedded { data_dir } => {
                Arc::new(SqliteStore::open_supervised(data_dir, master, tasks).await?)
            }
            Self::Postgres(pg) => Arc::new(PgStore::open(pg, master).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(url: &str) -> Result<StoreLocation, StoreError> {
        StoreLocation::from_settings(Some(url), Path::new("d"), 4)
    }

    #[test]
    fn the_scheme_picks_the_backend() {
        assert!(!location("").unwrap().is_shared());
        let pg = location("postgres://herald:hunter2@db.internal:6432/herald").unwrap();
        assert!(pg.is_shared());
        assert!(location("postgresql://db/herald").unwrap().is_shared());
        let described = pg.describe();
        assert_eq!(described, "PostgreSQL at db.internal:6432/herald");
    }

    #[test]
    fn errors_name_the_problem_but_never_the_password() {
        for url in [
            "mysql://root:hunter2@db/herald",
            "hunter2",
            "postgres://u:hunter2@db:notaport/x",
        ] {
            let Err(e) = location(url) else {
                panic!("{url} was accepted")
            };
            let message = e.to_string();
            assert!(message.starts_with("HERALD_DATABASE_URL: "), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let Err(e) = StoreLocation::from_settings(Some("postgres://db/h"), Path::new("d"), 0)
        else {
            panic!("a pool of 0 was accepted")
        };
        assert!(e.to_string().contains("POOL_SIZE"));
    }
}
