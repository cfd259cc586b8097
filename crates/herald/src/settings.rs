//! Settings: defaults in code, then the TOML file, then `HERALD_*` variables, then flags.
//!
//! Parsed, not validated later: durations are [`Duration`]s (at most ten years, so no time
//! computed from one can overflow), the retry schedule a [`RetrySchedule`], and secrets
//! [`SecretString`]s, which `Debug` and logs show as redacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use herald_api::ServerLimits;
use herald_core::duration::parse_duration;
use herald_core::field::FieldError;
use herald_core::retry::RetrySchedule;
use herald_core::source::RecordRoots;
use herald_delivery::DeliverySettings;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

/// Everything `herald` reads at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the API listens (`HERALD_LISTEN`).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// The embedded store and the generated master key live here (`HERALD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `postgres://…` to run on PostgreSQL, shared with other nodes, instead of the
    /// embedded store (`HERALD_DATABASE_URL`). A secret: it may carry a password.
    pub database_url: Option<SecretString>,
    /// Most PostgreSQL connections this node opens for ingest and management, besides its
    /// worker's and the one it keeps for `LISTEN` (`HERALD_DATABASE_POOL_SIZE`).
    #[serde(deserialize_with = "database_pool_size")]
    pub database_pool_size: u32,
    /// Lets callbacks target loopback and private addresses (`HERALD_ALLOW_PRIVATE_TARGETS`).
    #[serde(deserialize_with = "allow_private_targets")]
    pub allow_private_targets: bool,
    /// 64 hex characters; when unset, `master.key` in the data dir is used or created
    /// (`HERALD_MASTER_KEY`).
    pub master_key: Option<SecretString>,
    /// How long shutdown waits for in-flight requests and callbacks (`HERALD_SHUTDOWN_GRACE`).
    #[serde(deserialize_with = "shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Delays before each delivery attempt, e.g. `0s,5s,30s,2m` (`HERALD_RETRY_SCHEDULE`).
    #[serde(deserialize_with = "retry_schedule")]
    pub retry_schedule: RetrySchedule,
    /// Connect plus response time allowed per attempt (`HERALD_DELIVERY_TIMEOUT`).
    #[serde(deserialize_with = "delivery_timeout")]
    pub delivery_timeout: Duration,
    /// Live `auth_timestamp` = send time + this (`HERALD_SIGNATURE_TTL`).
    #[serde(deserialize_with = "signature_ttl")]
    pub signature_ttl: Duration,
    /// Most callbacks in flight to one endpoint (`HERALD_ENDPOINT_CONCURRENCY`).
    #[serde(deserialize_with = "endpoint_concurrency")]
    pub endpoint_concurrency: u32,
    /// Most callbacks in flight from this process (`HERALD_MAX_IN_FLIGHT`).
    #[serde(deserialize_with = "max_in_flight")]
    pub max_in_flight: u32,
    /// Most of those one project may hold (`HERALD_PROJECT_IN_FLIGHT`; default half of
    /// `max_in_flight`), so that one project's hanging receivers cannot starve the others.
    #[serde(deserialize_with = "project_in_flight")]
    pub project_in_flight: Option<u32>,
    /// Longest wait between looks at the queue when nothing signals work (`HERALD_POLL_INTERVAL`).
    #[serde(deserialize_with = "poll_interval")]
    pub poll_interval: Duration,
    /// How long finished events, deliveries and attempts are kept; `None` (written `0`)
    /// keeps everything (`HERALD_RETENTION`).
    #[serde(deserialize_with = "retention")]
    pub retention: Option<Duration>,
    /// Where media servers reach Herald: the base of recording sources' hook URLs
    /// (`HERALD_PUBLIC_URL`; default `http://` + the listen address).
    #[serde(deserialize_with = "public_url")]
    pub public_url: Option<String>,
    /// The ffprobe program that reads finished recordings (`HERALD_FFPROBE`).
    pub ffprobe: PathBuf,
    /// The ffmpeg program that converts recordings to a source's `record_format`
    /// (`HERALD_FFMPEG`).
    pub ffmpeg: PathBuf,
    /// How long a failing upload to a source's bucket is retried before its file is
    /// `RECORD_FAILED` (`HERALD_UPLOAD_DEADLINE`, SPEC §7.1).
    #[serde(deserialize_with = "upload_deadline")]
    pub upload_deadline: Duration,
    /// A connection whose request head has not arrived this long after the server began
    /// waiting for it is closed: trickled headers and idle connections do not hold a slot
    /// (`HERALD_HEADER_READ_TIMEOUT`).
    #[serde(deserialize_with = "header_read_timeout")]
    pub header_read_timeout: Duration,
    /// A request body not received this long after its head is refused with 408
    /// (`HERALD_BODY_READ_TIMEOUT`).
    #[serde(deserialize_with = "body_read_timeout")]
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait until one ends (`HERALD_MAX_CONNECTIONS`).
    #[serde(deserialize_with = "max_connections")]
    pub max_connections: u32,
    /// Most callback configs, apps and recording sources one project may have, each counted
    /// apart (`HERALD_MAX_PER_PROJECT`).
    #[serde(deserialize_with = "max_per_project")]
    pub max_per_project: u32,
    /// The directories recording sources may read files from: `HERALD_RECORD_ROOTS`
    /// (absolute paths separated by `:`), or `record_roots`, an array, in the file. None by
    /// default: a project's token alone must never make Herald read files on the server.
    #[serde(deserialize_with = "record_roots")]
    pub record_roots: RecordRoots,
    /// Where `/metrics` is served instead of the main listener, e.g. `127.0.0.1:9464`
    /// (`HERALD_METRICS_LISTEN`; unset: on the main listener).
    pub metrics_listen: Option<SocketAddr>,
    /// Access keys listed in the config file, beside those created by the CLI.
    pub credentials: Vec<StaticAccessKey>,
    /// Tokens listed in the config file.
    pub tokens: Vec<StaticToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticAccessKey {
    pub project_id: String,
    pub access_key: String,
    pub secret_key: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub project_id: String,
    pub token: SecretString,
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
            shutdown_grace: Duration::from_secs(10),
            retry_schedule: RetrySchedule::default(),
            delivery_timeout: Duration::from_secs(5),
            signature_ttl: Duration::from_secs(600),
            endpoint_concurrency: 32,
            max_in_flight: 512,
            project_in_flight: None,
            poll_interval: Duration::from_secs(1),
            retention: Some(Duration::from_secs(30 * 86_400)),
            public_url: None,
            ffprobe: PathBuf::from("ffprobe"),
            ffmpeg: PathBuf::from("ffmpeg"),
            upload_deadline: Duration::from_secs(3600),
            header_read_timeout: ServerLimits::default().header_read_timeout,
            body_read_timeout: ServerLimits::default().body_read_timeout,
            max_connections: 256,
            max_per_project: 1000,
            record_roots: RecordRoots::default(),
            metrics_listen: None,
            credentials: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

/// A setting as written: figment reads `HERALD_RETENTION=0` as a number, `5s` as text.
fn written<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(u64),
    }
    Ok(match Written::deserialize(d)? {
        Written::Text(text) => text,
        Written::Number(n) => n.to_string(),
    })
}

