//! What a media server's hook says (SPEC §7), read the way each engine sends it.
//!
//! - nginx-rtmp: a form-encoded POST with `call`, `app`, `name` and `path`. A publisher's
//!   own stream arguments are appended to it raw, so a second `name=` or `path=` may
//!   follow: the first occurrence of each key is the module's own.
//! - SRS: a JSON POST with `action`, `app`, `stream`, and for `on_dvr` `cwd` and `file`.
//! - MediaMTX: a command (curl) run with the hook's facts, given in the query string or a
//!   form body alike: `event`, `path`, `segment_path`.
//!
//! Each becomes a [`HookCall`]; what the call does to a recording session is
//! [`crate::recording`]'s business.

use std::path::Path;

use serde_json::Value;

use crate::field::{FieldError, MAX_TEXT_BYTES, check_name, check_text};
use crate::source::Engine;

/// The stream a hook is about: the media server's app and stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub app: String,
    pub stream: String,
}

/// One hook, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCall {
    /// The stream started being published.
    Publish(StreamKey),
    /// The stream stopped being published.
    Unpublish(StreamKey),
    /// A file began (MediaMTX's `segment_create`).
    FileStarted { stream: StreamKey, file: HookFile },
    /// A file is finished and closed.
    FileDone { stream: StreamKey, file: HookFile },
    /// A hook Herald has no use for (nginx-rtmp's `play`, SRS's `on_connect`, …): it is
    /// answered as a success so that the media server goes on.
    Ignored,
}

/// A file as a hook names it, not yet resolved against the source's record dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFile {
    /// The directory a relative `path` is relative to, when the hook says (SRS's `cwd`).
    pub base: Option<String>,
    pub path: String,
}

impl HookFile {
    /// The file's path with the hook's base (SRS's `cwd`) in front when it is relative.
    pub fn joined(&self) -> String {
        match &self.base {
            Some(base) if !Path::new(&self.path).is_absolute() => Path::new(base)
                .join(&self.path)
                .to_string_lossy()
                .into_owned(),
            _ => self.path.clone(),
        }
    }
}

/// Reads a hook of `engine`: `query` is the request's query string, `body` its body.
pub fn parse(engine: Engine, query: &str, body: &[u8]) -> Result<HookCall, FieldError> {
    match engine {
        Engine::NginxRtmp => parse_nginx_rtmp(&Form::read(&[body])),
        Engine::Srs => parse_srs(body),
        Engine::Mediamtx => parse_mediamtx(&Form::read(&[query.as_bytes(), body])),
    }
}

/// Form fields, each the first occurrence of its key across the parts read in order.
/// A map, not a list searched for each key: a body of many keys costs time in proportion
/// to its length, not to its length squared.
struct Form(std::collections::HashMap<String, String>);

impl Form {
    fn read(parts: &[&[u8]]) -> Self {
        let mut fields = std::collections::HashMap::new();
        for part in parts {
            for (key, value) in url::form_urlencoded::parse(part) {
                if !fields.contains_key(key.as_ref()) {
                    fields.insert(key.into_owned(), value.into_owned());
                }
            }
        }
        Self(fields)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn required(&self, key: &str) -> Result<&str, FieldError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| FieldError::new(key, "is required"))
    }
}

/// Longest app or stream name: the ingest API's limit for `app` and `stream`.
const MAX_NAME_BYTES: usize = 256;

fn stream_key(
    app_field: &str,
    app: &str,
    stream_field: &str,
    stream: &str,
) -> Result<StreamKey, FieldError> {
    for (field, value) in [(app_field, app), (stream_field, stream)] {
        if value.is_empty() {
            return Err(FieldError::new(field, "is required"));
        }
        check_name(field, value, MAX_NAME_BYTES)?;
    }
    Ok(StreamKey {
        app: app.to_owned(),
        stream: stream.to_owned(),
    })
}

fn hook_file(field: &str, base: Option<&str>, path: &str) -> Result<HookFile, FieldError> {
    if path.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    check_text(field, path, MAX_TEXT_BYTES)?;
    if let Some(base) = base {
        check_text("cwd", base, MAX_TEXT_BYTES)?;
    }
    Ok(HookFile {
        base: base.filter(|b| !b.is_empty()).map(str::to_owned),
        path: path.to_owned(),
    })
}

fn parse_nginx_rtmp(form: &Form) -> Result<HookCall, FieldError> {
    let call = form.required("call")?;
    if !matches!(call, "publish" | "publish_done" | "record_done") {
        return Ok(HookCall::Ignored);
    }
    let stream = stream_key("app", form.required("app")?, "name", form.required("name")?)?;
    Ok(match call {
        "publish" => HookCall::Publish(stream),
        "publish_done" => HookCall::Unpublish(stream),
        _ => HookCall::FileDone {
            stream,
            file: hook_file("path", None, form.required("path")?)?,
        },
    })
}

fn parse_srs(body: &[u8]) -> Result<HookCall, FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("body", format!("is not valid JSON ({e})")))?;
    let text = |name: &str| -> Result<&str, FieldError> {
        match value.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                Err(FieldError::new(name, "is required"))
            }
            Some(_) => Err(FieldError::new(name, "must be a string")),
        }
    };
    let action = text("action")?;
    if !matches!(action, "on_publish" | "on_unpublish" | "on_dvr") {
        return Ok(HookCall::Ignored);
    }
    let stream = stream_key("app", text("app")?, "stream", text("stream")?)?;
    Ok(match action {
        "on_publish" => HookCall::Publish(stream),
        "on_unpublish" => HookCall::Unpublish(stream),
        _ => {
            let cwd = value.get("cwd").and_then(Value::as_str);
            HookCall::FileDone {
                stream,
                file: hook_file("file", cwd, text("file")?)?,
            }
        }
    })
}

