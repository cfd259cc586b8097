//! Real media software for the recording-source tests: nginx with Debian's RTMP module,
//! ffmpeg publishing and writing recordings, ffprobe, and MediaMTX's way of running its
//! `runOn…` hook commands. The media servers' configurations are the files of
//! `tests/media/`, which `docs/recording-sources.md` quotes; the tests render them with
//! [`render`].
//!
//! Nothing here skips: a missing tool fails the test, naming the Debian packages.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The Debian packages these helpers run (`.ci/run` installs them).
pub const PACKAGES: &str = "nginx libnginx-mod-rtmp ffmpeg curl";

/// Where Debian's `libnginx-mod-rtmp` puts the module that `tests/media/nginx.conf` loads.
pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// The test pattern every helper encodes: 1280×720 at 25 fps with a 440 Hz tone.
const VIDEO_SOURCE: &str = "testsrc2=size=1280x720:rate=25";
const AUDIO_SOURCE: &str = "sine=frequency=440:sample_rate=44100";

/// Finds a program on `PATH`, or in the sbin directories that a non-root `PATH` may lack
/// (Debian installs nginx as `/usr/sbin/nginx`).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("{name} is not installed: install the Debian packages {PACKAGES} (.ci/run does)")
    })
}

/// Fails the test, naming the Debian packages, unless nginx with its RTMP module, ffmpeg,
/// ffprobe and curl are installed.
pub fn require_tools() {
    let mut missing: Vec<&str> = ["nginx", "ffmpeg", "ffprobe", "curl"]
        .into_iter()
        .filter(|tool| find_program(tool).is_none())
        .collect();
    if !Path::new(RTMP_MODULE).is_file() {
        missing.push(RTMP_MODULE);
    }
    assert!(
        missing.is_empty(),
        "these tests run real media software; missing {}: install the Debian packages \
         {PACKAGES} (.ci/run does)",
        missing.join(", ")
    );
}

