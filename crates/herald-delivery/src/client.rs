//! The callbacks' outbound HTTP client: pooled, a timeout on every request, no redirects,
//! and a resolver that refuses private addresses, so the target check happens on the
//! address actually connected to and DNS rebinding cannot slip past it. Storage endpoints
//! connect through the same resolver ([`crate::bucket`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use herald_core::target::is_private_target;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, timeout_at};

/// How much of a receiver's answer is kept for the delivery log.
pub const RESPONSE_HEAD_BYTES: usize = 1024;

/// Resolves names and drops private addresses unless the operator allowed them: the one
/// target guard of every outbound connection, callbacks (hyper's resolver) and storage
/// endpoints (reqwest's, for object_store) alike.
#[derive(Clone, Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) allow_private: bool,
}

impl GuardedResolver {
    /// The addresses of `host` that may be connected to; an error carrying
    /// [`RefusedTarget`] when none may.
    async fn resolve_host(self, host: String) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
            .await?
            .filter(|a| self.allow_private || !is_private_target(a.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::other(RefusedTarget(format!(
                "{host} resolves only to loopback, private, link-local or metadata addresses"
            ))));
        }
        Ok(addrs)
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let resolving = self.clone().resolve_host(name.as_str().to_owned());
        Box::pin(async move { Ok(resolving.await?.into_iter()) })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolving = self.clone().resolve_host(name.as_str().to_owned());
        Box::pin(async move {
            let addrs = resolving.await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A target the guard refused: carried as a type through the connector's errors, so the
/// attempt can tell it from a connect error without reading text.
#[derive(Debug, thiserror::Error)]
#[error("refused target: {0}")]
pub(crate) struct RefusedTarget(String);

/// What came back from one POST.
#[derive(Debug)]
pub enum Answer {
    Response {
        status: u16,
        head: String,
        /// The `Retry-After` header of a 429 or 503 answer, as sent (read as data, see
        /// `herald_core::retry::parse_retry_after`).
        retry_after: Option<String>,
    },
    Failed {
        error: String,
        kind: FailureKind,
    },
}

/// Why a POST got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer within the delivery timeout (the connect included).
    Timeout,
    /// The target is a loopback, private, link-local or metadata address.
    RefusedTarget,
    /// The connection failed or broke (refused, reset, TLS, a malformed answer).
    Connect,
    /// No request could be made of the URL.
    Request,
}

impl FailureKind {
    /// The `result` label of `herald_delivery_attempts_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::RefusedTarget => "refused_target",
            Self::Connect | Self::Request => "connect_error",
        }
    }
}

/// The HTTP/1.1 client of every callback, on hyper's pooled client directly: reqwest's layer
/// above the same client cost about 10 µs of CPU per callback on the benchmark machine (a
/// third of a send; docs/benchmarks.md, issue 14), and what it adds is what callbacks must
/// not have (redirects, proxies from the environment, which would route around the
/// resolver's target check). Plain `http` and `https` (rustls, the webpki roots), one
/// deadline per attempt.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    timeout: Duration,
    allow_private: bool,
}

const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

