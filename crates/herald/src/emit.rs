//! `herald emit`: sends a test event to a running Herald through the ingest API, signed
//! with AK/SK like the official SDKs, and prints what Herald answered.

use anyhow::{Context, bail};
use herald_core::sdk_auth::{WireRequest, authorization_header, sdk_date};
use serde_json::{Map, Value};
use time::OffsetDateTime;

pub struct EmitOptions {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub project: String,
    /// Live: the event's `publish_domain` and `app`; RTC: the app id.
    pub target: Target,
    pub stream: String,
    pub event_type: String,
    pub event_id: Option<String>,
    /// Extra fields, `k=v`; values made only of digits are sent as JSON numbers.
    pub fields: Vec<String>,
}

pub enum Target {
    Live { domain: String, app: String },
    Rtc { app_id: String },
}

/// The event's JSON and the path it is posted to.
fn event(options: &EmitOptions) -> anyhow::Result<(String, Value)> {
    let mut event = Map::new();
    if let Some(id) = &options.event_id {
        event.insert("event_id".into(), Value::String(id.clone()));
    }
    event.insert(
        "event_type".into(),
        Value::String(options.event_type.clone()),
    );
    let path = match &options.target {
        Target::Live { domain, app } => {
            event.insert("publish_domain".into(), Value::String(domain.clone()));
            event.insert("app".into(), Value::String(app.clone()));
            event.insert("stream".into(), Value::String(options.stream.clone()));
            format!("/v1/{}/record/events", options.project)
        }
        Target::Rtc { app_id } => {
            event.insert("stream_name".into(), Value::String(options.stream.clone()));
            format!("/v2/apps/{app_id}/record/events")
        }
    };
    for field in &options.fields {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("--field {field:?}: expected k=v"))?;
        let value = match v.parse::<u64>() {
            Ok(n) if v.bytes().all(|b| b.is_ascii_digit()) => Value::from(n),
            _ => Value::String(v.to_owned()),
        };
        event.insert(k.to_owned(), value);
    }
    Ok((path, Value::Object(event)))
}

/// Sends the event; fails (non-zero exit) unless Herald answered 2xx.
pub async fn run(options: EmitOptions) -> anyhow::Result<()> {
    let (path, event) = event(&options)?;
    let base = url::Url::parse(&options.endpoint)
        .with_context(|| format!("--endpoint {:?}", options.endpoint))?;
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => bail!("--endpoint {:?} has no host", options.endpoint),
    };
    let body = serde_json::to_vec(&event)?;
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("host".to_owned(), host),
        ("x-project-id".to_owned(), options.project.clone()),
        ("x-sdk-date".to_owned(), sdk_date(OffsetDateTime::now_utc())),
    ];
    let wire = WireRequest {
        method: "POST",
        raw_path: &path,
        raw_query: "",
        headers: &headers,
        body: &body,
    };
    let authorization = authorization_header(&wire, &options.access_key, &options.secret_key)?;
    headers.push(("authorization".to_owned(), authorization));
    let url = base.join(&path)?;
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers.into_iter().filter(|(n, _)| n != "host") {
        request = request.header(name, value);
    }
    let response = request.send().await.context("sending the event")?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    println!("{} {answer}", status.as_u16());
    if !status.is_success() {
        bail!("Herald answered {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_become_numbers_and_the_flavour_picks_the_path() {
        let options = EmitOptions {
            endpoint: "http://127.0.0.1:8080".into(),
            access_key: "AK".into(),
            secret_key: "SK".into(),
            project: "p1".into(),
            target: Target::Rtc {
                app_id: "0123456789abcdef01234567".into(),
            },
            stream: "s".into(),
            event_type: "RECORD_FILE_COMPLETE".into(),
            event_id: None,
            fields: vec!["file_size=1024".into(), "room_id=007a".into()],
        };
        let (path, event) = event(&options).unwrap();
        assert_eq!(path, "/v2/apps/0123456789abcdef01234567/record/events");
        assert_eq!(event["file_size"], 1024);
        assert_eq!(event["room_id"], "007a");
        assert_eq!(event["stream_name"], "s");
    }
}
