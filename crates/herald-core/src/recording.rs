//! Recording sessions (SPEC §7): where a media server's hook becomes recording events.
//!
//! A hook changes a stream's [`Session`] and queues [`Step`]s: what is to be reported, in
//! the order it is to be reported. [`transition`] decides both, from the session as it is
//! and the hook; the store writes them in one transaction before the hook is answered. A
//! background tracker then takes each stream's steps in order, reads finished files
//! (ffprobe, after the hook was answered), and turns each step into events with
//! [`events_of`]. Event ids are derived from the step, so a step done twice (a crash
//! between ingesting its events and marking it done) is accepted once.
//!
//! The lifecycle, per (source, app, stream):
//! - the first publish opens a session: `RECORD_START` (Live only), then
//!   `RECORD_NEW_FILE_START` when the engine opens a file by itself;
//! - a finished file: `RECORD_FILE_COMPLETE` (or `RECORD_FAILED`), then, when the engine
//!   opens the next one by itself and the stream is still published, `RECORD_NEW_FILE_START`;
//! - an unpublish pauses the session; a publish within `max_pause` resumes it, and once
//!   the pause has lasted `max_pause` and every step is done, the session ends with
//!   `RECORD_OVER` (`CLOUD_RECORD_SERVER_OVER`).

use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::event::EventId;
use crate::event::live::LiveEvent;
use crate::event::rtc::RtcEvent;
use crate::field::FieldError;
use crate::hook::{HookCall, HookFile, StreamKey};
use crate::source::{RecordingSource, SourceTarget};
use crate::timefmt::utc_seconds;

/// A stream's recording session, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session's id: every event of the session carries it as `job_id`.
    pub job_id: String,
    pub published: bool,
    /// While unpublished: when the session ends unless the stream is published again.
    pub over_at: Option<OffsetDateTime>,
    /// How many files the session has begun: numbers `RECORD_NEW_FILE_START` events.
    pub files_started: i64,
}

/// What a step reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `RECORD_START` (Live only).
    Start,
    /// `RECORD_NEW_FILE_START`, of the session's file number `file_no`.
    FileStart,
    /// A finished file: `RECORD_FILE_COMPLETE` or `RECORD_FAILED`, once it has been read.
    File,
    /// `RECORD_OVER` or `CLOUD_RECORD_SERVER_OVER`.
    Over,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::FileStart => "file_start",
            Self::File => "file",
            Self::Over => "over",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Start, Self::FileStart, Self::File, Self::Over]
            .into_iter()
            .find(|k| k.as_str() == raw)
    }
}

/// A step to take for a stream, in the order steps were queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub stream: StreamKey,
    pub job_id: String,
    /// [`StepKind::FileStart`]: the file's number in the session. [`StepKind::Over`]: how
    /// many files the session announced when none of them was written (else 0).
    pub file_no: i64,
    /// [`StepKind::File`]: the file as the hook named it (resolved against `cwd` when the
    /// hook gave one); checked against the record dir before it is ever opened.
    pub path: Option<String>,
    /// When the hook arrived: a finished file's `end_time`.
    pub at: OffsetDateTime,
    /// The hook's identity where it has one (a file): a second hook with the same key is
    /// the same hook repeated, and is accepted once.
    pub hook_key: Option<String>,
}

/// What a hook does: the session as it is to be stored (`None`: left as it is), and the
/// steps to queue after those already queued.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transition {
    pub session: Option<Session>,
    pub steps: Vec<Step>,
}

/// The identity of a hook that names a file, within the session it joins: a second hook
/// with the same key is the first one repeated. `None` for other hooks, and for a hook
/// that opens a session (which nothing can repeat yet).
pub fn hook_key(
    source: &RecordingSource,
    current: Option<&Session>,
    call: &HookCall,
) -> Option<String> {
    let session = current?;
    match call {
        HookCall::FileStarted { file, .. } => Some(file_key(
            StepKind::FileStart,
            &session.job_id,
            &resolved(source, file),
        )),
        HookCall::FileDone { file, .. } => Some(file_key(
            StepKind::File,
            &session.job_id,
            &resolved(source, file),
        )),
        _ => None,
    }
}

