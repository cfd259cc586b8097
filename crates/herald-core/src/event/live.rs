//! Live-flavour recording events (SPEC §4, seed 001's Table 2): the event types and the
//! validated event.

use serde_json::{Map, Value};

use super::{EventId, Kind, ReadEvent, parse_ingest};
use crate::field::FieldError;

/// The Live notification fields an engine may report (Table 2 minus `project_id`,
/// `auth_sign` and `auth_timestamp`, which Herald adds), in the documented order.
const LIVE_FIELDS: &[(&str, Kind)] = &[
    ("job_id", Kind::Text),
    ("event_type", Kind::Text),
    ("publish_domain", Kind::Text),
    ("app", Kind::Text),
    ("stream", Kind::Text),
    ("record_format", Kind::Text),
    ("download_url", Kind::Text),
    ("asset_id", Kind::Text),
    ("play_url", Kind::Text),
    ("file_size", Kind::Count),
    ("record_duration", Kind::Count),
    ("start_time", Kind::Text),
    ("end_time", Kind::Text),
    ("width", Kind::Count),
    ("height", Kind::Count),
    ("obs_location", Kind::Text),
    ("obs_bucket", Kind::Text),
    ("obs_object", Kind::Text),
    ("error_message", Kind::Text),
];

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

/// A validated Live-flavour event.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// `None` when the engine sent none; Herald generates one at ingest.
    pub event_id: Option<EventId>,
    pub event_type: LiveEventType,
    /// Lower-cased, as configs store it, so matching is case-insensitive.
    pub publish_domain: String,
    pub app: String,
    pub stream: String,
    /// Every reported field (the required ones included), in Table 2 order.
    pub fields: Map<String, Value>,
}

impl LiveEvent {
    /// Parses one event object; `path` prefixes field names in errors (`events[3].`).
    pub fn parse(path: &str, value: &Value) -> Result<Self, FieldError> {
        let mut read = ReadEvent::read(path, value, LIVE_FIELDS, "Live")?;
        let event_type =
            LiveEventType::parse(&read.named("event_type"), &read.required("event_type")?)?;
        let publish_domain = read.required("publish_domain")?.to_ascii_lowercase();
        let app = read.required("app")?;
        let stream = read.required("stream")?;
        read.fields.insert(
            "publish_domain".into(),
            Value::String(publish_domain.clone()),
        );
        Ok(Self {
            event_id: read.event_id,
            event_type,
            publish_domain,
            app,
            stream,
            fields: read.fields,
        })
    }

    /// A field's text, or `""` when absent: the HMACSHA256 string to sign counts absent
    /// fields as empty.
    pub fn text(&self, name: &str) -> &str {
        self.fields.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

/// A Live ingest body (SPEC §4).
pub fn parse_live_ingest(body: &[u8]) -> Result<(Vec<LiveEvent>, bool), FieldError> {
    parse_ingest(body, LiveEvent::parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<LiveEvent, FieldError> {
        LiveEvent::parse("", &v)
    }

    #[test]
    fn keeps_fields_in_table_order_and_normalises_the_domain() {
        let e = parse(json!({
            "height": 720, "stream": "s", "app": "live", "publish_domain": "Push.Example.com",
            "event_type": "RECORD_FILE_COMPLETE", "file_size": 3957964, "event_id": "e1",
        }))
        .unwrap();
        let keys: Vec<_> = e.fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "event_type",
                "publish_domain",
                "app",
                "stream",
                "file_size",
                "height"
            ]
        );
        assert_eq!(e.publish_domain, "push.example.com");
        assert_eq!(e.event_id.as_ref().unwrap().as_str(), "e1");
        assert_eq!(e.text("download_url"), "");
    }

    #[test]
    fn names_the_bad_field() {
        let base =
            json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        for (body, field) in [
            (with("event_type", json!("RECORD_PAUSED")), "event_type"),
            (
                with("event_type", json!("CLOUD_RECORD_SERVER_OVER")),
                "event_type",
            ),
            (with("stream", json!("")), "stream"),
            (with("file_size", json!("12")), "file_size"),
            (with("width", json!(-1)), "width"),
            (with("height", json!(1.5)), "height"),
            (with("download_url", json!(5)), "download_url"),
            (with("event_id", json!("")), "event_id"),
            (with("event_id", json!("é")), "event_id"),
            (with("event_id", json!("x".repeat(129))), "event_id"),
            (with("auth_sign", json!("x")), "auth_sign"),
            (with("project_id", json!("p")), "project_id"),
            (
                json!({"publish_domain": "d", "app": "a", "stream": "s"}),
                "event_type",
            ),
            (
                json!({"event_type": "RECORD_OVER", "app": "a", "stream": "s"}),
                "publish_domain",
            ),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().field, field, "{body}");
        }
    }
}
