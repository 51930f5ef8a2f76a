//! Session middlewares and client libraries, unchanged, against a
//! three-node cluster of `sessmesh serve` processes. In each test two app
//! instances talk to two different nodes, as two replicas of a web service
//! behind a load balancer would, and a third connection on node 3 looks at
//! the keys. The scripts are in tests/middlewares/; each prints its checks
//! (`ok ...` or `FAILED ...` with the node's reply) and exits 1 if any failed.
//!
//! - Django's Redis cache and cache sessions, in databases 0 and 1, with
//!   Django's own `RedisCache` and with django-redis (its scripts, SCAN,
//!   locks); Python packages `django`, `django-redis` and `redis`;
//! - phpredis's session handler with locking, behind two PHP built-in web
//!   servers (Debian's `php-cli` and `php-redis`, and redis-py);
//! - ioredis transactions (`node`, `npm`; `npm ci` into tests/middlewares/node
//!   when its node_modules is missing);
//! - what Spring Session's RedisSessionRepository sends, replayed with
//!   redis-py.
//!
//! A test whose tools are missing says so and passes, unless
//! `SESSMESH_REQUIRE_CLIENTS=1` (which CI sets) makes their absence a failure.
//! Run them alone with `cargo test -p sessmesh-server --test middlewares -- --nocapture`.
#![allow(clippy::unwrap_used, reason = "a test panics to fail")]

mod support;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{Server, cluster, wait_for};

/// Where the scripts are.
const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/middlewares");

/// The longest a script may run; the PHP lock checks wait the most, up to
/// about ten seconds for a lock that is never released.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

fn script(name: &str) -> PathBuf {
    Path::new(SCRIPTS).join(name)
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether missing tools fail the tests rather than skip them (CI sets it).
fn required() -> bool {
    std::env::var("SESSMESH_REQUIRE_CLIENTS").as_deref() == Ok("1")
}

/// Whether the test can run: true if `present`; otherwise it says what is
/// missing and skips, or fails if `SESSMESH_REQUIRE_CLIENTS=1`.
fn tools(test: &str, present: bool, missing: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        !required(),
        "SESSMESH_REQUIRE_CLIENTS=1 but the {test} test is missing {missing}"
    );
    eprintln!("skipping the {test} test: it needs {missing}");
    false
}

fn python_has(modules: &str) -> bool {
    succeeds("python3", &["-c", &format!("import {modules}")])
}

fn addresses(nodes: &[Server]) -> Vec<String> {
    nodes.iter().map(|n| n.resp.to_string()).collect()
}

/// Runs `command` to its end (killing it after [`SCRIPT_TIMEOUT`]), prints
/// what it printed, and fails unless it exited 0.
fn run_script(what: &str, command: &mut Command) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = finish_within(&mut child, SCRIPT_TIMEOUT);
    let output = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    match status {
        Some(status) if status.success() => println!("{what}:\n{output}"),
        Some(status) => panic!("{what} failed ({status}):\n{output}"),
        None => panic!("{what} did not finish in {SCRIPT_TIMEOUT:?}:\n{output}"),
    }
}

/// Waits for `child` to exit; kills it and answers None after `within`.
fn finish_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn django_cache_and_sessions_from_two_instances_on_two_nodes() {
    if !tools(
        "Django",
        python_has("django, django_redis, redis"),
        "the django, django-redis and redis Python packages (pip install django django-redis redis)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &[]);
    run_script(
        "Django (django_sessions.py)",
        Command::new("python3")
            .arg(script("django_sessions.py"))
            .args(addresses(&nodes)),
    );
}

/// A PHP built-in web server serving php/app.php, in a process group of
/// its own (its workers are forked children); the group is ended when dropped.
struct PhpServer {
    url: String,
    child: Child,
}

impl PhpServer {
    /// Starts app instance `name` with its sessions on `node`, on a port
    /// PHP picks, and waits until it says where it listens.
    fn start(name: &str, node: &Server, log: &Path) -> PhpServer {
        use std::os::unix::process::CommandExt;

        let out = File::create(log).unwrap();
        let save_path = format!("session.save_path=tcp://{}", node.resp);
        let mut command = Command::new("php");
        for setting in [
            "session.save_handler=redis",
            save_path.as_str(),
            "session.gc_maxlifetime=600",
            "redis.session.locking_enabled=1",
            // The lock's PX: how long a lock outlives a request that never released it.
            "redis.session.lock_expire=30",
            // Try again every 20 ms, for up to 10 s, before reading without the lock.
            "redis.session.lock_wait_time=20000",
            "redis.session.lock_retries=500",
        ] {
            command.args(["-d", setting]);
        }
        let child = command
            .args(["-S", "127.0.0.1:0"])
            .arg(script("php/app.php"))
            // Three workers per instance, so that requests on one session
            // really run at the same time.
            .env("PHP_CLI_SERVER_WORKERS", "3")
            .env("APP_INSTANCE", name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .process_group(0)
            .spawn()
            .expect("php starts");
        let mut server = PhpServer {
            url: String::new(),
            child,
        };
        wait_for(
            &format!("PHP app instance {name} to listen"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let started = text
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("(http://"))
                    .and_then(|w| w.strip_suffix(')'));
                if let Some(address) = started {
                    server.url = format!("http://{address}");
                }
                !server.url.is_empty()
            },
        );
        server
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        // The server and its workers: the group whose id is the server's.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn phpredis_locked_sessions_from_two_instances_on_two_nodes() {
    let php = succeeds("php", &["-r", "exit(extension_loaded('redis') ? 0 : 1);"]);
    if !tools(
        "phpredis",
        php && python_has("redis"),
        "php with the redis extension (apt install php-cli php-redis) and the redis Python package",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &[]);
    let a = PhpServer::start("A", &nodes[0], &dir.path().join("php-a.log"));
    let b = PhpServer::start("B", &nodes[1], &dir.path().join("php-b.log"));
    run_script(
        "phpredis sessions (php_sessions.py)",
        Command::new("python3")
            .arg(script("php_sessions.py"))
            .args([&a.url, &b.url])
            .args(addresses(&nodes)),
    );
}

#[test]
fn ioredis_transactions_from_two_clients_on_two_nodes() {
    let node_dir = script("node");
    let npm = succeeds("node", &["--version"]) && succeeds("npm", &["--version"]);
    if npm && !node_dir.join("node_modules/ioredis").exists() {
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&node_dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed || !required(),
            "npm ci in {} failed",
            node_dir.display()
        );
    }
    if !tools(
        "ioredis",
        npm && node_dir.join("node_modules/ioredis").exists(),
        "node and npm, and ioredis installed by `npm ci` in tests/middlewares/node",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &[]);
    run_script(
        "ioredis (node/transactions.js)",
        Command::new("node")
            .arg(node_dir.join("transactions.js"))
            .args(addresses(&nodes)),
    );
}

#[test]
fn spring_session_repository_flow_from_two_instances_on_two_nodes() {
    if !tools(
        "Spring Session",
        python_has("redis"),
        "the redis Python package (pip install redis)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), &[]);
    run_script(
        "Spring Session (spring_session.py)",
        Command::new("python3")
            .arg(script("spring_session.py"))
            .args(addresses(&nodes)),
    );
}