/// A whole number setting: its error names the variable and says what it takes (serde's
/// own says "expected u32").
fn whole_number<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<u32, D::Error> {
    let raw = written(d)?;
    raw.trim().parse().map_err(|_| {
        serde::de::Error::custom(FieldError::new(
            name,
            format!("{raw:?} is not a whole number from 0 to {}", u32::MAX),
        ))
    })
}

fn database_pool_size<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole_number(d, "HERALD_DATABASE_POOL_SIZE")
}

fn endpoint_concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole_number(d, "HERALD_ENDPOINT_CONCURRENCY")
}

fn max_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole_number(d, "HERALD_MAX_IN_FLIGHT")
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole_number(d, "HERALD_MAX_CONNECTIONS")
}

fn max_per_project<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    whole_number(d, "HERALD_MAX_PER_PROJECT")
}

fn project_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    whole_number(d, "HERALD_PROJECT_IN_FLIGHT").map(Some)
}

/// `true/false`, `1/0`, `yes/no` (any case): what people write for a switch in a shell.
fn switch<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Bool(bool),
        Number(u64),
        Text(String),
    }
    let refused = |shown: &str| {
        serde::de::Error::custom(FieldError::new(
            name,
            format!("{shown:?} is not a switch: write true or false (also 1/0, yes/no)"),
        ))
    };
    match Written::deserialize(d)? {
        Written::Bool(b) => Ok(b),
        Written::Number(1) => Ok(true),
        Written::Number(0) => Ok(false),
        Written::Number(n) => Err(refused(&n.to_string())),
        Written::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(refused(&text)),
        },
    }
}