/// The file a hook names, as one path: the hook's base (SRS's `cwd`) or else the record
/// dir in front of a relative path, and written the one way its components read
/// (`rec//a.flv`, `rec/./a.flv` and `rec/a.flv` are one file, with one key and one
/// event). `..` is kept: such a file is outside the record dir, and never opened.
pub fn resolved(source: &RecordingSource, file: &HookFile) -> String {
    let joined = file.joined();
    let path = std::path::Path::new(&joined);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        source.spec.record_dir.path().join(path)
    };
    let normal: std::path::PathBuf = absolute.components().collect();
    normal.to_string_lossy().into_owned()
}

fn file_key(kind: StepKind, job_id: &str, path: &str) -> String {
    format!("{}:{job_id}:{path}", kind.as_str())
}

/// Decides what `call` does to the stream's `current` session, at `now`. `repeat`: the
/// hook's [`hook_key`] was already taken.
pub fn transition(
    source: &RecordingSource,
    current: Option<&Session>,
    call: &HookCall,
    now: OffsetDateTime,
    repeat: bool,
) -> Transition {
    let engine = source.spec.engine;
    let is_live = matches!(source.spec.target, SourceTarget::Live { .. });
    let mut plan = Plan {
        session: current.cloned(),
        changed: false,
        steps: Vec::new(),
        now,
    };
    match call {
        HookCall::Ignored => {}
        HookCall::Publish(stream) => match current {
            Some(session) if session.published => {}
            Some(_) => {
                plan.publish(true);
                if engine.opens_files_implicitly() {
                    plan.file_start(stream, None);
                }
            }
            None => {
                plan.open(stream, is_live, true);
                if engine.opens_files_implicitly() {
                    plan.file_start(stream, None);
                }
            }
        },
        HookCall::Unpublish(_) => {
            if current.is_some_and(|s| s.published) {
                plan.publish(false);
                plan.pause_until(now + source.spec.max_pause);
            }
        }
        HookCall::FileStarted { stream, file } => {
            let path = resolved(source, file);
            if current.is_none() {
                plan.open(stream, is_live, true);
            }
            let key = file_key(StepKind::FileStart, &plan.job_id(), &path);
            if !repeat {
                plan.publish(true);
                plan.file_start(stream, Some(key));
            }
        }
        HookCall::FileDone { stream, file } => {
            let path = resolved(source, file);
            if current.is_none() {
                // A file of a stream whose publish Herald never saw (the source was created
                // mid-stream, say): it opens a session that ends after `max_pause`.
                plan.open(stream, is_live, false);
                plan.pause_until(now + source.spec.max_pause);
            }
            let key = file_key(StepKind::File, &plan.job_id(), &path);
            if !repeat {
                plan.file(stream, path, key);
                if engine.opens_files_implicitly() && plan.is_published() {
                    plan.file_start(stream, None);
                }
            }
        }
    }
    Transition {
        session: plan.changed.then_some(plan.session).flatten(),
        steps: plan.steps,
    }
}

/// A transition being built.
struct Plan {
    session: Option<Session>,
    changed: bool,
    steps: Vec<Step>,
    now: OffsetDateTime,
}

impl Plan {
    fn session_mut(&mut self) -> Option<&mut Session> {
        self.changed = true;
        self.session.as_mut()
    }

    fn job_id(&self) -> String {
        self.session
            .as_ref()
            .map(|s| s.job_id.clone())
            .unwrap_or_default()
    }

