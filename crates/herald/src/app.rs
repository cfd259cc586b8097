//! Wiring: settings → master key → store → API, and the server's life cycle.

use std::fs::File;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use herald_api::auth::StaticCredentials;
use herald_api::{AppState, Shared, router};
use herald_core::field::FieldError;
use herald_core::project::ProjectId;
use herald_delivery::concurrency::EndpointConcurrency;
use herald_delivery::dispatcher::{Dispatcher, WorkerStopped};
use herald_delivery::probe::Prober;
use herald_delivery::tracker::Tracker;
use herald_store::supervision::Supervisor;
use herald_store::{Store, StoreLocation};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::{data_dir, master_key};

/// Where the settings put the store: the embedded one unless `database_url` says otherwise.
pub fn store_location(settings: &Settings) -> anyhow::Result<StoreLocation> {
    Ok(StoreLocation::from_settings(
        settings
            .database_url
            .as_ref()
            .map(ExposeSecret::expose_secret),
        &settings.data_dir,
        settings.database_pool_size,
    )?)
}

/// Opens the store the settings name, with the master key (`HERALD_MASTER_KEY`, or the
/// data dir's `master.key`): for a command, which watches no background task.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    open_at(&store_location(settings)?, settings, &Supervisor::new()).await
}

async fn open_at(
    location: &StoreLocation,
    settings: &Settings,
    tasks: &Supervisor,
) -> anyhow::Result<Arc<dyn Store>> {
    let master = master_key::load_or_create(
        settings
            .master_key
            .as_ref()
            .map(ExposeSecret::expose_secret),
        &settings.data_dir,
    )?;
    if let StoreLocation::Embedded { data_dir } = location {
        data_dir::create_database_file(data_dir)
            .with_context(|| format!("creating the database in {}", data_dir.display()))?;
    }
    match location.open(master, tasks).await {
        Err(herald_store::StoreError::MasterKeyMismatch) => bail!(
            "{}: the master key Herald used does not open this database's secrets. {}",
            location.describe(),
            which_master_key(settings)
        ),
        opened => opened.with_context(|| format!("opening the {}", location.describe())),
    }
}

/// Which master key was used and which one wins, for the message that refuses it.
fn which_master_key(settings: &Settings) -> String {
    let file = settings.data_dir.join(master_key::MASTER_KEY_FILE);
    if settings.master_key.is_some() {
        let beside = if file.exists() {
            format!(
                " (the data dir's {} is ignored while it is set)",
                file.display()
            )
        } else {
            String::new()
        };
        format!(
            "It used HERALD_MASTER_KEY, which wins over the data dir's master.key{beside}: set \
             HERALD_MASTER_KEY to the key the database was created with, or unset it to use \
             the key file."
        )
    } else {
        format!(
            "It used {}, as HERALD_MASTER_KEY is unset (when set, the variable wins over the \
             file): restore the key file the database was created with, or set \
             HERALD_MASTER_KEY to that key.",
            file.display()
        )
    }
}

fn static_credentials(settings: &Settings) -> anyhow::Result<StaticCredentials> {
    let mut creds = StaticCredentials::default();
    for (i, key) in settings.credentials.iter().enumerate() {
        let project = ProjectId::parse(&format!("credentials[{i}].project_id"), &key.project_id)?;
        check_config_secret(
            &format!("credentials[{i}].secret_key"),
            key.secret_key.expose_secret(),
        )?;
        creds.add_access_key(project, key.access_key.clone(), key.secret_key.clone());
    }
    for (i, token) in settings.tokens.iter().enumerate() {
        let project = ProjectId::parse(&format!("tokens[{i}].project_id"), &token.project_id)?;
        check_config_secret(&format!("tokens[{i}].token"), token.token.expose_secret())?;
        creds.add_token(project, &token.token);
    }
    Ok(creds)
}

/// The shortest secret a config file may list.
const SHORTEST_CONFIG_SECRET: usize = 32;

/// A secret in the config file must look like one: at least 32 characters of the kinds a
/// generator prints (letters, digits, `-_.+/=~`), not one character repeated. A placeholder
/// copied from an example (`...`, `<your token>`, `changeme`) then stops `serve` instead of
/// becoming a password anyone can guess.
fn check_config_secret(field: &str, secret: &str) -> Result<(), FieldError> {
    let how = "generate one with `openssl rand -hex 32`, or use `herald tokens create` / \
               `herald credentials create` instead of the config file";
    if secret.chars().count() < SHORTEST_CONFIG_SECRET {
        return Err(FieldError::new(
            field,
            format!(
                "is {} characters; a secret must be at least {SHORTEST_CONFIG_SECRET}: {how}",
                secret.chars().count()
            ),
        ));
    }
    if !secret
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+/=~".contains(c))
    {
        return Err(FieldError::new(
            field,
            format!("may hold only letters, digits and -_.+/=~ (is it a placeholder?): {how}"),
        ));
    }
    let mut distinct: Vec<char> = secret.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 8 {
        return Err(FieldError::new(
            field,
            format!("repeats too few characters to be a secret: {how}"),
        ));
    }
    Ok(())
}

