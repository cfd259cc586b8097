//! Wiring: settings → master key → store → API, and the server's life cycle.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_api::auth::StaticCredentials;
use herald_api::{AppState, router};
use herald_core::project::ProjectId;
use herald_store::Store;
use herald_store::sqlite::SqliteStore;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::master_key;
use crate::settings::Settings;

/// Opens the store the settings name: the embedded one unless `database_url` says otherwise.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(url) = settings.database_url.as_deref().filter(|u| !u.is_empty()) {
        // Never echo the URL: it may carry a password.
        let scheme = url.split_once(':').map_or("unknown", |(s, _)| s);
        bail!(
            "HERALD_DATABASE_URL: the {scheme:?} backend is not available in this build; unset it to use the embedded store"
        );
    }
    let master = master_key::load_or_create(settings.master_key.as_deref(), &settings.data_dir)?;
    let store = SqliteStore::open(&settings.data_dir, master)
        .await
        .with_context(|| format!("opening the store in {}", settings.data_dir.display()))?;
    Ok(Arc::new(store))
}

fn static_credentials(settings: &Settings) -> anyhow::Result<StaticCredentials> {
    let mut creds = StaticCredentials::default();
    for (i, key) in settings.credentials.iter().enumerate() {
        let project = ProjectId::parse(&format!("credentials[{i}].project_id"), &key.project_id)?;
        creds.add_access_key(
            project,
            key.access_key.clone(),
            SecretString::from(key.secret_key.clone()),
        );
    }
    for (i, token) in settings.tokens.iter().enumerate() {
        let project = ProjectId::parse(&format!("tokens[{i}].project_id"), &token.project_id)?;
        creds.add_token(project, &SecretString::from(token.token.clone()));
    }
    Ok(creds)
}

/// A running server: where it listens, and how to stop it.
pub struct Running {
    pub local_addr: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `settings.listen` (port 0 picks a free port) and serves until `shutdown` fires.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    let state = AppState {
        store: open_store(settings).await?,
        credentials: Arc::new(static_credentials(settings)?),
        allow_private_targets: settings.allow_private_targets,
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let local_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(herald_api::serve(listener, router(state), shutdown.clone()));
    Ok(Running {
        local_addr,
        shutdown,
        task,
    })
}

/// `herald serve`: runs until SIGTERM or SIGINT, then drains within the grace period.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(&settings).await?;
    // The one line on stdout, for scripts and tests that start herald on port 0.
    println!("listening on http://{}", running.local_addr);
    tracing::info!(addr = %running.local_addr, data_dir = %settings.data_dir.display(), "herald serving");
    let mut task = running.task;
    tokio::select! {
        result = &mut task => return result?.context("server stopped"),
        signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
    }
    running.shutdown.cancel();
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    match tokio::time::timeout(grace, task).await {
        Ok(result) => result?.context("server stopped")?,
        Err(_) => tracing::warn!(?grace, "in-flight requests did not finish in time"),
    }
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on signals, just not gracefully.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
