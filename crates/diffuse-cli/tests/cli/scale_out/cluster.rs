//! A small cluster for the scale-out tests: a real `redis-server` on a free loopback port (its own data folder,
//! append-only so that a stop and start keeps everything), `diffuse serve` and `diffuse worker` processes, and
//! the HTTP and Redis calls the tests make.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tiny test pipeline.
pub fn sd1() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models/sd1")
}

/// A Redis server owned by a test.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    password: Option<String>,
}

/// Whether `redis-server` can run here. CI (`DIFFUSE_REQUIRE_REDIS=1`, set by `.ci/run`) fails without it; a
/// developer's `cargo test` says it skipped.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("DIFFUSE_REQUIRE_REDIS").is_none(),
            "{test}: redis-server is not installed (apt-get install redis-server)"
        );
        eprintln!("{test}: skipped, redis-server is not installed (apt-get install redis-server)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// Starts a server in a fresh folder, with `password` if given.
    pub fn start(password: Option<&str>) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("diffuse-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            port,
            dir,
            child: None,
            password: password.map(String::from),
        };
        redis.start_again();
        redis
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--save",
                "",
                "--appendfsync",
                "always",
            ]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until("redis answers", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// Stops the server (SIGTERM: it writes its data and exits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            child.wait().unwrap();
        }
    }

    /// `redis://…` for this server (with the password when it has one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Runs a command with `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let out = command.args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `diffuse serve` or `diffuse worker` process, killed when dropped; its stderr goes to a file.
pub struct Process {
    pub child: Child,
    /// `host:port` of a server.
    pub addr: String,
    log: PathBuf,
}

impl Process {
    /// `diffuse serve --model sd1=… ARGS --port 0`.
    pub fn serve(args: &[&str]) -> Self {
        let model = format!("sd1={}", sd1().display());
        let mut process = Self::spawn("serve", &model, args, &["--port", "0"]);
        let mut line = String::new();
        BufReader::new(process.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        process.addr = line
            .trim()
            .strip_prefix("diffuse serve: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}: {}", process.log()))
            .to_string();
        process
    }

    /// `diffuse worker --model sd1=… ARGS`, once it reads its streams.
    pub fn worker(args: &[&str]) -> Self {
        Self::worker_with_model(&format!("sd1={}", sd1().display()), args)
    }

    /// `diffuse worker --model MODEL ARGS`, once it reads its streams.
    pub fn worker_with_model(model: &str, args: &[&str]) -> Self {
        let mut process = Self::spawn("worker", model, args, &[]);
        let mut line = String::new();
        BufReader::new(process.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("diffuse worker:"),
            "unexpected first line {line:?}: {}",
            process.log()
        );
        process
    }

    fn spawn(command: &str, model: &str, args: &[&str], extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!(
            "diffuse-{command}-{}-{}.log",
            std::process::id(),
            free_port()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_diffuse"))
            .arg(command)
            .args(["--model", model])
            .args(args)
            .args(extra)
            .env_remove("DIFFUSE_BROKER")
            .env_remove("DIFFUSE_API_KEY")
            .env_remove("DIFFUSE_MODEL")
            .env("DIFFUSE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            addr: String::new(),
            log,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: alive but silent (no heartbeats), as a stalled machine.
    pub fn pause(&self) {
        signal(&self.child, "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// SIGTERM, then its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        self.child.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `ready` every 50 ms; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request (the connection closes after it).
pub fn http(addr: &str, method: &str, path: &str, body: Option<&serde_json::Value>) -> Answer {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    Answer {
        status,
        head,
        body: response[split + 4..].to_vec(),
    }
}

/// `POST /v1/jobs` with `body`; the job's id.
pub fn submit(addr: &str, body: serde_json::Value) -> String {
    let answer = http(addr, "POST", "/v1/jobs", Some(&body));
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()["id"].as_str().unwrap().to_string()
}

/// `GET /v1/jobs/{id}` as JSON.
pub fn job(addr: &str, id: &str) -> serde_json::Value {
    let answer = http(addr, "GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// Waits for job `id` to end (within `limit`); its final JSON.
pub fn wait_for_end(addr: &str, id: &str, limit: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("job {id} ends"), limit, || {
        last = job(addr, id);
        matches!(
            last["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    });
    last
}

/// The PNG bytes of each image of an ended job.
pub fn images(addr: &str, id: &str) -> Vec<Vec<u8>> {
    let job = job(addr, id);
    job["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let answer = http(addr, "GET", image["url"].as_str().unwrap(), None);
            assert_eq!(answer.status, 200);
            answer.body
        })
        .collect()
}