fn allow_private_targets<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    switch(d, "HERALD_ALLOW_PRIVATE_TARGETS")
}

/// An IP address and a port: a host name would need a resolver, and which of its
/// addresses to bind would be a guess.
fn listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let raw = written(d)?;
    raw.trim().parse().map_err(|_| {
        serde::de::Error::custom(FieldError::new(
            "HERALD_LISTEN",
            format!(
                "{raw:?} is not an IP:PORT address, like 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080"
            ),
        ))
    })
}

/// A duration setting, its errors naming the variable that sets it.
fn duration_named<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<Duration, D::Error> {
    parse_duration(name, &written(d)?).map_err(serde::de::Error::custom)
}

fn shutdown_grace<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration_named(d, "HERALD_SHUTDOWN_GRACE")
}

fn delivery_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let timeout = duration_named(d, "HERALD_DELIVERY_TIMEOUT")?;
    if timeout.is_zero() {
        return Err(serde::de::Error::custom(FieldError::new(
            "HERALD_DELIVERY_TIMEOUT",
            "must be more than 0",
        )));
    }
    Ok(timeout)
}

/// A duration setting that must not be zero (a zero timeout would refuse every request).
fn positive_duration<'de, D: Deserializer<'de>>(d: D, name: &str) -> Result<Duration, D::Error> {
    let value = duration_named(d, name)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom(FieldError::new(
            name,
            "must be more than 0",
        )));
    }
    Ok(value)
}

fn header_read_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration(d, "HERALD_HEADER_READ_TIMEOUT")
}

fn body_read_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration(d, "HERALD_BODY_READ_TIMEOUT")
}

fn upload_deadline<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive_duration(d, "HERALD_UPLOAD_DEADLINE")
}

fn signature_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    duration_named(d, "HERALD_SIGNATURE_TTL")
}

/// At least 10 ms: a shorter poll would only burn CPU.
fn poll_interval<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(duration_named(d, "HERALD_POLL_INTERVAL")?.max(Duration::from_millis(10)))
}

fn retry_schedule<'de, D: Deserializer<'de>>(d: D) -> Result<RetrySchedule, D::Error> {
    RetrySchedule::parse("HERALD_RETRY_SCHEDULE", &written(d)?).map_err(serde::de::Error::custom)
}

/// `0` (or any zero duration) keeps everything.
fn retention<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw = written(d)?;
    if raw.trim() == "0" {
        return Ok(None);
    }
    let keep = parse_duration("HERALD_RETENTION", &raw).map_err(serde::de::Error::custom)?;
    Ok((!keep.is_zero()).then_some(keep))
}

/// An absolute `http`/`https` URL (a path is kept: Herald may sit behind a proxy's prefix).
fn public_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw = String::deserialize(d)?;
    if raw.is_empty() {
        return Ok(None);
    }
    herald_core::source::DownloadBase::parse("HERALD_PUBLIC_URL", &raw)
        .map(|url| Some(url.as_str().trim_end_matches('/').to_owned()))
        .map_err(serde::de::Error::custom)
}

