//! Reading a finished recording: where it is, and what ffprobe finds in it.
//!
//! A file a hook names is checked against the source's record dir and the operator's
//! roots before anything opens it: by its path's components first, then once more with
//! symbolic links resolved. Only a container an engine writes (FLV, MP4, MPEG-TS, by its
//! extension) is read, with that demuxer forced, so no playlist or concat list can name
//! other files. Herald opens it itself, checks the path the kernel gives the open file, and
//! hands ffprobe that open file (its standard input, read as `file:/dev/stdin`) with only
//! the `file` protocol allowed: no swap after the checks, and no fetching. ffprobe is
//! run, not linked: it is FFmpeg's own reading of every container, which no Rust crate
//! matches, and a crash in it cannot take Herald down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_core::recording::{FileFacts, FileOutcome, record_format};
use herald_core::source::{RecordDir, RecordRoots};
use serde::Deserialize;
use tokio::process::Command;

/// How long ffprobe may take over any file: it reads every packet, to count them.
const PROBE_LEAST: Duration = Duration::from_secs(10);
/// The slowest reading allowed beyond [`PROBE_LEAST`]: far below what a disk or ffprobe
/// does, so only a file that makes ffprobe loop or wait runs out.
const PROBE_BYTES_PER_SECOND: u64 = 8 * 1024 * 1024;
/// The longest any file may take, whatever its size.
const PROBE_MOST: Duration = Duration::from_secs(600);

/// How long ffprobe may take over a file of `size` bytes: a time that follows the size,
/// so a small file that keeps ffprobe busy does not hold a turn for ten minutes.
pub fn probe_deadline(size: u64) -> Duration {
    (PROBE_LEAST + Duration::from_secs(size / PROBE_BYTES_PER_SECOND)).min(PROBE_MOST)
}

/// The containers the engines write, by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Flv,
    /// MP4 and fragmented MP4 (SRS, MediaMTX).
    Mp4,
    /// MPEG-TS (MediaMTX).
    Ts,
}

impl Container {
    fn of(file: &Path) -> Option<Self> {
        let extension = file.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "flv" => Some(Self::Flv),
            "mp4" | "m4s" => Some(Self::Mp4),
            "ts" => Some(Self::Ts),
            _ => None,
        }
    }

    /// ffprobe's and ffmpeg's `-f`: this demuxer and no other reads the file.
    pub fn demuxer(self) -> &'static str {
        match self {
            Self::Flv => "flv",
            Self::Mp4 => "mov",
            Self::Ts => "mpegts",
        }
    }
}

