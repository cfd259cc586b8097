//! The upload step (SPEC §7.1): a finished recording converted to its source's format,
//! streamed to its bucket and confirmed there, before its `RECORD_FILE_COMPLETE` goes out.
//!
//! Nothing here is durable by itself: the step that calls it is in the store, leased, and
//! taken again after a crash. The object's key is a function of the step (the file's
//! start and names), so a second upload after a kill -9 writes the same object again and
//! the event, whose id is derived from the step, is accepted once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use herald_core::recording::{FileFacts, StoredObject};
use herald_core::source::RecordingSource;
use herald_core::storage::{KeyFacts, RecordFormat, StorageSpec};
use herald_core::target::{is_local_host_name, is_private_target};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use crate::bucket::{Bucket, storage_client};

/// Parts of a multipart upload, and what is read from disk at once: never the whole file
/// in memory.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload: memory is bounded by this times [`PART_BYTES`].
const PARTS_IN_FLIGHT: usize = 4;

/// Why an upload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store refused for good (credentials, a missing bucket, a private endpoint): the
    /// file is failed at once.
    #[error("bucket {bucket}: {code}: {message}")]
    Refused {
        bucket: String,
        code: String,
        message: String,
    },
    /// The store is down, answered 5xx or timed out: tried again until the deadline.
    #[error("bucket {bucket}: {code}: {message}")]
    Unavailable {
        bucket: String,
        code: String,
        message: String,
    },
    /// ffmpeg could not convert the file: failed at once (the same file fails again).
    #[error("converting to {format} failed: {message}")]
    Conversion {
        format: &'static str,
        message: String,
    },
}

/// What was stored: the OBS fields and the facts of the stored bytes.
pub struct Stored {
    pub object: StoredObject,
    pub size: u64,
    pub record_format: String,
}

/// Converts and uploads recordings.
#[derive(Clone)]
pub struct Uploader {
    ffmpeg: PathBuf,
    ffprobe: PathBuf,
    /// Where conversions are written: under the data dir, emptied at start.
    temp_dir: PathBuf,
    /// `--allow-private-targets`: a storage endpoint resolving to a private address is
    /// refused without it, as a callback URL is.
    allow_private: bool,
    /// A store given by a test instead of the source's bucket.
    fixed_store: Option<Arc<dyn ObjectStore>>,
    /// The pooled HTTP client of every bucket, its resolver guarded as `allow_private`
    /// says; built at the first upload, so that making an uploader cannot fail.
    http: Arc<OnceCell<reqwest::Client>>,
}

impl Uploader {
    pub fn new(
        ffmpeg: impl Into<PathBuf>,
        ffprobe: impl Into<PathBuf>,
        temp_dir: impl Into<PathBuf>,
        allow_private: bool,
    ) -> Self {
        Self {
            ffmpeg: ffmpeg.into(),
            ffprobe: ffprobe.into(),
            temp_dir: temp_dir.into(),
            allow_private,
            fixed_store: None,
            http: Arc::new(OnceCell::new()),
        }
    }