    fn is_published(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.published)
    }

    fn open(&mut self, stream: &StreamKey, is_live: bool, published: bool) {
        self.session = Some(Session {
            job_id: uuid::Uuid::new_v4().to_string(),
            published,
            over_at: None,
            files_started: 0,
        });
        self.changed = true;
        if is_live {
            self.push(StepKind::Start, stream, 0, None, None);
        }
    }

    fn publish(&mut self, published: bool) {
        if let Some(session) = self.session_mut() {
            session.published = published;
            if published {
                session.over_at = None;
            }
        }
    }

    fn pause_until(&mut self, over_at: OffsetDateTime) {
        if let Some(session) = self.session_mut() {
            session.over_at = Some(over_at);
        }
    }

    fn file_start(&mut self, stream: &StreamKey, hook_key: Option<String>) {
        let file_no = match self.session_mut() {
            Some(session) => {
                session.files_started += 1;
                session.files_started
            }
            None => return,
        };
        self.push(StepKind::FileStart, stream, file_no, None, hook_key);
    }

    fn file(&mut self, stream: &StreamKey, path: String, hook_key: String) {
        self.push(StepKind::File, stream, 0, Some(path), Some(hook_key));
    }

    fn push(
        &mut self,
        kind: StepKind,
        stream: &StreamKey,
        file_no: i64,
        path: Option<String>,
        hook_key: Option<String>,
    ) {
        let step = Step {
            kind,
            stream: stream.clone(),
            job_id: self.job_id(),
            file_no,
            path,
            at: self.now,
            hook_key,
        };
        self.steps.push(step);
    }
}

/// The step that ends a session (queued when its pause has lasted `max_pause`).
pub fn over_step(stream: StreamKey, job_id: String, now: OffsetDateTime) -> Step {
    Step {
        kind: StepKind::Over,
        stream,
        job_id,
        file_no: 0,
        path: None,
        at: now,
        hook_key: None,
    }
}

/// Why a session that announced files ended without one: the media server could not
/// write into its record dir (or was not recording).
pub fn no_file_message(app: &str, stream: &str, files_started: i64) -> String {
    format!(
        "no file was written: {app}/{stream} ended with {files_started} file(s) announced and none \
         finished; check that the media server can write to record_dir (its error log says \
         \"Permission denied\" when it cannot)"
    )
}

/// The longest recording Herald believes a file holds. No engine writes one file for a
/// month on end; a container that claims more is corrupt or forged, and its times cannot
/// be reported (near 3.8e11 s they leave the calendar altogether).
pub const MOST_PLAUSIBLE_DURATION: std::time::Duration =
    std::time::Duration::from_secs(31 * 86_400);

/// What reading a finished file found.
#[derive(Debug, Clone, PartialEq)]
pub enum FileOutcome {
    /// A media file with frames.
    Complete(FileFacts),
    /// A media file without a single audio or video frame (nginx-rtmp's stub at the end of
    /// a publish): not reported.
    Empty,
    /// Missing, unreadable, not a media file, or outside the record dir: why.
    Failed(String),
}

/// The facts of a finished file that `RECORD_FILE_COMPLETE` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct FileFacts {
    /// The file's path below the record dir (for `download_url`).
    pub relative_path: std::path::PathBuf,
    /// Bytes on disk.
    pub size: u64,
    /// Seconds, as ffprobe reads the container.
    pub duration: f64,
    pub width: Option<u64>,
    pub height: Option<u64>,
    /// `FLV`, `MP4`, `HLS`, `TS` (or the container's name in capitals).
    pub record_format: String,
    /// Where the file was uploaded, when its source has storage (SPEC §7.1); `size`
    /// and `record_format` are then those of what was stored.
    pub stored: Option<StoredObject>,
}

/// A recording confirmed in its source's bucket: the seeds' OBS fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// `obs_location`: the storage endpoint.
    pub location: String,
    /// `obs_bucket`.
    pub bucket: String,
    /// `obs_object`: the key.
    pub key: String,
    /// `download_url`: `download_base` + the key, else the object's URL.
    pub download_url: String,
}

