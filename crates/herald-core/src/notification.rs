//! The notification bodies config owners receive (SPEC §5), rendered from an event.

use serde_json::{Map, Value};

use crate::event::live::LiveEvent;
use crate::event::rtc::RtcEvent;
use crate::signing::{LiveSigning, live_auth_sign};

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

/// The RTC notification body: `app_id`, then the event's fields; absent ones left out.
pub fn render_rtc(app_id: &str, event: &RtcEvent) -> Vec<u8> {
    let mut body = serde_json::Map::with_capacity(event.fields.len() + 1);
    body.insert(
        "app_id".into(),
        serde_json::Value::String(app_id.to_owned()),
    );
    for (name, value) in &event.fields {
        body.insert(name.clone(), value.clone());
    }
    serde_json::to_vec(&serde_json::Value::Object(body)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::live::SignType;
    use crate::signing::tests::{event, signing};

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