    /// Uploads to `store` whatever the source's bucket says (tests: an in-memory store).
    pub fn with_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.fixed_store = Some(store);
        self
    }

    /// Empties the conversions' directory: what is there was left by a process that died.
    pub async fn clean_temp_dir(&self) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(&self.temp_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        tokio::fs::create_dir_all(&self.temp_dir).await
    }

    /// Converts the file at `local` (read as `facts`) to the source's format if it asks
    /// for one, uploads it under its key and confirms its size in the bucket.
    pub async fn upload(
        &self,
        source: &RecordingSource,
        storage: &StorageSpec,
        stream: (&str, &str),
        local: &Path,
        facts: &FileFacts,
        file_start: OffsetDateTime,
    ) -> Result<Stored, UploadError> {
        let started = Instant::now();
        let wanted = source.spec.record_format;
        let (format_name, extension) = match wanted {
            Some(format) => (format.as_str().to_owned(), format.extension().to_owned()),
            None => (
                facts.record_format.clone(),
                local
                    .extension()
                    .map(|e| format!(".{}", e.to_string_lossy()))
                    .unwrap_or_default(),
            ),
        };
        let (app_id, publish_domain) = match &source.spec.target {
            herald_core::source::SourceTarget::Live { publish_domain } => {
                ("", publish_domain.as_str())
            }
            herald_core::source::SourceTarget::Rtc { app_id } => (app_id.as_str(), ""),
        };
        let key = storage.object_prefix.key_of(&KeyFacts {
            publish_domain,
            app: stream.0,
            stream: stream.1,
            app_id,
            record_format: &format_name,
            extension: &extension,
            file_start,
        });
        let converted = match wanted {
            Some(format) if format.as_str() != facts.record_format => {
                Some(self.convert(local, format).await?)
            }
            _ => None,
        };
        let upload_from = converted.as_ref().map_or(local, |c| c.path.as_path());
        let result = self.put(storage, &key, upload_from).await;
        drop(converted);
        let size = result?;
        metrics::counter!("herald_upload_bytes_total").increment(size);
        metrics::histogram!("herald_upload_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let download_url = match &source.spec.download_base {
            Some(base) => base.url_of(Path::new(&key)),
            None => storage.object_url(&key),
        };
        Ok(Stored {
            object: StoredObject {
                location: storage.endpoint.as_str().to_owned(),
                bucket: storage.bucket.clone(),
                key,
                download_url,
            },
            size,
            record_format: format_name,
        })
    }

    /// The bucket to upload to, after the endpoint's address check.
    async fn store_of(&self, storage: &StorageSpec) -> Result<Bucket, UploadError> {
        if let Some(store) = &self.fixed_store {
            return Ok(Bucket::fixed(Arc::clone(store)));
        }
        self.check_endpoint(storage)?;
        let http = self
            .http
            .get_or_try_init(|| async { storage_client(self.allow_private) })
            .await
            .map_err(|e| refused(storage, "InvalidConfiguration", &e.to_string()))?;
        Bucket::open(storage, http.clone())
            .map_err(|e| refused(storage, "InvalidConfiguration", &e.to_string()))
    }

    /// Refuses an endpoint that is a private address or a local name, unless allowed.
    /// A name is checked where it is resolved, by the client's guarded resolver, so that
    /// no second lookup (DNS rebinding) can answer otherwise; an IP literal never reaches
    /// a resolver, so it is checked here.
    fn check_endpoint(&self, storage: &StorageSpec) -> Result<(), UploadError> {
        if self.allow_private {
            return Ok(());
        }
        let Ok(url) = url::Url::parse(storage.endpoint.as_str()) else {
            return Err(refused(storage, "InvalidEndpoint", "not a URL"));
        };
        let private = match crate::client::literal_ip(&url) {
            Some(ip) => is_private_target(ip),
            None => is_local_host_name(url.host_str().unwrap_or_default()),
        };
        if private {
            return Err(refused(storage, "PrivateEndpoint", PRIVATE));
        }
        Ok(())
    }

    /// Streams `file` to `key` (one request when small, else a multipart upload with
    /// bounded parts in flight, aborted on failure) and confirms the stored size.
    async fn put(&self, storage: &StorageSpec, key: &str, file: &Path) -> Result<u64, UploadError> {
        let bucket = self.store_of(storage).await?;
        let store = &bucket.store;
        let path = ObjectPath::parse(key)
            .map_err(|e| refused(storage, "InvalidObjectKey", &e.to_string()))?;
        let mut local = tokio::fs::File::open(file)
            .await
            .map_err(|e| local_error(storage, &e))?;
        let size = local
            .metadata()
            .await
            .map_err(|e| local_error(storage, &e))?
            .len();
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            local
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| local_error(storage, &e))?;
            store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| classify(storage, &e))?;
        } else {
            // A process killed during an earlier upload of this key left its upload open.
            bucket.abort_open_uploads(&path).await;
            if let Err(e) = put_in_parts(store.as_ref(), &path, &mut local, storage).await {
                bucket.abort_open_uploads(&path).await;
                return Err(e);
            }
        }
        let head = store.head(&path).await.map_err(|e| classify(storage, &e))?;
        if head.size != size {
            return Err(unavailable(
                storage,
                "SizeMismatch",
                &format!("stored {} bytes of {size}", head.size),
            ));
        }
        Ok(size)
    }

    /// Remuxes `local` into `format` (`-c copy`); audio the container cannot hold is
    /// transcoded to AAC, never dropped.
    async fn convert(&self, local: &Path, format: RecordFormat) -> Result<TempFile, UploadError> {
        let fail = |message: String| UploadError::Conversion {
            format: format.as_str(),
            message,
        };
        let audio = self.audio_codec(local).await.map_err(fail)?;
        let audio_fits = match (format, audio.as_deref()) {
            (_, None) => true,
            (RecordFormat::Mp4, Some(codec)) => {
                matches!(
                    codec,
                    "aac" | "mp3" | "alac" | "ac3" | "eac3" | "opus" | "flac"
                )
            }
            (RecordFormat::Flv, Some(codec)) => matches!(codec, "aac" | "mp3"),
            (RecordFormat::Hls, Some(codec)) => matches!(codec, "aac" | "mp3" | "ac3"),
        };
        let out = TempFile {
            path: self.temp_dir.join(format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                format.extension()
            )),
        };
        tokio::fs::create_dir_all(&self.temp_dir)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut command = tokio::process::Command::new(&self.ffmpeg);
        command
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(local)
            .args(["-map", "0", "-c", "copy"]);
        if !audio_fits {
            command.args(["-c:a", "aac"]);
        }
        match format {
            RecordFormat::Mp4 => command.args(["-movflags", "+faststart", "-f", "mp4"]),
            RecordFormat::Flv => command.args(["-f", "flv"]),
            RecordFormat::Hls => {
                return Err(fail("HLS is not produced by this version of Herald".into()));
            }
        };
        let output = command
            .arg(&out.path)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| fail(format!("{} cannot be run: {e}", self.ffmpeg.display())))?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr);
            return Err(fail(text.chars().take(512).collect()));
        }
        Ok(out)
    }

    /// The first audio stream's codec, if the file has audio.
    async fn audio_codec(&self, local: &Path) -> Result<Option<String>, String> {
        let output = tokio::process::Command::new(&self.ffprobe)
            .args([
                "-v",
                "error",
                "-select_streams",
                "a:0",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
            ])
            .arg(local)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("{} cannot be run: {e}", self.ffprobe.display()))?;
        if !output.status.success() {
            return Err("ffprobe could not read the file's audio".into());
        }
        let codec = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok((!codec.is_empty()).then_some(codec))
    }
}

