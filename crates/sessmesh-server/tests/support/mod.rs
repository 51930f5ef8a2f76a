//! Starting `sessmesh serve` processes on ports picked at run time.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sessmesh");

/// A running node; killed when dropped.
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) peer: SocketAddr,
    pub(crate) resp: SocketAddr,
    pub(crate) http: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Asks the node to leave (SIGTERM) and waits for it to exit.
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// Starts `sessmesh serve` with `args` (ports default to 0) and waits for
/// its ready line.
pub(crate) fn start(args: &[&str]) -> Server {
    let mut command = Command::new(BIN);
    command.arg("serve");
    for (flag, default) in [
        ("--peer-listen", "127.0.0.1:0"),
        ("--resp-listen", "127.0.0.1:0"),
        ("--http-listen", "127.0.0.1:0"),
        ("--membership", "local"),
    ] {
        if !args.contains(&flag) {
            command.args([flag, default]);
        }
    }
    let mut child = command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the sessmesh binary starts");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("sessmesh ready:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("sessmesh serve {args:?} did not report ready"));
    Server {
        name: field(&line, "name"),
        peer: field(&line, "peer").parse().expect("an address"),
        resp: field(&line, "resp").parse().expect("an address"),
        http: field(&line, "http").parse().expect("an address"),
        child,
    }
}

/// Makes a CA and certificates for `names` in `dir`.
pub(crate) fn certificates(dir: &Path, names: &[&str]) {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().expect("runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let d = dir.to_str().expect("utf-8 path");
    run(&["certs", "init", "--dir", d]);
    for name in names {
        run(&["certs", "issue", name, "--ip", "127.0.0.1", "--dir", d]);
    }
}

/// The flags that give node `name` its certificate from `dir`.
pub(crate) fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let path = |file: String| -> String {
        let p: PathBuf = dir.join(file);
        p.to_str().expect("utf-8 path").to_owned()
    };
    vec![
        "--tls-ca".into(),
        path("ca.pem".into()),
        "--tls-cert".into(),
        path(format!("{name}.pem")),
        "--tls-key".into(),
        path(format!("{name}.key")),
    ]
}

/// GET of `path` on a node's HTTP endpoint.
pub(crate) fn http_get(server: &Server, path: &str) -> String {
    ureq::get(&format!("http://{}{path}", server.http))
        .call()
        .expect("the HTTP endpoint answers")
        .body_mut()
        .read_to_string()
        .expect("a text body")
}

/// Polls `condition` until it holds; panics after `within`.
pub(crate) fn wait_for(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts three nodes with certificates and waits until each sees all three.
pub(crate) fn cluster(dir: &Path, extra: &[&str]) -> Vec<Server> {
    let names = ["node-1", "node-2", "node-3"];
    certificates(dir, &names);
    let mut servers: Vec<Server> = Vec::new();
    for name in names {
        let mut args: Vec<String> = tls_args(dir, name);
        if let Some(first) = servers.first() {
            args.extend(["--seeds".into(), first.peer.to_string()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        servers.push(start(&args));
    }
    for server in &servers {
        wait_for(
            "every node to see three members",
            Duration::from_secs(20),
            || {
                let status: serde_json::Value =
                    serde_json::from_str(&http_get(server, "/status")).expect("JSON");
                status["members"].as_array().map(Vec::len) == Some(3)
            },
        );
    }
    servers
}
