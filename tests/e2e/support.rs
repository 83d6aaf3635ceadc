//! Starting nodes and talking to them.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use continuum::client::{self, H3, Reply};
use continuum::datadir::{NodeInfo, read_node_json};
use http::Method;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A node started with `args` (on loopback, in a fresh directory) that must refuse to start:
/// what it says on stderr.
pub fn refused_start(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["node", "--no-mdns", "--http", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn guest(name: &str) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../target/guests/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the example components with scripts/build-guests.sh",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A fresh swarm key file in `dir` (`continuum keygen`); its path.
/// One swarm key for the test nodes that deploy to and migrate between one another (a node
/// takes neither from a peer in an open swarm). Made once per test process.
pub fn swarm_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        keygen(&dir, "swarm.key")
    })
}

pub fn keygen(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_continuum"))
        .args(["keygen", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_string_lossy().into_owned()
}

/// A `continuum node` process with its own data directory; killed when dropped.
pub struct TestNode {
    pub dir: PathBuf,
    pub info: NodeInfo,
    child: Option<Child>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    /// A node on a fresh data directory.
    pub fn start(extra: &[&str]) -> TestNode {
        Self::start_env(extra, &[])
    }

    /// A node on a fresh data directory, with extra environment (fault injection).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> TestNode {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = Self::try_start_in(&tmp.path().join("data"), extra, env, None).unwrap();
        node._tmp = Some(tmp);
        node
    }

    /// A node on a fresh data directory, run by `program` (e.g. `qemu-aarch64
    /// target/aarch64-unknown-linux-musl/debug/continuum`) instead of this build's binary.
    pub fn start_program(program: &[String], extra: &[&str]) -> TestNode {
        let tmp = tempfile::tempdir().unwrap();
        let mut node = Self::launch(program, &tmp.path().join("data"), extra, &[], None).unwrap();
        node._tmp = Some(tmp);
        node
    }

    /// A node on a fresh data directory whose process may hold at most `nofile` descriptors.
    pub fn start_with_fd_limit(extra: &[&str], nofile: u64) -> TestNode {
        let tmp = tempfile::tempdir().unwrap();
        let mut node =
            Self::try_start_in(&tmp.path().join("data"), extra, &[], Some(nofile)).unwrap();
        node._tmp = Some(tmp);
        node
    }

    /// A node on `dir` (which may hold an earlier node's state).
    pub fn start_in(dir: &Path, extra: &[&str]) -> TestNode {
        Self::try_start_in(dir, extra, &[], None).unwrap()
    }

    /// A node on `dir`, with extra environment (fault injection).
    pub fn start_in_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> TestNode {
        Self::try_start_in(dir, extra, env, None).unwrap()
    }

    fn try_start_in(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<TestNode> {
        Self::launch(
            &[env!("CARGO_BIN_EXE_continuum").to_string()],
            dir,
            extra,
            env,
            nofile,
        )
    }

    fn launch(
        program: &[String],
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Result<TestNode> {
        std::fs::create_dir_all(dir)?;
        // A node killed with -9 leaves its node.json behind; wait for the new one.
        let json = continuum::datadir::node_json_path(dir);
        let _ = std::fs::remove_file(&json);
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..])
            .args(["node", "--http", "127.0.0.1:0", "--no-mdns", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("CONTINUUM_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe, and `lim` is a plain struct copied in.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().context("starting continuum node")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !json.exists() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                bail!("node exited early with {status}:\n{log}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not become ready in 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(TestNode {
            dir: dir.to_path_buf(),
            info: read_node_json(dir)?,
            child: Some(child),
            _tmp: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.info
            .http
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    }

    /// The node's first libp2p address (QUIC), with its peer id: what `--join` takes.
    pub fn p2p(&self) -> String {
        self.info.p2p[0].clone()
    }

    /// The members this node lists for federation `name` (none if it knows no such one).
    pub fn federation_members(&self, name: &str) -> Option<std::collections::BTreeSet<String>> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&self.ok(&["federate", "ls", "--json"])).unwrap();
        let f = list.iter().find(|f| f["name"] == name)?;
        Some(
            f["members"]
                .as_array()?
                .iter()
                .filter_map(|m| Some(m.as_str()?.to_string()))
                .collect(),
        )
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is running").id()
    }

    pub fn peer_id(&self) -> &str {
        &self.info.peer_id
    }

    /// `GET /v1/status`, with the node's token.
    pub async fn status(&self) -> serde_json::Value {
        let token = std::fs::read_to_string(self.dir.join("admin.token")).unwrap();
        let r = client::h1(
            self.addr(),
            Method::GET,
            "/v1/status",
            Default::default(),
            Some(token.trim()),
        )
        .await
        .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    /// The peer ids in this node's view.
    pub async fn peers(&self) -> std::collections::BTreeSet<String> {
        self.status().await["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    /// Run a client command against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// A client command aimed at this node, to run where the test likes (e.g. in the background).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_continuum"));
        c.args(args)
            .env("CONTINUUM_NODE", &self.info.http)
            .env("CONTINUUM_DATA_DIR", &self.dir)
            .env_remove("CONTINUUM_TOKEN");
        c
    }

    /// Run a client command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "continuum {args:?} failed: {}\nnode log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    }

    /// Run a client command that must fail with a one-line reason on stderr; that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            !out.status.success(),
            "continuum {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
        assert!(stderr.starts_with("error: "), "{stderr:?}");
        stderr.trim_end().to_string()
    }

    pub async fn h1(&self, method: Method, target: &str, body: &[u8]) -> Reply {
        client::h1(self.addr(), method, target, body.to_vec().into(), None)
            .await
            .unwrap()
    }

    /// A GET sent now, answered later: for requests that wait while the test goes on. A
    /// connection that breaks comes back as an error (the test may kill the node meanwhile).
    pub fn get_later(&self, target: &str) -> tokio::task::JoinHandle<Result<Reply>> {
        let (addr, target) = (self.addr(), target.to_string());
        tokio::spawn(
            async move { client::h1(addr, Method::GET, &target, Bytes::new(), None).await },
        )
    }

    pub async fn h3(&self) -> H3 {
        H3::connect(
            self.addr(),
            continuum::tls::parse_pin(&self.info.cert_sha256).unwrap(),
        )
        .await
        .unwrap()
    }

    /// The value of one metric line, e.g. `continuum_rejected_total{reason="bad_module"}`.
    pub async fn metric(&self, series: &str) -> u64 {
        let text = self.h1(Method::GET, "/metrics", b"").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// Whether the node counted at least `n` refusals of each `(reason, n)`.
    pub async fn refused(&self, want: &[(&str, u64)]) -> bool {
        for (reason, n) in want {
            let series = format!("continuum_mesh_rejected_total{{reason=\"{reason}\"}}");
            if self.metric(&series).await < *n {
                return false;
            }
        }
        true
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (at most 30 s) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Requests per second of each load client.
pub const RATE: u64 = 200;

/// Counts of one client's requests.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Send `METHOD path` over one kept-alive HTTP/1.1 connection, at most `rate` per second (one
/// after the other with `None`), until `stop`.
pub async fn h1_load(
    node: SocketAddr,
    method: Method,
    path: &'static str,
    rate: Option<u64>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(node).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tick = rate.map(|r| tokio::time::interval(Duration::from_micros(1_000_000 / r)));
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let req = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, node.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .expect("the kept-alive connection broke");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if status == 200 {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("h1: {status} {}", String::from_utf8_lossy(&body));
        }
    }
}

/// [`h1_load`] in the background, at [`RATE`].
pub struct Background {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    pub fn start(node: &TestNode, path: &'static str) -> Background {
        let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
        let task = tokio::spawn(h1_load(
            node.addr(),
            Method::POST,
            path,
            Some(RATE),
            stop.clone(),
            tally.clone(),
        ));
        Background { stop, tally, task }
    }

    /// Stop; the increments that succeeded (every one must have).
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        assert_eq!(
            self.tally.failed.load(Ordering::Relaxed),
            0,
            "a request failed"
        );
        self.tally.ok.load(Ordering::Relaxed)
    }
}