/// Opens `file` for reading without following a final symbolic link and without waiting
/// on a FIFO (`O_NONBLOCK`, which changes nothing for a regular file).
async fn open_plain_file(file: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The path the kernel gives an open file (`/proc/self/fd/N`); `None` without `/proc`,
/// where the checks made before opening stand alone.
fn opened_path(file: &std::fs::File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// A recording opened for reading after every check: below its record dir and inside the
/// operator's roots, by its path and by the path the kernel gives the open file. Whoever
/// reads it (ffprobe, ffmpeg, an upload) reads this open file, never the path again, so a
/// link or rename swapped in after the checks cannot lead anyone elsewhere.
pub struct OpenedRecording {
    pub file: std::fs::File,
    pub container: Container,
    /// Its path below the record dir.
    pub relative: PathBuf,
    pub size: u64,
}

/// ffprobe could not be run at all: the file waits, it is not failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {program}: {reason}")]
pub struct ProbeUnavailable {
    program: String,
    reason: String,
}

/// Runs ffprobe.
#[derive(Debug, Clone)]
pub struct Prober {
    /// The ffprobe program (`HERALD_FFPROBE`, default `ffprobe` from `PATH`).
    program: PathBuf,
    /// The operator's record roots: a file is read only when its real path is inside one,
    /// whatever a source's record dir says (a root may have been withdrawn since).
    roots: RecordRoots,
}

impl Prober {
    pub fn new(program: impl Into<PathBuf>, roots: RecordRoots) -> Self {
        Self {
            program: program.into(),
            roots,
        }
    }

    pub fn roots(&self) -> &RecordRoots {
        &self.roots
    }

    /// The ffprobe program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Whether `real_file` (symbolic links resolved) is inside one of the roots, also with
    /// the roots' own links resolved.
    async fn inside_roots(&self, real_file: &Path) -> bool {
        for root in self.roots.iter() {
            let real_root = tokio::fs::canonicalize(root.path())
                .await
                .unwrap_or_else(|_| root.path().to_owned());
            if real_file.starts_with(&real_root) {
                return true;
            }
        }
        false
    }

    /// Whether ffprobe runs (`ffprobe -version` succeeds).
    pub async fn available(&self) -> Result<(), ProbeUnavailable> {
        let status = Command::new(&self.program)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| self.unavailable(e))?;
        if status.success() {
            Ok(())
        } else {
            Err(self.unavailable(format!("-version exited with {status}")))
        }
    }

    fn unavailable(&self, reason: impl ToString) -> ProbeUnavailable {
        ProbeUnavailable {
            program: self.program.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Reads the file a hook named as `path`, if it is below `record_dir` and inside the
    /// operator's roots. What a project is told is in Herald's words: never the OS's or
    /// ffprobe's text, and the same "outside" for a path out of its dir whether or not
    /// anything exists there, so a hook cannot probe the rest of the server.
    pub async fn read(
        &self,
        record_dir: &RecordDir,
        path: &str,
    ) -> Result<FileOutcome, ProbeUnavailable> {
        let OpenedRecording {
            file,
            container,
            relative,
            size,
        } = match self.open(record_dir, path).await {
            Ok(opened) => opened,
            Err(why) => return Ok(FileOutcome::Failed(why)),
        };
        self.probe(file, container, size, path)
            .await
            .map(|found| match found {
                Probed::Media {
                    duration,
                    width,
                    height,
                    format_name,
                } => FileOutcome::Complete(FileFacts {
                    relative_path: relative,
                    size,
                    duration,
                    width,
                    height,
                    record_format: record_format(&format_name),
                    stored: None,
                }),
                Probed::NoFrames => FileOutcome::Empty,
                Probed::NotMedia(why) => FileOutcome::Failed(format!("{path:?} {why}")),
            })
    }

    /// Opens the file a hook named as `path`, if it is below `record_dir` and inside the
    /// operator's roots, and is a container an engine writes; else why not, in Herald's
    /// words (see [`Self::read`]).
    pub async fn open(
        &self,
        record_dir: &RecordDir,
        path: &str,
    ) -> Result<OpenedRecording, String> {
        let failed = |why: &str| Err(format!("{path:?} {why}"));
        let outside = || {
            Err(format!(
                "{path:?} is outside the record directory {:?}; it was not opened",
                record_dir.as_str()
            ))
        };
        let Some(file) = record_dir.resolve(None, path) else {
            return outside();
        };
        let Some(relative) = record_dir.relative(&file) else {
            return outside();
        };
        let relative = relative.to_owned();
        if !self.roots.contain(record_dir.path()) {
            return Err(format!(
                "{path:?} was not opened: the record directory {:?} is not inside a directory \
                 the operator allows (HERALD_RECORD_ROOTS)",
                record_dir.as_str()
            ));
        }
        let real_dir = tokio::fs::canonicalize(record_dir.path())
            .await
            .unwrap_or_else(|_| record_dir.path().to_owned());
        // Symbolic links resolved: a link below the record dir must not lead out of it.
        let real_file = match tokio::fs::canonicalize(&file).await {
            Ok(real) => real,
            Err(e) => {
                // A link (or a linked directory on the way) that leads nowhere says nothing
                // about what is outside: it is outside, as a link that leads somewhere is.
                if !self.plainly_below(&real_dir, &relative).await {
                    return outside();
                }
                return match e.kind() {
                    std::io::ErrorKind::NotFound => failed("does not exist"),
                    std::io::ErrorKind::PermissionDenied => {
                        failed("cannot be read by Herald (permission denied)")
                    }
                    _ => failed("cannot be read by Herald"),
                };
            }
        };
        if !real_file.starts_with(&real_dir) || !self.inside_roots(&real_file).await {
            return outside();
        }
        // Only the containers the engines write are read, each by its own demuxer: no
        // playlist (HLS) or concat list can name files outside the record dir.
        let Some(container) = Container::of(&real_file) else {
            return failed("is not a recording Herald reads (only .flv, .mp4 and .ts files are)");
        };
        let opened = match open_plain_file(&real_file).await {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return failed("does not exist"),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return failed("cannot be read by Herald (permission denied)");
            }
            // O_NOFOLLOW: the file became a link since it was resolved.
            Err(_) => return outside(),
        };
        // The kernel's name for what was opened: ffprobe reads this very file, so a link
        // or rename swapped in after the checks above cannot lead it elsewhere.
        if let Some(opened_path) = opened_path(&opened)
            && (!opened_path.starts_with(&real_dir) || !self.inside_roots(&opened_path).await)
        {
            return outside();
        }
        let size = match opened.metadata() {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return failed("is not a regular file"),
            Err(_) => return failed("cannot be read by Herald"),
        };
        Ok(OpenedRecording {
            file: opened,
            container,
            relative,
            size,
        })
    }

    /// Whether no component of `file` below the record dir is a symbolic link, checked
    /// from the record dir down to the first component that does not exist.
    async fn plainly_below(&self, real_dir: &Path, relative: &Path) -> bool {
        let mut at = real_dir.to_path_buf();
        for part in relative.components() {
            at.push(part);
            match tokio::fs::symlink_metadata(&at).await {
                Ok(meta) if meta.file_type().is_symlink() => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
        true
    }

    /// Runs ffprobe over an opened file, given as its standard input and read as
    /// `file:/dev/stdin` (a fresh, seekable open of that very file), with the container's
    /// demuxer forced and no protocol but `file`.
    async fn probe(
        &self,
        file: std::fs::File,
        container: Container,
        size: u64,
        shown: &str,
    ) -> Result<Probed, ProbeUnavailable> {
        let mut command = Command::new(&self.program);
        command
            .args([
                "-v",
                "error",
                "-protocol_whitelist",
                "file",
                "-f",
                container.demuxer(),
                "-show_entries",
            ])
            .arg("format=duration,format_name:stream=codec_type,width,height,nb_read_packets")
            .args(["-count_packets", "-of", "json", "file:/dev/stdin"])
            .stdin(Stdio::from(file))
            .kill_on_drop(true);
        let deadline = probe_deadline(size);
        let output = match tokio::time::timeout(deadline, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(self.unavailable(e)),
            Err(_) => {
                return Ok(Probed::NotMedia(format!(
                    "could not be read within {} s (the time allowed for a file of its size)",
                    deadline.as_secs()
                )));
            }
        };
        if !output.status.success() {
            // ffprobe's own text names paths and internals: logged, never shown.
            let stderr = String::from_utf8_lossy(&output.stderr);
            tracing::info!(file = ?shown, ffprobe = ?stderr.lines().next().unwrap_or(""),
                "recordings: ffprobe could not read a file");
            return Ok(Probed::NotMedia(
                "is not a media file Herald can read".to_owned(),
            ));
        }
        Ok(Probed::from_json(&output.stdout))
    }
}

/// What ffprobe found.
#[derive(Debug, PartialEq)]
enum Probed {
    Media {
        duration: f64,
        width: Option<u64>,
        height: Option<u64>,
        format_name: String,
    },
    /// Streams declared, no frame read (nginx-rtmp's 120-byte stub).
    NoFrames,
    NotMedia(String),
}

/// `ffprobe -of json`: numbers of packets and the duration come as strings.
#[derive(Debug, Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<StreamJson>,
    format: Option<FormatJson>,
}

#[derive(Debug, Deserialize)]
struct StreamJson {
    codec_type: Option<String>,
    width: Option<u64>,
    height: Option<u64>,
    nb_read_packets: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FormatJson {
    format_name: Option<String>,
    duration: Option<String>,
}

impl Probed {
    fn from_json(stdout: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<ProbeJson>(stdout) else {
            return Self::NotMedia("could not be read by ffprobe (unreadable answer)".into());
        };
        let with_frames: Vec<&StreamJson> = json
            .streams
            .iter()
            .filter(|s| {
                s.nb_read_packets
                    .as_deref()
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
            .collect();
        if with_frames.is_empty() {
            return Self::NoFrames;
        }
        let video = with_frames
            .iter()
            .find(|s| s.codec_type.as_deref() == Some("video") && s.width.unwrap_or(0) > 0);
        let format = json.format.as_ref();
        Self::Media {
            duration: format
                .and_then(|f| f.duration.as_deref())
                .and_then(|d| d.parse::<f64>().ok())
                .filter(|d| d.is_finite() && *d >= 0.0)
                .unwrap_or(0.0),
            width: video.and_then(|v| v.width),
            height: video.and_then(|v| v.height),
            format_name: format
                .and_then(|f| f.format_name.clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_engines_containers_are_read_and_time_follows_size() {
        assert_eq!(Container::of(Path::new("/r/a.FLV")), Some(Container::Flv));
        assert_eq!(Container::of(Path::new("/r/a.mp4")), Some(Container::Mp4));
        assert_eq!(Container::of(Path::new("/r/a.ts")), Some(Container::Ts));
        for refused in ["/r/a.m3u8", "/r/a.txt", "/r/a.ffconcat", "/r/a", "/r/.flv"] {
            assert_eq!(Container::of(Path::new(refused)), None, "{refused}");
        }
        assert_eq!(probe_deadline(0), PROBE_LEAST);
        assert_eq!(probe_deadline(80 * 1024 * 1024), Duration::from_secs(20));
        assert_eq!(probe_deadline(u64::MAX), PROBE_MOST);
    }

    #[test]
    fn frames_decide_and_strings_are_numbers() {
        let media = br#"{"streams": [
            {"codec_type": "video", "width": 1280, "height": 720, "nb_read_packets": "75"},
            {"codec_type": "audio", "nb_read_packets": "130"}],
            "format": {"format_name": "flv", "duration": "3.018000"}}"#;
        assert_eq!(
            Probed::from_json(media),
            Probed::Media {
                duration: 3.018,
                width: Some(1280),
                height: Some(720),
                format_name: "flv".into()
            }
        );
        let stub = br#"{"streams": [{"codec_type": "video", "width": 0, "height": 0},
            {"codec_type": "audio"}], "format": {"format_name": "flv", "duration": "0.003000"}}"#;
        assert_eq!(Probed::from_json(stub), Probed::NoFrames);
        assert!(matches!(
            Probed::from_json(b"not json"),
            Probed::NotMedia(_)
        ));
    }
}
