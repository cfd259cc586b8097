//! Where a source keeps its recordings (SPEC §7.1): the format they are stored in and the
//! S3-compatible bucket (Huawei OBS, AWS S3, MinIO, Garage, Ceph RGW) they are uploaded to,
//! with the template of their object keys.

use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::callback_url::CallbackUrl;
use crate::field::{FieldError, JsonObject, check_name, check_text};

/// The container a source's recordings are stored in, when not the engine's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFormat {
    Flv,
    Mp4,
    Hls,
}

impl RecordFormat {
    pub const ALL: [Self; 3] = [Self::Flv, Self::Mp4, Self::Hls];
    /// What an RTC app records to in Huawei's service: no FLV.
    pub const RTC: [Self; 2] = [Self::Mp4, Self::Hls];

    /// The name in the API, the CLI, `{record_format}` and events' `record_format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flv => "FLV",
            Self::Mp4 => "MP4",
            Self::Hls => "HLS",
        }
    }

    /// What an object key ends with (HLS: the playlist's).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Flv => ".flv",
            Self::Mp4 => ".mp4",
            Self::Hls => ".m3u8",
        }
    }

    /// Reads a format a flavour offers: `rtc` leaves FLV out.
    pub fn parse(field: &str, raw: &str, rtc: bool) -> Result<Self, FieldError> {
        let offered: &[Self] = if rtc { &Self::RTC } else { &Self::ALL };
        offered
            .iter()
            .copied()
            .find(|f| f.as_str().eq_ignore_ascii_case(raw))
            .ok_or_else(|| {
                let names: Vec<&str> = offered.iter().map(|f| f.as_str()).collect();
                let flavour = if rtc {
                    "an RTC app source"
                } else {
                    "a Live source"
                };
                FieldError::new(field, format!("must be {} for {flavour}", names.join(", ")))
            })
    }
}

/// The placeholders an object key template may hold, as in Huawei's recording templates.
pub const PLACEHOLDERS: [&str; 8] = [
    "publish_domain",
    "app",
    "stream",
    "app_id",
    "record_type",
    "record_format",
    "file_start_time",
    "file_start_time_unix",
];

/// `object_prefix` when a Live source gives none.
pub const DEFAULT_LIVE_PREFIX: &str = "Record/{publish_domain}/{app}/{record_type}/{record_format}/{stream}_{file_start_time}/{file_start_time}";
/// `object_prefix` when an RTC source gives none.
pub const DEFAULT_RTC_PREFIX: &str =
    "{app_id}/{record_format}/{stream}_{file_start_time}/{stream}_{file_start_time}";
/// The longest template and the longest key S3 takes.
pub const MAX_KEY_BYTES: usize = 1024;

/// An object key template: literal text and `{placeholder}`s from [`PLACEHOLDERS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPrefix(String);

/// What an object key is made of for one file.
pub struct KeyFacts<'a> {
    pub publish_domain: &'a str,
    pub app: &'a str,
    pub stream: &'a str,
    pub app_id: &'a str,
    /// `{record_format}`: `FLV`, `MP4`, `HLS`, or the engine's own (`TS`).
    pub record_format: &'a str,
    /// What the key ends with: `.flv`, `.mp4`, `.m3u8`, `.ts`.
    pub extension: &'a str,
    pub file_start: OffsetDateTime,
}

impl ObjectPrefix {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        check_name(field, raw, MAX_KEY_BYTES)?;
        if raw.starts_with('/') {
            return Err(FieldError::new(
                field,
                "must not start with '/' (object keys are relative to the bucket)",
            ));
        }
        if raw.split('/').any(|segment| segment == "..") {
            return Err(FieldError::new(field, "must not contain a '..' segment"));
        }
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(FieldError::new(field, "has a '}' without its '{'"));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(FieldError::new(field, "has a '{' without its '}'"));
            };
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "has an unknown placeholder {{{name}}}; known: {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                ));
            }
            rest = &after[close + 1..];
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The object key of a file: the template filled in, plus the format's extension.
    pub fn key_of(&self, facts: &KeyFacts<'_>) -> String {
        let start = facts.file_start;
        let stamp = format!(
            "{:04}-{:02}-{:02}-{:02}-{:02}-{:02}",
            start.year(),
            u8::from(start.month()),
            start.day(),
            start.hour(),
            start.minute(),
            start.second()
        );
        let mut key = self.0.clone();
        // The longer name first: `{file_start_time}` is a prefix of the other's.
        for (name, value) in [
            ("file_start_time_unix", start.unix_timestamp().to_string()),
            ("file_start_time", stamp),
            ("publish_domain", facts.publish_domain.to_owned()),
            ("app_id", facts.app_id.to_owned()),
            ("app", facts.app.to_owned()),
            ("stream", facts.stream.to_owned()),
            ("record_type", "CONTINUOUS_RECORD".to_owned()),
            ("record_format", facts.record_format.to_owned()),
        ] {
            key = key.replace(&format!("{{{name}}}"), &value);
        }
        key.push_str(facts.extension);
        key
    }
}

