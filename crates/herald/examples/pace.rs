//! The load generator of `bench/run`'s c (latency at a fixed rate, docs/benchmarks.md):
//! POSTs prepared request bodies to Herald's ingest on a fixed schedule, open loop, and
//! writes down when each was sent and when its answer came.
//!
//! `pace --url URL --token TOKEN --per-second R --bodies FILE --out FILE`: request j (line
//! j of FILE, one body per line) is due at start + j / R. A request goes out at its due
//! time whatever the requests before it are doing, over up to `--connections` keep-alive
//! connections; only when all of them are busy does it wait, and it then counts as late.
//! It prints one JSON line, `{"start": …, "late_requests": …}`: the first due time in Unix
//! seconds, and how many requests went out more than 5 ms after their due time.
//! OUT gets one JSON line per request: `[j, sent, answered, status]`, the times in Unix
//! seconds (the clock of nginx's `$msec`, which the driver compares them with); status 0
//! is a request that got no answer.
//!
//! Why not the driver's Python threads: at 5,000/s on this 2-core machine they needed
//! most of a core and, with 64 of them each waiting for its answer, could not offer the
//! rate asked once Herald's answers took 13 ms (docs/benchmarks.md, c at 5,000/s). One
//! thread of tokio sends the same load for a fraction of that.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// Where to POST (Herald's ingest path).
    #[arg(long)]
    url: String,
    /// The `X-Auth-Token` header's value.
    #[arg(long)]
    token: String,
    /// Requests per second.
    #[arg(long)]
    per_second: f64,
    /// The request bodies, one per line.
    #[arg(long)]
    bodies: std::path::PathBuf,
    /// Where the per-request lines go.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Most requests in flight at once (keep-alive connections).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Seconds from now to the first request's due time.
    #[arg(long, default_value_t = 0.5)]
    delay: f64,
}

/// Now, in Unix seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A request's line of OUT.
struct Sent {
    index: usize,
    sent: f64,
    answered: f64,
    status: u16,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.per_second > 0.0 && args.connections > 0,
        "--per-second and --connections must be above 0"
    );
    let bodies: Vec<String> = tokio::fs::read_to_string(&args.bodies)
        .await
        .with_context(|| format!("reading {}", args.bodies.display()))?
        .lines()
        .map(str::to_owned)
        .collect();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url: Arc<str> = args.url.into();
    let token: Arc<str> = args.token.into();
    let slots = Arc::new(Semaphore::new(args.connections));
    let (done, mut results) = mpsc::unbounded_channel::<Sent>();
    let interval = Duration::from_secs_f64(1.0 / args.per_second);
    let start = Instant::now() + Duration::from_secs_f64(args.delay);
    let start_unix = unix_now() + args.delay;
    let mut late = 0u64;
    for (index, body) in bodies.into_iter().enumerate() {
        let due = start + interval.mul_f64(index as f64);
        tokio::time::sleep_until(due).await;
        let slot = Arc::clone(&slots).acquire_owned().await?;
        if Instant::now().duration_since(due) > Duration::from_millis(5) {
            late += 1;
        }
        let (client, url, token, done) = (client.clone(), url.clone(), token.clone(), done.clone());
        tokio::spawn(async move {
            let sent = unix_now();
            let answer = client
                .post(&*url)
                .header("X-Auth-Token", &*token)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await;
            let status = match answer {
                // The body is read so that the connection can be used again.
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    answer.bytes().await.map_or(0, |_| status)
                }
                Err(_) => 0,
            };
            let answered = unix_now();
            drop(slot);
            // The receiver is gone only when main has ended.
            let _ = done.send(Sent {
                index,
                sent,
                answered,
                status,
            });
        });
    }
    drop(done);
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(&args.out).await?);
    while let Some(s) = results.recv().await {
        let line = format!("[{},{},{},{}]\n", s.index, s.sent, s.answered, s.status);
        out.write_all(line.as_bytes()).await?;
    }
    out.flush().await?;
    println!(
        "{}",
        serde_json::json!({ "start": start_unix, "late_requests": late })
    );
    Ok(())
}
