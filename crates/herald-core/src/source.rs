//! Recording sources (SPEC §7): a media server whose recordings Herald reports, what it
//! reports for, where its files are, and the secret hook URL it calls.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use crate::config::callback_url::CallbackUrl;
use crate::config::live::PublishDomain;
use crate::config::rtc::AppId;
use crate::duration::parse_duration;
use crate::field::{FieldError, JsonObject, check_text};
use crate::project::ProjectId;
use crate::storage::{RecordFormat, StorageSpec};

/// The media servers whose hooks Herald reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    NginxRtmp,
    Srs,
    Mediamtx,
}

impl Engine {
    pub const ALL: [Self; 3] = [Self::NginxRtmp, Self::Srs, Self::Mediamtx];

    /// The name in `--engine`, the API and the hook URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NginxRtmp => "nginx-rtmp",
            Self::Srs => "srs",
            Self::Mediamtx => "mediamtx",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == raw)
            .ok_or_else(|| FieldError::new(field, "must be nginx-rtmp, srs or mediamtx"))
    }

    /// Whether the engine opens the next file by itself when one is finished while the
    /// stream is published (nginx-rtmp and SRS), rather than saying so with a hook of its
    /// own (MediaMTX's `segment_create`).
    pub fn opens_files_implicitly(self) -> bool {
        !matches!(self, Self::Mediamtx)
    }
}

/// What a source's recordings are reported as: Live events for an ingest domain, or RTC
/// events for an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceTarget {
    Live { publish_domain: PublishDomain },
    Rtc { app_id: AppId },
}

/// The longest `record_dir` and `download_base` accepted.
pub const MAX_LOCATION_BYTES: usize = 1024;
/// The bounds of `max_pause`: a pause shorter than a second would end a session between
/// nginx-rtmp's `publish_done` and the `record_done` it sends after it; Huawei's console
/// offers minutes, a day is generous.
pub const MAX_PAUSE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(86_400));
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(30);

/// The directory a source records into: absolute and normalised (no `.` or `..`), so that
/// "below the record dir" can be decided on the path's components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDir(PathBuf);

/// Characters a record dir may not hold: they mean something in a shell or in the media
/// servers' configuration files (nginx, SRS, MediaMTX's YAML and its `%` and SRS's `[…]`
/// placeholders), and the console pastes the dir into ready-made snippets of those files.
/// Control characters (and Unicode's line separators) are refused too. A space and `#`
/// are allowed: the snippets quote a dir that has them.
pub const RECORD_DIR_REFUSED: &str = "\"'`$;\\&|<>*?!(){}[]%^";

fn refused_in_record_dir(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || RECORD_DIR_REFUSED.contains(c)
}

impl RecordDir {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        check_text(field, raw, MAX_LOCATION_BYTES)?;
        if raw.chars().any(refused_in_record_dir) {
            return Err(FieldError::new(
                field,
                format!(
                    "must not contain control characters or any of {RECORD_DIR_REFUSED} \
                     (letters, digits, spaces and / . _ - + @ , = : ~ # are fine)"
                ),
            ));
        }
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(FieldError::new(field, "must be an absolute path"));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(FieldError::new(field, "must not contain '.' or '..'"));
        }
        Ok(Self(path.components().collect()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Parsed from a `&str`, so always UTF-8.
        self.0.to_str().unwrap_or_default()
    }

    /// Where a file a hook names is: relative paths are read against `base` (SRS's `cwd`)
    /// or, without one, the record dir. `None` when the path leaves the directory it is
    /// read against by `..`, which is never resolved: such a file is outside by definition.
    pub fn resolve(&self, base: Option<&str>, file: &str) -> Option<PathBuf> {
        let base = base.map_or(self.0.as_path(), Path::new);
        let joined = base.join(file);
        if !joined.is_absolute()
            || joined
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return None;
        }
        Some(joined.components().collect())
    }

    /// The path of `file` below the record dir, if it is below it (by its components).
    pub fn relative<'a>(&self, file: &'a Path) -> Option<&'a Path> {
        file.strip_prefix(&self.0)
            .ok()
            .filter(|rest| !rest.as_os_str().is_empty())
    }
}

