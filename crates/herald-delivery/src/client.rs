//! The one outbound HTTP client: pooled, a timeout on every request, no redirects, and a
//! resolver that refuses private addresses, so the target check happens on the address
//! actually connected to and DNS rebinding cannot slip past it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::target::is_private_target;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue};

/// How much of a receiver's answer is kept for the delivery log.
pub const RESPONSE_HEAD_BYTES: usize = 1024;

/// Resolves names and drops private addresses unless the operator allowed them.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_private_target(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "refused target: {host} resolves only to loopback, private, link-local or metadata addresses"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What came back from one POST.
#[derive(Debug)]
pub enum Answer {
    Response { status: u16, head: String },
    Failed { error: String, timed_out: bool },
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(timeout: Duration, allow_private: bool) -> reqwest::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // HTTP_PROXY, ALL_PROXY and the like would route callbacks around the target
            // check: the proxy, not the guarded resolver, would pick the address.
            .no_proxy()
            .user_agent(concat!("Herald/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .build()?;
        Ok(Self {
            client,
            allow_private,
        })
    }

    /// POSTs `body`; never fails, an error is an [`Answer::Failed`].
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Vec<u8>) -> Answer {
        // IP literals never reach the resolver, so they are checked here.
        if !self.allow_private
            && let Some(ip) = literal_ip(url)
            && is_private_target(ip)
        {
            return Answer::Failed {
                error: format!(
                    "refused target: {ip} is a loopback, private, link-local or metadata address"
                ),
                timed_out: false,
            };
        }
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let mut head = Vec::new();
                // Read only the first bytes: a receiver cannot make Herald buffer a large answer.
                while head.len() < RESPONSE_HEAD_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => head.extend_from_slice(&chunk_prefix(
                            &chunk,
                            RESPONSE_HEAD_BYTES - head.len(),
                        )),
                        Ok(None) | Err(_) => break,
                    }
                }
                Answer::Response {
                    status,
                    head: recorded_text(&head),
                }
            }
            Err(e) => Answer::Failed {
                timed_out: e.is_timeout(),
                error: recorded_text(describe(&e).as_bytes()),
            },
        }
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

fn literal_ip(url: &str) -> Option<IpAddr> {
    match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// The error and its causes on one line, without the URL (which the log already shows).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timeout: no answer within the delivery timeout".into();
    }
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    let kind = if e.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    let detail = parts.last().cloned().unwrap_or_else(|| e.to_string());
    format!("{kind}: {detail}")
}

/// Headers every callback carries, plus the content type.
pub fn callback_headers(event_id: &str, attempt: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
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
    use super::recorded_text;

    #[test]
    fn answers_are_kept_as_clean_text() {
        assert_eq!(recorded_text(b"ok\0done"), "okdone");
        assert_eq!(recorded_text(b"a\xff\xfeb"), "a\u{fffd}\u{fffd}b");
        assert_eq!(recorded_text("流".as_bytes()), "流");
    }
}
