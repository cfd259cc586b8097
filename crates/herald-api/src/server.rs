//! The HTTP server around the [`router`](crate::router): how long a client may take to
//! send a request, and how many connections are served at once.
//!
//! axum's own `serve` has neither: a client could hold a connection forever by sending its
//! headers or its body a byte at a time, and open as many such connections as it liked.
//! Here every connection is HTTP/1.1 with three bounds ([`ServerLimits`]):
//! - the request head must arrive within `header_read_timeout` of the server starting to
//!   wait for it (hyper's own timer; it also ends a keep-alive connection left idle);
//! - the body must arrive within `body_read_timeout` of the head ([`DeadlineBody`]); a
//!   request that misses it is answered 408 by whoever was reading the body;
//! - at most `max_connections` connections are served at once; the next one waits in the
//!   listen backlog until one ends (a permit of a semaphore per connection).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// What one client may hold of the server; see the module comment.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A request head not received this long after the server began waiting for it closes
    /// the connection: trickled headers and idle keep-alive connections do not hold a slot.
    pub header_read_timeout: Duration,
    /// A body not received this long after its request's head is refused with 408: a
    /// trickled body does not hold a connection (or the memory read so far).
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog, so that a flood of
    /// connections cannot exhaust memory or file descriptors.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// Why a request body stopped: it did not arrive within the body read timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body was not received within {0:?}")]
pub struct BodyReadTimedOut(pub Duration);

impl BodyReadTimedOut {
    /// The timeout, when it is somewhere in `error`'s chain of causes.
    pub fn find(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(timed_out) = e.downcast_ref::<Self>() {
                return Some(*timed_out);
            }
            cause = e.source();
        }
        None
    }
}

/// A request body that fails with [`BodyReadTimedOut`] once its deadline passes: one
/// deadline for the whole body, not per frame, so a byte every second does not extend it.
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    pub fn new(inner: Body, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)),
            timeout,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(axum::Error::new(BodyReadTimedOut(this.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` fires, then stops accepting
/// and lets the open connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
        };
        // Small answers go out at once rather than waiting for more to send.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_read_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let request = request
                .map(|body| Body::new(DeadlineBody::new(Body::new(body), body_read_timeout)));
            let mut app = app.clone();
            async move {
                let response: Response<Body> = app.call(request).await?;
                Ok::<_, Infallible>(response)
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a connection that was reset before it was accepted is nothing; anything
/// else (out of file descriptors, say) is logged and the loop waits a second rather than
/// spinning (as axum's `serve` does).
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        let (sender, stalled) = body_that_stalls();
        let _ = sender.send(Bytes::from_static(b"{\"a\""));
        let body = DeadlineBody::new(stalled, Duration::from_secs(5));
        let started = Instant::now();
        let error = body.collect().await.err().map(|e| e.into_inner());
        let error = error.as_deref().and_then(|e| BodyReadTimedOut::find(e));
        assert_eq!(error.map(|e| e.0), Some(Duration::from_secs(5)));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_arrives_in_time_is_untouched() {
        let body = DeadlineBody::new(Body::from("{}"), Duration::from_secs(5));
        let bytes = body.collect().await.map(|c| c.to_bytes()).ok();
        assert_eq!(bytes.as_deref(), Some(&b"{}"[..]));
    }

    /// A body that yields what is sent, then waits for more for as long as the sender
    /// lives: a client that stopped sending.
    fn body_that_stalls() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Body) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let chunk = receiver.recv().await?;
            Some((Ok::<_, Infallible>(chunk), receiver))
        });
        (sender, Body::from_stream(chunks))
    }
}
