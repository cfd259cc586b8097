//! The Live-flavour callback configuration (SPEC §1) and its validated parts.
//!
//! A request body becomes a [`LiveConfigRequest`] before any handler logic runs; from
//! then on an invalid domain, URL, key or subscription cannot be represented.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::{Host, Url};

use crate::field::{FieldError, JsonObject, event_types};
use crate::project::ProjectId;
use crate::target::{is_local_host_name, is_private_target};

/// The events a Live config can subscribe to. The API page lists four; the console page
/// and the message table (seed 001) also have `RECORD_START`, so it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveEventType {
    RecordStart,
    RecordNewFileStart,
    RecordFileComplete,
    RecordOver,
    RecordFailed,
}

impl LiveEventType {
    pub const ALL: [Self; 5] = [
        Self::RecordStart,
        Self::RecordNewFileStart,
        Self::RecordFileComplete,
        Self::RecordOver,
        Self::RecordFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecordStart => "RECORD_START",
            Self::RecordNewFileStart => "RECORD_NEW_FILE_START",
            Self::RecordFileComplete => "RECORD_FILE_COMPLETE",
            Self::RecordOver => "RECORD_OVER",
            Self::RecordFailed => "RECORD_FAILED",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|t| t.as_str()).collect();
                FieldError::new(
                    field,
                    format!(
                        "unknown event type {raw:?}; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// The event types a config is notified of: never empty, no duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription(Vec<LiveEventType>);

impl Subscription {
    pub fn parse(field: &str, raw: &[&str]) -> Result<Self, FieldError> {
        event_types(field, raw, LiveEventType::parse).map(Self)
    }

    pub fn event_types(&self) -> &[LiveEventType] {
        &self.0
    }

    /// The event type names, as the API shows them.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.as_str()).collect()
    }
}

impl Default for Subscription {
    /// SPEC §1: `[RECORD_FILE_COMPLETE]` when a config names none.
    fn default() -> Self {
        Self(vec![LiveEventType::RecordFileComplete])
    }
}

/// An ingest domain name, lower-cased, so that matching is case-insensitive as DNS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishDomain(String);

impl PublishDomain {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let name = raw.to_ascii_lowercase();
        let labels_ok = name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
        if name.len() <= 253 && labels_ok {
            Ok(Self(name))
        } else {
            Err(FieldError::new(
                field,
                "must be a domain name (dot-separated labels of 1 to 63 letters, digits and \
                 '-', at most 253 characters)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The app a config applies to: `*` for any app, or one app name.
///
/// App names are the path segment of an ingest URL (`rtmp://domain/app/stream`), so any
/// 1–128 printable characters except `/` and whitespace are accepted. Only the exact
/// value `*` is the wildcard; `**` (as in seed 003's sample) is an ordinary name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSelector {
    Any,
    Named(String),
}

impl AppSelector {
    pub const WILDCARD: &'static str = "*";

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw == Self::WILDCARD {
            return Ok(Self::Any);
        }
        let valid = (1..=128).contains(&raw.chars().count())
            && raw
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '/');
        if valid {
            Ok(Self::Named(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be '*' or 1 to 128 characters without '/', whitespace or control characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Any => Self::WILDCARD,
            Self::Named(name) => name,
        }
    }
}

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

    /// `scheme://host:port`: callbacks to one endpoint share its concurrency cap.
    pub fn endpoint(&self) -> String {
        Url::parse(&self.0)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| self.0.clone())
    }
}

/// How notifications are signed (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignType {
    #[default]
    HmacSha256,
    Md5,
}

impl SignType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "HMACSHA256",
            Self::Md5 => "MD5",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        match raw {
            "HMACSHA256" => Ok(Self::HmacSha256),
            "MD5" => Ok(Self::Md5),
            _ => Err(FieldError::new(field, "must be HMACSHA256 or MD5")),
        }
    }
}

/// A notification signing key: 32 ASCII letters and digits (the console's rule).
/// Redacted in `Debug`; only the signer and the store's sealing read it.
#[derive(Debug, Clone)]
pub struct SignKey(SecretString);

