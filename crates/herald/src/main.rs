//! `herald`: parses the command line and hands over to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use herald::settings::{FlagOverrides, Settings};
use herald::{app, credentials, deliveries, emit, listen, sources};
use herald_core::project::ProjectId;

/// `herald --version`: the release and the commit it was built from (build.rs), e.g.
/// `herald 0.1.0 (088064b)`, so a bug report names the exact build.
/// mimalloc instead of glibc's allocator: a request and its callback allocate and free
/// many small buffers across tokio's threads, and glibc spent about 12% of the server's
/// CPU in single-event ingest doing it (perf; docs/benchmarks.md, issue 14).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HERALD_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "herald", version = VERSION, about = "Self-hosted recording callbacks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (embedded store in --data-dir unless HERALD_DATABASE_URL is set).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080; env: HERALD_LISTEN].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        common: Common,
        /// Allow callbacks to loopback, private and link-local addresses.
        #[arg(long)]
        allow_private_targets: bool,
    },
    /// Manage AK/SK credentials.
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// Manage X-Auth-Token tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage recording sources: media servers whose hooks Herald turns into recording events.
    #[command(subcommand)]
    Sources(SourcesCommand),
    /// Work with the delivery log.
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Receive callbacks locally, print them and check their signatures.
    Listen {
        /// Port on 127.0.0.1 to listen on.
        #[arg(long, default_value_t = 9000)]
        port: u16,
        /// The Live config's key, or (with --rtc) the RTC app's auth_key.
        #[arg(long, env = "HERALD_LISTEN_KEY")]
        key: Option<String>,
        /// The Live config's sign_type.
        #[arg(long, value_enum, default_value = "HMACSHA256")]
        sign_type: SignTypeArg,
        /// Verify RTC callbacks (X-Rtc-* headers) instead of Live ones.
        #[arg(long)]
        rtc: bool,
        /// The HTTP status to answer, e.g. 500 to watch Herald retry.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
        status: u16,
        /// One JSON line per callback: received_at, event_id, attempt, event_type, body, verified, problem.
        #[arg(long)]
        json: bool,
    },
    /// Send a test event to a running Herald, signed with AK/SK.
    Emit {
        /// Herald's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        endpoint: String,
        #[arg(long, env = "HERALD_AK")]
        ak: String,
        #[arg(long, env = "HERALD_SK", hide_env_values = true)]
        sk: String,
        #[arg(long)]
        project: String,
        /// Live: the event's publish_domain.
        #[arg(long, required_unless_present = "app_id", conflicts_with = "app_id")]
        domain: Option<String>,
        /// Live: the event's app.
        #[arg(long, required_unless_present = "app_id", conflicts_with = "app_id")]
        app: Option<String>,
        /// RTC: the app id (the event goes to /v2/apps/{app_id}/record/events).
        #[arg(long)]
        app_id: Option<String>,
        /// The stream (Live `stream`, RTC `stream_name`).
        #[arg(long)]
        stream: String,
        /// The event type, e.g. RECORD_FILE_COMPLETE.
        #[arg(long = "type")]
        event_type: String,
        /// The idempotency key; Herald makes one when absent.
        #[arg(long)]
        event_id: Option<String>,
        /// More fields, k=v (repeatable); values of only digits are sent as numbers.
        #[arg(long = "field")]
        fields: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Re-queue every dead (or failed) delivery that matches, oldest first.
    Retry {
        #[arg(long)]
        project: String,
        #[arg(long, value_enum)]
        status: RetryStatusArg,
        /// Created at or after: a UTC time (yyyy-mm-ddThh:mm:ssZ) or how long ago (2h).
        #[arg(long)]
        since: Option<String>,
        /// Created before: a UTC time (yyyy-mm-ddThh:mm:ssZ) or how long ago (30m).
        #[arg(long)]
        until: Option<String>,
        /// Only Live deliveries of this ingest domain.
        #[arg(long)]
        publish_domain: Option<String>,
        /// Only Live deliveries of this app.
        #[arg(long)]
        app: Option<String>,
        /// Only RTC deliveries of this app id.
        #[arg(long)]
        app_id: Option<String>,
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"queued": N}.
        #[arg(long)]
        json: bool,
    },
    /// Send the retained events of a range again to a Live config or an RTC app's
    /// record callback, as it matches now.
    Replay {
        #[arg(long)]
        project: String,
        /// The Live config's id.
        #[arg(long, required_unless_present = "app_id", conflicts_with = "app_id")]
        config: Option<String>,
        /// The RTC app's id.
        #[arg(long)]
        app_id: Option<String>,
        /// Accepted at or after: a UTC time (yyyy-mm-ddThh:mm:ssZ) or how long ago (2h).
        #[arg(long)]
        since: String,
        /// Accepted before: a UTC time or how long ago (0s for now).
        #[arg(long)]
        until: String,
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"queued": N}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RetryStatusArg {
    Dead,
    Failed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SignTypeArg {
    #[value(name = "HMACSHA256")]
    HmacSha256,
    #[value(name = "MD5")]
    Md5,
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Create an access key and secret key for a project; printed once.
    Create {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"project_id", "access_key", "secret_key"}.
        #[arg(long)]
        json: bool,
    },
    /// List access keys (never secrets).
    List {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an access key.
    Revoke {
        access_key: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token for a project; printed once.
    Create {
        #[arg(long)]
        project: String,
        /// How long the token is valid, e.g. 30d or 12h [default: until revoked].
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"project_id", "token", "id", "expires_at"}.
        #[arg(long)]
        json: bool,
    },
    /// List tokens by id (never the tokens), with when they expire.
    List {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        common: Common,
        /// One JSON line per token: {"id", "project_id", "created_at", "expires_at", "expired"}.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; a running server refuses it at once.
    Revoke {
        token_id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// The bucket a source uploads its recordings to (SPEC §7.1).
#[derive(clap::Args)]
struct StorageArgs {
    /// The S3 API's URL (e.g. https://obs.cn-north-4.myhuaweicloud.com); also obs_location.
    #[arg(long, requires_all = ["storage_region", "bucket", "access_key_id", "secret_access_key_file"])]
    storage_endpoint: Option<String>,
    #[arg(long, requires = "storage_endpoint")]
    storage_region: Option<String>,
    #[arg(long, requires = "storage_endpoint")]
    bucket: Option<String>,
    #[arg(long, requires = "storage_endpoint")]
    access_key_id: Option<String>,
    /// A file holding the secret access key (never given on the command line, where `ps`
    /// would show it); a trailing newline is ignored.
    #[arg(long, requires = "storage_endpoint")]
    secret_access_key_file: Option<std::path::PathBuf>,
    /// Address objects as {endpoint}/{bucket}/{key} (MinIO, Garage) rather than
    /// {bucket}.{endpoint host}/{key} (OBS, S3).
    #[arg(long, requires = "storage_endpoint")]
    path_style: bool,
    /// The object key's template [default: Huawei's, see docs/recording-sources.md].
    #[arg(long, requires = "storage_endpoint")]
    object_prefix: Option<String>,
    /// Delete the local file once its object is confirmed and its event is durable.
    #[arg(long, requires = "storage_endpoint")]
    delete_local: bool,
}

#[derive(Subcommand)]
enum SourcesCommand {
    /// Create a recording source and print it with its hook URL.
    Create {
        #[arg(long)]
        project: String,
        /// The media server: nginx-rtmp, srs or mediamtx.
        #[arg(long)]
        engine: String,
        /// Report Live events for this ingest domain.
        #[arg(long, required_unless_present = "app_id", conflicts_with = "app_id")]
        publish_domain: Option<String>,
        /// Report RTC events for this app.
        #[arg(long)]
        app_id: Option<String>,
        /// The absolute directory the media server records into.
        #[arg(long)]
        record_dir: String,
        /// A file's download_url is this plus its path below --record-dir.
        #[arg(long)]
        download_base: Option<String>,
        /// How long a stream may stay unpublished before its recording is over [default: 30s].
        #[arg(long)]
        max_pause: Option<String>,
        /// Store recordings as MP4, HLS or FLV (Live; RTC: MP4 or HLS) [default: as the
        /// engine wrote them]. Needs --storage-endpoint.
        #[arg(long, requires = "storage_endpoint")]
        record_format: Option<String>,
        /// Boxed: the flags are many, and the command's other variants small.
        #[command(flatten)]
        storage: Box<StorageArgs>,
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"id", "project_id", "engine", "publish_domain" or "app_id",
        /// "record_dir", "download_base", "max_pause", "hook_url", …}.
        #[arg(long)]
        json: bool,
    },
    /// List a project's recording sources with their hook URLs.
    List {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        common: Common,
        /// One JSON line per source.
        #[arg(long)]
        json: bool,
    },
    /// Delete a recording source by its id.
    Delete {
        id: String,
        #[command(flatten)]
        common: Common,
    },
}

/// `--ttl`: a duration of at least a second.
fn parse_ttl(raw: &str) -> Result<std::time::Duration, String> {
    let ttl = herald_core::duration::parse_duration("--ttl", raw).map_err(|e| e.rule)?;
    if ttl < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(ttl)
}

#[derive(Args)]
struct Common {
    /// Data directory of the embedded store [default: ./herald-data; env: HERALD_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML settings file.
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
}

impl Common {
    fn settings(&self, mut flags: FlagOverrides) -> anyhow::Result<Settings> {
        flags.data_dir = self.data_dir.clone();
        Ok(Settings::load(self.config.as_deref(), &flags)?)
    }

    /// The store of the settings, for the commands that only manage records.
    async fn open_store(&self) -> anyhow::Result<std::sync::Arc<dyn herald_store::Store>> {
        app::open_store(&self.settings(FlagOverrides::default())?).await
    }

    /// The settings, the store, and the base of hook URLs (said on stderr, with where it
    /// came from, so that a wrong one is seen before it is pasted into a media server).
    async fn open_store_and_hook_base(
        &self,
    ) -> anyhow::Result<(Settings, std::sync::Arc<dyn herald_store::Store>, String)> {
        let settings = self.settings(FlagOverrides::default())?;
        let base = settings.hook_base();
        eprintln!("hook URLs use {}, from {}", base.url, base.origin);
        let store = app::open_store(&settings).await?;
        Ok((settings, store, base.url))
    }
}

fn project(raw: &str) -> anyhow::Result<ProjectId> {
    Ok(ProjectId::parse("--project", raw)?)
}

/// A mistake gets its message and exit status 2, never a backtrace: `anyhow`'s `Debug`,
/// which `main` returning `Result` would print, adds one whenever `RUST_BACKTRACE` is set.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    herald::settings::warn_about_unknown_variables();
    match Cli::parse().command {
        Command::Serve {
            listen,
            common,
            allow_private_targets,
        } => {
            let flags = FlagOverrides {
                listen,
                allow_private_targets: allow_private_targets.then_some(true),
                ..FlagOverrides::default()
            };
            app::serve(common.settings(flags)?).await
        }
        Command::Credentials(CredentialsCommand::Create {
            project: p,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            credentials::create(store.as_ref(), &project(&p)?, json).await
        }
        Command::Credentials(CredentialsCommand::List {
            project: p,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            let p = p.as_deref().map(project).transpose()?;
            credentials::list(store.as_ref(), p.as_ref(), json).await
        }
        Command::Credentials(CredentialsCommand::Revoke { access_key, common }) => {
            let store = common.open_store().await?;
            credentials::revoke(store.as_ref(), &access_key).await
        }
        Command::Listen {
            port,
            key,
            sign_type,
            rtc,
            status,
            json,
        } => {
            let status = axum::http::StatusCode::from_u16(status)?;
            let sign_type = match sign_type {
                SignTypeArg::HmacSha256 => herald_verify::SignType::HmacSha256,
                SignTypeArg::Md5 => herald_verify::SignType::Md5,
            };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            listen::run(listen::ListenOptions {
                addr,
                key,
                sign_type,
                rtc,
                status,
                json,
            })
            .await
        }
        Command::Emit {
            endpoint,
            ak,
            sk,
            project,
            domain,
            app,
            app_id,
            stream,
            event_type,
            event_id,
            fields,
        } => {
            let target = match (app_id, domain, app) {
                (Some(app_id), _, _) => emit::Target::Rtc { app_id },
                (None, Some(domain), Some(app)) => emit::Target::Live { domain, app },
                _ => anyhow::bail!("give --domain and --app (Live) or --app-id (RTC)"),
            };
            emit::run(emit::EmitOptions {
                endpoint,
                access_key: ak,
                secret_key: sk,
                project,
                target,
                stream,
                event_type,
                event_id,
                fields,
            })
            .await
        }
        Command::Tokens(TokensCommand::Create {
            project: p,
            ttl,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            credentials::create_token(store.as_ref(), &project(&p)?, ttl, json).await
        }
        Command::Tokens(TokensCommand::List {
            project: p,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            let p = p.as_deref().map(project).transpose()?;
            credentials::list_tokens(store.as_ref(), p.as_ref(), json).await
        }
        Command::Sources(SourcesCommand::Create {
            project: p,
            engine,
            publish_domain,
            app_id,
            record_dir,
            download_base,
            max_pause,
            record_format,
            storage,
            common,
            json,
        }) => {
            let (settings, store, public_url) = common.open_store_and_hook_base().await?;
            let storage = *storage;
            let secret_access_key = storage
                .secret_access_key_file
                .as_deref()
                .map(|path| {
                    std::fs::read_to_string(path)
                        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "--secret-access-key-file: cannot read {}: {e}",
                                path.display()
                            )
                        })
                })
                .transpose()?;
            let max_per_project = settings.max_per_project()?;
            let options = sources::CreateOptions {
                engine,
                publish_domain,
                app_id,
                record_dir,
                download_base,
                max_pause,
                max_per_project,
                record_format,
                storage: storage
                    .storage_endpoint
                    .map(|endpoint| sources::StorageOptions {
                        endpoint,
                        region: storage.storage_region,
                        bucket: storage.bucket,
                        access_key_id: storage.access_key_id,
                        secret_access_key,
                        path_style: storage.path_style,
                        object_prefix: storage.object_prefix,
                        delete_local: storage.delete_local,
                    }),
                allow_private_targets: settings.allow_private_targets,
            };
            let place = sources::Place {
                roots: &settings.record_roots,
                public_url: &public_url,
            };
            sources::create(store.as_ref(), project(&p)?, &options, &place, json).await
        }
        Command::Sources(SourcesCommand::List {
            project: p,
            common,
            json,
        }) => {
            let (_, store, public_url) = common.open_store_and_hook_base().await?;
            sources::list(store.as_ref(), &project(&p)?, &public_url, json).await
        }
        Command::Deliveries(DeliveriesCommand::Retry {
            project: p,
            status,
            since,
            until,
            publish_domain,
            app,
            app_id,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            let args = deliveries::RetryArgs {
                status: match status {
                    RetryStatusArg::Dead => herald_store::DeliveryStatus::Dead,
                    RetryStatusArg::Failed => herald_store::DeliveryStatus::Failed,
                },
                since,
                until,
                publish_domain,
                app,
                app_id,
            };
            deliveries::retry(store.as_ref(), &project(&p)?, args, json).await
        }
        Command::Deliveries(DeliveriesCommand::Replay {
            project: p,
            config,
            app_id,
            since,
            until,
            common,
            json,
        }) => {
            let target = match (config, app_id) {
                (Some(config), _) => herald_store::ReplayTarget::Live(config),
                (None, Some(app_id)) => herald_store::ReplayTarget::Rtc(
                    herald_core::config::rtc::AppId::parse(&app_id)
                        .ok_or_else(|| anyhow::anyhow!("--app-id: not an app id"))?,
                ),
                (None, None) => anyhow::bail!("--config or --app-id is required"),
            };
            let store = common.open_store().await?;
            deliveries::replay(store.as_ref(), &project(&p)?, target, &since, &until, json).await
        }
        Command::Sources(SourcesCommand::Delete { id, common }) => {
            let store = common.open_store().await?;
            sources::delete(store.as_ref(), &id).await
        }
        Command::Tokens(TokensCommand::Revoke { token_id, common }) => {
            let store = common.open_store().await?;
            credentials::revoke_token(store.as_ref(), &token_id).await
        }
    }
}
