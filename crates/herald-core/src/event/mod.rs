//! Recording events as engines report them (SPEC §4), validated into domain types.
//!
//! - [`live`]: the Live flavour's event types and events.
//! - [`rtc`]: the RTC flavour's.
//!
//! This module holds what both share: the event id, reading an event object against a
//! flavour's field table, and the ingest body (one event or a batch). An event keeps its
//! fields in its flavour's documented order, so the notification rendered from it reads
//! like the documented example.

use serde_json::{Map, Value};

use crate::field::{FieldError, MAX_TEXT_BYTES, check_name, check_text};

pub mod live;
pub mod rtc;

/// The kind of value a notification field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    /// A non-negative integer (bytes, seconds, pixels).
    Count,
}

/// The most bytes a text field of an event may hold (SPEC §4): the names that become
/// callback routing keys are short, URLs are long, anything else is bounded too, so the
/// same event is a 400 on every store rather than a 500 on one.
/// The fields that name a stream: printed in logs and terminals, so without controls.
fn is_name(name: &str) -> bool {
    matches!(name, "app" | "stream" | "stream_name" | "room_id")
}

fn max_text_bytes(name: &str) -> usize {
    match name {
        "publish_domain" => 255,
        "app" | "stream" | "stream_name" | "room_id" => 256,
        "download_url" | "play_url" => 2048,
        _ => MAX_TEXT_BYTES,
    }
}

/// The idempotency key of an event: 1–128 printable ASCII characters (it travels in the
/// `Herald-Event-Id` header), unique per project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(String);

impl EventId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if (1..=Self::MAX_CHARS).contains(&raw.len())
            && raw.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be 1 to 128 printable ASCII characters",
            ))
        }
    }

    /// A fresh id for an event sent without one.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event object read against a flavour's field table, before its required fields
/// are checked.
pub(crate) struct ReadEvent {
    path: String,
    pub(crate) event_id: Option<EventId>,
    pub(crate) fields: Map<String, Value>,
}

impl ReadEvent {
    /// Reads `value` as an event of `flavour` whose fields are `table`; `path` prefixes
    /// field names in errors (`events[3].`). Unknown fields are refused: a typo must not
    /// silently drop data from the notification.
    pub(crate) fn read(
        path: &str,
        value: &Value,
        table: &[(&str, Kind)],
        flavour: &str,
    ) -> Result<Self, FieldError> {
        let named = |name: &str| format!("{path}{name}");
        let Value::Object(obj) = value else {
            return Err(FieldError::new(
                path.trim_end_matches('.'),
                "must be a JSON object",
            ));
        };
        if let Some(unknown) = obj
            .keys()
            .find(|k| *k != "event_id" && !table.iter().any(|(name, _)| name == k))
        {
            return Err(FieldError::new(
                named(unknown),
                format!("is not a field of a {flavour} recording event"),
            ));
        }
        let mut fields = Map::new();
        for (name, kind) in table {
            match (obj.get(*name), kind) {
                (None | Some(Value::Null), _) => {}
                (Some(v @ Value::String(text)), Kind::Text) if is_name(name) => {
                    check_name(&named(name), text, max_text_bytes(name))?;
                    fields.insert((*name).to_owned(), v.clone());
                }
                (Some(v @ Value::String(text)), Kind::Text) => {
                    check_text(&named(name), text, max_text_bytes(name))?;
                    fields.insert((*name).to_owned(), v.clone());
                }
                (Some(v @ Value::Number(n)), Kind::Count) if n.is_u64() => {
                    fields.insert((*name).to_owned(), v.clone());
                }
                (Some(_), Kind::Text) => {
                    return Err(FieldError::new(named(name), "must be a string"));
                }
                (Some(_), Kind::Count) => {
                    return Err(FieldError::new(
                        named(name),
                        "must be a non-negative integer",
                    ));
                }
            }
        }
        let event_id = match obj.get("event_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(EventId::parse(&named("event_id"), s)?),
            Some(_) => return Err(FieldError::new(named("event_id"), "must be a string")),
        };
        Ok(Self {
            path: path.to_owned(),
            event_id,
            fields,
        })
    }

    pub(crate) fn named(&self, name: &str) -> String {
        format!("{}{name}", self.path)
    }

    /// A text field that must be present and not empty.
    pub(crate) fn required(&self, name: &str) -> Result<String, FieldError> {
        match self.fields.get(name).and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            Some(_) => Err(FieldError::new(self.named(name), "must not be empty")),
            None => Err(FieldError::new(self.named(name), "is required")),
        }
    }
}

/// Most events one ingest request may carry.
pub const MAX_BATCH: usize = 1000;