/// The text of `tests/media/<template_file>` with each `@NAME@` replaced by its value from
/// `vars` (given as `("NAME", value)`). Panics if a name does not occur in the file or a
/// placeholder is left over, so a renamed placeholder fails loudly.
pub fn render(template_file: &str, vars: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/media")
        .join(template_file);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (name, value) in vars {
        let placeholder = format!("@{name}@");
        assert!(
            text.contains(&placeholder),
            "{template_file} has no placeholder {placeholder}"
        );
        text = text.replace(&placeholder, value);
    }
    let leftover: Vec<&str> = text
        .match_indices('@')
        .filter_map(|(at, _)| {
            let rest = &text[at + 1..];
            let len = rest
                .bytes()
                .take_while(|c| c.is_ascii_uppercase() || *c == b'_')
                .count();
            (len > 0 && rest[len..].starts_with('@')).then(|| &rest[..len])
        })
        .collect();
    assert!(
        leftover.is_empty(),
        "{template_file}: no value for the placeholders {leftover:?}"
    );
    text
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nginx running `tests/media/nginx.conf` in the foreground, in a temporary
/// prefix, listening for RTMP on a free port of 127.0.0.1. Killed when dropped.
pub struct Nginx {
    /// Holds the rendered `conf/nginx.conf`, the pid file and the logs until the drop.
    prefix: tempfile::TempDir,
    port: u16,
    /// `kill_on_drop`: a failing test must not leave an nginx behind.
    child: Child,
}

impl Nginx {
    /// Starts nginx recording into `record_dir` (absolute; created if missing), its three
    /// hooks pointed at `hook_url`, splitting files every `record_interval` (nginx syntax:
    /// `3s`, `30m`), and waits until its RTMP port accepts connections.
    pub async fn start(hook_url: &str, record_dir: &Path, record_interval: &str) -> Nginx {
        require_tools();
        assert!(
            record_dir.is_absolute(),
            "record_dir must be absolute: {}",
            record_dir.display()
        );
        std::fs::create_dir_all(record_dir).unwrap();
        let prefix = tempfile::tempdir().unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let conf = render(
            "nginx.conf",
            &[
                ("RTMP_LISTEN", &listen),
                ("RECORD_DIR", record_dir.to_str().unwrap()),
                ("RECORD_INTERVAL", record_interval),
                ("HOOK_URL", hook_url),
            ],
        );
        std::fs::create_dir(prefix.path().join("conf")).unwrap();
        std::fs::write(prefix.path().join("conf/nginx.conf"), conf).unwrap();
        // What the deployed file leaves to the service manager: the foreground, one process,
        // and a pid file and error log inside the prefix rather than /run and stderr.
        let globals = format!(
            "daemon off; master_process off; pid {};",
            prefix.path().join("nginx.pid").display()
        );
        let output = std::fs::File::create(prefix.path().join("output.log")).unwrap();
        let child = Command::new(program("nginx"))
            .arg("-p")
            .arg(prefix.path())
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(prefix.path().join("error.log"))
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut nginx = Nginx {
            prefix,
            port,
            child,
        };
        nginx.wait_until_listening().await;
        nginx
    }

    async fn wait_until_listening(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nginx exited ({status}) at start:\n{}", self.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on 127.0.0.1:{} within 10 s:\n{}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL to publish `stream` to in application `app` (the configuration has only
    /// `live`; nginx refuses any other).
    pub fn rtmp_url(&self, app: &str, stream: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{stream}", self.port)
    }

    /// nginx's output and error log so far, for failure messages.
    pub fn logs(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.prefix.path().join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Runs ffmpeg with `args` after the common ones; panics with its stderr if it fails.
async fn ffmpeg(args: &[String]) {
    let output = Command::new(program("ffmpeg"))
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "ffmpeg {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// ffmpeg's arguments for `seconds` of the test pattern, encoded as every helper does:
/// H.264 with a keyframe each second (so that nginx-rtmp's `record_interval` and MediaMTX's
/// segments can split there) and AAC. `realtime` reads the sources at their own pace (`-re`),
/// as a live encoder sends.
fn test_pattern(seconds: u32, realtime: bool) -> Vec<String> {
    let re = if realtime { "-re" } else { "" };
    format!(
        "{re} -f lavfi -i {VIDEO_SOURCE} {re} -f lavfi -i {AUDIO_SOURCE} -t {seconds} \
         -c:v libx264 -preset ultrafast -pix_fmt yuv420p -g 25 -c:a aac"
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// Publishes `seconds` of the test pattern (1280×720, 25 fps, with audio) to `rtmp_url` in
/// real time, as a live encoder would, and returns when ffmpeg has disconnected.
pub async fn publish(rtmp_url: &str, seconds: u32) {
    let mut args = test_pattern(seconds, true);
    args.extend(["-f".to_owned(), "flv".to_owned(), rtmp_url.to_owned()]);
    ffmpeg(&args).await;
}

/// The container of a recording, as the media servers write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// nginx-rtmp's and SRS's recordings.
    Flv,
    /// Fragmented MP4, as MediaMTX's `recordFormat: fmp4` writes.
    Mp4,
    /// MPEG-TS, as MediaMTX's `recordFormat: mpegts` writes.
    Ts,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Flv, Format::Mp4, Format::Ts];

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Flv => "flv",
            Format::Mp4 => "mp4",
            Format::Ts => "ts",
        }
    }

    /// The `record_format` Herald reports for such a file.
    pub fn record_format(self) -> &'static str {
        match self {
            Format::Flv => "FLV",
            Format::Mp4 => "MP4",
            Format::Ts => "TS",
        }
    }

    /// ffmpeg's output options for the format.
    fn ffmpeg_args(self) -> &'static str {
        match self {
            Format::Flv => "-f flv",
            Format::Mp4 => "-f mp4 -movflags +frag_keyframe+empty_moov+default_base_moof",
            Format::Ts => "-f mpegts",
        }
    }
}

/// Writes a real recording of `seconds` of the test pattern (1280×720, 25 fps, with audio)
/// to `path` in `format`, as fast as ffmpeg can (not in real time). Its parent directory
/// must exist. ffprobe finds a duration slightly above `seconds` (the last AAC frame).
pub async fn write_recording(path: &Path, format: Format, seconds: u32) {
    let mut args = test_pattern(seconds, false);
    args.extend(format.ffmpeg_args().split_whitespace().map(str::to_owned));
    args.extend(["-y".to_owned(), path.to_str().unwrap().to_owned()]);
    ffmpeg(&args).await;
}

/// Writes an FLV file with its stream headers and not a single frame, like the stub
/// nginx-rtmp leaves when a publish ends just as a new file begins.
pub async fn write_frameless_flv(path: &Path) {
    let args = format!(
        "-f lavfi -i {VIDEO_SOURCE} -f lavfi -i {AUDIO_SOURCE} -frames:v 0 -t 0 \
         -c:v libx264 -c:a aac -f flv -y"
    );
    let mut args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    args.push(path.to_str().unwrap().to_owned());
    ffmpeg(&args).await;
}

/// The container's duration in seconds, as ffprobe reads it.
pub async fn ffprobe_duration(path: &Path) -> f64 {
    let output = Command::new(program("ffprobe"))
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ffprobe {} failed ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.trim().parse().unwrap_or_else(|e| {
        panic!(
            "ffprobe {}: duration {:?}: {e}",
            path.display(),
            stdout.trim()
        )
    })
}

/// Decodes the whole of `path` (an HLS playlist: every segment it lists); panics when
/// ffmpeg finds anything wrong on the way, a missing segment included.
pub async fn decode_to_end(path: &Path) {
    let output = Command::new(program("ffmpeg"))
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "warning",
            "-xerror",
            "-i",
        ])
        .arg(path)
        .args(["-f", "null", "-"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "ffmpeg decoding {} ({}):\n{stderr}",
        path.display(),
        output.status
    );
}

