//! RTC-flavour recording events (SPEC §4, seeds 000 and 004): the event types and the
//! validated event.

use serde_json::{Map, Value};

use super::{EventId, Kind, ReadEvent, parse_ingest};
use crate::field::FieldError;

/// The three RTC recording event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RtcEventType {
    RecordNewFileStart,
    RecordFileComplete,
    CloudRecordServerOver,
}

impl RtcEventType {
    pub const ALL: [Self; 3] = [
        Self::RecordNewFileStart,
        Self::RecordFileComplete,
        Self::CloudRecordServerOver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RecordNewFileStart => "RECORD_NEW_FILE_START",
            Self::RecordFileComplete => "RECORD_FILE_COMPLETE",
            Self::CloudRecordServerOver => "CLOUD_RECORD_SERVER_OVER",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw).ok_or_else(|| {
            FieldError::new(
                field,
                format!(
                    "unknown RTC event type {raw:?}; expected RECORD_NEW_FILE_START, RECORD_FILE_COMPLETE or CLOUD_RECORD_SERVER_OVER"
                ),
            )
        })
    }
}

/// The RTC notification fields an engine may report (seed 004 without `app_id`, which
/// Herald adds, plus `file_size` from seed 000's example), in seed 000's order.
const RTC_FIELDS: &[(&str, Kind)] = &[
    ("event_type", Kind::Text),
    ("stream_name", Kind::Text),
    ("record_format", Kind::Text),
    ("download_url", Kind::Text),
    ("file_size", Kind::Count),
    ("record_duration", Kind::Count),
    ("start_time", Kind::Text),
    ("end_time", Kind::Text),
    ("width", Kind::Count),
    ("height", Kind::Count),
    ("obs_location", Kind::Text),
    ("obs_bucket", Kind::Text),
    ("obs_object", Kind::Text),
    ("job_id", Kind::Text),
    ("room_id", Kind::Text),
    ("detail_message", Kind::Text),
];

/// A validated RTC-flavour event.
#[derive(Debug, Clone, PartialEq)]
pub struct RtcEvent {
    pub event_id: Option<EventId>,
    pub event_type: RtcEventType,
    pub stream_name: String,
    /// Every reported field, in seed 000's order.
    pub fields: Map<String, Value>,
}

impl RtcEvent {
    pub fn parse(path: &str, value: &Value) -> Result<Self, FieldError> {
        let read = ReadEvent::read(path, value, RTC_FIELDS, "RTC")?;
        let event_type =
            RtcEventType::parse(&read.named("event_type"), &read.required("event_type")?)?;
        let stream_name = read.required("stream_name")?;
        Ok(Self {
            event_id: read.event_id,
            event_type,
            stream_name,
            fields: read.fields,
        })
    }
}

/// An RTC ingest body (SPEC §4).
pub fn parse_rtc_ingest(body: &[u8]) -> Result<(Vec<RtcEvent>, bool), FieldError> {
    parse_ingest(body, RtcEvent::parse)
}
