//! The media harness of `common::media` against a plain hook receiver, without Herald: nginx
//! really records and calls its hooks, ffmpeg writes probe-able files, MediaMTX's hook
//! commands deliver their variables, and the operator docs quote the configurations the
//! tests run.

// Test helpers: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use common::media::{
    Format, Nginx, ffprobe_duration, mediamtx_hooks, publish, render, require_tools,
    run_mediamtx_command, write_recording,
};
use tokio::sync::Notify;

/// One hook request: its path, and its parameters from the query string then the form body.
#[derive(Clone, Debug)]
struct Hook {
    path: String,
    params: Vec<(String, String)>,
}

impl Hook {
    /// The first value of `key`, as a receiver must read nginx-rtmp's bodies.
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Shared {
    hooks: Arc<Mutex<Vec<Hook>>>,
    arrived: Arc<Notify>,
}

/// Records every request on any path and answers 200, as a media server's hook wants.
struct HookReceiver {
    addr: std::net::SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

async fn record(State(shared): State<Shared>, uri: Uri, body: Bytes) -> &'static str {
    let query = uri.query().unwrap_or_default().as_bytes();
    let params = url::form_urlencoded::parse(query)
        .chain(url::form_urlencoded::parse(&body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    shared.hooks.lock().unwrap().push(Hook {
        path: uri.path().to_owned(),
        params,
    });
    shared.arrived.notify_waiters();
    "{\"code\":0}"
}

impl HookReceiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::default();
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hooks(&self) -> Vec<Hook> {
        self.shared.hooks.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the hooks received; panics after `limit` with them.
    async fn wait_until(&self, limit: Duration, done: impl Fn(&[Hook]) -> bool) -> Vec<Hook> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.arrived.notified();
            let hooks = self.hooks();
            if done(&hooks) {
                return hooks;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("not the hooks awaited within {limit:?}: {hooks:#?}");
            }
        }
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn calls<'a>(hooks: &'a [Hook], call: &str) -> Vec<&'a Hook> {
    hooks
        .iter()
        .filter(|h| h.param("call") == Some(call))
        .collect()
}

#[tokio::test]
async fn nginx_records_in_intervals_and_calls_each_hook() {
    let hooks = HookReceiver::start().await;
    let record_dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&hooks.url("/hook"), record_dir.path(), "3s").await;

    publish(&nginx.rtmp_url("live", "cam1"), 7).await;

    // Done when the stream is over and every file nginx has opened is reported (the last
    // record_done comes after publish_done).
    let got = hooks
        .wait_until(Duration::from_secs(15), |got| {
            let reported: Vec<&str> = calls(got, "record_done")
                .iter()
                .filter_map(|h| h.param("path"))
                .collect();
            let on_disk = std::fs::read_dir(record_dir.path()).unwrap().count();
            !calls(got, "publish_done").is_empty() && reported.len() >= on_disk.max(2)
        })
        .await;
    assert_eq!(got[0].param("call"), Some("publish"), "{got:#?}");
    for hook in &got {
        assert_eq!(hook.path, "/hook");
        assert_eq!(hook.param("app"), Some("live"), "{hook:?}");
        assert_eq!(hook.param("name"), Some("cam1"), "{hook:?}");
    }
    assert_eq!(calls(&got, "publish").len(), 1, "{got:#?}");
    assert_eq!(calls(&got, "publish_done").len(), 1, "{got:#?}");
    let mut recorded = 0.0;
    for hook in calls(&got, "record_done") {
        let path = std::path::Path::new(hook.param("path").unwrap());
        assert!(path.starts_with(record_dir.path()), "{hook:?}");
        assert!(path.is_file(), "{hook:?}: no such file");
        assert_eq!(path.extension().unwrap(), "flv");
        recorded += ffprobe_duration(path).await;
    }
    assert!(
        (recorded - 7.0_f64).abs() < 1.0,
        "the reported files hold {recorded} s of a 7 s publish:\n{}",
        nginx.logs()
    );
}

#[tokio::test]
async fn ffmpeg_writes_each_format_with_the_duration_asked_for() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    for format in Format::ALL {
        let path = dir.path().join(format!("rec.{}", format.extension()));
        write_recording(&path, format, 3).await;
        let duration = ffprobe_duration(&path).await;
        assert!(
            (duration - 3.0).abs() < 0.25,
            "{format:?}: {duration} s for 3 s"
        );
    }
}