/// The name of HLS segments without their index (SPEC §7.1): segment `n` is this plus
/// `{n}.ts`, so `{file_start_time_unix}_{file_end_time_unix}_{n}.ts`, the end being the
/// start plus the recording's duration, rounded.
pub fn hls_segment_stem(file_start: OffsetDateTime, duration_seconds: f64) -> String {
    let start = file_start.unix_timestamp();
    // `as` saturates, and a NaN is 0: a broken duration cannot wrap the end around.
    let end = start.saturating_add(duration_seconds.round() as i64);
    format!("{start}_{end}_")
}

/// The key of `name` in the folder of the object at `key`: an HLS segment beside its
/// playlist, where the playlist's bare-name references resolve in the bucket.
pub fn key_beside(key: &str, name: &str) -> String {
    match key.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/{name}"),
        None => name.to_owned(),
    }
}

/// A bucket name as S3 and OBS take it: 3 to 63 lower-case letters, digits, `.` and `-`,
/// starting and ending with a letter or digit.
fn check_bucket(field: &str, raw: &str) -> Result<(), FieldError> {
    let ok = (3..=63).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && raw
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be 3 to 63 lower-case letters, digits, '.' and '-', starting and ending \
             with a letter or digit",
        ))
    }
}

/// The longest region, access key id and secret accepted.
pub const MAX_CREDENTIAL_BYTES: usize = 256;

/// A source's bucket and how to reach it.
#[derive(Debug, Clone)]
pub struct StorageSpec {
    /// The S3 API's URL (`https://obs.cn-north-4.myhuaweicloud.com`); also the events'
    /// `obs_location`. An outbound target, checked like a callback URL.
    pub endpoint: CallbackUrl,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// Sealed at rest and never returned.
    pub secret_access_key: SecretString,
    /// `https://{endpoint}/{bucket}/key` (MinIO, Garage) rather than virtual-hosted
    /// `https://{bucket}.{endpoint host}/key` (OBS, S3).
    pub path_style: bool,
    pub object_prefix: ObjectPrefix,
    /// Whether the local file is deleted once its object is confirmed and its event durable.
    pub delete_local: bool,
}

impl PartialEq for StorageSpec {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        self.endpoint == other.endpoint
            && self.region == other.region
            && self.bucket == other.bucket
            && self.access_key_id == other.access_key_id
            && self.secret_access_key.expose_secret() == other.secret_access_key.expose_secret()
            && self.path_style == other.path_style
            && self.object_prefix == other.object_prefix
            && self.delete_local == other.delete_local
    }
}

impl Eq for StorageSpec {}

/// A storage object's fields as typed, before validation (the API's JSON and the CLI's
/// flags both become this).
#[derive(Debug, Default)]
pub struct StorageFields<'a> {
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
    pub bucket: Option<&'a str>,
    pub access_key_id: Option<&'a str>,
    pub secret_access_key: Option<&'a str>,
    pub path_style: bool,
    pub object_prefix: Option<&'a str>,
    pub delete_local: bool,
}

impl StorageSpec {
    /// Reads the API's `storage` object; each refusal names `storage.{field}`.
    pub fn from_json(obj: &JsonObject, rtc: bool, allow_private: bool) -> Result<Self, FieldError> {
        let named = |e: FieldError| FieldError::new(format!("storage.{}", e.field), e.rule);
        let fields = StorageFields {
            endpoint: obj.optional_str("endpoint").map_err(named)?,
            region: obj.optional_str("region").map_err(named)?,
            bucket: obj.optional_str("bucket").map_err(named)?,
            access_key_id: obj.optional_str("access_key_id").map_err(named)?,
            secret_access_key: obj.optional_str("secret_access_key").map_err(named)?,
            path_style: obj
                .optional_bool("path_style")
                .map_err(named)?
                .unwrap_or(false),
            object_prefix: obj
                .optional_str("object_prefix")
                .map_err(named)?
                .filter(|p| !p.is_empty()),
            delete_local: obj
                .optional_bool("delete_local")
                .map_err(named)?
                .unwrap_or(false),
        };
        Self::from_fields(&fields, "storage.", rtc, allow_private)
    }

