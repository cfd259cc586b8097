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
use herald_core::storage::{KeyFacts, RecordFormat, StorageSpec, hls_segment_stem, key_beside};
use herald_core::target::{is_local_host_name, is_private_target};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use crate::bucket::{Bucket, storage_client};
use crate::probe::{OpenedRecording, Prober, probe_deadline};

/// Parts of a multipart upload, and what is read from disk at once: never the whole file
/// in memory.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload: memory is bounded by this times [`PART_BYTES`].
const PARTS_IN_FLIGHT: usize = 4;
/// The target length of an HLS segment, as ffmpeg's and most services' default; a segment
/// ends at the first keyframe past it.
const HLS_SEGMENT_SECONDS: &str = "10";

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
    /// Opens a recording with every check the probe step made (the file may have been
    /// swapped since), and its program reads the audio codec.
    prober: Prober,
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
        prober: Prober,
        ffmpeg: impl Into<PathBuf>,
        temp_dir: impl Into<PathBuf>,
        allow_private: bool,
    ) -> Self {
        Self {
            ffmpeg: ffmpeg.into(),
            prober,
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

    /// Converts the file `facts` describe (below the source's record dir) to the source's
    /// format if it asks for one, uploads it under its key and confirms its size in the
    /// bucket. The file is opened with the probe step's checks again, and only that open
    /// file is read.
    pub async fn upload(
        &self,
        source: &RecordingSource,
        storage: &StorageSpec,
        stream: (&str, &str),
        facts: &FileFacts,
        file_start: OffsetDateTime,
    ) -> Result<Stored, UploadError> {
        let started = Instant::now();
        let opened = self
            .prober
            .open(
                &source.spec.record_dir,
                &facts.relative_path.to_string_lossy(),
            )
            .await
            .map_err(|why| refused(storage, "LocalFileUnreadable", &why))?;
        let wanted = source.spec.record_format;
        let (format_name, extension) = match wanted {
            Some(format) => (format.as_str().to_owned(), format.extension().to_owned()),
            None => (
                facts.record_format.clone(),
                opened
                    .relative
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
            // A playlist cannot be uploaded as one object: HLS is always made here.
            Some(format)
                if format == RecordFormat::Hls || format.as_str() != facts.record_format =>
            {
                let segment_stem = hls_segment_stem(file_start, facts.duration);
                Some(self.convert(&opened, format, &segment_stem).await?)
            }
            _ => None,
        };
        let store = self.store_of(storage).await?;
        let mut size = 0;
        // Segments first, the playlist last: a playlist in the bucket means a whole
        // recording. `converted` removes its directory when dropped, on error too.
        if let Some(converted) = &converted {
            for segment in &converted.segments {
                let from = open_output(storage, &converted.dir.path.join(segment)).await?;
                size += self
                    .put(&store, storage, &key_beside(&key, segment), from)
                    .await?;
            }
        }
        let main = match &converted {
            Some(converted) => open_output(storage, &converted.main).await?,
            None => tokio::fs::File::from_std(opened.file),
        };
        size += self.put(&store, storage, &key, main).await?;
        drop(converted);
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

    /// Streams the open file `local` to `key` (one request when small, else a multipart
    /// upload with bounded parts in flight, aborted on failure) and confirms the stored
    /// size.
    async fn put(
        &self,
        bucket: &Bucket,
        storage: &StorageSpec,
        key: &str,
        mut local: tokio::fs::File,
    ) -> Result<u64, UploadError> {
        let store = &bucket.store;
        let path = ObjectPath::parse(key)
            .map_err(|e| refused(storage, "InvalidObjectKey", &e.to_string()))?;
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

    /// Remuxes `local` into `format` (`-c copy`) in a directory of its own; audio the
    /// container cannot hold is transcoded to AAC, never dropped. HLS is a VOD playlist
    /// with its segments beside it, named `{segment_stem}{n}.ts` from 0.
    async fn convert(
        &self,
        opened: &OpenedRecording,
        format: RecordFormat,
        segment_stem: &str,
    ) -> Result<Converted, UploadError> {
        let fail = |message: String| UploadError::Conversion {
            format: format.as_str(),
            message,
        };
        let audio = self.audio_codec(opened).await.map_err(fail)?;
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
        let dir = TempDir {
            path: self
                .temp_dir
                .join(uuid::Uuid::new_v4().simple().to_string()),
        };
        tokio::fs::create_dir_all(&dir.path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // ffmpeg runs in the directory and names what it writes there relatively: a `%`
        // in the data dir's path would otherwise be read as part of the segments' pattern.
        // So paths given relative to Herald's own directory are made absolute (a bare
        // program name is still looked up on PATH).
        let absolute = |path: &Path| std::path::absolute(path).map_err(|e| fail(e.to_string()));
        let program = if self.ffmpeg.components().count() > 1 {
            absolute(&self.ffmpeg)?
        } else {
            self.ffmpeg.clone()
        };
        let main = format!("recording{}", format.extension());
        let mut command = tokio::process::Command::new(program);
        // The checked open file is ffmpeg's standard input, read as `file:/dev/stdin` (a
        // fresh, seekable open of that very file) by the container's own demuxer and no
        // protocol but `file`: no playlist or concat list swapped in can name other files.
        command
            .current_dir(&dir.path)
            .args([
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-protocol_whitelist",
                "file",
            ])
            .args(["-f", opened.container.demuxer(), "-i", "file:/dev/stdin"])
            .args(["-map", "0", "-c", "copy"])
            .stdin(input_of(opened).map_err(|e| fail(e.to_string()))?);
        if !audio_fits {
            command.args(["-c:a", "aac"]);
        }
        match format {
            RecordFormat::Mp4 => command.args(["-movflags", "+faststart", "-f", "mp4"]),
            RecordFormat::Flv => command.args(["-f", "flv"]),
            RecordFormat::Hls => command
                .args([
                    "-f",
                    "hls",
                    "-hls_playlist_type",
                    "vod",
                    "-hls_list_size",
                    "0",
                ])
                .args(["-hls_time", HLS_SEGMENT_SECONDS, "-start_number", "0"])
                .arg("-hls_segment_filename")
                .arg(format!("{segment_stem}%d.ts")),
        };
        // A remux reads and writes each packet once; a file that keeps ffmpeg busy longer
        // than twice a probe's allowance is not converted (and ffmpeg is killed).
        let deadline = 2 * probe_deadline(opened.size);
        let output = match tokio::time::timeout(
            deadline,
            command.arg(&main).kill_on_drop(true).output(),
        )
        .await
        {
            Ok(output) => {
                output.map_err(|e| fail(format!("{} cannot be run: {e}", self.ffmpeg.display())))?
            }
            Err(_) => {
                return Err(fail(format!(
                    "ffmpeg did not finish within {} s (the time allowed for a file of its size)",
                    deadline.as_secs()
                )));
            }
        };
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr);
            return Err(fail(text.chars().take(512).collect()));
        }
        let main = dir.path.join(main);
        let segments = match format {
            RecordFormat::Hls => {
                let playlist = tokio::fs::read_to_string(&main)
                    .await
                    .map_err(|e| fail(format!("the playlist: {e}")))?;
                segments_of(&playlist).map_err(fail)?
            }
            RecordFormat::Mp4 | RecordFormat::Flv => Vec::new(),
        };
        Ok(Converted {
            dir,
            main,
            segments,
        })
    }

    /// The first audio stream's codec, if the file has audio: read, as the probe step
    /// reads, from the checked open file by its own demuxer.
    async fn audio_codec(&self, opened: &OpenedRecording) -> Result<Option<String>, String> {
        let program = self.prober.program();
        let command = tokio::process::Command::new(program)
            .args(["-v", "error", "-protocol_whitelist", "file"])
            .args(["-f", opened.container.demuxer()])
            .args([
                "-select_streams",
                "a:0",
                "-show_entries",
                "stream=codec_name",
            ])
            .args(["-of", "csv=p=0", "file:/dev/stdin"])
            .stdin(input_of(opened).map_err(|e| e.to_string())?)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(probe_deadline(opened.size), command)
            .await
            .map_err(|_| "ffprobe did not read the file's audio in time".to_owned())?
            .map_err(|e| format!("{} cannot be run: {e}", program.display()))?;
        if !output.status.success() {
            return Err("ffprobe could not read the file's audio".into());
        }
        // MPEG-TS lists its streams again under its program: the first line is the stream.
        let text = String::from_utf8_lossy(&output.stdout);
        let codec = text.lines().map(str::trim).find(|l| !l.is_empty());
        Ok(codec.map(str::to_owned))
    }
}

/// The open recording again, as a child's standard input: the same open file, whose
/// `/dev/stdin` the child opens afresh (its own offset, seekable).
fn input_of(opened: &OpenedRecording) -> std::io::Result<std::process::Stdio> {
    Ok(std::process::Stdio::from(opened.file.try_clone()?))
}

/// Opens what a conversion wrote, in Herald's own temporary directory.
async fn open_output(storage: &StorageSpec, path: &Path) -> Result<tokio::fs::File, UploadError> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| local_error(storage, &e))
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

/// What a conversion wrote.
struct Converted {
    dir: TempDir,
    /// What goes under the object key: the converted file, or the HLS playlist.
    main: PathBuf,
    /// HLS: the segments in the playlist's order, bare names of files in `dir`.
    segments: Vec<String>,
}

/// A conversion's own directory under the temp dir: removed with what is in it when
/// dropped, whether the upload succeeded or not.
struct TempDir {
    path: PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The segments a VOD playlist lists. Each must be a bare file name, so that the
/// playlist's references resolve beside it in the bucket as they do on disk.
fn segments_of(playlist: &str) -> Result<Vec<String>, String> {
    if !playlist.lines().any(|line| line.trim() == "#EXT-X-ENDLIST") {
        return Err("the playlist has no #EXT-X-ENDLIST".into());
    }
    let segments: Vec<String> = playlist
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if let Some(bad) = segments
        .iter()
        .find(|name| name.contains(['/', '\\']) || name.starts_with('.'))
    {
        return Err(format!("the playlist names {bad:?}, not a file beside it"));
    }
    if segments.is_empty() {
        return Err("the playlist lists no segment".into());
    }
    Ok(segments)
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
    use futures_util::TryStreamExt;
    use herald_core::source::{RecordRoots, SourceSpec};

    use crate::probe::Container;
    use object_store::memory::InMemory;
    use secrecy::SecretString;

    /// A source whose `"record_dir": "/rec"` is `record_dir`.
    fn source(body: &str, record_dir: &Path) -> RecordingSource {
        let body = body.replace("\"/rec\"", &format!("{:?}", record_dir.to_str().unwrap()));
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
        let (memory, uploader) = in_memory(dir.path());
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {"endpoint": "https://obs.cn-north-4.myhuaweicloud.com",
                "region": "cn-north-4", "bucket": "mybucket", "access_key_id": "AK",
                "secret_access_key": "SK"}}"#,
            dir.path(),
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
            .upload(&source, &storage, ("live", "cam"), &facts, start)
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
        let uploader = Uploader::new(
            prober_for(dir.path()),
            "ffmpeg",
            dir.path().join("tmp"),
            false,
        );
        let source = source(
            r#"{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {"endpoint": "http://localhost:3900", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK",
                "path_style": true}}"#,
            dir.path(),
        );
        let facts = FileFacts {
            relative_path: "a.flv".into(),
            size: 1,
            duration: 1.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let error = upload_error(&uploader, &source, ("live", "a"), &facts).await;
        assert!(matches!(error, UploadError::Refused { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("bucket recs: PrivateEndpoint"),
            "{error}"
        );
    }

    /// A prober whose only record root is `dir`.
    fn prober_for(dir: &Path) -> Prober {
        let roots = RecordRoots::from_paths("roots", [dir.to_str().unwrap()]).unwrap();
        Prober::new("ffprobe", roots)
    }

    /// An uploader over the record root `dir`, with its temp dir under it, storing in
    /// memory.
    fn in_memory(dir: &Path) -> (Arc<InMemory>, Uploader) {
        let memory = Arc::new(InMemory::new());
        let uploader = Uploader::new(prober_for(dir), "ffmpeg", dir.join("tmp"), false)
            .with_store(memory.clone());
        (memory, uploader)
    }

    /// The audio codec of the file at `path`, read as the upload reads it.
    async fn codec_of(uploader: &Uploader, path: &Path, container: Container) -> Option<String> {
        let file = std::fs::File::open(path).unwrap();
        let opened = OpenedRecording {
            size: file.metadata().unwrap().len(),
            file,
            container,
            relative: path.file_name().unwrap().into(),
        };
        uploader.audio_codec(&opened).await.unwrap()
    }

    /// Writes `seconds` of 320x240 H.264 with Nellymoser audio (Flash's codec) as
    /// `dir/cam.flv`.
    async fn nellymoser_flv(dir: &Path, seconds: u32) -> PathBuf {
        let path = dir.join("cam.flv");
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
                &seconds.to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "nellymoser",
                "-ar",
                "22050",
            ])
            .arg(&path)
            .status()
            .await
            .expect("ffmpeg runs (Debian's ffmpeg)");
        assert!(made.success());
        path
    }

    /// A file as the tracker reads it: FLV of `duration` seconds, 320x240.
    fn flv_facts(local: &Path, duration: f64) -> FileFacts {
        FileFacts {
            relative_path: local.file_name().unwrap().into(),
            size: std::fs::metadata(local).unwrap().len(),
            duration,
            width: Some(320),
            height: Some(240),
            record_format: "FLV".into(),
            stored: None,
        }
    }

    /// An HLS recording is a VOD playlist under the template's key with its segments
    /// beside it, named by the file's start and end (SPEC §7.1), listed by bare name so
    /// they resolve in the bucket; Nellymoser audio, which MPEG-TS cannot hold, becomes
    /// AAC. The size is every stored byte, and nothing is left in the temp dir.
    #[tokio::test]
    async fn hls_is_a_playlist_with_its_segments_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let local = nellymoser_flv(dir.path(), 3).await;
        let (memory, uploader) = in_memory(dir.path());
        let source = source(
            r#"{"engine": "mediamtx", "app_id": "0123456789abcdef01234567", "record_dir": "/rec",
                "record_format": "HLS",
                "storage": {"endpoint": "https://obs.example.com", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}}"#,
            dir.path(),
        );
        let storage = source.spec.storage.clone().unwrap();
        let start = OffsetDateTime::from_unix_timestamp(1_583_676_625).unwrap();
        let stored = uploader
            .upload(
                &source,
                &storage,
                ("room", "u1"),
                &flv_facts(&local, 2.6),
                start,
            )
            .await
            .unwrap();
        let folder = "0123456789abcdef01234567/HLS/u1_2020-03-08-14-10-25";
        assert_eq!(
            stored.object.key,
            format!("{folder}/u1_2020-03-08-14-10-25.m3u8")
        );
        assert_eq!(stored.record_format, "HLS");
        assert_eq!(
            stored.object.download_url,
            format!("https://recs.obs.example.com/{}", stored.object.key)
        );
        let get = |key: String| {
            let memory = memory.clone();
            async move {
                memory
                    .get(&ObjectPath::parse(&key).unwrap())
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        };
        let playlist = get(stored.object.key.clone()).await;
        let playlist = String::from_utf8(playlist.to_vec()).unwrap();
        assert!(playlist.contains("#EXT-X-PLAYLIST-TYPE:VOD"), "{playlist}");
        assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
        let listed = segments_of(&playlist).unwrap();
        let named: Vec<String> = (0..listed.len())
            .map(|n| format!("1583676625_1583676628_{n}.ts"))
            .collect();
        assert_eq!(listed, named, "{playlist}");
        let keys = keys(&memory).await;
        let mut expected: Vec<String> = named.iter().map(|n| format!("{folder}/{n}")).collect();
        expected.push(stored.object.key.clone());
        expected.sort();
        assert_eq!(keys, expected);
        let mut total = 0;
        for key in keys {
            total += get(key).await.len() as u64;
        }
        assert_eq!(stored.size, total);
        let segment = dir.path().join("segment.ts");
        std::fs::write(&segment, get(format!("{folder}/{}", named[0])).await).unwrap();
        assert_eq!(
            codec_of(&uploader, &segment, Container::Ts)
                .await
                .as_deref(),
            Some("aac")
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(
            tmp.is_empty(),
            "the conversion's directory is removed: {tmp:?}"
        );
    }

    /// A store that cannot be reached fails the upload, and the conversion's directory
    /// goes with it: nothing piles up under the temp dir while a store is down.
    #[tokio::test]
    async fn a_failed_hls_upload_leaves_no_conversion_behind() {
        let dir = tempfile::tempdir().unwrap();
        let local = nellymoser_flv(dir.path(), 2).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let uploader = Uploader::new(
            prober_for(dir.path()),
            "ffmpeg",
            dir.path().join("tmp"),
            true,
        );
        let source = source(
            &format!(
                r#"{{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "record_format": "HLS",
                "storage": {{"endpoint": "http://127.0.0.1:{port}", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK",
                "path_style": true}}}}"#
            ),
            dir.path(),
        );
        let error =
            upload_error(&uploader, &source, ("live", "cam"), &flv_facts(&local, 2.0)).await;
        assert!(matches!(error, UploadError::Unavailable { .. }), "{error}");
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(
            tmp.is_empty(),
            "the conversion's directory is removed: {tmp:?}"
        );
    }

    /// A playlist naming anything but a file beside it is not uploaded.
    #[test]
    fn a_playlist_must_list_bare_names_and_be_complete() {
        let ok = "#EXTM3U\n#EXTINF:2.0,\n1_3_0.ts\n#EXT-X-ENDLIST\n";
        assert_eq!(segments_of(ok).unwrap(), ["1_3_0.ts"]);
        for bad in [
            "#EXTM3U\n#EXTINF:2.0,\n1_3_0.ts\n",
            "#EXTM3U\n#EXTINF:2.0,\n/tmp/x/1_3_0.ts\n#EXT-X-ENDLIST\n",
            "#EXTM3U\n#EXTINF:2.0,\n../1_3_0.ts\n#EXT-X-ENDLIST\n",
            "#EXTM3U\n#EXT-X-ENDLIST\n",
        ] {
            assert!(segments_of(bad).is_err(), "{bad}");
        }
    }

    /// Nellymoser audio (Flash's codec, which MP4 cannot hold) is transcoded to AAC when
    /// the file becomes MP4, never dropped; the video is copied as it is.
    #[tokio::test]
    async fn nellymoser_audio_becomes_aac_in_mp4() {
        let dir = tempfile::tempdir().unwrap();
        let local = nellymoser_flv(dir.path(), 2).await;
        let (memory, uploader) = in_memory(dir.path());
        assert_eq!(
            codec_of(&uploader, &local, Container::Flv).await.as_deref(),
            Some("nellymoser")
        );
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "record_format": "MP4",
                "storage": {"endpoint": "https://obs.example.com", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}}"#,
            dir.path(),
        );
        let storage = source.spec.storage.clone().unwrap();
        let facts = flv_facts(&local, 2.0);
        let stored = uploader
            .upload(
                &source,
                &storage,
                ("live", "nelly"),
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
            codec_of(&uploader, &copy, Container::Mp4).await.as_deref(),
            Some("aac")
        );
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "the conversion's output is removed");
    }

    /// The error of an upload expected to fail.
    async fn upload_error(
        uploader: &Uploader,
        source: &RecordingSource,
        stream: (&str, &str),
        facts: &FileFacts,
    ) -> UploadError {
        let storage = source.spec.storage.clone().unwrap();
        uploader
            .upload(source, &storage, stream, facts, OffsetDateTime::now_utc())
            .await
            .err()
            .unwrap()
    }

    /// The object store's keys, sorted.
    async fn keys(memory: &InMemory) -> Vec<String> {
        let mut keys: Vec<String> = memory
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// A recording replaced by a link to a file outside its record dir after it was
    /// probed (a hostile media server's swap) is not followed: the upload is refused in
    /// Herald's words, and nothing is stored.
    #[tokio::test]
    async fn a_link_swapped_in_after_the_probe_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.flv");
        std::fs::write(&secret, b"another project's recording").unwrap();
        let rec = dir.path().join("rec");
        std::fs::create_dir(&rec).unwrap();
        std::os::unix::fs::symlink(&secret, rec.join("cam.flv")).unwrap();
        let (memory, uploader) = in_memory(dir.path());
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {"endpoint": "https://obs.example.com", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}}"#,
            &rec,
        );
        let facts = FileFacts {
            relative_path: "cam.flv".into(),
            size: 27,
            duration: 1.0,
            width: None,
            height: None,
            record_format: "FLV".into(),
            stored: None,
        };
        let error = upload_error(&uploader, &source, ("live", "cam"), &facts).await;
        assert!(matches!(error, UploadError::Refused { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("is outside the record directory"),
            "{error}"
        );
        assert!(keys(&memory).await.is_empty());
    }

    /// A playlist swapped in under a recording's name is read by the recording's own
    /// demuxer, as the probe step read it, never as a playlist: the media it names outside
    /// the record dir is not converted or uploaded.
    #[tokio::test]
    async fn a_playlist_under_a_recordings_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let flv = nellymoser_flv(outside.path(), 2).await;
        let secret = outside.path().join("secret.mp4");
        let made = tokio::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-y", "-i"])
            .arg(&flv)
            .args(["-c:v", "copy", "-c:a", "aac"])
            .arg(&secret)
            .status()
            .await
            .unwrap();
        assert!(made.success());
        let rec = dir.path().join("rec");
        std::fs::create_dir(&rec).unwrap();
        std::fs::write(
            rec.join("cam.flv"),
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
                 #EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n",
                secret.display()
            ),
        )
        .unwrap();
        let (memory, uploader) = in_memory(dir.path());
        let source = source(
            r#"{"engine": "nginx-rtmp", "publish_domain": "push.example.com", "record_dir": "/rec",
                "record_format": "MP4",
                "storage": {"endpoint": "https://obs.example.com", "region": "r",
                "bucket": "recs", "access_key_id": "AK", "secret_access_key": "SK"}}"#,
            &rec,
        );
        let facts = FileFacts {
            relative_path: "cam.flv".into(),
            size: 100,
            duration: 2.0,
            width: Some(320),
            height: Some(240),
            record_format: "FLV".into(),
            stored: None,
        };
        let error = upload_error(&uploader, &source, ("live", "cam"), &facts).await;
        assert!(matches!(error, UploadError::Conversion { .. }), "{error}");
        assert!(keys(&memory).await.is_empty());
    }
}