#[tokio::test]
async fn mediamtx_commands_deliver_their_variables_form_encoded() {
    require_tools();
    let hooks = HookReceiver::start().await;
    let yml = render(
        "mediamtx.yml",
        &[
            ("HOOK_URL", &hooks.url("/hooks/mediamtx/s3cret")),
            ("RECORD_DIR", "/var/lib/mediamtx/rec"),
        ],
    );
    let commands = mediamtx_hooks(&yml);
    let keys: Vec<&str> = commands.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "runOnReady",
            "runOnNotReady",
            "runOnRecordSegmentCreate",
            "runOnRecordSegmentComplete"
        ]
    );
    // A recordPath may put a space, `&`, `#` or `+` into the segment path.
    let segment = "/var/lib/mediamtx/rec/live/cam1/2026-12-02_06-17-00-123456 +0000&x=y#z.mp4";
    let env = [
        ("MTX_PATH", "live/cam1"),
        ("MTX_QUERY", "token=a%20b"),
        ("MTX_SOURCE_TYPE", "rtmpConn"),
        ("MTX_SOURCE_ID", "1"),
        ("MTX_SEGMENT_PATH", segment),
        ("MTX_SEGMENT_DURATION", "7.04"),
    ];
    // One at a time, so that they arrive in this order.
    for (key, command) in &commands {
        let output = run_mediamtx_command(command, &env).await;
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "{key}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let got = hooks
        .wait_until(Duration::from_secs(10), |got| got.len() == 4)
        .await;
    let expected = [
        vec![("event", "ready"), ("path", "live/cam1")],
        vec![("event", "not_ready"), ("path", "live/cam1")],
        vec![
            ("event", "segment_create"),
            ("path", "live/cam1"),
            ("segment_path", segment),
        ],
        vec![
            ("event", "segment_complete"),
            ("path", "live/cam1"),
            ("segment_path", segment),
            ("duration", "7.04"),
        ],
    ];
    for (hook, expected) in got.iter().zip(expected) {
        assert_eq!(hook.path, "/hooks/mediamtx/s3cret");
        let params: Vec<(&str, &str)> = hook
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(params, expected);
    }
}

#[tokio::test]
async fn mediamtx_substitutes_raw_values_even_inside_single_quotes_and_runs_no_shell() {
    let output = run_mediamtx_command(
        r#"printf '%s|%s|%s|%s' '$MTX_PATH' "${MTX_PATH}x" $HERALD_TEST_UNSET_VARIABLE$ 'a;b'"#,
        &[("MTX_PATH", "live/it's a \"path\" $(id)")],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        r#"live/it's a "path" $(id)|live/it's a "path" $(id)x|$|a;b"#
    );
}

#[test]
fn render_refuses_unknown_and_leftover_placeholders() {
    let unknown = std::panic::catch_unwind(|| render("srs.conf", &[("NO_SUCH", "x")]));
    assert!(unknown.is_err());
    let leftover = std::panic::catch_unwind(|| render("srs.conf", &[("HOOK_URL", "http://h/")]));
    assert!(leftover.is_err());
    let srs = render(
        "srs.conf",
        &[("HOOK_URL", "http://h/x"), ("RECORD_DIR", "/rec")],
    );
    assert!(srs.contains("on_dvr          http://h/x;"), "{srs}");
    assert!(srs.contains("dvr_path            /rec/[app]/"), "{srs}");
}

/// `docs/recording-sources.md` shows operators exactly the configurations the tests run.
#[test]
fn the_operator_docs_quote_each_configuration_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../../docs/recording-sources.md")).unwrap();
    for (file, language) in [
        ("nginx.conf", "nginx"),
        ("srs.conf", "conf"),
        ("mediamtx.yml", "yaml"),
    ] {
        let text = std::fs::read_to_string(root.join("tests/media").join(file)).unwrap();
        let block = format!("```{language}\n{text}```\n");
        assert!(
            docs.contains(&block),
            "docs/recording-sources.md does not quote tests/media/{file} verbatim in a \
             ```{language} block"
        );
    }
}