impl Sender {
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https);
        Ok(Self {
            client,
            timeout,
            allow_private,
        })
    }

    /// POSTs `body`; never fails, an error is an [`Answer::Failed`]. The timeout counts
    /// from here to the end of the answer's first [`RESPONSE_HEAD_BYTES`]: a status that
    /// came in time is kept with what of the body came before the deadline.
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Vec<u8>) -> Answer {
        let deadline = Instant::now() + self.timeout;
        let request = match self.request(url, headers, body) {
            Ok(request) => request,
            Err((error, kind)) => return Answer::Failed { error, kind },
        };
        let response = match timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            // The connector's own connect timeout is a timeout too, as the deadline is.
            Ok(Err(e)) if !caused_by_timeout(&e) => {
                let (error, kind) = match refused_target(&e) {
                    Some(refused) => (refused.to_string(), FailureKind::RefusedTarget),
                    None => (describe(&e), FailureKind::Connect),
                };
                return Answer::Failed {
                    error: recorded_text(error.as_bytes()),
                    kind,
                };
            }
            Ok(Err(_)) | Err(_) => {
                return Answer::Failed {
                    error: "timeout: no answer within the delivery timeout".into(),
                    kind: FailureKind::Timeout,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = matches!(status, 429 | 503)
            .then(|| response.headers().get(hyper::header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(64).collect());
        let mut body = response.into_body();
        let mut head = Vec::new();
        // Read only the first bytes: a receiver cannot make Herald buffer a large answer.
        while head.len() < RESPONSE_HEAD_BYTES {
            match timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(chunk) = frame.data_ref() {
                        head.extend_from_slice(&chunk_prefix(
                            chunk,
                            RESPONSE_HEAD_BYTES - head.len(),
                        ));
                    }
                }
                Ok(None | Some(Err(_))) | Err(_) => break,
            }
        }
        Answer::Response {
            status,
            head: recorded_text(&head),
            retry_after,
        }
    }

    /// The request for `url`, or why there is none: a URL that is not absolute `http` or
    /// `https`, or (IP literals never reach the resolver) a refused literal address.
    fn request(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<hyper::Request<Full<Bytes>>, (String, FailureKind)> {
        let invalid = |e: String| (format!("request error: {e}"), FailureKind::Request);
        let mut parsed = url::Url::parse(url).map_err(|e| invalid(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "unsupported URL scheme {:?}",
                parsed.scheme()
            )));
        }
        if !self.allow_private
            && let Some(ip) = literal_ip(&parsed)
            && is_private_target(ip)
        {
            let refused = RefusedTarget(format!(
                "{ip} is a loopback, private, link-local or metadata address"
            ));
            return Err((refused.to_string(), FailureKind::RefusedTarget));
        }
        let credentials = basic_auth(&mut parsed);
        let mut request = hyper::Request::post(parsed.as_str())
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::ACCEPT, "*/*")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| invalid(format!("invalid URL: {e}")))?;
        request.headers_mut().extend(headers);
        if let Some(credentials) = credentials {
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, credentials);
        }
        Ok(request)
    }
}

/// What a receiver sent, as text any store keeps: invalid UTF-8 replaced, NUL removed
/// (PostgreSQL refuses U+0000 in text, and one refused outcome must not be able to stop
/// the recording of the others).
pub fn recorded_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text.into_owned()
    }
}

fn chunk_prefix(chunk: &Bytes, room: usize) -> Bytes {
    chunk.slice(..chunk.len().min(room))
}

/// Credentials in the URL (`https://user:pass@host/…`) go in an `Authorization: Basic`
/// header, as browsers and HTTP clients send them, and leave the URL.
fn basic_auth(url: &mut url::Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or("")));
    // Cannot fail for a URL with a host, which every callback URL has.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let mut value = HeaderValue::try_from(format!("Basic {}", BASE64.encode(pair))).ok()?;
    value.set_sensitive(true);
    Some(value)
}

pub(crate) fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// The error's causes, outermost first.
fn causes(
    e: &hyper_util::client::legacy::Error,
) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(e), |cause| cause.source())
}

/// The guard's refusal, when that is why the connect failed.
fn refused_target(e: &hyper_util::client::legacy::Error) -> Option<&RefusedTarget> {
    std::error::Error::source(e).and_then(refusal)
}

/// The guard's refusal, when `e` or one of its causes is one. An `io::Error`'s
/// `source()` skips the error it wraps, so each one is looked inside.
pub(crate) fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a RefusedTarget> {
    std::iter::successors(Some(e), |cause| cause.source()).find_map(|cause| {
        cause.downcast_ref::<RefusedTarget>().or_else(|| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<RefusedTarget>())
        })
    })
}

fn caused_by_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    causes(e).any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
    })
}