/// The directories the operator lets sources record into (`HERALD_RECORD_ROOTS`, SPEC §7):
/// a source's `record_dir` must be one of them or below one. None by default, so that
/// reading files on the server is always the operator's explicit choice: a project's token
/// alone must never make Herald open `/etc/shadow` or another project's recordings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordRoots(Vec<RecordDir>);

/// How an operator allows a root: said wherever a source is refused for want of one.
pub const HOW_TO_ALLOW_ROOTS: &str = "the operator allows record directories with \
     HERALD_RECORD_ROOTS (absolute paths separated by ':') or record_roots in the config file";

impl RecordRoots {
    /// Reads `HERALD_RECORD_ROOTS`: absolute paths separated by `:`, as `PATH` is; empty
    /// entries are skipped.
    pub fn parse_list(field: &str, raw: &str) -> Result<Self, FieldError> {
        Self::from_paths(field, raw.split(':').filter(|p| !p.is_empty()))
    }

    /// Reads roots given one by one (`record_roots` in the config file).
    pub fn from_paths<'a>(
        field: &str,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, FieldError> {
        let mut roots = Vec::new();
        for raw in paths {
            let root = RecordDir::parse(field, raw)?;
            if root.path() == Path::new("/") {
                return Err(FieldError::new(
                    field,
                    "must not be / (that would let every project read every file)",
                ));
            }
            roots.push(root);
        }
        Ok(Self(roots))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &RecordDir> {
        self.0.iter()
    }

    /// Whether `dir` is one of the roots or below one (by its components).
    pub fn contain(&self, dir: &Path) -> bool {
        self.0.iter().any(|root| dir.starts_with(root.path()))
    }

    /// Refuses, naming `field`, a record dir that is not inside a root.
    pub fn check(&self, field: &str, dir: &RecordDir) -> Result<(), FieldError> {
        if self.0.is_empty() {
            return Err(FieldError::new(
                field,
                format!(
                    "cannot be used: this server allows no record directory yet; {HOW_TO_ALLOW_ROOTS}"
                ),
            ));
        }
        if self.contain(dir.path()) {
            return Ok(());
        }
        let allowed: Vec<&str> = self.0.iter().map(RecordDir::as_str).collect();
        Err(FieldError::new(
            field,
            format!(
                "must be inside a record directory the operator allows ({}); {HOW_TO_ALLOW_ROOTS}",
                allowed.join(", ")
            ),
        ))
    }
}

impl RecordDir {
    /// Whether one of the two directories is the other or below it: files of one could
    /// then be reported by the other's source.
    pub fn overlaps(&self, other: &RecordDir) -> bool {
        self.0.starts_with(&other.0) || other.0.starts_with(&self.0)
    }
}

/// The base of a recorded file's `download_url`: an absolute `http`/`https` URL. The
/// file's path below the record dir is appended, percent-encoded segment by segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadBase(String);

impl DownloadBase {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        // The same URL rules as a callback URL (a download address is fetched by others,
        // so a private one is not Herald's concern).
        CallbackUrl::parse(field, raw, true).map(|url| Self(url.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The download address of the file at `relative` below the record dir.
    pub fn url_of(&self, relative: &Path) -> String {
        let mut url = self.0.trim_end_matches('/').to_owned();
        for segment in relative.components() {
            let Component::Normal(name) = segment else {
                continue;
            };
            url.push('/');
            url.extend(percent_encoding::utf8_percent_encode(
                &name.to_string_lossy(),
                PATH_SEGMENT,
            ));
        }
        url
    }
}

/// What a URL path segment must escape: everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `max_pause` as the API shows it: whole seconds, `30s`.
pub fn format_max_pause(max_pause: Duration) -> String {
    format!("{}s", max_pause.as_secs())
}

/// Reads `max_pause` (`30s`, `2m`), whole seconds within [`MAX_PAUSE_RANGE`].
pub fn parse_max_pause(field: &str, raw: &str) -> Result<Duration, FieldError> {
    let pause = parse_duration(field, raw)?;
    let (least, most) = MAX_PAUSE_RANGE;
    if pause.subsec_nanos() != 0 || pause < least || pause > most {
        return Err(FieldError::new(
            field,
            "must be whole seconds from 1s to 1d (e.g. 30s, 5m)",
        ));
    }
    Ok(pause)
}

/// A recording source's settings, as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub engine: Engine,
    pub target: SourceTarget,
    pub record_dir: RecordDir,
    pub download_base: Option<DownloadBase>,
    pub max_pause: Duration,
    /// The format files are stored in; `None`: as the engine wrote them.
    pub record_format: Option<RecordFormat>,
    /// The bucket files are uploaded to; `None`: they stay on the media server's disk.
    pub storage: Option<StorageSpec>,
}

impl SourceSpec {
    /// Reads a create request's body (`engine`, `publish_domain` or `app_id`, `record_dir`,
    /// `download_base`, `max_pause`, `record_format`, `storage`), refusing a private storage
    /// endpoint.
    pub fn parse(body: &[u8]) -> Result<Self, FieldError> {
        Self::parse_allowing(body, false)
    }

