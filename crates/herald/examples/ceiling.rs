//! The ceiling for `bench/run` (measurement i, docs/benchmarks.md): Herald's two HTTP legs
//! with no store between them, so that b and e can be read against what this machine
//! allows any design built on the same parts.
//!
//! - `ceiling send URL COUNT`: renders, signs and POSTs COUNT Live callbacks through
//!   Herald's own client, an endpoint's default 32 at once — b's delivery leg alone.
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
use herald_core::notification::render_live;
use herald_core::signing::LiveSigning;
use herald_delivery::client::{Answer, Sender, callback_headers};
use tokio::sync::{Mutex, mpsc};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald's default per-endpoint concurrency.
const SENDERS: usize = 32;
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

/// Renders, signs and sends one callback, as an attempt does; true on a 2xx.
async fn deliver(sender: &Sender, url: &str, signing: &LiveSigning, event: &LiveEvent) -> bool {
    let event_id = event.event_id.as_ref().map_or("ceiling", |id| id.as_str());
    let body = render_live(PROJECT, event, Some(signing), 1_795_346_217);
    matches!(
        sender.post(url, callback_headers(event_id, 1), body).await,
        Answer::Response {
            status: 200..=299,
            ..
        }
    )
}

fn sample_event() -> anyhow::Result<LiveEvent> {
    let body = br#"{"event_type":"RECORD_FILE_COMPLETE","publish_domain":"bench.example.com","app":"live","stream":"s0421","record_format":"MP4","download_url":"https://obs.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","play_url":"https://play.example.com/live/s0421/record-bench.example.com-live-s0421-1714557600.mp4","file_size":734003621,"record_duration":1800,"start_time":"2024-05-01T10:00:00Z","end_time":"2024-05-01T10:30:00Z","width":1920,"height":1080}"#;
    let (mut events, _) = parse_live_ingest(body).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    events.pop().context("the sample has one event")
}

async fn send(
    sender: Sender,
    signing: Arc<LiveSigning>,
    url: String,
    count: u64,
) -> anyhow::Result<()> {
    let event = Arc::new(sample_event()?);
    let (url, next, ok) = (
        Arc::new(url),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (sender, signing, url, event, next, ok) = (
            sender.clone(),
            signing.clone(),
            url.clone(),
            event.clone(),
            next.clone(),
            ok.clone(),
        );
        senders.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if deliver(&sender, &url, &signing, &event).await {
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

async fn relay(sender: Sender, signing: Arc<LiveSigning>, url: String) -> anyhow::Result<()> {
    let (handed, waiting) = mpsc::channel::<LiveEvent>(2 * SENDERS);
    let waiting = Arc::new(Mutex::new(waiting));
    let url = Arc::new(url);
    for _ in 0..SENDERS {
        let (sender, signing, url, waiting) = (
            sender.clone(),
            signing.clone(),
            url.clone(),
            waiting.clone(),
        );
        tokio::spawn(async move {
            loop {
                let next = waiting.lock().await.recv().await;
                let Some(event) = next else { break };
                deliver(&sender, &url, &signing, &event).await;
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
    let sender = Sender::new(Duration::from_secs(10), true)?;
    let signing = Arc::new(LiveSigning {
        sign_type: SignType::HmacSha256,
        key: SignKey::parse("key", KEY).map_err(|e| anyhow::anyhow!("{e:?}"))?,
    });
    match args.command {
        Command::Send { url, count } => send(sender, signing, url, count).await,
        Command::Relay { url } => relay(sender, signing, url).await,
    }
}