/// An ingest body: one event, or `{"events": [...]}` with 1 to 1000. Returns the events
/// and whether the body was a batch (the answer's shape follows it).
pub(crate) fn parse_ingest<E>(
    body: &[u8],
    parse_one: impl Fn(&str, &Value) -> Result<E, FieldError>,
) -> Result<(Vec<E>, bool), FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("body", format!("is not valid JSON ({e})")))?;
    match &value {
        Value::Object(obj) if obj.contains_key("events") => {
            let Some(Value::Array(items)) = obj.get("events") else {
                return Err(FieldError::new("events", "must be an array of events"));
            };
            if obj.len() > 1 {
                return Err(FieldError::new(
                    "body",
                    "a batch has only the field \"events\"",
                ));
            }
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(FieldError::new("events", "must hold 1 to 1000 events"));
            }
            let events = items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_one(&format!("events[{i}]."), item))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((events, true))
        }
        Value::Object(_) => Ok((vec![parse_one("", &value)?], false)),
        _ => Err(FieldError::new("body", "must be a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::live::parse_live_ingest;
    use super::rtc::{RtcEvent, parse_rtc_ingest};
    use serde_json::json;

    /// Names with a newline or an escape were accepted and printed raw by `herald
    /// listen`: a forged "signature verified" line was possible. Names refuse controls;
    /// other text (an `error_message`) may still hold a newline.
    #[test]
    fn names_hold_no_control_characters() {
        for (name, value) in [
            (
                "stream",
                "cam\n[2026-12-06T00:00:00Z] RECORD_OVER  signature verified",
            ),
            ("app", "live\u{1b}[2K"),
            ("stream", "a\rb"),
            ("stream", "a\u{7f}b"),
        ] {
            let mut event = json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s"});
            event[name] = json!(value);
            let refused = parse_live_ingest(event.to_string().as_bytes()).unwrap_err();
            assert!(
                refused.field.ends_with(name),
                "{value:?}: {}",
                refused.field
            );
            let rtc = json!({"event_type": "CLOUD_RECORD_SERVER_OVER", "stream_name": value, "room_id": "r"});
            assert_eq!(
                RtcEvent::parse("", &rtc).unwrap_err().field,
                "stream_name",
                "{value:?}"
            );
        }
        let note = json!({"event_type": "RECORD_FAILED", "publish_domain": "d", "app": "a",
                          "stream": "s", "error_message": "line one\nline two"});
        assert!(parse_live_ingest(note.to_string().as_bytes()).is_ok());
        let unicode = json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "直播", "stream": "s"});
        assert!(parse_live_ingest(unicode.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn batches_are_bounded_and_errors_carry_the_index() {
        let event =
            json!({"event_type": "RECORD_OVER", "publish_domain": "d", "app": "a", "stream": "s"});
        let (events, batch) = parse_live_ingest(event.to_string().as_bytes()).unwrap();
        let rtc = json!({"event_type": "CLOUD_RECORD_SERVER_OVER", "stream_name": "s", "room_id": "r", "width": 1});
        let (rtc_events, _) = parse_rtc_ingest(rtc.to_string().as_bytes()).unwrap();
        assert_eq!(rtc_events[0].stream_name, "s");
        for (bad, field) in [
            (
                json!({"event_type": "RECORD_OVER", "stream_name": "s"}),
                "event_type",
            ),
            (json!({"event_type": "RECORD_FILE_COMPLETE"}), "stream_name"),
            (
                json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s", "app_id": "x"}),
                "app_id",
            ),
            (
                json!({"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s", "record_duration": "1"}),
                "record_duration",
            ),
        ] {
            assert_eq!(RtcEvent::parse("", &bad).unwrap_err().field, field, "{bad}");
        }
        assert_eq!((events.len(), batch), (1, false));
        let many = json!({"events": vec![event.clone(); 1000]});
        assert_eq!(
            parse_live_ingest(many.to_string().as_bytes())
                .unwrap()
                .0
                .len(),
            1000
        );
        let too_many = json!({"events": vec![event.clone(); 1001]});
        assert_eq!(
            parse_live_ingest(too_many.to_string().as_bytes())
                .unwrap_err()
                .field,
            "events"
        );
        let empty = json!({"events": []});
        assert_eq!(
            parse_live_ingest(empty.to_string().as_bytes())
                .unwrap_err()
                .field,
            "events"
        );
        let bad = json!({"events": [event, {"event_type": "RECORD_OVER"}]});
        assert_eq!(
            parse_live_ingest(bad.to_string().as_bytes())
                .unwrap_err()
                .field,
            "events[1].publish_domain"
        );
    }
}
