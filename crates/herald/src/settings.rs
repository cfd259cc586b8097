//! Settings: defaults in code, then the TOML file, then `HERALD_*` variables, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_core::field::FieldError;
use herald_core::retry::{RetrySchedule, parse_duration};
use herald_delivery::DeliverySettings;
use serde::{Deserialize, Serialize};

/// Everything `herald` reads at start-up. Not `Debug`: it can hold secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Where the API listens (`HERALD_LISTEN`).
    pub listen: SocketAddr,
    /// The embedded store and the generated master key live here (`HERALD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `postgres://…` to run on PostgreSQL, shared with other nodes, instead of the
    /// embedded store (`HERALD_DATABASE_URL`). Never logged: it may carry a password.
    pub database_url: Option<String>,
    /// Most PostgreSQL connections this node opens for ingest and management, besides its
    /// worker's and the one it keeps for `LISTEN` (`HERALD_DATABASE_POOL_SIZE`).
    pub database_pool_size: u32,
    /// Lets callbacks target loopback and private addresses (`HERALD_ALLOW_PRIVATE_TARGETS`).
    pub allow_private_targets: bool,
    /// 64 hex characters; when unset, `master.key` in the data dir is used or created
    /// (`HERALD_MASTER_KEY`).
    pub master_key: Option<String>,
    /// How long shutdown waits for in-flight requests and callbacks, in seconds.
    pub shutdown_grace_secs: u64,
    /// Delays before each delivery attempt, e.g. `0s,5s,30s,2m` (`HERALD_RETRY_SCHEDULE`).
    pub retry_schedule: String,
    /// Connect plus response time allowed per attempt (`HERALD_DELIVERY_TIMEOUT`).
    pub delivery_timeout: String,
    /// Live `auth_timestamp` = send time + this (`HERALD_SIGNATURE_TTL`).
    pub signature_ttl: String,
    /// Most callbacks in flight to one endpoint (`HERALD_ENDPOINT_CONCURRENCY`).
    pub endpoint_concurrency: u32,
    /// Most callbacks in flight from this process (`HERALD_MAX_IN_FLIGHT`).
    pub max_in_flight: u32,
    /// Longest wait between looks at the queue when nothing signals work (`HERALD_POLL_INTERVAL`).
    pub poll_interval: String,
    /// How long finished events, deliveries and attempts are kept, e.g. `30d`; `0` keeps
    /// everything (`HERALD_RETENTION`).
    pub retention: String,
    /// Access keys listed in the config file, beside those created by the CLI.
    pub credentials: Vec<StaticAccessKey>,
    /// Tokens listed in the config file.
    pub tokens: Vec<StaticToken>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StaticAccessKey {
    pub project_id: String,
    pub access_key: String,
    pub secret_key: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StaticToken {
    pub project_id: String,
    pub token: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./herald-data"),
            database_url: None,
            database_pool_size: 16,
            allow_private_targets: false,
            master_key: None,
            shutdown_grace_secs: 10,
            retry_schedule: "0s,5s,30s,2m,10m,30m,1h,3h,6h,12h".into(),
            delivery_timeout: "5s".into(),
            signature_ttl: "600s".into(),
            endpoint_concurrency: 32,
            max_in_flight: 512,
            poll_interval: "1s".into(),
            retention: "30d".into(),
            credentials: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

/// Flags given on the command line; `None` leaves the lower layers' value.
#[derive(Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_private_targets: Option<bool>,
}

impl Settings {
    /// The delivery settings, validated; errors name the variable to fix.
    pub fn delivery(&self) -> Result<DeliverySettings, FieldError> {
        let positive = |name: &str, value: u32| {
            if value == 0 {
                Err(FieldError::new(name, "must be at least 1"))
            } else {
                Ok(value)
            }
        };
        let timeout = parse_duration("HERALD_DELIVERY_TIMEOUT", &self.delivery_timeout)?;
        if timeout.is_zero() {
            return Err(FieldError::new(
                "HERALD_DELIVERY_TIMEOUT",
                "must be more than 0",
            ));
        }
        Ok(DeliverySettings {
            retry_schedule: RetrySchedule::parse("HERALD_RETRY_SCHEDULE", &self.retry_schedule)?,
            timeout,
            signature_ttl: parse_duration("HERALD_SIGNATURE_TTL", &self.signature_ttl)?,
            per_endpoint_in_flight: positive(
                "HERALD_ENDPOINT_CONCURRENCY",
                self.endpoint_concurrency,
            )?,
            max_in_flight: positive("HERALD_MAX_IN_FLIGHT", self.max_in_flight)?,
            allow_private_targets: self.allow_private_targets,
            poll_interval: parse_duration("HERALD_POLL_INTERVAL", &self.poll_interval)?
                .max(Duration::from_millis(10)),
        })
    }

    /// How long finished history is kept; `None` keeps it forever (`0`).
    pub fn retention(&self) -> Result<Option<Duration>, FieldError> {
        if self.retention.trim() == "0" {
            return Ok(None);
        }
        let keep = parse_duration("HERALD_RETENTION", &self.retention)?;
        Ok((!keep.is_zero()).then_some(keep))
    }

    pub fn load(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
    ) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = config_file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("HERALD_").only(&[
                "listen",
                "data_dir",
                "database_url",
                "database_pool_size",
                "allow_private_targets",
                "master_key",
                "shutdown_grace_secs",
                "retry_schedule",
                "delivery_timeout",
                "signature_ttl",
                "endpoint_concurrency",
                "max_in_flight",
                "poll_interval",
                "retention",
            ]))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment::Error.
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                r#"
                    listen = "127.0.0.1:9000"
                    data_dir = "/from/file"
                    [[credentials]]
                    project_id = "p1"
                    access_key = "AK"
                    secret_key = "SK"
                "#,
            )?;
            jail.set_env("HERALD_DATA_DIR", "/from/env");
            jail.set_env("HERALD_ALLOW_PRIVATE_TARGETS", "true");
            let flags = FlagOverrides {
                data_dir: Some("/from/flag".into()),
                ..FlagOverrides::default()
            };
            let s = Settings::load(Some(Path::new("herald.toml")), &flags).map_err(|e| *e)?;
            assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
            assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
            assert!(s.allow_private_targets);
            assert_eq!(s.credentials.len(), 1);
            let s = Settings::load(Some(Path::new("herald.toml")), &FlagOverrides::default())
                .map_err(|e| *e)?;
            assert_eq!(s.data_dir, PathBuf::from("/from/env"));
            Ok(())
        });
    }

    #[test]
    fn delivery_settings_are_validated_by_name() {
        let mut s = Settings::default();
        let d = s.delivery().unwrap();
        assert_eq!(d.retry_schedule.attempts(), 10);
        assert_eq!(d.timeout, Duration::from_secs(5));
        assert_eq!(d.signature_ttl, Duration::from_secs(600));
        s.retry_schedule = "0s,5x".into();
        assert_eq!(s.delivery().unwrap_err().field, "HERALD_RETRY_SCHEDULE");
        s.retry_schedule = "0s".into();
        s.delivery_timeout = "0s".into();
        assert_eq!(s.delivery().unwrap_err().field, "HERALD_DELIVERY_TIMEOUT");
        s.delivery_timeout = "99999999999999d".into();
        assert_eq!(s.delivery().unwrap_err().field, "HERALD_DELIVERY_TIMEOUT");
    }

    #[test]
    fn retention_defaults_to_thirty_days_and_zero_keeps_everything() {
        let mut s = Settings::default();
        assert_eq!(
            s.retention().unwrap(),
            Some(Duration::from_secs(30 * 86_400))
        );
        s.retention = "0".into();
        assert_eq!(s.retention().unwrap(), None);
        s.retention = "10s".into();
        assert_eq!(s.retention().unwrap(), Some(Duration::from_secs(10)));
        s.retention = "forever".into();
        assert_eq!(s.retention().unwrap_err().field, "HERALD_RETENTION");
    }

    #[test]
    fn defaults_need_no_file() {
        figment::Jail::expect_with(|_| {
            let s = Settings::load(None, &FlagOverrides::default()).map_err(|e| *e)?;
            assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(s.data_dir, PathBuf::from("./herald-data"));
            assert!(!s.allow_private_targets);
            Ok(())
        });
    }
}
