//! The callback URL both flavours' configs (and recording sources) send notifications to.

use std::net::IpAddr;

use url::{Host, Url};

use crate::field::FieldError;
use crate::project::ProjectId;
use crate::target::{is_local_host_name, is_private_target};

/// Where a config's notifications go: an absolute `http`/`https` URL with a host, no
/// query and no fragment ("cannot contain parameters"), at most 1024 bytes. Kept exactly
/// as the client wrote it, so it reads back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(String);

impl CallbackUrl {
    pub const MAX_BYTES: usize = 1024;

    /// `allow_private` is the operator's `--allow-private-targets`: without it, a literal
    /// private IP or a `localhost` name is refused here, before it is ever stored.
    pub fn parse(field: &str, raw: &str, allow_private: bool) -> Result<Self, FieldError> {
        let refuse = |rule: &str| Err(FieldError::new(field, rule));
        if raw.len() > Self::MAX_BYTES {
            return refuse("must be at most 1024 bytes");
        }
        // The WHATWG parser is lenient with http(s): it reads `https:///x` and `http:x` as
        // host `x` and turns `\\` into `/`. A URL that needs that leniency is refused.
        let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
        let Some(authority) = ["http://", "https://"]
            .iter()
            .find_map(|scheme| lower.starts_with(scheme).then(|| &raw[scheme.len()..]))
        else {
            return refuse("must be an absolute URL starting with http:// or https://");
        };
        if authority.starts_with('/') || authority.is_empty() {
            return refuse("must have a host");
        }
        if raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return refuse("must not contain whitespace, control characters or backslashes");
        }
        let Ok(url) = Url::parse(raw) else {
            return refuse("must be an absolute http:// or https:// URL");
        };
        if raw.contains('?') {
            return refuse("must not contain a query string (parameters)");
        }
        if raw.contains('#') {
            return refuse("must not contain a fragment");
        }
        let host_is_private = match url.host() {
            None => return refuse("must have a host"),
            Some(Host::Domain(name)) => is_local_host_name(name),
            Some(Host::Ipv4(ip)) => is_private_target(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => is_private_target(IpAddr::V6(ip)),
        };
        if host_is_private && !allow_private {
            return refuse(
                "must not point to a loopback, private, link-local or metadata address \
                 (the operator can allow it with --allow-private-targets)",
            );
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unit of per-endpoint concurrency: `{project} {host}`. Keyed on the host, not the
    /// port, so that one project cannot multiply its share of a receiver (or of the worker)
    /// by pointing configs at many ports of one host; and on the project, so that another
    /// project's callbacks to the same host (a shared receiver, or a hostile project aiming
    /// at a black-holed port of it) never wait behind this project's. A space separates
    /// the two: neither a project id nor a host contains one.
    pub fn endpoint(&self, project: &ProjectId) -> String {
        let host = Url::parse(&self.0)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| self.0.clone());
        format!("{project} {host}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn endpoint(project: &str, url: &str) -> String {
        CallbackUrl::parse("url", url, true)
            .unwrap()
            .endpoint(&ProjectId::parse("project_id", project).unwrap())
    }

    /// One cap per project and host: ports and schemes of one host share it, another
    /// project's callbacks to the same host do not.
    #[test]
    fn the_endpoint_is_the_project_and_the_host() {
        let a = endpoint("p1", "http://Receiver.Example.com:8001/a");
        assert_eq!(a, "p1 receiver.example.com");
        assert_eq!(a, endpoint("p1", "https://receiver.example.com:9/b"));
        assert_ne!(a, endpoint("p2", "http://receiver.example.com:8001/a"));
        assert_eq!(endpoint("p1", "http://[::1]:80/"), "p1 [::1]");
    }
}
