//! The Live-flavour callback configuration (SPEC §1) and its validated parts.
//!
//! A request body becomes a [`LiveConfigRequest`] before any handler logic runs; from
//! then on an invalid domain, URL, key or subscription cannot be represented.
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::callback_url::CallbackUrl;
use crate::event::live::LiveEventType;
use crate::field::{FieldError, JsonObject, event_types};
use crate::project::ProjectId;

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
    fn key_is_redacted_in_debug() {
        let key = SignKey::parse("key", "0123456789abcdef0123456789abcdef").unwrap();
        assert!(!format!("{key:?}").contains("0123456789"));
    }
}
