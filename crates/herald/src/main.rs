//! `herald`: parses the command line and hands over to the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use herald::settings::{FlagOverrides, Settings};
use herald::{app, credentials};
use herald_core::project::ProjectId;

#[derive(Parser)]
#[command(name = "herald", version, about = "Self-hosted recording callbacks")]
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
        #[command(flatten)]
        common: Common,
        /// Print one JSON line: {"project_id", "token"}.
        #[arg(long)]
        json: bool,
    },
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
}

fn project(raw: &str) -> anyhow::Result<ProjectId> {
    Ok(ProjectId::parse("--project", raw)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Command::Tokens(TokensCommand::Create {
            project: p,
            common,
            json,
        }) => {
            let store = common.open_store().await?;
            credentials::create_token(store.as_ref(), &project(&p)?, json).await
        }
    }
}