impl SignKey {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(SecretString::from(raw)))
        } else {
            Err(FieldError::new(
                field,
                "must be exactly 32 characters, ASCII letters and digits only",
            ))
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// What matching needs to know of one of the project's configs for the event's domain.
#[derive(Debug, Clone)]
pub struct MatchCandidate<T> {
    pub app: AppSelector,
    pub subscription: Subscription,
    pub has_url: bool,
    /// What the caller wants back for the chosen config (e.g. its id).
    pub target: T,
}

/// SPEC §1: among the configs of the event's domain, the one whose app is the event's
/// app, or only if there is none, the `*` one; the event goes out only if that config
/// subscribes to its type and has a URL.
pub fn select_config<T>(
    candidates: Vec<MatchCandidate<T>>,
    app: &str,
    event_type: LiveEventType,
) -> Option<T> {
    let (exact, wildcard): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .filter(|c| c.app == AppSelector::Any || c.app.as_str() == app)
        .partition(|c| c.app != AppSelector::Any);
    let chosen = exact
        .into_iter()
        .next()
        .or_else(|| wildcard.into_iter().next())?;
    (chosen.has_url && chosen.subscription.event_types().contains(&event_type))
        .then_some(chosen.target)
}

/// Everything a client sets on a config.
#[derive(Debug, Clone)]
pub struct LiveConfigSpec {
    pub publish_domain: PublishDomain,
    pub app: AppSelector,
    pub notify_callback_url: Option<CallbackUrl>,
    pub subscription: Subscription,
    pub sign_type: SignType,
    pub key: Option<SignKey>,
}

/// A stored config: its spec plus what Herald assigns.
#[derive(Debug, Clone)]
pub struct LiveCallbackConfig {
    pub id: String,
    pub project_id: ProjectId,
    pub spec: LiveConfigSpec,
    pub create_time: OffsetDateTime,
    pub update_time: OffsetDateTime,
}

/// A create or update body, validated. For the optional fields, `None` means "left
/// out" and, for the URL and key, `Some(None)` means "sent as an empty string", which
/// removes the value.
#[derive(Debug, Clone)]
pub struct LiveConfigRequest {
    pub publish_domain: PublishDomain,
    pub app: AppSelector,
    pub notify_callback_url: Option<Option<CallbackUrl>>,
    pub subscription: Option<Subscription>,
    pub sign_type: Option<SignType>,
    pub key: Option<Option<SignKey>>,
}

impl LiveConfigRequest {
    pub fn parse(body: &[u8], allow_private_targets: bool) -> Result<Self, FieldError> {
        let obj = JsonObject::parse(body)?;
        let clearable = |field: &str| -> Result<Option<Option<&str>>, FieldError> {
            Ok(obj
                .optional_str(field)?
                .map(|s| if s.is_empty() { None } else { Some(s) }))
        };
        Ok(Self {
            publish_domain: PublishDomain::parse(
                "publish_domain",
                obj.required_str("publish_domain")?,
            )?,
            app: AppSelector::parse("app", obj.required_str("app")?)?,
            notify_callback_url: clearable("notify_callback_url")?
                .map(|url| {
                    url.map(|u| CallbackUrl::parse("notify_callback_url", u, allow_private_targets))
                        .transpose()
                })
                .transpose()?,
            subscription: obj
                .optional_str_array("notify_event_subscription")?
                .map(|names| Subscription::parse("notify_event_subscription", &names))
                .transpose()?,
            sign_type: obj
                .optional_str("sign_type")?
                .map(|s| SignType::parse("sign_type", s))
                .transpose()?,
            key: clearable("key")?
                .map(|key| key.map(|k| SignKey::parse("key", k)).transpose())
                .transpose()?,
        })
    }

    /// The spec of a new config: what was left out takes its default.
    pub fn into_new_spec(self) -> LiveConfigSpec {
        LiveConfigSpec {
            publish_domain: self.publish_domain,
            app: self.app,
            notify_callback_url: self.notify_callback_url.flatten(),
            subscription: self.subscription.unwrap_or_default(),
            sign_type: self.sign_type.unwrap_or_default(),
            key: self.key.flatten(),
        }
    }

    /// The spec after an update: what was left out keeps its current value, so a client
    /// that read a config (which never shows the key) and writes it back keeps the key.
    pub fn apply_to(self, current: LiveConfigSpec) -> LiveConfigSpec {
        LiveConfigSpec {
            publish_domain: self.publish_domain,
            app: self.app,
            notify_callback_url: self
                .notify_callback_url
                .unwrap_or(current.notify_callback_url),
            subscription: self.subscription.unwrap_or(current.subscription),
            sign_type: self.sign_type.unwrap_or(current.sign_type),
            key: self.key.unwrap_or(current.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<LiveConfigRequest, FieldError> {
        LiveConfigRequest::parse(body.as_bytes(), false)
    }

    fn field_of(body: &str) -> String {
        parse(body).unwrap_err().field
    }

    #[test]
    fn minimal_body_takes_the_defaults() {
        let spec = parse(r#"{"publish_domain": "Push.Example.com", "app": "*"}"#)
            .unwrap()
            .into_new_spec();
        assert_eq!(spec.publish_domain.as_str(), "push.example.com");
        assert_eq!(spec.app, AppSelector::Any);
        assert_eq!(spec.subscription, Subscription::default());
        assert_eq!(spec.sign_type, SignType::HmacSha256);
        assert!(spec.key.is_none() && spec.notify_callback_url.is_none());
    }

    #[test]
    fn each_bad_field_is_named() {
        let base = r#""publish_domain": "d.com", "app": "live""#;
        assert_eq!(field_of(r#"{"app": "live"}"#), "publish_domain");
        assert_eq!(field_of(r#"{"publish_domain": "d.com"}"#), "app");
        assert_eq!(
            field_of(r#"{"publish_domain": "a..b", "app": "x"}"#),
            "publish_domain"
        );
        assert_eq!(
            field_of(r#"{"publish_domain": "d.com", "app": "a/b"}"#),
            "app"
        );
        for url in [
            "cb.example.com/x",
            "ftp://cb.example.com/x",
            "https://cb.example.com/x?a=b",
            "https://cb.example.com/x?",
            "https://cb.example.com/x#f",
            "http://127.0.0.1/x",
            "http://10.0.0.1/x",
            "http://[::1]/x",
            "http://localhost:8080/x",
            "https:///record",
            "http:cb.example.com/x",
            "http://cb.example.com\\\\x",
            "http://cb.example.com/a b",
            "HTTPS://",
        ] {
            let body = format!(r#"{{{base}, "notify_callback_url": "{url}"}}"#);
            assert_eq!(field_of(&body), "notify_callback_url", "{url}");
        }
        let long = format!("https://cb.example.com/{}", "a".repeat(1024));
        assert_eq!(
            field_of(&format!(r#"{{{base}, "notify_callback_url": "{long}"}}"#)),
            "notify_callback_url"
        );
        for sub in [r#"["NOPE"]"#, "[]", r#""RECORD_OVER""#, "[1]"] {
            let body = format!(r#"{{{base}, "notify_event_subscription": {sub}}}"#);
            assert_eq!(field_of(&body), "notify_event_subscription", "{sub}");
        }
        assert_eq!(
            field_of(&format!(r#"{{{base}, "sign_type": "SHA1"}}"#)),
            "sign_type"
        );
        for key in [
            "short",
            "0123456789abcdef0123456789abcde!",
            "0123456789abcdef0123456789abcdef0",
        ] {
            assert_eq!(
                field_of(&format!(r#"{{{base}, "key": "{key}"}}"#)),
                "key",
                "{key}"
            );
        }
        assert_eq!(field_of(&format!(r#"{{{base}, "key": 5}}"#)), "key");
    }

    #[test]
    fn private_targets_pass_when_the_operator_allows_them() {
        let body = br#"{"publish_domain": "d.com", "app": "a", "notify_callback_url": "http://127.0.0.1:9/x"}"#;
        assert!(LiveConfigRequest::parse(body, true).is_ok());
    }

    #[test]
    fn update_keeps_what_was_left_out_and_clears_empty_strings() {
        let current = parse(
            r#"{"publish_domain": "d.com", "app": "a", "notify_callback_url": "https://cb.example.com/n",
                "sign_type": "MD5", "key": "0123456789abcdef0123456789ABCDEF",
                "notify_event_subscription": ["RECORD_OVER", "RECORD_OVER", "RECORD_START"]}"#,
        )
        .unwrap()
        .into_new_spec();
        assert_eq!(
            current.subscription.event_types(),
            [LiveEventType::RecordOver, LiveEventType::RecordStart]
        );
        let kept = parse(r#"{"publish_domain": "d.com", "app": "b"}"#)
            .unwrap()
            .apply_to(current.clone());
        assert_eq!(kept.app.as_str(), "b");
        assert_eq!(kept.sign_type, SignType::Md5);
        assert_eq!(
            kept.key.as_ref().map(SignKey::expose),
            current.key.as_ref().map(SignKey::expose)
        );
        assert!(kept.notify_callback_url.is_some());
        let cleared = parse(
            r#"{"publish_domain": "d.com", "app": "b", "key": "", "notify_callback_url": ""}"#,
        )
        .unwrap()
        .apply_to(current);
        assert!(cleared.key.is_none() && cleared.notify_callback_url.is_none());
    }

    #[test]
    fn exact_app_wins_over_wildcard_and_subscription_filters() {
        let candidate = |app: &str, subscription: &[&str], has_url: bool, target: &'static str| {
            MatchCandidate {
                app: AppSelector::parse("app", app).unwrap(),
                subscription: Subscription::parse("s", subscription).unwrap(),
                has_url,
                target,
            }
        };
        let both = || {
            vec![
                candidate("*", &["RECORD_OVER", "RECORD_FILE_COMPLETE"], true, "any"),
                candidate("live", &["RECORD_FILE_COMPLETE"], true, "live"),
            ]
        };
        assert_eq!(
            select_config(both(), "live", LiveEventType::RecordFileComplete),
            Some("live")
        );
        assert_eq!(
            select_config(both(), "vod", LiveEventType::RecordFileComplete),
            Some("any")
        );
        // The exact config decides even when it does not subscribe: no fallback to `*`.
        assert_eq!(
            select_config(both(), "live", LiveEventType::RecordOver),
            None
        );
        assert_eq!(
            select_config(
                vec![candidate("live", &["RECORD_OVER"], false, "x")],
                "live",
                LiveEventType::RecordOver
            ),
            None
        );
        assert_eq!(
            select_config(
                Vec::<MatchCandidate<&str>>::new(),
                "live",
                LiveEventType::RecordOver
            ),
            None
        );
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let key = SignKey::parse("key", "0123456789abcdef0123456789abcdef").unwrap();
        assert!(!format!("{key:?}").contains("0123456789"));
    }
}