/// The process-wide Prometheus recorder. The `metrics` facade has one global recorder by
/// design; it is installed once, and every server started in this process shares it.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency_buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            // Only an empty bucket list is refused, and this one is not empty.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("herald_delivery_attempt_duration_seconds".into()),
                    &latency_buckets,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Only one `herald serve` may use an embedded store: the lock proves that leases left
/// in it belong to a process that is gone.
fn lock_data_dir(settings: &Settings) -> anyhow::Result<File> {
    data_dir::create_private_dir(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let path = settings.data_dir.join("herald.lock");
    let file = data_dir::open_private_file(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another herald serve is using {}; stop it first",
            settings.data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// The delivery worker's per-host load, as the API shows it.
struct EndpointLoad(Arc<EndpointConcurrency>);

impl herald_api::endpoints::EndpointLoad for EndpointLoad {
    fn full(&self) -> u32 {
        self.0.full()
    }

    fn load_of_project(&self, project: &str) -> std::collections::HashMap<String, (u32, u32)> {
        self.0.load_of_project(project)
    }
}

/// A running server: where it listens, and how to stop it.
pub struct Running {
    pub local_addr: std::net::SocketAddr,
    /// Where `/metrics` is served when `HERALD_METRICS_LISTEN` is set.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub shutdown: CancellationToken,
    pub api: tokio::task::JoinHandle<std::io::Result<()>>,
    pub delivery: tokio::task::JoinHandle<Result<(), WorkerStopped>>,
    /// The other background tasks: the store's, retention, the recording tracker.
    pub tasks: Supervisor,
    /// Held for as long as the server runs on the embedded store.
    _data_dir_lock: Option<File>,
}

/// Binds `settings.listen` (port 0 picks a free port), serves the API and runs the
/// delivery worker until `shutdown` fires.
pub async fn start(settings: &Settings) -> anyhow::Result<Running> {
    start_with(settings, Supervisor::new()).await
}

/// [`start`], with the background tasks (the store's, retention, the recording tracker)
/// under `tasks`: tests pass one with another restart policy, or with panics injected.
pub async fn start_with(settings: &Settings, tasks: Supervisor) -> anyhow::Result<Running> {
    let delivery = settings.delivery()?;
    if let Ok(lease) = delivery.check() {
        tracing::info!("{lease}");
    }
    let server_limits = settings.server_limits()?;
    let max_per_project = settings.max_per_project()?;
    let location = store_location(settings)?;
    // On a shared store other nodes run beside this one and their leases are theirs;
    // only the embedded store is one process's alone.
    let lock = (!location.is_shared())
        .then(|| lock_data_dir(settings))
        .transpose()?;
    let store = open_at(&location, settings, &tasks).await?;
    tracing::info!(store = %location.describe(), "store open");
    if lock.is_some() {
        // The previous process is gone (we hold the lock): its leases can be taken back
        // now rather than when they expire.
        let rescued = store
            .rescue_expired_leases(
                OffsetDateTime::now_utc() + delivery.lease(),
                OffsetDateTime::now_utc(),
                delivery.retry_schedule.attempts(),
            )
            .await?;
        if rescued > 0 {
            tracing::warn!(
                rescued,
                "re-queued deliveries that were in flight when herald last stopped"
            );
        }
        store.release_step_leases().await?;
    }
    let prober = Prober::new(&settings.ffprobe, settings.record_roots.clone());
    // Conversions for uploads live under the data dir; what a dead process left is removed.
    let uploader = herald_delivery::upload::Uploader::new(
        prober.clone(),
        &settings.ffmpeg,
        settings.data_dir.join("upload-tmp"),
        settings.allow_private_targets,
    );
    uploader.clean_temp_dir().await?;
    let upload_deadline = settings.upload_deadline;
    warn_without_ffprobe(store.as_ref(), &prober).await?;
    let wake = Arc::new(Notify::new());
    let concurrency = Arc::new(EndpointConcurrency::new(delivery.per_endpoint_in_flight));
    let recordings = Arc::new(Notify::new());
    let worker_stopped = CancellationToken::new();
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let local_addr = listener.local_addr()?;
    let public_url: Arc<str> = settings.public_url_for(local_addr).into();
    remember_public_url(settings, &public_url);
    let shutdown = CancellationToken::new();
    let state = AppState::new(Shared {
        store: store.clone(),
        credentials: Arc::new(static_credentials(settings)?),
        allow_private_targets: settings.allow_private_targets,
        wake: wake.clone(),
        metrics: metrics_handle(),
        worker_stopped: worker_stopped.clone(),
        tasks: tasks.clone(),
        public_url,
        record_roots: Arc::new(settings.record_roots.clone()),
        recordings: recordings.clone(),
        max_per_project,
        endpoint_load: Arc::new(EndpointLoad(concurrency.clone())),
        metrics_elsewhere: settings.metrics_listen.is_some(),
    });
    let metrics_addr = match settings.metrics_listen {
        Some(addr) => {
            let metrics_listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HERALD_METRICS_LISTEN {addr}"))?;
            let bound = metrics_listener.local_addr()?;
            let serving = herald_api::serve(
                metrics_listener,
                herald_api::health::metrics_router(state.clone()),
                server_limits,
                shutdown.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "serving /metrics stopped");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let grace = settings.shutdown_grace;
    if let Some(keep) = settings.retention {
        let (store, cancel) = (store.clone(), shutdown.clone());
        tasks.spawn("retention", move || {
            let (store, cancel) = (store.clone(), cancel.clone());
            async move { herald_delivery::retention::run(store.as_ref(), keep, cancel).await }
        });
    }
    let (tracker_store, cancel, wake_worker) = (store.clone(), shutdown.clone(), wake.clone());
    let mut restarted = false;
    let embedded = lock.is_some();
    tasks.spawn("recording tracker", move || {
        let tracker = Tracker::new(
            tracker_store.clone(),
            prober.clone(),
            recordings.clone(),
            wake_worker.clone(),
        )
        .with_uploads(uploader.clone(), upload_deadline);
        // The run that panicked left its steps leased; on the embedded store no other
        // process holds one, so the next run takes them back at once.
        let release = std::mem::replace(&mut restarted, true) && embedded;
        let (store, cancel) = (tracker_store.clone(), cancel.clone());
        async move {
            if release && let Err(e) = store.release_step_leases().await {
                tracing::warn!(error = %e, "recordings: taking back the steps of the run that panicked failed");
            }
            tracker.run(cancel).await;
        }
    });
    let dispatcher =
        Dispatcher::new(store, delivery, wake, concurrency).context("building the HTTP client")?;
    let worker = dispatcher.run(shutdown.clone(), grace);
    Ok(Running {
        local_addr,
        metrics_addr,
        api: tokio::spawn(herald_api::serve(
            listener,
            router(state),
            server_limits,
            shutdown.clone(),
        )),
        delivery: tokio::spawn(async move {
            // Dropped however the worker ends, a panic included: /readyz then says so.
            let _stopped = worker_stopped.drop_guard();
            worker.await
        }),
        shutdown,
        tasks,
        _data_dir_lock: lock,
    })
}

/// Leaves the public URL in the data dir, where `herald sources` reads it to print the hook
/// URLs of this server rather than a guess. Without it the CLI still works, and says so.
fn remember_public_url(settings: &Settings, public_url: &str) {
    if !settings.data_dir.is_dir() {
        return; // PostgreSQL with HERALD_MASTER_KEY needs no data dir; the CLI then guesses.
    }
    let path = settings.data_dir.join(crate::settings::PUBLIC_URL_FILE);
    let written = data_dir::open_private_file(&path).and_then(|mut file| {
        use std::io::Write;
        file.set_len(0)?;
        file.write_all(format!("{public_url}\n").as_bytes())
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot note the public URL for `herald sources`; set HERALD_PUBLIC_URL for its hook URLs");
    }
}

/// ffprobe and a record root are run-time needs of recording sources: say so at start-up
/// when one exists and ffprobe does not run (files then wait to be read; nothing is lost)
/// or no root is allowed (files are then failed: see HERALD_RECORD_ROOTS).
async fn warn_without_ffprobe(store: &dyn Store, prober: &Prober) -> anyhow::Result<()> {
    if store.count_sources().await? == 0 {
        return Ok(());
    }
    if let Err(e) = prober.available().await {
        tracing::warn!(error = %e, "recording sources exist but ffprobe cannot be run: finished recordings wait until it can (install Debian's ffmpeg, or set HERALD_FFPROBE)");
    }
    if prober.roots().is_empty() {
        tracing::warn!(
            "recording sources exist but no record directory is allowed: every finished recording is failed until the operator sets HERALD_RECORD_ROOTS (or record_roots in the config file)"
        );
    }
    Ok(())
}

/// What a new operator needs next, on stderr (stdout keeps its one line): where the
/// console is, and the command that makes a token to sign in with.
fn first_run_hint(settings: &Settings, running: &Running) -> String {
    let mut store = String::new();
    if settings.database_url.is_none() && settings.data_dir != Settings::default().data_dir {
        store = format!(" --data-dir {}", settings.data_dir.display());
    }
    let mut hint = format!(
        "console: http://{}/console/\n\
         sign in with a token made by: herald tokens create --project YOUR_PROJECT{store}\n",
        running.local_addr
    );
    if let Some(metrics) = running.metrics_addr {
        hint.push_str(&format!("metrics: http://{metrics}/metrics\n"));
    }
    hint
}

/// `herald serve`: runs until SIGTERM or SIGINT, then drains within the grace period.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let running = start(&settings).await?;
    // The one line on stdout, for scripts and tests that start herald on port 0.
    println!("listening on http://{}", running.local_addr);
    eprint!("{}", first_run_hint(&settings, &running));
    tracing::info!(addr = %running.local_addr, data_dir = %settings.data_dir.display(), "herald serving");
    let grace = settings.shutdown_grace;
    supervise(running, shutdown_signal(), grace).await
}

/// Runs a started server until `stop` resolves (a signal), then drains it within `grace`.
/// Returns an error, for the process to exit non-zero, when the API or the delivery worker
/// stops on its own, or a background task cannot be kept running: without its worker the
/// server would accept events and never deliver them (without its ingest committer, accept
/// none; without its tracker, report no recording), so it goes down and a supervisor
/// restarts it (and its leases are rescued).
pub async fn supervise(
    mut running: Running,
    stop: impl Future<Output = &'static str>,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        result = &mut running.api => return result?.context("server stopped"),
        worker = &mut running.delivery => {
            running.shutdown.cancel();
            return Err(match worker {
                Ok(Ok(())) => anyhow::anyhow!("the delivery worker stopped"),
                Ok(Err(stopped)) => stopped.into(),
                Err(e) => anyhow::anyhow!("the delivery worker stopped: {e}"),
            });
        }
        task = running.tasks.failure() => {
            running.shutdown.cancel();
            return Err(anyhow::anyhow!("the background task {task} failed and could not be restarted"));
        }
        signal = stop => tracing::info!(signal, "shutting down"),
    }
    running.shutdown.cancel();
    // The dispatcher bounds its own wait for in-flight callbacks by the grace period.
    let drained = tokio::time::timeout(grace + Duration::from_secs(1), async {
        let (api, delivery) = tokio::join!(&mut running.api, &mut running.delivery);
        (api, delivery)
    })
    .await;
    match drained {
        Ok((api, delivery)) => {
            api?.context("server stopped")?;
            delivery??;
        }
        Err(_) => tracing::warn!(?grace, "shutdown did not finish in time"),
    }
    Ok(())
}

pub(crate) async fn shutdown_signal() -> &'static str {
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

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use crate::settings::{StaticAccessKey, StaticToken};

    fn with_token(token: &str) -> Settings {
        Settings {
            tokens: vec![StaticToken {
                project_id: "p1".into(),
                token: SecretString::from(token),
            }],
            ..Settings::default()
        }
    }

    /// The README's `token = "..."` (or any short or placeholder secret) stops `serve`
    /// with a message naming the entry, instead of becoming a token that works.
    #[test]
    fn config_file_secrets_too_weak_to_be_secrets_are_refused() {
        for weak in [
            "...",
            "a-long-random-token",
            "<output of: openssl rand -hex 32>",
            &"x".repeat(40),
        ] {
            let Err(e) = static_credentials(&with_token(weak)) else {
                panic!("{weak:?} was accepted");
            };
            assert!(e.to_string().contains("tokens[0].token"), "{weak:?}: {e}");
        }
        let generated = "3f9c2b7a41d85e60c1fa9b2e7d4038a6b5c9e1f27a3d8046";
        assert!(static_credentials(&with_token(generated)).is_ok());
        let weak_key = Settings {
            credentials: vec![StaticAccessKey {
                project_id: "p1".into(),
                access_key: "AK".into(),
                secret_key: SecretString::from("..."),
            }],
            ..Settings::default()
        };
        let Err(e) = static_credentials(&weak_key) else {
            panic!("a secret_key of ... was accepted");
        };
        assert!(e.to_string().contains("credentials[0].secret_key"), "{e}");
    }
}