/// Runs a `runOn…` command as MediaMTX does (`internal/externalcmd/cmd_os.go`): split with
/// shell quoting rules (go-shellquote there, `shell-words` here; both POSIX, though
/// `shell-words` also drops a word starting with `#` and what follows, which no command of
/// ours has), then `$NAME` and `${NAME}` in each word replaced by the value from `env`, else
/// from this process's environment, else nothing (Go's `os.Expand`: raw values, even inside
/// single quotes), then the program executed without a shell, with `env` added to its
/// environment. Returns its exit status and output.
pub async fn run_mediamtx_command(command: &str, env: &[(&str, &str)]) -> Output {
    let words = shell_words::split(command)
        .unwrap_or_else(|e| panic!("MediaMTX cannot split {command:?}: {e}"));
    let words: Vec<String> = words.iter().map(|word| expand(word, env)).collect();
    let (program, args) = words
        .split_first()
        .unwrap_or_else(|| panic!("empty command {command:?}"));
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {program:?} of {command:?}: {e}"))
}

/// Go's `os.Expand(word, mapping)` with MediaMTX's mapping.
fn expand(word: &str, env: &[(&str, &str)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            .or_else(|| std::env::var(name).ok())
            .unwrap_or_default()
    };
    let bytes = word.as_bytes();
    let mut out = String::new();
    let mut copied_to = 0;
    let mut j = 0;
    while j < bytes.len() {
        if bytes[j] == b'$' && j + 1 < bytes.len() {
            out.push_str(&word[copied_to..j]);
            let (name, width) = shell_name(&word[j + 1..]);
            match (name, width) {
                ("", 0) => out.push('$'), // `$` not followed by a name stays.
                ("", _) => {}             // bad syntax (`${}`, `${…`): eaten.
                (name, _) => out.push_str(&lookup(name)),
            }
            j += width;
            copied_to = j + 1;
        }
        j += 1;
    }
    out.push_str(&word[copied_to.min(word.len())..]);
    out
}

/// Go's `getShellName`: the variable name at the start of `s` (after a `$`) and how many
/// bytes it takes.
fn shell_name(s: &str) -> (&str, usize) {
    let bytes = s.as_bytes();
    let special = |c: u8| b"*#$@!?-0123456789".contains(&c);
    if bytes[0] == b'{' {
        if bytes.len() > 2 && special(bytes[1]) && bytes[2] == b'}' {
            return (&s[1..2], 3);
        }
        return match s[1..].find('}') {
            Some(0) => ("", 2),
            Some(end) => (&s[1..=end], end + 2),
            None => ("", 1),
        };
    }
    if special(bytes[0]) {
        return (&s[..1], 1);
    }
    let len = bytes
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    (&s[..len], len)
}

/// The `runOn…` entries of `pathDefaults` in a MediaMTX configuration, as (key, command),
/// in file order; empty ones left out. A line reader for the shapes our `mediamtx.yml` uses
/// (`  key: 'single-quoted'` or a plain scalar); anything else is a panic, not a guess.
pub fn mediamtx_hooks(yml: &str) -> Vec<(String, String)> {
    let mut hooks = Vec::new();
    let mut in_path_defaults = false;
    for line in yml.lines() {
        if !line.starts_with([' ', '#']) && !line.is_empty() {
            in_path_defaults = line.trim_end() == "pathDefaults:";
            continue;
        }
        let Some((key, value)) = line.trim_start().split_once(':') else {
            continue;
        };
        if !in_path_defaults || !key.starts_with("runOn") {
            continue;
        }
        let value = value.trim();
        let command = if let Some(quoted) = value.strip_prefix('\'') {
            quoted
                .strip_suffix('\'')
                .unwrap_or_else(|| panic!("{key}: unterminated quote in {value:?}"))
                .replace("''", "'")
        } else {
            assert!(
                !value.starts_with(['"', '|', '>']),
                "{key}: only single-quoted or plain values are read here: {value:?}"
            );
            value.to_owned()
        };
        if !command.is_empty() {
            hooks.push((key.to_owned(), command));
        }
    }
    hooks
}
