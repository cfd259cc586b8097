//! The ceiling for `bench/run` (measurement i, docs/benchmarks.md): Herald's two HTTP legs
//! with no store between them, so that b and e can be read against what this machine
//! allows any design built on the same parts.
//!
//! - `ceiling send URL COUNT`: COUNT Live callbacks through Herald's own attempt (render,
//!   sign, POST, classify), an endpoint's default 32 at once — b's delivery leg alone.
//! - `ceiling relay URL`: listens where Herald's ingest does, parses each request's events
//!   as Herald does, answers 202 once an event is handed to one of 32 senders (a full
//!   hand-over queue makes requests wait, so what is accepted is delivered as it comes),
//!   and the senders POST them to URL — e's two legs without the store.
//!
//! Everything a store does (durability, order per stream, retries, the claim) is missing
//! on purpose: this is a bound, not a competitor. CPU time is measured by the driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::{Parser, Subcommand};
use herald_core::config::live::{SignKey, SignType};
use herald_core::event::live::{LiveEvent, parse_live_ingest};
use herald_core::project::ProjectId;
use herald_core::retry::RetrySchedule;
use herald_core::signing::LiveSigning;
use herald_delivery::DeliverySettings;
use herald_delivery::attempt::attempt;
use herald_delivery::client::Sender;
use herald_store::{AfterAttempt, ClaimedDelivery, Notification};
use tokio::sync::{Mutex, mpsc};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What bench/driver.py's events carry.
const PROJECT: &str = "b3c4e5f60718293a4b5c6d7e8f901234";
const KEY: &str = "BenchKey0123456789abcdefghijklmn";
/// The 1 MiB body limit of Herald's ingest.
const MAX_BODY: usize = 1 << 20;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST COUNT callbacks to URL, 32 at once; prints one JSON line.
    Send { url: String, count: u64 },
    /// Accept single events on 127.0.0.1:0 and relay each to URL.
    Relay { url: String },
}

/// What an attempt needs besides the event: Herald's default settings (an endpoint's 32
/// at once) and a client built from them, as `herald serve --allow-private-targets` has.
struct Attempts {
    settings: DeliverySettings,
    sender: Sender,
    project_id: ProjectId,
    signing: LiveSigning,
}

impl Attempts {
    fn new() -> anyhow::Result<Self> {
        let settings = DeliverySettings {
            retry_schedule: RetrySchedule::default(),
            timeout: Duration::from_secs(5),
            signature_ttl: Duration::from_secs(600),
            per_endpoint_in_flight: 32,
            max_in_flight: 512,
            per_project_in_flight: 256,
            allow_private_targets: true,
            poll_interval: Duration::from_secs(1),
        };
        let sender = Sender::new(settings.timeout, settings.allow_private_targets)?;
        let fault = |e| anyhow::anyhow!("{e:?}");
        Ok(Self {
            settings,
            sender,
            project_id: ProjectId::parse("project_id", PROJECT).map_err(fault)?,
            signing: LiveSigning {
                sign_type: SignType::HmacSha256,
                key: SignKey::parse("key", KEY).map_err(fault)?,
            },
        })
    }

    fn senders(&self) -> usize {
        usize::try_from(self.settings.per_endpoint_in_flight).unwrap_or(1)
    }

    /// One callback through Herald's attempt; true when it succeeded.
    async fn deliver(&self, url: &str, event: LiveEvent) -> bool {
        let delivery = ClaimedDelivery {
            id: 0,
            project_id: self.project_id.clone(),
            event_id: event
                .event_id
                .as_ref()
                .map_or("ceiling", |id| id.as_str())
                .to_owned(),
            config_id: "ceiling".into(),
            endpoint: url.to_owned(),
            url: url.to_owned(),
            attempt: 1,
            notification: Notification::Live {
                event,
                signing: Some(self.signing.clone()),
            },
            followers: Vec::new(),
        };
        let done = attempt(&self.sender, &self.settings, &delivery, "ceiling").await;
        matches!(done.next, AfterAttempt::Succeeded)
    }
}

fn sample_event() -> anyhow::Result<LiveEvent> {
    let body = br#"{"event_type":"RECORD_FILE_COMPLETE","publish_domain":"bench.example.com","app":"live","stream":"s0421","record_format":"MP4","download_url":"https://obs.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","play_url":"https://play.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","file_size":734003621,"record_duration":1800,"start_time":"2024-05-01T10:00:00Z","end_time":"2024-05-01T10:30:00Z","width":1920,"height":1080}"#;
    let (mut events, _) = parse_live_ingest(body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    events.pop().context("the sample has one event")
}

async fn send(attempts: Arc<Attempts>, url: String, count: u64) -> anyhow::Result<()> {
    let event = sample_event()?;
    let (url, next, ok) = (
        Arc::new(url),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..attempts.senders() {
        let (attempts, url, event, next, ok) = (
            attempts.clone(),
            url.clone(),
            event.clone(),
            next.clone(),
            ok.clone(),
        );
        senders.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if attempts.deliver(&url, event.clone()).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    senders.join_all().await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({"callbacks": count, "answered_2xx": ok, "seconds": seconds,
                           "per_s": ok as f64 / seconds.max(1e-9)})
    );
    if ok != count {
        bail!(
            "{} of {count} callbacks were not answered with a 2xx",
            count - ok
        );
    }
    Ok(())
}

async fn relay(attempts: Arc<Attempts>, url: String) -> anyhow::Result<()> {
    let (handed, waiting) = mpsc::channel::<LiveEvent>(2 * attempts.senders());
    let waiting = Arc::new(Mutex::new(waiting));
    let url = Arc::new(url);
    for _ in 0..attempts.senders() {
        let (attempts, url, waiting) = (attempts.clone(), url.clone(), waiting.clone());
        tokio::spawn(async move {
            loop {
                let next = waiting.lock().await.recv().await;
                let Some(event) = next else { break };
                attempts.deliver(&url, event).await;
            }
        });
    }
    let ingest = move |headers: HeaderMap, body: Bytes| {
        let handed = handed.clone();
        async move {
            if headers.get("x-auth-token").is_none_or(|t| t.is_empty()) {
                return StatusCode::UNAUTHORIZED;
            }
            if body.len() > MAX_BODY {
                return StatusCode::PAYLOAD_TOO_LARGE;
            }
            let Ok((events, _)) = parse_live_ingest(&body) else {
                return StatusCode::BAD_REQUEST;
            };
            for event in events {
                if handed.send(event).await.is_err() {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
            }
            StatusCode::ACCEPTED
        }
    };
    let app = axum::Router::new().route(
        &format!("/v1/{PROJECT}/record/events"),
        axum::routing::post(ingest),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let attempts = Arc::new(Attempts::new()?);
    match args.command {
        Command::Send { url, count } => send(attempts, url, count).await,
        Command::Relay { url } => relay(attempts, url).await,
    }
}