impl FileOutcome {
    /// The outcome with a complete file's facts checked against what a recording can be:
    /// one whose duration is absurd, or whose start would fall before the calendar when
    /// counted back from `end`, is failed with a reason in Herald's words.
    pub fn checked(self, end: OffsetDateTime) -> Self {
        let Self::Complete(facts) = &self else {
            return self;
        };
        match facts.start_at(end) {
            Some(_) => self,
            None => Self::Failed(format!(
                "the file claims to last {:.0} s, more than any recording ({} days); it was not \
                 reported as complete",
                facts.duration,
                MOST_PLAUSIBLE_DURATION.as_secs() / 86_400
            )),
        }
    }
}

impl FileFacts {
    /// When the file began, counted back from `end` by its duration; `None` when the
    /// duration is not a plausible one (see [`MOST_PLAUSIBLE_DURATION`]).
    pub fn start_at(&self, end: OffsetDateTime) -> Option<OffsetDateTime> {
        if !self.duration.is_finite()
            || self.duration < 0.0
            || self.duration > MOST_PLAUSIBLE_DURATION.as_secs_f64()
        {
            return None;
        }
        end.checked_sub(time::Duration::checked_seconds_f64(self.duration)?)
    }
}

/// `record_format` from ffprobe's `format_name` (a comma-separated list of names).
pub fn record_format(format_name: &str) -> String {
    let names: Vec<&str> = format_name.split(',').map(str::trim).collect();
    let has = |n: &str| names.contains(&n);
    if has("flv") {
        "FLV".into()
    } else if has("mp4") || has("mov") {
        "MP4".into()
    } else if has("hls") || has("applehttp") {
        "HLS".into()
    } else if has("mpegts") {
        "TS".into()
    } else {
        names.first().copied().unwrap_or("").to_ascii_uppercase()
    }
}

/// An event derived from a step, for the source's flavour.
#[derive(Debug, Clone, PartialEq)]
pub enum DerivedEvent {
    Live(EventId, LiveEvent),
    Rtc(EventId, RtcEvent),
}