/// The error and its innermost cause on one line, without the URL (which the log already
/// shows).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let kind = if e.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    let detail = causes(e)
        .last()
        .map_or_else(|| e.to_string(), |cause| cause.to_string());
    format!("{kind}: {detail}")
}

/// Headers every callback carries, plus the content type.
pub fn callback_headers(event_id: &str, attempt: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(event_id) {
        headers.insert("herald-event-id", v);
    }
    headers.insert("herald-delivery-attempt", HeaderValue::from(attempt));
    headers
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::{Answer, FailureKind, Sender, callback_headers, recorded_text};

    /// A receiver that keeps the request it got and answers `answer` once the JSON body
    /// `{…{}}` has come (or at once, when `wait` is false).
    async fn one_shot(
        answer: &'static [u8],
        wait: bool,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while wait && !request.windows(2).any(|w| w == b"}}") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(answer).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr.to_string(), task)
    }

    #[tokio::test]
    async fn credentials_in_the_url_become_basic_auth() {
        let (addr, received) = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n", true).await;
        let sender = Sender::new(Duration::from_secs(5), true).unwrap();
        let url = format!("http://us%40er:p%3Ass@{addr}/cb");
        let answer = sender
            .post(&url, callback_headers("e-1", 1), b"{\"a\":{}}".to_vec())
            .await;
        assert!(
            matches!(answer, Answer::Response { status: 204, .. }),
            "{answer:?}"
        );
        let request = received.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /cb http/1.1\r\n"), "{request}");
        assert!(
            request.contains(&format!("\r\nhost: {addr}\r\n")),
            "{request}"
        );
        assert!(request.contains("\r\naccept: */*\r\n"), "{request}");
        // base64("us@er:p:ss")
        assert!(
            request.contains("\r\nauthorization: basic dxnazxi6cdpzcw==\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nherald-event-id: e-1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nuser-agent: herald/"), "{request}");
        assert!(request.contains("\r\ncontent-length: 8\r\n"), "{request}");
        assert!(!request.contains("us%40er"), "{request}");
    }

    #[tokio::test]
    async fn https_speaks_tls_and_a_plain_answer_is_a_connect_error() {
        // A plain HTTP server behind an https URL: the TLS handshake fails, cleanly.
        let (addr, _received) =
            one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false).await;
        let sender = Sender::new(Duration::from_secs(5), true).unwrap();
        let answer = sender
            .post(
                &format!("https://{addr}/cb"),
                callback_headers("e-2", 1),
                b"{}".to_vec(),
            )
            .await;
        match answer {
            Answer::Failed { error, kind } => {
                assert_eq!(kind, FailureKind::Connect);
                assert!(error.starts_with("connect error: "), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_literal_private_address_is_refused_before_connecting() {
        let sender = Sender::new(Duration::from_secs(5), false).unwrap();
        let answer = sender
            .post("http://10.0.0.1/cb", callback_headers("e-3", 1), Vec::new())
            .await;
        match answer {
            Answer::Failed { error, kind } => {
                assert_eq!(kind, FailureKind::RefusedTarget);
                assert!(error.starts_with("refused target: 10.0.0.1"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A name that resolves only to private addresses is refused by the resolver, and the
    /// attempt knows it as a refusal, not as a connect error.
    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_a_refused_target() {
        let sender = Sender::new(Duration::from_secs(5), false).unwrap();
        let answer = sender
            .post(
                "http://localhost:9/cb",
                callback_headers("e-4", 1),
                Vec::new(),
            )
            .await;
        match answer {
            Answer::Failed { error, kind } => {
                assert_eq!(kind, FailureKind::RefusedTarget, "{error}");
                assert!(error.starts_with("refused target: localhost"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_are_kept_as_clean_text() {
        assert_eq!(recorded_text(b"ok\0done"), "okdone");
        assert_eq!(recorded_text(b"a\xff\xfeb"), "a\u{fffd}\u{fffd}b");
        assert_eq!(recorded_text("流".as_bytes()), "流");
    }
}
