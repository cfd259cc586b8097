//! Reading a finished recording: where it is, and what ffprobe finds in it.
//!
//! A file a hook names is checked against the source's record dir before anything opens
//! it: by its path's components first, then once more with symbolic links resolved. Only
//! then is it measured (size from disk) and handed to ffprobe, as a `file:` URL with only
//! the `file` protocol allowed, so no name can make ffprobe fetch anything. ffprobe is
//! run, not linked: it is FFmpeg's own reading of every container, which no Rust crate
//! matches, and a crash in it cannot take Herald down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_core::recording::{FileFacts, FileOutcome, record_format};
use herald_core::source::{RecordDir, RecordRoots};
use serde::Deserialize;
use tokio::process::Command;

/// How long ffprobe may take over one file (it reads every packet, to count them).
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

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
        let failed = |why: &str| Ok(FileOutcome::Failed(format!("{path:?} {why}")));
        let outside = || {
            Ok(FileOutcome::Failed(format!(
                "{path:?} is outside the record directory {:?}; it was not opened",
                record_dir.as_str()
            )))
        };
        let Some(file) = record_dir.resolve(None, path) else {
            return outside();
        };
        let Some(relative) = record_dir.relative(&file) else {
            return outside();
        };
        let relative = relative.to_owned();
        if !self.roots.contain(record_dir.path()) {
            return Ok(FileOutcome::Failed(format!(
                "{path:?} was not opened: the record directory {:?} is not inside a directory \
                 the operator allows (HERALD_RECORD_ROOTS)",
                record_dir.as_str()
            )));
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
        let size = match tokio::fs::metadata(&real_file).await {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return failed("is not a regular file"),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return failed("cannot be read by Herald (permission denied)");
            }
            Err(_) => return failed("cannot be read by Herald"),
        };
        self.probe(&real_file, path).await.map(|found| match found {
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
            }),
            Probed::NoFrames => FileOutcome::Empty,
            Probed::NotMedia(why) => FileOutcome::Failed(format!("{path:?} {why}")),
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

    async fn probe(&self, file: &Path, shown: &str) -> Result<Probed, ProbeUnavailable> {
        let mut command = Command::new(&self.program);
        command
            .args([
                "-v",
                "error",
                "-protocol_whitelist",
                "file",
                "-show_entries",
            ])
            .arg("format=duration,format_name:stream=codec_type,width,height,nb_read_packets")
            .args(["-count_packets", "-of", "json"])
            .arg(format!("file:{}", file.display()))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(PROBE_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(self.unavailable(e)),
            Err(_) => {
                return Ok(Probed::NotMedia(format!(
                    "could not be read by ffprobe within {} s",
                    PROBE_TIMEOUT.as_secs()
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