/// The events a step reports: none or one, except the end of a session that announced
/// files and wrote none: `RECORD_FAILED` saying so (Live), then `RECORD_OVER`. `outcome` is
/// the reading of a [`StepKind::File`] step's file.
pub fn events_of(
    source: &RecordingSource,
    step: &Step,
    outcome: Option<&FileOutcome>,
) -> Result<Vec<DerivedEvent>, FieldError> {
    if step.kind == StepKind::Over && step.file_no > 0 {
        let why = no_file_message(&step.stream.app, &step.stream.stream, step.file_no);
        // A file step without a path: its event id cannot be a real file's.
        let failed = Step {
            kind: StepKind::File,
            path: None,
            file_no: 0,
            ..step.clone()
        };
        let mut events = events_of(source, &failed, Some(&FileOutcome::Failed(why)))?;
        let over = Step {
            file_no: 0,
            ..step.clone()
        };
        events.extend(events_of(source, &over, None)?);
        return Ok(events);
    }
    // Facts are checked here too, so that no outcome can make the arithmetic below fail.
    let checked = outcome.map(|o| o.clone().checked(step.at));
    let outcome = checked.as_ref();
    let is_live = matches!(source.spec.target, SourceTarget::Live { .. });
    let (live_type, rtc_type, identity) = match (step.kind, outcome) {
        (StepKind::Start, _) => ("RECORD_START", None, format!("start\n{}", step.job_id)),
        (StepKind::FileStart, _) => (
            "RECORD_NEW_FILE_START",
            Some("RECORD_NEW_FILE_START"),
            format!("file_start\n{}\n{}", step.job_id, step.file_no),
        ),
        (StepKind::File, Some(FileOutcome::Complete(_))) => (
            "RECORD_FILE_COMPLETE",
            Some("RECORD_FILE_COMPLETE"),
            format!(
                "file\n{}\n{}",
                step.job_id,
                step.path.as_deref().unwrap_or("")
            ),
        ),
        (StepKind::File, Some(FileOutcome::Failed(_))) => (
            "RECORD_FAILED",
            None,
            format!(
                "file\n{}\n{}",
                step.job_id,
                step.path.as_deref().unwrap_or("")
            ),
        ),
        (StepKind::File, Some(FileOutcome::Empty) | None) => return Ok(Vec::new()),
        (StepKind::Over, _) => (
            "RECORD_OVER",
            Some("CLOUD_RECORD_SERVER_OVER"),
            format!("over\n{}", step.job_id),
        ),
    };
    let event_id = derived_event_id(&source.id, &identity);
    let mut fields = Map::new();
    let mut put = |name: &str, value: Value| {
        fields.insert(name.to_owned(), value);
    };
    put("job_id", json!(step.job_id));
    match &source.spec.target {
        SourceTarget::Live { publish_domain } => {
            put("event_type", json!(live_type));
            put("publish_domain", json!(publish_domain.as_str()));
            put("app", json!(step.stream.app));
            put("stream", json!(step.stream.stream));
        }
        SourceTarget::Rtc { .. } => {
            let Some(rtc_type) = rtc_type else {
                return Ok(Vec::new());
            };
            put("event_type", json!(rtc_type));
            put("stream_name", json!(step.stream.stream));
            put("room_id", json!(step.stream.app));
        }
    }
    match outcome {
        Some(FileOutcome::Complete(facts)) if step.kind == StepKind::File => {
            let end = step.at;
            // Checked above: a complete file's start is within the calendar.
            let start = facts.start_at(end).unwrap_or(end);
            let whole = Duration::from_secs_f64(facts.duration.round());
            put("record_format", json!(facts.record_format));
            // A URL cannot be cut short: one longer than an event's `download_url` may be
            // is left out, and the file is still reported.
            let download_url = match &facts.stored {
                Some(stored) => {
                    put("obs_location", json!(stored.location));
                    put("obs_bucket", json!(stored.bucket));
                    put("obs_object", json!(stored.key));
                    Some(stored.download_url.clone())
                }
                None => source
                    .spec
                    .download_base
                    .as_ref()
                    .map(|base| base.url_of(&facts.relative_path)),
            };
            if let Some(url) = download_url.filter(|url| url.len() <= MAX_DOWNLOAD_URL_BYTES) {
                put("download_url", json!(url));
            }
            put("file_size", json!(facts.size));
            put("record_duration", json!(whole.as_secs()));
            put("start_time", json!(utc_seconds(start)));
            put("end_time", json!(utc_seconds(end)));
            if let Some(width) = facts.width {
                put("width", json!(width));
            }
            if let Some(height) = facts.height {
                put("height", json!(height));
            }
        }
        Some(FileOutcome::Failed(why)) if is_live => {
            put(
                "error_message",
                json!(truncated(why, MAX_ERROR_MESSAGE_BYTES)),
            );
        }
        _ => {}
    }
    let value = Value::Object(fields);
    Ok(vec![match source.spec.target {
        SourceTarget::Live { .. } => DerivedEvent::Live(event_id, LiveEvent::parse("", &value)?),
        SourceTarget::Rtc { .. } => DerivedEvent::Rtc(event_id, RtcEvent::parse("", &value)?),
    }])
}

/// The longest `error_message` and `download_url` a derived event carries: the event
/// rules' limits (a longer one would make the event invalid, and it would be dropped).
const MAX_ERROR_MESSAGE_BYTES: usize = crate::field::MAX_TEXT_BYTES;
const MAX_DOWNLOAD_URL_BYTES: usize = 2048;

