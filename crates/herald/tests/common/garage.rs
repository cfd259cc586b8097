//! A real S3-compatible store for the tests: Garage (`cargo install garage --version 2.5.0
//! --locked`, as .ci/run does), one node on loopback with a bucket and a key.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use tokio::process::{Child, Command};

pub const BUCKET: &str = "recordings";
pub const REGION: &str = "garage";

/// The garage program: `HERALD_TEST_GARAGE`, else on `PATH`, else `~/.cargo/bin/garage`.
/// `None` when there is none; then a test skips, saying so, unless `CI` is set, where a
/// missing garage fails it.
pub fn program() -> Option<PathBuf> {
    let found = std::env::var_os("HERALD_TEST_GARAGE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("garage"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cargo/bin/garage"))
                .filter(|p| p.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and garage is missing: cargo install garage --version 2.5.0 --locked \
             (.ci/run does)"
        );
        eprintln!(
            "SKIPPED: garage is not installed (cargo install garage --version 2.5.0 --locked); \
             with CI set this test fails instead"
        );
    }
    found
}

/// A running single-node Garage with [`BUCKET`] and a key allowed on it.
pub struct Garage {
    program: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    pub async fn start(program: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut garage = Self {
            program,
            dir,
            child: None,
            endpoint: String::new(),
            key_id: String::new(),
            secret: String::new(),
        };
        // Ports are picked free, then bound by Garage: another test can take one in
        // between, and Garage then exits. Start again on other ports when it did.
        let mut tries = 0;
        while !garage.start_on_free_ports().await {
            tries += 1;
            assert!(tries < 5, "garage did not start: {}", garage.log());
        }
        let node = garage.cli(&["node", "id", "-q"]).await;
        let node = node.trim().split('@').next().unwrap().to_owned();
        garage
            .cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
            .await;
        garage.cli(&["layout", "apply", "--version", "1"]).await;
        garage.until_ok(&["bucket", "create", BUCKET]).await;
        let key = garage.cli(&["key", "create", "herald-test"]).await;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("{name} in {key}"))
        };
        garage.key_id = field("Key ID:");
        garage.secret = field("Secret key:");
        garage
            .cli(&[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                BUCKET,
                "--key",
                "herald-test",
            ])
            .await;
        garage
    }

    /// Writes a configuration on free ports, runs the server and waits until its RPC
    /// answers (`garage status`); false when the server exited first.
    async fn start_on_free_ports(&mut self) -> bool {
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            d = self.dir.path().display()
        );
        std::fs::write(self.config(), config).unwrap();
        self.endpoint = format!("http://127.0.0.1:{s3}");
        self.run_server();
        for _ in 0..150 {
            if self.try_cli(&["status"]).await.status.success() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| child.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("garage did not answer within 30 s: {}", self.log());
    }

    /// What the server wrote to its log.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn run_server(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(&self.program)
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops the server (kill -9): requests are refused until [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.run_server();
        self.until_ok(&["bucket", "info", BUCKET]).await;
    }

    async fn try_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.program)
            .arg("-c")
            .arg(self.config())
            .args(args)
            .output()
            .await
            .unwrap()
    }

    async fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args).await;
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command until it succeeds (the server is starting), for up to 30 s.
    async fn until_ok(&self, args: &[&str]) -> String {
        for _ in 0..150 {
            let out = self.try_cli(args).await;
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.cli(args).await
    }

    /// An S3 client on the bucket, to read back what Herald stored.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_region(REGION)
                .with_bucket_name(BUCKET)
                .with_access_key_id(&self.key_id)
                .with_secret_access_key(&self.secret)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    /// The URL of the object at `key`, path style, as Herald reports it.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{BUCKET}/{key}", self.endpoint)
    }

    /// The object at `key`, whole.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        let path = object_store::path::Path::parse(key).unwrap();
        self.client()
            .get(&path)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// Every key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        use futures_util::TryStreamExt;
        self.client()
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    /// The bucket's open multipart uploads as (key, upload id), listed by rclone: an S3
    /// client independent of Herald's (Debian package `rclone`).
    pub async fn open_uploads(&self) -> Vec<(String, String)> {
        let remote = format!(
            ":s3,provider=Other,endpoint='{}',region={REGION},access_key_id={},\
             secret_access_key={},force_path_style=true:{BUCKET}",
            self.endpoint, self.key_id, self.secret
        );
        let out = Command::new("rclone")
            .args(["--config", "/dev/null", "backend", "list-multipart-uploads"])
            // rclone 1.60 fails on any AWS_CA_BUNDLE, even for plain http.
            .env_remove("AWS_CA_BUNDLE")
            .arg(&remote)
            .output()
            .await
            .expect("rclone runs (Debian package rclone; scripts/test installs it)");
        assert!(
            out.status.success(),
            "rclone list-multipart-uploads: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        listed[BUCKET]
            .as_array()
            .map(|uploads| {
                uploads
                    .iter()
                    .map(|u| {
                        let field = |name: &str| u[name].as_str().unwrap().to_owned();
                        (field("Key"), field("UploadId"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes `bytes` to a file in its own directory, for ffprobe.
    pub fn save(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}