fn parse_mediamtx(form: &Form) -> Result<HookCall, FieldError> {
    let event = form.required("event")?;
    let path = form.required("path")?;
    // MediaMTX paths have no app: the first segment is the app and the rest the stream
    // (`live/cam1`); a one-segment path is both.
    let (app, stream) = path.split_once('/').unwrap_or((path, path));
    let stream = stream_key("path", app, "path", stream)?;
    let file = || hook_file("segment_path", None, form.required("segment_path")?);
    Ok(match event {
        "ready" => HookCall::Publish(stream),
        "not_ready" => HookCall::Unpublish(stream),
        "segment_create" => HookCall::FileStarted {
            stream,
            file: file()?,
        },
        "segment_complete" => HookCall::FileDone {
            stream,
            file: file()?,
        },
        _ => {
            return Err(FieldError::new(
                "event",
                "must be ready, not_ready, segment_create or segment_complete",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str, stream: &str) -> StreamKey {
        StreamKey {
            app: app.into(),
            stream: stream.into(),
        }
    }

    #[test]
    fn nginx_rtmp_takes_the_first_occurrence_of_each_key() {
        let body = b"app=live&flashver=FMLE&call=record_done&recorder=&name=cam&path=%2Frec%2Fcam-1.flv&name=evil&path=%2Fetc%2Fpasswd";
        assert_eq!(
            parse(Engine::NginxRtmp, "", body).unwrap(),
            HookCall::FileDone {
                stream: key("live", "cam"),
                file: HookFile {
                    base: None,
                    path: "/rec/cam-1.flv".into()
                }
            }
        );
        assert_eq!(
            parse(
                Engine::NginxRtmp,
                "",
                b"call=publish&app=live&name=cam&type=live"
            )
            .unwrap(),
            HookCall::Publish(key("live", "cam"))
        );
        assert_eq!(
            parse(Engine::NginxRtmp, "", b"call=play&app=live&name=cam").unwrap(),
            HookCall::Ignored
        );
        assert_eq!(
            parse(Engine::NginxRtmp, "", b"call=publish&app=live")
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            parse(
                Engine::NginxRtmp,
                "",
                b"call=record_done&app=live&name=a%00b&path=/r"
            )
            .unwrap_err()
            .field,
            "name"
        );
    }

    #[test]
    fn srs_reads_json_with_cwd() {
        let dvr = br#"{"server_id":"vid-1","action":"on_dvr","client_id":"3","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1/live","stream":"cam","param":"","cwd":"/usr/local/srs","file":"./objs/nginx/html/live/cam.flv"}"#;
        assert_eq!(
            parse(Engine::Srs, "", dvr).unwrap(),
            HookCall::FileDone {
                stream: key("live", "cam"),
                file: HookFile {
                    base: Some("/usr/local/srs".into()),
                    path: "./objs/nginx/html/live/cam.flv".into()
                }
            }
        );
        assert_eq!(
            parse(
                Engine::Srs,
                "",
                br#"{"action":"on_play","app":"live","stream":"cam"}"#
            )
            .unwrap(),
            HookCall::Ignored
        );
        assert_eq!(
            parse(
                Engine::Srs,
                "",
                br#"{"action":"on_dvr","app":"live","stream":"cam"}"#
            )
            .unwrap_err()
            .field,
            "file"
        );
        assert_eq!(parse(Engine::Srs, "", b"{").unwrap_err().field, "body");
    }

    #[test]
    fn mediamtx_reads_the_query_and_the_form_and_splits_the_path() {
        assert_eq!(
            parse(
                Engine::Mediamtx,
                "event=segment_complete",
                b"path=live%2Fcam&segment_path=%2Frec%2Flive%2Fcam%2F1.mp4&duration=7.04"
            )
            .unwrap(),
            HookCall::FileDone {
                stream: key("live", "cam"),
                file: HookFile {
                    base: None,
                    path: "/rec/live/cam/1.mp4".into()
                }
            }
        );
        assert_eq!(
            parse(Engine::Mediamtx, "event=ready&path=cam", b"").unwrap(),
            HookCall::Publish(key("cam", "cam"))
        );
        assert_eq!(
            parse(Engine::Mediamtx, "event=segment_create&path=a/b", b"")
                .unwrap_err()
                .field,
            "segment_path"
        );
        assert_eq!(
            parse(Engine::Mediamtx, "event=read&path=a", b"")
                .unwrap_err()
                .field,
            "event"
        );
    }

    /// The form parser once searched a list for every key: ~9.5k keys in a 64 KiB body
    /// took 130 ms, and a body of many more keys took seconds. It is linear now.
    #[test]
    fn many_keys_cost_time_in_proportion() {
        let mut body = String::from("call=publish&app=live&name=cam");
        for n in 0..60_000 {
            body.push_str(&format!("&k{n}=v"));
        }
        body.push_str("&name=forged");
        let started = std::time::Instant::now();
        let call = parse(Engine::NginxRtmp, "", body.as_bytes()).unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?} for 60k keys",
            started.elapsed()
        );
        let HookCall::Publish(stream) = call else {
            panic!("{call:?}")
        };
        assert_eq!(stream.stream, "cam", "the first name= is the module's");
    }
}