    /// Validates typed fields; `prefix` is put before each field's name in a refusal
    /// (`storage.` in the API).
    pub fn from_fields(
        fields: &StorageFields<'_>,
        prefix: &str,
        rtc: bool,
        allow_private: bool,
    ) -> Result<Self, FieldError> {
        let name = |field: &str| format!("{prefix}{field}");
        let need = |field: &str, value: Option<&str>| -> Result<String, FieldError> {
            match value {
                None | Some("") => Err(FieldError::new(name(field), "is required with storage")),
                Some(v) => {
                    check_text(&name(field), v, MAX_CREDENTIAL_BYTES)?;
                    Ok(v.to_owned())
                }
            }
        };
        let endpoint_raw = fields
            .endpoint
            .filter(|e| !e.is_empty())
            .ok_or_else(|| FieldError::new(name("endpoint"), "is required with storage"))?;
        let endpoint = CallbackUrl::parse(&name("endpoint"), endpoint_raw, allow_private)?;
        if let Some(path) = endpoint_raw
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, path)| path)
            && !path.is_empty()
        {
            return Err(FieldError::new(
                name("endpoint"),
                "must be the S3 API's address alone, without a path (the bucket is `bucket`)",
            ));
        }
        let bucket = need("bucket", fields.bucket)?;
        check_bucket(&name("bucket"), &bucket)?;
        if !fields.path_style && bucket.contains('.') && endpoint_raw.starts_with("https") {
            // A dotted bucket breaks TLS on virtual-hosted addresses (the wildcard
            // certificate covers one label).
            return Err(FieldError::new(
                name("bucket"),
                "must not contain '.' with virtual-hosted addressing over https; set path_style",
            ));
        }
        let default_prefix = if rtc {
            DEFAULT_RTC_PREFIX
        } else {
            DEFAULT_LIVE_PREFIX
        };
        Ok(Self {
            endpoint,
            region: need("region", fields.region)?,
            bucket,
            access_key_id: need("access_key_id", fields.access_key_id)?,
            secret_access_key: SecretString::from(need(
                "secret_access_key",
                fields.secret_access_key,
            )?),
            path_style: fields.path_style,
            object_prefix: ObjectPrefix::parse(
                &name("object_prefix"),
                fields.object_prefix.unwrap_or(default_prefix),
            )?,
            delete_local: fields.delete_local,
        })
    }

    /// The URL the bucket's objects are below: `{endpoint}/{bucket}` (path style) or
    /// `{scheme}://{bucket}.{endpoint host}` (virtual-hosted).
    pub fn bucket_url(&self) -> String {
        let endpoint = self.endpoint.as_str().trim_end_matches('/');
        if self.path_style {
            return format!("{endpoint}/{}", self.bucket);
        }
        match endpoint.split_once("://") {
            Some((scheme, host)) => format!("{scheme}://{}.{host}", self.bucket),
            None => format!("{endpoint}/{}", self.bucket),
        }
    }

    /// The object's URL: `download_url` when the source has no `download_base`.
    pub fn object_url(&self, key: &str) -> String {
        let key: String = key
            .split('/')
            .map(|s| percent_encoding::utf8_percent_encode(s, KEY_SEGMENT).to_string())
            .collect::<Vec<_>>()
            .join("/");
        format!("{}/{key}", self.bucket_url())
    }
}

