//! Settings: defaults in code, then the TOML file, then `HERALD_*` variables, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `herald` reads at start-up. Not `Debug`: it can hold secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Where the API listens (`HERALD_LISTEN`).
    pub listen: SocketAddr,
    /// The embedded store and the generated master key live here (`HERALD_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Another store than the embedded one (`HERALD_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Lets callbacks target loopback and private addresses (`HERALD_ALLOW_PRIVATE_TARGETS`).
    pub allow_private_targets: bool,
    /// 64 hex characters; when unset, `master.key` in the data dir is used or created
    /// (`HERALD_MASTER_KEY`).
    pub master_key: Option<String>,
    /// How long shutdown waits for in-flight requests, in seconds.
    pub shutdown_grace_secs: u64,
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
            allow_private_targets: false,
            master_key: None,
            shutdown_grace_secs: 10,
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
                "allow_private_targets",
                "master_key",
                "shutdown_grace_secs",
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