/// The settings read from `HERALD_<NAME>` variables: what [`Settings::load`] reads, and what
/// [`unknown_variables`] checks the environment against, so the two cannot drift apart.
pub const SETTINGS_FROM_ENV: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "database_pool_size",
    "allow_private_targets",
    "master_key",
    "shutdown_grace",
    "retry_schedule",
    "delivery_timeout",
    "signature_ttl",
    "endpoint_concurrency",
    "max_in_flight",
    "project_in_flight",
    "poll_interval",
    "retention",
    "public_url",
    "ffprobe",
    "header_read_timeout",
    "body_read_timeout",
    "max_connections",
    "max_per_project",
    "record_roots",
    "metrics_listen",
    "ffmpeg",
    "upload_deadline",
];

/// `HERALD_*` variables read elsewhere: by the CLI's flags (`HERALD_CONFIG`, `herald listen`'s
/// and `herald emit`'s keys) and by the build (`HERALD_COMMIT`).
const OTHER_VARIABLES: &[&str] = &[
    "HERALD_CONFIG",
    "HERALD_LISTEN_KEY",
    "HERALD_AK",
    "HERALD_SK",
    "HERALD_COMMIT",
];

/// The `HERALD_*` variables among `names` that nothing reads (a misspelled
/// `HERALD_RETENTON` would otherwise be ignored without a word), each with the known
/// variable it most likely meant. `HERALD_TEST_*` belongs to the test suites.
pub fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<(String, Option<String>)> {
    let known: Vec<String> = SETTINGS_FROM_ENV
        .iter()
        .map(|name| format!("HERALD_{}", name.to_ascii_uppercase()))
        .chain(OTHER_VARIABLES.iter().map(|name| (*name).to_owned()))
        .collect();
    names
        .into_iter()
        .filter(|name| name.starts_with("HERALD_") && !name.starts_with("HERALD_TEST_"))
        .filter(|name| !known.contains(name))
        .map(|name| {
            let meant = known
                .iter()
                .map(|k| (edit_distance(&name.to_ascii_uppercase(), k), k))
                .filter(|(distance, _)| *distance <= 2)
                .min_by_key(|(distance, _)| *distance)
                .map(|(_, k)| k.clone());
            (name, meant)
        })
        .collect()
}

/// Levenshtein distance, for suggesting the variable a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substituted.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// Logs a warning for each `HERALD_*` variable of the environment that nothing reads.
pub fn warn_about_unknown_variables() {
    let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for (name, meant) in unknown_variables(names) {
        match meant {
            Some(meant) => tracing::warn!(
                "{name} is not a Herald setting and is ignored; did you mean {meant}?"
            ),
            None => tracing::warn!("{name} is not a Herald setting and is ignored"),
        }
    }
}

/// `/a:/b` from the environment, `["/a", "/b"]` from the file.
fn record_roots<'de, D: Deserializer<'de>>(d: D) -> Result<RecordRoots, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        List(Vec<String>),
    }
    const NAME: &str = "HERALD_RECORD_ROOTS";
    match Written::deserialize(d)? {
        Written::Text(text) => RecordRoots::parse_list(NAME, &text),
        Written::List(list) => RecordRoots::from_paths(NAME, list.iter().map(String::as_str)),
    }
    .map_err(serde::de::Error::custom)
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

/// Where `herald serve` leaves the public URL it runs with, in its data dir, for the CLI's
/// hook URLs: the CLI cannot know the `--listen` or port the server was started with.
pub const PUBLIC_URL_FILE: &str = "public-url";

/// The base of the hook URLs the CLI prints, and where it came from (said beside them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookBase {
    pub url: String,
    pub origin: String,
}