    /// [`Self::parse`]; `allow_private` is the operator's `--allow-private-targets`, which
    /// the storage endpoint obeys as a callback URL does.
    pub fn parse_allowing(body: &[u8], allow_private: bool) -> Result<Self, FieldError> {
        let obj = JsonObject::parse(body)?;
        let spec = Self::from_fields(
            obj.required_str("engine")?,
            obj.optional_str("publish_domain")?,
            obj.optional_str("app_id")?,
            obj.required_str("record_dir")?,
            obj.optional_str("download_base")?.filter(|s| !s.is_empty()),
            obj.optional_str("max_pause")?,
        )?;
        let rtc = matches!(spec.target, SourceTarget::Rtc { .. });
        let record_format = obj
            .optional_str("record_format")?
            .filter(|f| !f.is_empty())
            .map(|f| RecordFormat::parse("record_format", f, rtc))
            .transpose()?;
        let storage = obj
            .optional_object("storage")?
            .map(|storage| StorageSpec::from_json(&storage, rtc, allow_private))
            .transpose()?;
        spec.with_storage(record_format, storage)
    }

    /// Adds what §7.1 adds to a source. A format other than the engine's needs a bucket:
    /// Herald converts only what it uploads, so that the media server's own files are
    /// never rewritten under it.
    pub fn with_storage(
        mut self,
        record_format: Option<RecordFormat>,
        storage: Option<StorageSpec>,
    ) -> Result<Self, FieldError> {
        if record_format.is_some() && storage.is_none() {
            return Err(FieldError::new(
                "record_format",
                "needs storage: Herald converts a recording only to upload it",
            ));
        }
        self.record_format = record_format;
        self.storage = storage;
        Ok(self)
    }

