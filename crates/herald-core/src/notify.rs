//! Rendering and signing the notification a config's owner receives (SPEC §5).

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::event::LiveEvent;
use crate::live::{SignKey, SignType};

/// The key a Live notification is signed with, as the config had it when the event came.
#[derive(Debug, Clone)]
pub struct LiveSigning {
    pub sign_type: SignType,
    pub key: SignKey,
}

/// Lower-case hex HMAC-SHA256; keys of any length are valid, so this cannot fail.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// `auth_sign` for a notification whose signature expires at `auth_timestamp`.
pub fn live_auth_sign(signing: &LiveSigning, auth_timestamp: &str, event: &LiveEvent) -> String {
    let key = signing.key.expose();
    match signing.sign_type {
        SignType::Md5 => hex::encode(Md5::digest(format!("{key}{auth_timestamp}").as_bytes())),
        SignType::HmacSha256 => {
            let message = [
                auth_timestamp,
                event.event_type.as_str(),
                event.text("publish_domain"),
                event.text("app"),
                event.text("stream"),
                event.text("download_url"),
                event.text("play_url"),
            ]
            .concat();
            hmac_sha256_hex(key.as_bytes(), message.as_bytes())
        }
    }
}

/// The Live notification body: `project_id`, the event's fields in Table 2 order, then
/// `auth_sign` and `auth_timestamp` when the config has a key. `expires_at` is the Unix
/// time at which the signature expires (send time + the signature TTL).
pub fn render_live(
    project_id: &str,
    event: &LiveEvent,
    signing: Option<&LiveSigning>,
    expires_at: i64,
) -> Vec<u8> {
    let mut body = Map::with_capacity(event.fields.len() + 3);
    body.insert("project_id".into(), Value::String(project_id.to_owned()));
    for (name, value) in &event.fields {
        body.insert(name.clone(), value.clone());
    }
    if let Some(signing) = signing {
        let auth_timestamp = expires_at.to_string();
        body.insert(
            "auth_sign".into(),
            Value::String(live_auth_sign(signing, &auth_timestamp, event)),
        );
        body.insert("auth_timestamp".into(), Value::String(auth_timestamp));
    }
    // Serialising a map of JSON values cannot fail.
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> LiveEvent {
        LiveEvent::parse(
            "",
            &json!({
                "event_type": "RECORD_FILE_COMPLETE", "publish_domain": "push.example.com",
                "app": "live", "stream": "mystream", "file_size": 3957964,
                "download_url": "https://obs.example.com/a.m3u8",
            }),
        )
        .unwrap()
    }

    fn signing(sign_type: SignType) -> LiveSigning {
        LiveSigning {
            sign_type,
            key: SignKey::parse("key", "0123456789abcdef0123456789abcdef").unwrap(),
        }
    }

    #[test]
    fn md5_is_key_then_timestamp() {
        // echo -n '0123456789abcdef0123456789abcdef1583676745' | md5sum
        assert_eq!(
            live_auth_sign(&signing(SignType::Md5), "1583676745", &event()),
            "fbea60f41db857bbdee04a5127b742fa"
        );
    }

    #[test]
    fn hmac_covers_the_documented_fields_with_absent_ones_empty() {
        // printf '%s' '1583676745RECORD_FILE_COMPLETEpush.example.comlivemystreamhttps://obs.example.com/a.m3u8' \
        //   | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
        assert_eq!(
            live_auth_sign(&signing(SignType::HmacSha256), "1583676745", &event()),
            "4c115d821c0b1e29d3f7da2b39ce6a5bc2b82f7d29980c17e7e29d6a9c09791c"
        );
    }

    #[test]
    fn body_has_project_fields_and_signature_and_no_nulls() {
        let body: Value = serde_json::from_slice(&render_live(
            "p1",
            &event(),
            Some(&signing(SignType::Md5)),
            1583676745,
        ))
        .unwrap();
        let keys: Vec<_> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "project_id",
                "event_type",
                "publish_domain",
                "app",
                "stream",
                "download_url",
                "file_size",
                "auth_sign",
                "auth_timestamp"
            ]
        );
        assert_eq!(body["file_size"], 3957964);
        assert_eq!(body["auth_timestamp"], "1583676745");
        let unsigned: Value =
            serde_json::from_slice(&render_live("p1", &event(), None, 0)).unwrap();
        assert!(unsigned.get("auth_sign").is_none() && unsigned.get("auth_timestamp").is_none());
    }
}