/// Streams `local` to `path` in parts, with [`PARTS_IN_FLIGHT`] parts in flight at most;
/// the upload is aborted when reading or sending fails.
async fn put_in_parts(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    local: &mut tokio::fs::File,
    storage: &StorageSpec,
) -> Result<(), UploadError> {
    let upload = store
        .put_multipart(path)
        .await
        .map_err(|e| classify(storage, &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = match local.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(local_error(storage, &e));
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = writer.abort().await;
            return Err(classify(storage, &e));
        }
        writer.write(&buf[..n]);
    }
    writer.finish().await.map_err(|e| classify(storage, &e))?;
    Ok(())
}

/// A conversion's output: removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const PRIVATE: &str = "the storage endpoint resolves to a loopback, private, link-local or \
     metadata address (the operator can allow it with --allow-private-targets)";

fn refused(storage: &StorageSpec, code: &str, message: &str) -> UploadError {
    UploadError::Refused {
        bucket: storage.bucket.clone(),
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn unavailable(storage: &StorageSpec, code: &str, message: &str) -> UploadError {
    UploadError::Unavailable {
        bucket: storage.bucket.clone(),
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn local_error(storage: &StorageSpec, e: &std::io::Error) -> UploadError {
    refused(storage, "LocalFileUnreadable", &e.to_string())
}

/// The store's error code (`<Code>AccessDenied</Code>` in its answer, when it gave one),
/// and whether trying again can help: credentials refused or a missing bucket cannot.
fn classify(storage: &StorageSpec, e: &object_store::Error) -> UploadError {
    // The guarded resolver refused the address the endpoint's name resolved to.
    if crate::client::refusal(e).is_some() {
        return refused(storage, "PrivateEndpoint", PRIVATE);
    }
    let text = e.to_string();
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_owned());
    let message: String = text.chars().take(512).collect();
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            refused(storage, code.as_deref().unwrap_or("AccessDenied"), &message)
        }
        object_store::Error::NotFound { .. } => {
            refused(storage, code.as_deref().unwrap_or("NoSuchBucket"), &message)
        }
        _ => unavailable(
            storage,
            code.as_deref().unwrap_or("ServiceUnavailable"),
            &message,
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use herald_core::source::SourceSpec;
    use object_store::memory::InMemory;
    use secrecy::SecretString;

    fn source(body: &str) -> RecordingSource {
        RecordingSource {
            id: RecordingSource::new_id(),
            project_id: herald_core::project::ProjectId::parse("project_id", "p1").unwrap(),
            spec: SourceSpec::parse_allowing(body.as_bytes(), true).unwrap(),
            secret: SecretString::from("hook-secret"),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    /// A file larger than one part goes up in parts, is confirmed by size, and reads back
    /// byte for byte under the key its template makes.
    #[tokio::test]
    async fn a_large_file_is_streamed_in_parts_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("cam-1.flv");
        let bytes: Vec<u8> = (0..(PART_BYTES * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&local, &bytes).unwrap();
        let memory = Arc::new(InMemory::new());
        let uploader = Uploader::new("ffmpeg", "ffprobe", dir.path().join("tmp"), false)
            .with_store(memory.clone());
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {"endpoint": "https://obs.cn-north-4.myhuaweicloud.com",
                "region": "cn-north-4", "bucket": "mybucket", "access_key_id": "AK",
                "secret_access_key": "SK"}}"#,
        );
        let storage = source.spec.storage.clone().unwrap();
        let facts = FileFacts {
            relative_path: "cam-1.flv".into(),
            size: bytes.len() as u64,
            duration: 2.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let start = OffsetDateTime::from_unix_timestamp(1_583_676_625).unwrap();
        let stored = uploader
            .upload(&source, &storage, ("live", "cam"), &local, &facts, start)
            .await
            .unwrap();
        assert_eq!(stored.size, bytes.len() as u64);
        assert_eq!(stored.record_format, "FLV");
        assert_eq!(
            stored.object.key,
            "Record/push.example.com/live/CONTINUOUS_RECORD/FLV/cam_2020-03-08-14-10-25/2020-03-08-14-10-25.flv"
        );
        assert_eq!(
            stored.object.download_url,
            format!(
                "https://mybucket.obs.cn-north-4.myhuaweicloud.com/{}",
                stored.object.key
            )
        );
        assert_eq!(stored.object.bucket, "mybucket");
        let got = memory
            .get(&ObjectPath::parse(&stored.object.key).unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got.as_ref() == bytes.as_slice(), "the object differs");
    }

    /// A private endpoint is refused at upload time too, naming the bucket.
    #[tokio::test]
    async fn a_private_endpoint_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("a.flv");
        std::fs::write(&local, b"x").unwrap();
        let uploader = Uploader::new("ffmpeg", "ffprobe", dir.path().join("tmp"), false);
        let source = source(
            r#"{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {"endpoint": "http://localhost:3900", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK",
                "path_style": true}}"#,
        );
        let storage = source.spec.storage.clone().unwrap();
        let facts = FileFacts {
            relative_path: "a.flv".into(),
            size: 1,
            duration: 1.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let error = uploader
            .upload(
                &source,
                &storage,
                ("live", "a"),
                &local,
                &facts,
                OffsetDateTime::now_utc(),
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(error, UploadError::Refused { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("bucket recs: PrivateEndpoint"),
            "{error}"
        );
    }

    /// Nellymoser audio (Flash's codec, which MP4 cannot hold) is transcoded to AAC when
    /// the file becomes MP4, never dropped; the video is copied as it is.
    #[tokio::test]
    async fn nellymoser_audio_becomes_aac_in_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("nelly.flv");
        let made = tokio::process::Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=320x240:rate=10",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=22050",
                "-t",
                "2",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "nellymoser",
                "-ar",
                "22050",
            ])
            .arg(&local)
            .status()
            .await
            .expect("ffmpeg runs (Debian's ffmpeg)");
        assert!(made.success());
        let memory = Arc::new(InMemory::new());
        let uploader = Uploader::new("ffmpeg", "ffprobe", dir.path().join("tmp"), false)
            .with_store(memory.clone());
        assert_eq!(
            uploader.audio_codec(&local).await.unwrap().as_deref(),
            Some("nellymoser")
        );
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "record_format": "MP4",
                "storage": {"endpoint": "https://obs.example.com", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}}"#,
        );
        let storage = source.spec.storage.clone().unwrap();
        let facts = FileFacts {
            relative_path: "nelly.flv".into(),
            size: std::fs::metadata(&local).unwrap().len(),
            duration: 2.0,
            width: Some(320),
            height: Some(240),
            record_format: "FLV".into(),
            stored: None,
        };
        let stored = uploader
            .upload(
                &source,
                &storage,
                ("live", "nelly"),
                &local,
                &facts,
                OffsetDateTime::now_utc(),
            )
            .await
            .unwrap();
        assert_eq!(stored.record_format, "MP4");
        assert!(stored.object.key.ends_with(".mp4"), "{}", stored.object.key);
        let bytes = memory
            .get(&ObjectPath::parse(&stored.object.key).unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, stored.size);
        let copy = dir.path().join("back.mp4");
        std::fs::write(&copy, &bytes).unwrap();
        assert_eq!(
            uploader.audio_codec(&copy).await.unwrap().as_deref(),
            Some("aac")
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "the conversion's output is removed");
    }
}