/// What a key's path segment, or a query value, must escape in a URL: all but RFC 3986's
/// unreserved.
pub const KEY_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fields<'a>() -> StorageFields<'a> {
        StorageFields {
            endpoint: Some("https://obs.cn-north-4.myhuaweicloud.com"),
            region: Some("cn-north-4"),
            bucket: Some("mybucket"),
            access_key_id: Some("AK"),
            secret_access_key: Some("SK"),
            ..StorageFields::default()
        }
    }

    #[test]
    fn formats_are_the_flavours_own() {
        assert_eq!(
            RecordFormat::parse("f", "mp4", true).unwrap(),
            RecordFormat::Mp4
        );
        let refused = RecordFormat::parse("record_format", "FLV", true).unwrap_err();
        assert_eq!(refused.field, "record_format");
        assert!(refused.rule.contains("MP4, HLS"), "{}", refused.rule);
        assert_eq!(
            RecordFormat::parse("f", "FLV", false).unwrap(),
            RecordFormat::Flv
        );
        assert!(RecordFormat::parse("f", "AVI", false).is_err());
    }

    #[test]
    fn the_default_templates_make_huaweis_keys() {
        let spec = StorageSpec::from_fields(&fields(), "storage.", false, false).unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_583_676_625).unwrap();
        let key = spec.object_prefix.key_of(&KeyFacts {
            publish_domain: "push.example.com",
            app: "live",
            stream: "cam",
            app_id: "",
            record_format: "MP4",
            extension: ".mp4",
            file_start: start,
        });
        assert_eq!(
            key,
            "Record/push.example.com/live/CONTINUOUS_RECORD/MP4/cam_2020-03-08-14-10-25/2020-03-08-14-10-25.mp4"
        );
        let rtc = StorageSpec::from_fields(&fields(), "storage.", true, false).unwrap();
        let key = rtc.object_prefix.key_of(&KeyFacts {
            publish_domain: "",
            app: "room",
            stream: "u1",
            app_id: "0123456789abcdef01234567",
            record_format: "HLS",
            extension: ".m3u8",
            file_start: start,
        });
        assert_eq!(
            key,
            "0123456789abcdef01234567/HLS/u1_2020-03-08-14-10-25/u1_2020-03-08-14-10-25.m3u8"
        );
        let custom = ObjectPrefix::parse("p", "rec/{stream}-{file_start_time_unix}").unwrap();
        assert!(
            custom
                .key_of(&KeyFacts {
                    publish_domain: "",
                    app: "",
                    stream: "s",
                    app_id: "",
                    record_format: "FLV",
                    extension: ".flv",
                    file_start: start,
                })
                .ends_with("rec/s-1583676625.flv")
        );
    }

    /// Huawei's HLS layout: segments beside the playlist, named by the file's start and
    /// end (start plus the duration, rounded).
    #[test]
    fn hls_segments_are_named_by_the_files_times_beside_the_playlist() {
        let start = OffsetDateTime::from_unix_timestamp(1_583_676_625).unwrap();
        assert_eq!(hls_segment_stem(start, 65.5), "1583676625_1583676691_");
        assert_eq!(hls_segment_stem(start, 2.4), "1583676625_1583676627_");
        assert_eq!(
            key_beside("app/HLS/u1_t/u1_t.m3u8", "1_3_0.ts"),
            "app/HLS/u1_t/1_3_0.ts"
        );
        assert_eq!(key_beside("top.m3u8", "1_3_0.ts"), "1_3_0.ts");
    }

    #[test]
    fn templates_name_only_known_placeholders() {
        let refused = ObjectPrefix::parse("storage.object_prefix", "a/{steam}").unwrap_err();
        assert_eq!(refused.field, "storage.object_prefix");
        assert!(refused.rule.contains("{steam}"), "{}", refused.rule);
        assert!(ObjectPrefix::parse("p", "a/{stream").is_err());
        assert!(ObjectPrefix::parse("p", "a}b").is_err());
        assert!(ObjectPrefix::parse("p", "/abs").is_err());
        assert!(ObjectPrefix::parse("p", "a/../b").is_err());
    }

    #[test]
    fn every_refusal_names_its_field() {
        let mut f = fields();
        f.endpoint = Some("http://127.0.0.1:3900");
        let refused = StorageSpec::from_fields(&f, "storage.", false, false).unwrap_err();
        assert_eq!(refused.field, "storage.endpoint");
        assert!(StorageSpec::from_fields(&f, "storage.", false, true).is_ok());
        f.endpoint = Some("https://s3.example.com/bucket");
        let refused = StorageSpec::from_fields(&f, "storage.", false, false).unwrap_err();
        assert_eq!(refused.field, "storage.endpoint");
        let mut f = fields();
        f.bucket = Some("Bad_Bucket");
        let refused = StorageSpec::from_fields(&f, "--", false, false).unwrap_err();
        assert_eq!(refused.field, "--bucket");
        let mut f = fields();
        f.secret_access_key = None;
        let refused = StorageSpec::from_fields(&f, "storage.", false, false).unwrap_err();
        assert_eq!(refused.field, "storage.secret_access_key");
    }

    #[test]
    fn object_urls_follow_the_addressing_style() {
        let mut spec = StorageSpec::from_fields(&fields(), "storage.", false, false).unwrap();
        assert_eq!(
            spec.object_url("a b/c.mp4"),
            "https://mybucket.obs.cn-north-4.myhuaweicloud.com/a%20b/c.mp4"
        );
        spec.path_style = true;
        assert_eq!(
            spec.object_url("a/c.mp4"),
            "https://obs.cn-north-4.myhuaweicloud.com/mybucket/a/c.mp4"
        );
    }
}
