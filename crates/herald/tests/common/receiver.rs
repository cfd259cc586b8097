//! A real HTTP receiver for callbacks: records every request and answers as the test says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::Notify;

/// One callback as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Decides the answer to the n-th request (0-based): a status, after an optional delay.
pub type Script = Arc<dyn Fn(&Received, usize) -> (StatusCode, Duration) + Send + Sync>;

/// A [`Script`] that also says which headers to answer with.
pub type HeaderScript = Arc<
    dyn Fn(&Received, usize) -> (StatusCode, Duration, Vec<(&'static str, String)>) + Send + Sync,
>;

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    script: HeaderScript,
}

pub struct Receiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

async fn record(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let received = Received {
        headers,
        body,
        at: Instant::now(),
    };
    let n = {
        let mut all = shared.received.lock().unwrap();
        all.push(received.clone());
        all.len() - 1
    };
    shared.arrived.notify_waiters();
    let (status, delay, headers) = (shared.script)(&received, n);
    tokio::time::sleep(delay).await;
    let mut response = axum::response::IntoResponse::into_response(status);
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn ok() -> Self {
        Self::scripted(Arc::new(|_, _| (StatusCode::OK, Duration::ZERO))).await
    }

    /// Each receiver listens on a loopback address of its own (127.0.0.2, .3, …): Herald
    /// caps callbacks per project and host, so receivers that tests mean to be separate
    /// endpoints are separate hosts, as they would be in production.
    pub async fn scripted(script: Script) -> Self {
        Self::scripted_with_headers(Arc::new(move |r, n| {
            let (status, delay) = script(r, n);
            (status, delay, Vec::new())
        }))
        .await
    }

    /// [`Self::scripted`], answering with headers too.
    pub async fn scripted_with_headers(script: HeaderScript) -> Self {
        static NEXT_HOST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NEXT_HOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 253;
        let listener =
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::new(127, 0, 0, n + 2), 0))
                .await
                .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            received: Arc::default(),
            arrived: Arc::default(),
            script,
        };
        let (received, arrived) = (shared.received.clone(), shared.arrived.clone());
        let app = axum::Router::new()
            .route("/cb", post(record))
            .with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            received,
            arrived,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/cb", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a callback of every event id in `expected` has arrived (by
    /// `Herald-Event-Id`); returns all arrivals. Panics after `limit`, saying how many are
    /// missing.
    pub async fn wait_for_ids(
        &self,
        expected: &std::collections::HashSet<String>,
        limit: Duration,
    ) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            let ids: std::collections::HashSet<String> =
                got.iter().map(|r| r.header("herald-event-id")).collect();
            if expected.is_subset(&ids) {
                return got;
            }
            let missing = expected.difference(&ids).count();
            assert!(
                Instant::now() < deadline,
                "{missing} of {} accepted events never arrived",
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` requests have arrived; panics after `limit`.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{} of {n} callbacks arrived within {limit:?}",
                    self.received().len()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