impl Settings {
    /// The base of hook URLs for the CLI: `HERALD_PUBLIC_URL` when set; else the URL the
    /// server on this data dir last started with; else a guess from `HERALD_LISTEN`.
    pub fn hook_base(&self) -> HookBase {
        if let Some(url) = &self.public_url {
            return HookBase {
                url: url.clone(),
                origin: "HERALD_PUBLIC_URL".to_owned(),
            };
        }
        let file = self.data_dir.join(PUBLIC_URL_FILE);
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(url) = herald_core::source::DownloadBase::parse("public-url", text.trim())
        {
            return HookBase {
                url: url.as_str().trim_end_matches('/').to_owned(),
                origin: format!("the URL the server last started with ({})", file.display()),
            };
        }
        HookBase {
            url: format!("http://{}", self.listen),
            origin: format!(
                "HERALD_LISTEN, a guess: no server has started with {} yet (start it first, or set HERALD_PUBLIC_URL)",
                self.data_dir.display()
            ),
        }
    }

    /// The base of hook URLs for a server listening on `listen`.
    pub fn public_url_for(&self, listen: SocketAddr) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}"))
    }

    /// What a client may hold of the HTTP server; errors name the variable to fix.
    pub fn server_limits(&self) -> Result<ServerLimits, FieldError> {
        if self.max_connections == 0 {
            return Err(FieldError::new(
                "HERALD_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(ServerLimits {
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections as usize,
        })
    }

    /// The per-project cap on configs, apps and sources; errors name the variable to fix.
    pub fn max_per_project(&self) -> Result<u64, FieldError> {
        if self.max_per_project == 0 {
            return Err(FieldError::new(
                "HERALD_MAX_PER_PROJECT",
                "must be at least 1",
            ));
        }
        Ok(u64::from(self.max_per_project))
    }

    /// The delivery settings; errors name the variable to fix.
    pub fn delivery(&self) -> Result<DeliverySettings, FieldError> {
        let positive = |name: &str, value: u32| {
            if value == 0 {
                Err(FieldError::new(name, "must be at least 1"))
            } else {
                Ok(value)
            }
        };
        let max_in_flight = positive("HERALD_MAX_IN_FLIGHT", self.max_in_flight)?;
        let per_project_in_flight = match self.project_in_flight {
            None => (max_in_flight / 2).max(1),
            Some(n) if n > max_in_flight => {
                return Err(FieldError::new(
                    "HERALD_PROJECT_IN_FLIGHT",
                    "must be at most HERALD_MAX_IN_FLIGHT",
                ));
            }
            Some(n) => positive("HERALD_PROJECT_IN_FLIGHT", n)?,
        };
        let delivery = DeliverySettings {
            retry_schedule: self.retry_schedule.clone(),
            timeout: self.delivery_timeout,
            signature_ttl: self.signature_ttl,
            per_endpoint_in_flight: positive(
                "HERALD_ENDPOINT_CONCURRENCY",
                self.endpoint_concurrency,
            )?,
            max_in_flight,
            per_project_in_flight,
            allow_private_targets: self.allow_private_targets,
            poll_interval: self.poll_interval,
        };
        // The lease must cover the longest a claimed delivery is held (herald-delivery's
        // `DeliverySettings::longest_hold`): refuse settings that make that impossible.
        delivery
            .check()
            .map_err(|why| FieldError::new("HERALD_DELIVERY_TIMEOUT", why))?;
        Ok(delivery)
    }

    pub fn load(
        config_file: Option<&Path>,
        flags: &FlagOverrides,
    ) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::new();
        if let Some(file) = config_file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("HERALD_").only(SETTINGS_FROM_ENV))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures must return figment::Error.
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "herald.toml",
                r#"
                    listen = "127.0.0.1:9000"
                    data_dir = "/from/file"
                    delivery_timeout = "7s"
                    [[credentials]]
                    project_id = "p1"
                    access_key = "AK"
                    secret_key = "SK"
                "#,
            )?;
            jail.set_env("HERALD_DATA_DIR", "/from/env");
            jail.set_env("HERALD_ALLOW_PRIVATE_TARGETS", "true");
            jail.set_env("HERALD_RETENTION", "0");
            let flags = FlagOverrides {
                data_dir: Some("/from/flag".into()),
                ..FlagOverrides::default()
            };
            let s = Settings::load(Some(Path::new("herald.toml")), &flags).map_err(|e| *e)?;
            assert_eq!(s.listen, SocketAddr::from(([127, 0, 0, 1], 9000)));
            assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
            assert_eq!(s.delivery_timeout, Duration::from_secs(7));
            assert_eq!(s.retention, None);
            assert!(s.allow_private_targets);
            assert_eq!(s.credentials[0].secret_key.expose_secret(), "SK");
            let s = Settings::load(Some(Path::new("herald.toml")), &FlagOverrides::default())
                .map_err(|e| *e)?;
            assert_eq!(s.data_dir, PathBuf::from("/from/env"));
            Ok(())
        });
    }

    /// The error of loading with one variable set.
    fn refused(name: &str, value: &str) -> String {
        let mut message = String::new();
        figment::Jail::expect_with(|jail| {
            jail.set_env(name, value);
            message = Settings::load(None, &FlagOverrides::default())
                .map(|_| "accepted".to_owned())
                .unwrap_or_else(|e| e.to_string());
            Ok(())
        });
        message
    }

    #[test]
    fn bad_settings_are_refused_naming_the_variable() {
        for (name, value) in [
            ("HERALD_RETRY_SCHEDULE", "0s,5x"),
            ("HERALD_DELIVERY_TIMEOUT", "0s"),
            ("HERALD_DELIVERY_TIMEOUT", "99999999999999d"),
            ("HERALD_SIGNATURE_TTL", "5"),
            ("HERALD_RETENTION", "forever"),
            ("HERALD_RETENTION", "3651d"),
            ("HERALD_SHUTDOWN_GRACE", "soon"),
            ("HERALD_HEADER_READ_TIMEOUT", "0s"),
            ("HERALD_BODY_READ_TIMEOUT", "slow"),
        ] {
            let message = refused(name, value);
            assert!(message.contains(name), "{name}={value}: {message}");
        }
        let s = Settings {
            max_in_flight: 0,
            ..Settings::default()
        };
        assert_eq!(s.delivery().unwrap_err().field, "HERALD_MAX_IN_FLIGHT");
        let s = Settings {
            max_connections: 0,
            max_per_project: 0,
            ..Settings::default()
        };
        assert_eq!(
            s.server_limits().unwrap_err().field,
            "HERALD_MAX_CONNECTIONS"
        );
        assert_eq!(
            s.max_per_project().unwrap_err().field,
            "HERALD_MAX_PER_PROJECT"
        );
    }

    #[test]
    fn switches_read_as_people_write_them_and_addresses_say_ip_port() {
        for (value, expected) in [
            ("1", true),
            ("yes", true),
            ("TRUE", true),
            ("0", false),
            ("no", false),
        ] {
            let mut got = None;
            figment::Jail::expect_with(|jail| {
                jail.set_env("HERALD_ALLOW_PRIVATE_TARGETS", value);
                got = Some(
                    Settings::load(None, &FlagOverrides::default())
                        .map_err(|e| *e)?
                        .allow_private_targets,
                );
                Ok(())
            });
            assert_eq!(got, Some(expected), "{value}");
        }
        let message = refused("HERALD_ALLOW_PRIVATE_TARGETS", "maybe");
        assert!(
            message.contains("HERALD_ALLOW_PRIVATE_TARGETS") && message.contains("true or false"),
            "{message}"
        );
        for bad in ["localhost:8080", "8080", "127.0.0.1"] {
            let message = refused("HERALD_LISTEN", bad);
            assert!(
                message.contains("HERALD_LISTEN") && message.contains("IP:PORT"),
                "{bad}: {message}"
            );
        }
        let message = refused("HERALD_MAX_IN_FLIGHT", "lots");
        assert!(
            message.contains("HERALD_MAX_IN_FLIGHT") && message.contains("whole number"),
            "{message}"
        );
        let message = refused("HERALD_RETENTION", "5x");
        assert!(
            message.contains("500ms, 5s, 2m, 1h or 30d") && !message.contains("weeks"),
            "{message}"
        );
    }

    #[test]
    fn misspelled_variables_are_found_with_what_they_meant() {
        let env = [
            "HERALD_RETENTON",
            "HERALD_LISTEN",
            "HERALD_CONFIG",
            "HERALD_TEST_BACKEND",
            "PATH",
            "HERALD_ZZZ",
        ];
        let unknown = unknown_variables(env.map(String::from));
        assert_eq!(
            unknown,
            [
                (
                    "HERALD_RETENTON".to_owned(),
                    Some("HERALD_RETENTION".to_owned())
                ),
                ("HERALD_ZZZ".to_owned(), None)
            ]
        );
        // Every setting read from the environment is known, by construction.
        let every = SETTINGS_FROM_ENV
            .iter()
            .map(|n| format!("HERALD_{}", n.to_ascii_uppercase()));
        assert!(unknown_variables(every).is_empty());
    }

    #[test]
    fn record_roots_come_from_the_environment_or_the_file() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None, &FlagOverrides::default()).map_err(|e| *e)?;
            assert!(s.record_roots.is_empty(), "none by default");
            jail.create_file(
                "herald.toml",
                r#"record_roots = ["/srv/rec", "/data/media"]"#,
            )?;
            let s = Settings::load(Some(Path::new("herald.toml")), &FlagOverrides::default())
                .map_err(|e| *e)?;
            let roots: Vec<&str> = s.record_roots.iter().map(|r| r.as_str()).collect();
            assert_eq!(roots, ["/srv/rec", "/data/media"]);
            jail.set_env("HERALD_RECORD_ROOTS", "/var/lib/rec:/mnt/media");
            let s = Settings::load(Some(Path::new("herald.toml")), &FlagOverrides::default())
                .map_err(|e| *e)?;
            let roots: Vec<&str> = s.record_roots.iter().map(|r| r.as_str()).collect();
            assert_eq!(roots, ["/var/lib/rec", "/mnt/media"]);
            Ok(())
        });
        for bad in ["rec", "/srv/../etc", "/"] {
            let message = refused("HERALD_RECORD_ROOTS", bad);
            assert!(message.contains("HERALD_RECORD_ROOTS"), "{bad}: {message}");
        }
    }

    #[test]
    fn defaults_need_no_file() {
        figment::Jail::expect_with(|_| {
            let s = Settings::load(None, &FlagOverrides::default()).map_err(|e| *e)?;
            assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(s.data_dir, PathBuf::from("./herald-data"));
            assert!(!s.allow_private_targets);
            assert_eq!(s.retention, Some(Duration::from_secs(30 * 86_400)));
            let d = s.delivery().unwrap();
            assert_eq!(d.retry_schedule.attempts(), 10);
            assert_eq!(d.timeout, Duration::from_secs(5));
            assert_eq!(d.signature_ttl, Duration::from_secs(600));
            let server = s.server_limits().unwrap();
            assert_eq!(server.header_read_timeout, Duration::from_secs(10));
            assert_eq!(server.body_read_timeout, Duration::from_secs(30));
            assert_eq!(server.max_connections, 256);
            assert_eq!(s.max_per_project().unwrap(), 1000);
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings {
            database_url: Some(SecretString::from("postgres://u:hunter2@db/herald")),
            master_key: Some(SecretString::from("ab".repeat(32))),
            tokens: vec![StaticToken {
                project_id: "p1".into(),
                token: SecretString::from("token-hunter2"),
            }],
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains(&"ab".repeat(32)),
            "{shown}"
        );
    }
}