    /// Validates the fields of a source as the API and the CLI take them.
    pub fn from_fields(
        engine: &str,
        publish_domain: Option<&str>,
        app_id: Option<&str>,
        record_dir: &str,
        download_base: Option<&str>,
        max_pause: Option<&str>,
    ) -> Result<Self, FieldError> {
        let target = match (publish_domain, app_id) {
            (Some(domain), None) => SourceTarget::Live {
                publish_domain: PublishDomain::parse("publish_domain", domain)?,
            },
            (None, Some(app)) => SourceTarget::Rtc {
                app_id: AppId::parse(app).ok_or_else(|| {
                    FieldError::new("app_id", "must be an app id (24 lower-case hex characters)")
                })?,
            },
            _ => {
                return Err(FieldError::new(
                    "publish_domain",
                    "give exactly one of publish_domain (Live) and app_id (RTC)",
                ));
            }
        };
        Ok(Self {
            engine: Engine::parse("engine", engine)?,
            target,
            record_dir: RecordDir::parse("record_dir", record_dir)?,
            download_base: download_base
                .map(|b| DownloadBase::parse("download_base", b))
                .transpose()?,
            max_pause: max_pause
                .map(|p| parse_max_pause("max_pause", p))
                .transpose()?
                .unwrap_or(DEFAULT_MAX_PAUSE),
            record_format: None,
            storage: None,
        })
    }
}

/// A stored recording source.
#[derive(Debug, Clone)]
pub struct RecordingSource {
    /// 32 lower-case hex characters.
    pub id: String,
    pub project_id: ProjectId,
    pub spec: SourceSpec,
    /// The last path segment of the hook URL: whoever knows it can report recordings.
    pub secret: SecretString,
    pub created_at: OffsetDateTime,
}

impl RecordingSource {
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// `{public_url}/hooks/{engine}/{secret}`.
    pub fn hook_url(&self, public_url: &str) -> String {
        format!(
            "{}/hooks/{}/{}",
            public_url.trim_end_matches('/'),
            self.spec.engine.as_str(),
            self.secret.expose_secret()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_dirs_are_absolute_and_paths_below_them_are_decided_by_components() {
        assert_eq!(
            RecordDir::parse("d", "rec").unwrap_err().rule,
            "must be an absolute path"
        );
        assert!(RecordDir::parse("d", "/a/../b").is_err());
        let dir = RecordDir::parse("d", "/srv/rec/").unwrap();
        assert_eq!(dir.as_str(), "/srv/rec");
        let inside = dir.resolve(None, "live/a.flv").unwrap();
        assert_eq!(inside, Path::new("/srv/rec/live/a.flv"));
        assert_eq!(dir.relative(&inside), Some(Path::new("live/a.flv")));
        assert_eq!(dir.resolve(None, "../etc/passwd"), None);
        assert_eq!(dir.resolve(Some("/srv"), "rec/../../etc/passwd"), None);
        let outside = dir.resolve(Some("/usr/local/srs"), "/etc/passwd").unwrap();
        assert_eq!(dir.relative(&outside), None);
        assert_eq!(dir.relative(Path::new("/srv/recordings/a.flv")), None);
        assert_eq!(dir.relative(Path::new("/srv/rec")), None);
    }

    #[test]
    fn record_dirs_must_be_inside_a_root_and_never_overlap_another() {
        let dir = |raw: &str| RecordDir::parse("record_dir", raw).unwrap();
        let none = RecordRoots::default();
        let refused = none.check("record_dir", &dir("/srv/rec")).unwrap_err();
        assert_eq!(refused.field, "record_dir");
        assert!(
            refused.rule.contains("HERALD_RECORD_ROOTS"),
            "{}",
            refused.rule
        );
        let roots =
            RecordRoots::parse_list("HERALD_RECORD_ROOTS", "/srv/rec::/data/media/").unwrap();
        assert_eq!(roots.iter().count(), 2);
        for inside in ["/srv/rec", "/srv/rec/p1", "/data/media/a/b"] {
            assert!(roots.check("record_dir", &dir(inside)).is_ok(), "{inside}");
        }
        for outside in ["/", "/srv", "/srv/recordings", "/etc", "/data"] {
            let e = roots.check("record_dir", &dir(outside)).unwrap_err();
            assert!(
                e.rule.contains("/srv/rec, /data/media"),
                "{outside}: {}",
                e.rule
            );
        }
        assert!(RecordRoots::parse_list("R", "srv").is_err());
        assert!(RecordRoots::parse_list("R", "/srv/../etc").is_err());
        assert!(RecordRoots::parse_list("R", "/").is_err());
        assert!(dir("/srv/rec").overlaps(&dir("/srv/rec/p1")));
        assert!(dir("/srv/rec/p1").overlaps(&dir("/srv/rec")));
        assert!(dir("/srv/rec/p1").overlaps(&dir("/srv/rec/p1/")));
        assert!(!dir("/srv/rec/p1").overlaps(&dir("/srv/rec/p10")));
    }

    /// A project member could once hand a colleague a console snippet whose record dir held
    /// a newline, `;` or quotes, and so ran commands on their media server.
    #[test]
    fn record_dirs_hold_no_character_a_config_file_or_shell_reads() {
        for bad in [
            "/srv/rec\n}\nexec_push sh -c id;",
            "/srv/rec;",
            "/srv/\"rec",
            "/srv/'rec",
            "/srv/$HOME",
            "/srv/`id`",
            "/srv/rec\\x",
            "/srv/[app]",
            "/srv/%path",
            "/srv/a\u{7f}b",
            "/srv/a\u{85}b",
            "/srv/a\u{2028}b",
            "/srv/a\tb",
        ] {
            let e = RecordDir::parse("record_dir", bad).unwrap_err();
            assert_eq!(e.field, "record_dir", "{bad:?}");
        }
        for good in [
            "/srv/my recordings #1",
            "/srv/录像/live",
            "/srv/a+b@c,d=e:f~g",
        ] {
            assert_eq!(RecordDir::parse("record_dir", good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn download_urls_encode_each_segment() {
        let base = DownloadBase::parse("b", "https://cdn.example.com/vod/").unwrap();
        assert_eq!(
            base.url_of(Path::new("live/my stream#1/a+b.flv")),
            "https://cdn.example.com/vod/live/my%20stream%231/a%2Bb.flv"
        );
        assert!(DownloadBase::parse("b", "ftp://x").is_err());
    }

    /// HLS is produced for both flavours (SPEC §7.1); a format nobody offers is still a
    /// refusal naming the field, as is a format without a bucket.
    #[test]
    fn record_formats_are_the_flavours_own_and_need_storage() {
        let storage = r#""storage": {"endpoint": "https://obs.example.com", "region": "r",
            "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}"#;
        let live =
            r#""engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/r""#;
        let rtc =
            r#""engine": "mediamtx", "app_id": "0123456789abcdef01234567", "record_dir": "/r""#;
        for target in [live, rtc] {
            for raw in ["HLS", "hls"] {
                let body = format!(r#"{{{target}, "record_format": "{raw}", {storage}}}"#);
                let spec = SourceSpec::parse(body.as_bytes()).unwrap();
                assert_eq!(spec.record_format, Some(RecordFormat::Hls), "{body}");
            }
            for body in [
                format!(r#"{{{target}, "record_format": "AVI", {storage}}}"#),
                format!(r#"{{{target}, "record_format": "HLS"}}"#),
            ] {
                let refused = SourceSpec::parse(body.as_bytes()).unwrap_err();
                assert_eq!(refused.field, "record_format", "{body}");
            }
        }
        let flv_for_rtc = format!(r#"{{{rtc}, "record_format": "FLV", {storage}}}"#);
        assert_eq!(
            SourceSpec::parse(flv_for_rtc.as_bytes()).unwrap_err().field,
            "record_format"
        );
    }

    #[test]
    fn a_source_names_exactly_one_target_and_bounds_its_pause() {
        let spec = SourceSpec::parse(
            br#"{"engine": "srs", "publish_domain": "Push.Example.com", "record_dir": "/r"}"#,
        )
        .unwrap();
        assert_eq!(spec.max_pause, DEFAULT_MAX_PAUSE);
        assert_eq!(
            spec.target,
            SourceTarget::Live {
                publish_domain: PublishDomain::parse("p", "push.example.com").unwrap()
            }
        );
        for (body, field) in [
            (
                r#"{"engine": "obs", "publish_domain": "d", "record_dir": "/r"}"#,
                "engine",
            ),
            (r#"{"engine": "srs", "record_dir": "/r"}"#, "publish_domain"),
            (
                r#"{"engine": "srs", "publish_domain": "d", "app_id": "0123456789abcdef01234567", "record_dir": "/r"}"#,
                "publish_domain",
            ),
            (
                r#"{"engine": "srs", "app_id": "x", "record_dir": "/r"}"#,
                "app_id",
            ),
            (
                r#"{"engine": "srs", "publish_domain": "d", "record_dir": "r"}"#,
                "record_dir",
            ),
            (
                r#"{"engine": "srs", "publish_domain": "d", "record_dir": "/r", "max_pause": "0s"}"#,
                "max_pause",
            ),
            (
                r#"{"engine": "srs", "publish_domain": "d", "record_dir": "/r", "max_pause": "2d"}"#,
                "max_pause",
            ),
            (
                r#"{"engine": "srs", "publish_domain": "d", "record_dir": "/r", "download_base": "x"}"#,
                "download_base",
            ),
        ] {
            assert_eq!(
                SourceSpec::parse(body.as_bytes()).unwrap_err().field,
                field,
                "{body}"
            );
        }
        assert_eq!(
            format_max_pause(parse_max_pause("m", "2m").unwrap()),
            "120s"
        );
    }
}
