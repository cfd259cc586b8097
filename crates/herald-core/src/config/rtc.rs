//! The RTC flavour's configuration (SPEC §2): apps and their record callback.

use secrecy::{ExposeSecret, SecretString};

use super::callback_url::CallbackUrl;
use crate::event::rtc::RtcEventType;
use crate::field::{FieldError, JsonObject, event_types};

/// The event types a record callback is notified of: all three unless the request names
/// some (`notify_event_subscription`, as the API returns it; SPEC §2: all three by
/// default). Never empty, no type twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcSubscription(Vec<RtcEventType>);

impl Default for RtcSubscription {
    fn default() -> Self {
        Self(RtcEventType::ALL.to_vec())
    }
}

impl RtcSubscription {
    pub fn parse(field: &str, raw: &[&str]) -> Result<Self, FieldError> {
        event_types(field, raw, RtcEventType::parse).map(Self)
    }

    pub fn contains(&self, event_type: RtcEventType) -> bool {
        self.0.contains(&event_type)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|t| t.as_str()).collect()
    }
}

/// An RTC app id: 24 lower-case hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppId(String);

impl AppId {
    pub fn generate() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self(hex[..24].to_owned())
    }

    /// `None` for anything that is not an app id: such an app cannot exist.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 24
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An app's display name: 1–64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppName(String);

impl AppName {
    /// A create-app body: `{"app_name": "..."}`.
    pub fn parse_body(body: &[u8]) -> Result<Self, FieldError> {
        let obj = JsonObject::parse(body)?;
        Self::parse("app_name", obj.required_str("app_name")?)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let chars = raw.chars().count();
        if (1..=64).contains(&chars) && !raw.chars().any(char::is_control) && !raw.trim().is_empty()
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be 1 to 64 characters, not blank, without control characters",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A record callback's key: 32 to 64 ASCII letters and digits. Redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct AuthKey(SecretString);

impl AuthKey {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if (32..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(SecretString::from(raw)))
        } else {
            Err(FieldError::new(
                field,
                "must be 32 to 64 characters, ASCII letters and digits only",
            ))
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// `PUT /v2/apps/{app_id}/record-callback`: a URL and an optional key, or `"url": ""` to
/// remove the callback.
#[derive(Debug, Clone)]
pub enum RecordCallbackRequest {
    Set {
        url: CallbackUrl,
        auth_key: Option<AuthKey>,
        subscription: RtcSubscription,
    },
    Remove,
}

impl RecordCallbackRequest {
    pub fn parse(body: &[u8], allow_private_targets: bool) -> Result<Self, FieldError> {
        let obj = JsonObject::parse(body)?;
        let Some(url) = obj.optional_str("url")? else {
            return Err(FieldError::new("url", "is required"));
        };
        if url.is_empty() {
            return Ok(Self::Remove);
        }
        let url = CallbackUrl::parse("url", url, allow_private_targets)?;
        let auth_key = match obj.optional_str("auth_key")? {
            None | Some("") => None,
            Some(key) => Some(AuthKey::parse("auth_key", key)?),
        };
        let subscription = match obj.optional_str_array("notify_event_subscription")? {
            None => RtcSubscription::default(),
            Some(names) => RtcSubscription::parse("notify_event_subscription", &names)?,
        };
        Ok(Self::Set {
            url,
            auth_key,
            subscription,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_24_lowercase_hex() {
        let id = AppId::generate();
        assert!(AppId::parse(id.as_str()).is_some());
        for bad in [
            "",
            "ABCDEF0123456789abcdef01",
            "0123456789abcdef012345678",
            "zz23456789abcdef01234567",
        ] {
            assert!(AppId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn app_names() {
        assert!(
            AppName::parse("n", "my app").is_ok() && AppName::parse("n", &"é".repeat(64)).is_ok()
        );
        for bad in ["", "   ", "a\nb", &"x".repeat(65)] {
            assert!(AppName::parse("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn record_callback_rules() {
        let parse = |b: &str| RecordCallbackRequest::parse(b.as_bytes(), false);
        assert!(matches!(
            parse(r#"{"url": ""}"#).unwrap(),
            RecordCallbackRequest::Remove
        ));
        let RecordCallbackRequest::Set {
            auth_key: None,
            subscription,
            ..
        } = parse(r#"{"url": "https://cb.example.com/r"}"#).unwrap()
        else {
            panic!("a URL alone sets a callback without a key");
        };
        assert_eq!(subscription, RtcSubscription::default());
        let RecordCallbackRequest::Set { subscription, .. } = parse(
            r#"{"url": "https://cb.example.com/r", "notify_event_subscription": ["RECORD_FILE_COMPLETE", "RECORD_FILE_COMPLETE"]}"#,
        )
        .unwrap() else {
            panic!("a subscription sets a callback");
        };
        assert_eq!(subscription.names(), ["RECORD_FILE_COMPLETE"]);
        assert!(!subscription.contains(RtcEventType::CloudRecordServerOver));
        for (body, field) in [
            (
                r#"{"url": "https://cb.example.com/r", "notify_event_subscription": []}"#,
                "notify_event_subscription",
            ),
            (
                r#"{"url": "https://cb.example.com/r", "notify_event_subscription": ["RECORD_OVER"]}"#,
                "notify_event_subscription",
            ),
            (r#"{}"#, "url"),
            (r#"{"url": "cb.example.com"}"#, "url"),
            (r#"{"url": "http://10.0.0.1/x"}"#, "url"),
            (
                r#"{"url": "https://cb.example.com/r", "auth_key": "short"}"#,
                "auth_key",
            ),
            (
                r#"{"url": "https://cb.example.com/r", "auth_key": "0123456789abcdef0123456789abcde-"}"#,
                "auth_key",
            ),
        ] {
            assert_eq!(parse(body).unwrap_err().field, field, "{body}");
        }
        let long = format!(
            r#"{{"url": "https://cb.example.com/r", "auth_key": "{}"}}"#,
            "a".repeat(65)
        );
        assert_eq!(parse(&long).unwrap_err().field, "auth_key");
        assert!(
            AuthKey::parse("k", &"a".repeat(64)).is_ok()
                && AuthKey::parse("k", &"a".repeat(32)).is_ok()
        );
    }
}