/// `text` cut at a character boundary to at most `max` bytes, an ellipsis saying so.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const MORE: &str = "…";
    let mut end = max.saturating_sub(MORE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

/// `src-` and 40 hex characters of a hash of the source and what the event reports.
fn derived_event_id(source_id: &str, identity: &str) -> EventId {
    let digest = Sha256::new()
        .chain_update(source_id.as_bytes())
        .chain_update(b"\n")
        .chain_update(identity.as_bytes())
        .finalize();
    let hex = hex::encode(digest);
    EventId::parse("event_id", &format!("src-{}", &hex[..40]))
        .unwrap_or_else(|_| EventId::generate())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::ProjectId;
    use crate::source::{Engine, SourceSpec};
    use secrecy::SecretString;

    fn source(engine: &str, target: &str) -> RecordingSource {
        let body = format!(
            r#"{{"engine": "{engine}", {target}, "record_dir": "/rec", "download_base": "https://cdn.example.com/vod", "max_pause": "30s"}}"#
        );
        RecordingSource {
            id: "s1".into(),
            project_id: ProjectId::parse("p", "p1").unwrap(),
            spec: SourceSpec::parse(body.as_bytes()).unwrap(),
            secret: SecretString::from("x"),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn live(engine: &str) -> RecordingSource {
        source(engine, r#""publish_domain": "push.example.com""#)
    }

    fn key() -> StreamKey {
        StreamKey {
            app: "live".into(),
            stream: "cam".into(),
        }
    }

    /// The file step of job `j1`'s first file at `path`, finished at `at`.
    fn file_step(path: &str, at: OffsetDateTime) -> Step {
        Step {
            kind: StepKind::File,
            stream: key(),
            job_id: "j1".into(),
            file_no: 0,
            path: Some(path.into()),
            at,
            hook_key: None,
        }
    }

    fn done(path: &str) -> HookCall {
        HookCall::FileDone {
            stream: key(),
            file: HookFile {
                base: None,
                path: path.into(),
            },
        }
    }

    /// Runs hooks through [`transition`], as the store would, and lists the steps' kinds.
    fn run(source: &RecordingSource, calls: &[HookCall]) -> (Option<Session>, Vec<StepKind>) {
        let mut session: Option<Session> = None;
        let mut steps: Vec<Step> = Vec::new();
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        for call in calls {
            let repeat = hook_key(source, session.as_ref(), call)
                .is_some_and(|k| steps.iter().any(|s| s.hook_key.as_deref() == Some(&k)));
            let t = transition(source, session.as_ref(), call, now, repeat);
            if let Some(s) = t.session {
                session = Some(s);
            }
            steps.extend(t.steps);
        }
        (session, steps.iter().map(|s| s.kind).collect())
    }

    #[test]
    fn nginx_rtmp_lifecycle_with_publish_done_before_the_last_file() {
        use StepKind::*;
        let src = live("nginx-rtmp");
        let (session, kinds) = run(
            &src,
            &[
                HookCall::Publish(key()),
                done("/rec/cam-1.flv"),
                done("/rec/cam-1.flv"), // repeated: accepted once
                HookCall::Unpublish(key()),
                done("/rec/cam-2.flv"),
                HookCall::Unpublish(key()), // repeated: nothing
            ],
        );
        assert_eq!(kinds, [Start, FileStart, File, FileStart, File]);
        let session = session.unwrap();
        assert!(!session.published);
        assert!(session.over_at.is_some());
        // Republished within max_pause: the session goes on with a new file, no new start.
        let (_, kinds) = run(
            &src,
            &[
                HookCall::Publish(key()),
                HookCall::Unpublish(key()),
                HookCall::Publish(key()),
            ],
        );
        assert_eq!(kinds, [Start, FileStart, FileStart]);
    }

    #[test]
    fn mediamtx_files_start_by_hook_and_rtc_has_no_start() {
        use StepKind::*;
        let src = source("mediamtx", r#""app_id": "0123456789abcdef01234567""#);
        assert_eq!(src.spec.engine, Engine::Mediamtx);
        let created = HookCall::FileStarted {
            stream: key(),
            file: HookFile {
                base: None,
                path: "/rec/live/cam/1.mp4".into(),
            },
        };
        let (_, kinds) = run(
            &src,
            &[
                HookCall::Publish(key()),
                created.clone(),
                created,
                done("/rec/live/cam/1.mp4"),
                HookCall::Unpublish(key()),
            ],
        );
        assert_eq!(kinds, [FileStart, File]);
    }

    /// A session that announced files and finished none ends with `RECORD_FAILED` saying no
    /// file was written, then `RECORD_OVER` (Live); RTC, which has no failure event, only
    /// ends. A session that wrote a file ends with `RECORD_OVER` alone.
    #[test]
    fn a_session_without_a_file_ends_saying_so() {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(100);
        let mut step = over_step(key(), "j1".into(), at);
        let types = |src: &RecordingSource, step: &Step| -> Vec<Value> {
            events_of(src, step, None)
                .unwrap()
                .into_iter()
                .map(|e| match e {
                    DerivedEvent::Live(_, e) => Value::Object(e.fields),
                    DerivedEvent::Rtc(_, e) => Value::Object(e.fields),
                })
                .collect()
        };
        let live_src = live("nginx-rtmp");
        let ended = types(&live_src, &step);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0]["event_type"], "RECORD_OVER");
        step.file_no = 2;
        let ended = types(&live_src, &step);
        assert_eq!(
            ended
                .iter()
                .map(|e| e["event_type"].clone())
                .collect::<Vec<_>>(),
            [json!("RECORD_FAILED"), json!("RECORD_OVER")]
        );
        let why = ended[0]["error_message"].as_str().unwrap();
        assert!(
            why.starts_with("no file was written") && why.contains("record_dir"),
            "{why}"
        );
        assert_eq!(ended[0]["job_id"], "j1");
        let rtc_src = source("nginx-rtmp", r#""app_id": "0123456789abcdef01234567""#);
        let ended = types(&rtc_src, &step);
        assert_eq!(
            ended
                .iter()
                .map(|e| e["event_type"].clone())
                .collect::<Vec<_>>(),
            [json!("CLOUD_RECORD_SERVER_OVER")]
        );
    }

    /// A path near 4 KiB made RECORD_FAILED's `error_message` longer than an event may
    /// hold, and the event was dropped; a long download URL did the same to a complete file.
    #[test]
    fn long_paths_never_drop_an_event() {
        let src = live("nginx-rtmp");
        let long = format!("/rec/{}é.flv", "x".repeat(4090));
        let step = file_step(
            &long,
            OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
        );
        let why = format!("{long:?} does not exist");
        let events = events_of(&src, &step, Some(&FileOutcome::Failed(why))).unwrap();
        let [DerivedEvent::Live(_, event)] = events.as_slice() else {
            panic!("{events:?}")
        };
        let message = event.text("error_message");
        assert!(message.len() <= crate::field::MAX_TEXT_BYTES);
        assert!(message.ends_with('…'), "{}", &message[message.len() - 10..]);
        let facts = FileFacts {
            relative_path: long.trim_start_matches("/rec/").into(),
            size: 1,
            duration: 1.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let events = events_of(&src, &step, Some(&FileOutcome::Complete(facts))).unwrap();
        let [DerivedEvent::Live(_, event)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(event.text("event_type"), "RECORD_FILE_COMPLETE");
        assert!(!event.fields.contains_key("download_url"));
        assert_eq!(truncated("ab", 2), "ab");
        assert_eq!(truncated("aééé", 5), "a…");
        assert_eq!(truncated("aééé", 6), "aé…");
    }

    /// `rec//a.flv`, `rec/./a.flv` and `a.flv` (relative to the record dir) were three
    /// files with three keys, so one file was reported three times.
    #[test]
    fn one_file_written_three_ways_is_one_file() {
        let src = live("nginx-rtmp");
        let (_, kinds) = run(
            &src,
            &[
                HookCall::Publish(key()),
                done("/rec/live/a.flv"),
                done("/rec//live/./a.flv"),
                done("live/a.flv"),
                done("/rec/live//a.flv/"),
            ],
        );
        use StepKind::*;
        assert_eq!(kinds, [Start, FileStart, File, FileStart]);
        let other = HookFile {
            base: None,
            path: "../etc/passwd".into(),
        };
        assert_eq!(
            resolved(&src, &other),
            "/rec/../etc/passwd",
            "`..` is kept: outside"
        );
    }

    #[test]
    fn a_file_without_a_session_opens_one_that_is_paused() {
        let (session, kinds) = run(&live("srs"), &[done("/rec/a.flv")]);
        assert_eq!(kinds, [StepKind::Start, StepKind::File]);
        assert!(!session.unwrap().published);
    }

    #[test]
    fn file_events_carry_the_facts_and_ids_are_stable() {
        let src = live("nginx-rtmp");
        let step = file_step(
            "/rec/live/cam 1.flv",
            OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(100),
        );
        let facts = FileFacts {
            relative_path: "live/cam 1.flv".into(),
            size: 1234,
            duration: 6.6,
            width: Some(1280),
            height: Some(720),
            record_format: record_format("flv"),
            stored: None,
        };
        let events = events_of(&src, &step, Some(&FileOutcome::Complete(facts))).unwrap();
        let [DerivedEvent::Live(id, event)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert!(id.as_str().starts_with("src-"));
        assert_eq!(
            Value::Object(event.fields.clone()),
            json!({
                "job_id": "j1", "event_type": "RECORD_FILE_COMPLETE",
                "publish_domain": "push.example.com", "app": "live", "stream": "cam",
                "record_format": "FLV",
                "download_url": "https://cdn.example.com/vod/live/cam%201.flv",
                "file_size": 1234, "record_duration": 7,
                "start_time": "1970-01-01T00:01:33Z", "end_time": "1970-01-01T00:01:40Z",
                "width": 1280, "height": 720,
            })
        );
        let again = events_of(&src, &step, Some(&FileOutcome::Failed("gone".into()))).unwrap();
        let [DerivedEvent::Live(again_id, failed)] = again.as_slice() else {
            panic!()
        };
        assert_eq!(again_id, id, "one file, one event id, whatever was found");
        assert_eq!(failed.text("error_message"), "gone");
        assert!(
            events_of(&src, &step, Some(&FileOutcome::Empty))
                .unwrap()
                .is_empty()
        );
        assert_eq!(record_format("mov,mp4,m4a,3gp,3g2,mj2"), "MP4");
        assert_eq!(record_format("mpegts"), "TS");
    }

    /// A container that claims ~3.8e11 s once made `end - duration` panic, which ended the
    /// tracker for every project. Absurd facts are a failed file, with a reason.
    #[test]
    fn an_absurd_duration_is_a_failed_file_not_a_panic() {
        let src = live("nginx-rtmp");
        let step = file_step(
            "/rec/a.flv",
            OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
        );
        for duration in [
            3.9e11,
            1.0e300,
            f64::INFINITY,
            f64::NAN,
            -1.0,
            32.0 * 86_400.0,
        ] {
            let facts = FileFacts {
                relative_path: "a.flv".into(),
                size: 10,
                duration,
                width: None,
                height: None,
                record_format: "FLV".into(),
                stored: None,
            };
            let outcome = FileOutcome::Complete(facts);
            let events = events_of(&src, &step, Some(&outcome)).unwrap();
            let [DerivedEvent::Live(_, event)] = events.as_slice() else {
                panic!("{events:?}")
            };
            assert_eq!(event.text("event_type"), "RECORD_FAILED", "{duration}");
            assert!(
                event
                    .text("error_message")
                    .contains("more than any recording"),
                "{duration}: {}",
                event.text("error_message")
            );
            assert!(matches!(outcome.checked(step.at), FileOutcome::Failed(_)));
        }
        // A long but believable file is still complete.
        let week = FileFacts {
            relative_path: "a.flv".into(),
            size: 10,
            duration: 7.0 * 86_400.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let events = events_of(&src, &step, Some(&FileOutcome::Complete(week))).unwrap();
        let [DerivedEvent::Live(_, event)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(event.text("event_type"), "RECORD_FILE_COMPLETE");
    }
}
