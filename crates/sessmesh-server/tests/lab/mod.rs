//! A lab of real `sessmesh serve` processes, each in a network namespace of
//! its own, on a bridge in a namespace of the lab's. Partitions are cut with
//! packet filter rules, a link loses and delays packets, a process is killed
//! with SIGKILL and restarted, a clock runs ahead under faketime.
//!
//! Nothing outside the lab's namespaces changes: the bridge, its address and
//! the nodes' addresses all live in them, and the test's own threads enter
//! the bridge's namespace to reach the nodes. The namespaces (and the
//! processes in them) are removed when the lab is dropped, when the test is
//! interrupted (SIGINT, SIGTERM), and, after a run that was killed, by the
//! next run.
//!
//! Needs root, `ip` (iproute2), `iptables-legacy` (iptables) and `faketime`.
#![allow(dead_code, reason = "each scenario uses part of it")]

pub(crate) mod delay;
pub(crate) mod history;
pub(crate) mod resp;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use delay::Delayer;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sessmesh");

/// The lab's subnet: private to its namespaces, so it cannot clash with the
/// host's networks.
const SUBNET: [u8; 3] = [10, 77, 0];
/// The address the test's clients use, on the bridge.
const BRIDGE_HOST: u8 = 254;

/// Namespaces and processes of every lab in this process, for the signal
/// handler.
static LIVE: Mutex<Vec<(Vec<String>, Vec<u32>)>> = Mutex::new(Vec::new());

/// Whether this machine can run the lab; without it the test says why and
/// passes, unless `SESSMESH_REQUIRE_NETNS=1` (which CI sets).
pub(crate) fn available() -> bool {
    let works = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = works("ip", &["-V"])
        && works("iptables-legacy", &["--version"])
        && works("faketime", &["-f", "+0s", "true"]);
    if root && tools {
        return true;
    }
    let missing = "root, ip (iproute2), iptables-legacy (apt install iptables) and faketime (apt install faketime)";
    assert!(
        std::env::var("SESSMESH_REQUIRE_NETNS").as_deref() != Ok("1"),
        "SESSMESH_REQUIRE_NETNS=1 but this run lacks {missing}"
    );
    eprintln!("skipping the network-namespace fault test: it needs {missing}");
    false
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` in namespace `ns`.
fn in_ns(ns: &str, cmd: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, cmd];
    all.extend_from_slice(args);
    run("ip", &all);
}

/// Kills every process in namespace `ns` with SIGKILL.
fn kill_all_in(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `iptables-legacy` with `rule` (words separated by spaces) in `ns`.
fn iptables(ns: &str, rule: &str) {
    let words: Vec<&str> = rule.split_whitespace().collect();
    in_ns(ns, "iptables-legacy", &words);
}

/// Removes what a lab made: its processes first, then its namespaces.
fn remove(namespaces: &[String], pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    for ns in namespaces {
        // Whatever else still runs in it (the node faketime started).
        kill_all_in(ns);
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes the namespaces of labs whose process is gone (a run killed with
/// SIGKILL could not clean up after itself).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix("smf")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(str::to_owned)
        .collect();
    if !stale.is_empty() {
        eprintln!("removing namespaces left by an earlier run: {stale:?}");
        remove(&stale, &[]);
    }
}

/// Cleans up on SIGINT and SIGTERM, once per process.
fn clean_up_on_signals() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let installed = ctrlc::set_handler(|| {
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            for (namespaces, pids) in live.iter() {
                remove(namespaces, pids);
            }
            eprintln!("interrupted: the lab's namespaces are removed");
            std::process::exit(130);
        });
        if let Err(e) = installed {
            eprintln!("cannot clean up on signals: {e}");
        }
    });
}

/// How one node runs.
#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    /// Write level (`--write-level`).
    pub(crate) write_level: &'static str,
}

/// One node of the lab.
pub(crate) struct LabNode {
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) resp: Option<SocketAddr>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) spec: NodeSpec,
    /// Where its log (standard error) goes, one file per start.
    pub(crate) logs: Vec<PathBuf>,
    child: Option<Child>,
}

impl LabNode {
    /// The Redis endpoint; panics if the node is not running.
    pub(crate) fn resp(&self) -> SocketAddr {
        self.resp
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }
}

/// See the [module docs](self).
pub(crate) struct Lab {
    bridge_ns: String,
    dir: tempfile::TempDir,
    pub(crate) nodes: Vec<LabNode>,
    delayer: Option<Delayer>,
}

fn ip_of(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

impl Lab {
    /// Builds the namespaces and the bridge for `specs.len()` nodes (none
    /// started), makes their certificates, and moves the calling thread into
    /// the bridge's namespace (threads it starts later are there too).
    pub(crate) fn new(specs: &[NodeSpec]) -> Lab {
        remove_stale();
        clean_up_on_signals();
        let id = format!("smf{}", std::process::id());
        let bridge_ns = format!("{id}-br");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nodes: Vec<LabNode> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| LabNode {
                name: format!("node-{}", i + 1),
                ns: format!("{id}-n{}", i + 1),
                ip: ip_of(u8::try_from(i + 1).expect("a few nodes")),
                peer: None,
                resp: None,
                http: None,
                spec: spec.clone(),
                logs: Vec::new(),
                child: None,
            })
            .collect();
        let mut namespaces = vec![bridge_ns.clone()];
        namespaces.extend(nodes.iter().map(|n| n.ns.clone()));
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((namespaces.clone(), Vec::new()));
        let lab = Lab {
            bridge_ns,
            dir,
            nodes,
            delayer: None,
        };
        for ns in &namespaces {
            run("ip", &["netns", "add", ns]);
        }
        let br = lab.bridge_ns.as_str();
        let bridge_addr = format!("{}/24", ip_of(BRIDGE_HOST));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["addr", "add", bridge_addr.as_str(), "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            let mut all = vec!["-n", br];
            all.extend(args);
            run("ip", &all);
        }
        for (i, node) in lab.nodes.iter().enumerate() {
            let (port, inside) = (format!("v{}", i + 1), format!("e{}", i + 1));
            let addr = format!("{}/24", node.ip);
            run(
                "ip",
                &[
                    "-n", br, "link", "add", &port, "type", "veth", "peer", "name", &inside,
                ],
            );
            run("ip", &["-n", br, "link", "set", &inside, "netns", &node.ns]);
            run(
                "ip",
                &["-n", br, "link", "set", &port, "master", "br0", "up"],
            );
            run("ip", &["-n", &node.ns, "link", "set", "lo", "up"]);
            run(
                "ip",
                &["-n", &node.ns, "addr", "add", &addr, "dev", &inside],
            );
            run("ip", &["-n", &node.ns, "link", "set", &inside, "up"]);
        }
        let d = lab.dir.path().to_str().expect("a UTF-8 path");
        run(BIN, &["certs", "init", "--dir", d]);
        for node in &lab.nodes {
            let ip = node.ip.to_string();
            run(
                BIN,
                &["certs", "issue", &node.name, "--ip", &ip, "--dir", d],
            );
        }
        let ns = File::open(format!("/run/netns/{}", lab.bridge_ns)).expect("the bridge namespace");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("the test thread enters the bridge namespace");
        lab
    }

    /// Starts node `i` (0-based), under `faketime -f <offset>` if given, and
    /// waits for its ready line. It joins through every other running node.
    pub(crate) fn start(&mut self, i: usize, clock_offset: Option<&str>) {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && n.child.is_some())
            .filter_map(|(_, n)| n.peer.map(|p| p.to_string()))
            .collect();
        let dir = self.dir.path().to_path_buf();
        let node = &mut self.nodes[i];
        let file = |suffix: &str| {
            dir.join(format!("{}{suffix}", node.name))
                .to_str()
                .expect("a UTF-8 path")
                .to_owned()
        };
        let listen = format!("{}:0", node.ip);
        let log = dir.join(format!("{}.{}.log", node.name, node.logs.len() + 1));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &node.ns]);
        if let Some(offset) = clock_offset {
            command.args(["faketime", "-f", offset]);
            command.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        command
            .arg(BIN)
            .arg("serve")
            .args(["--peer-listen", &listen])
            .args(["--resp-listen", &listen])
            .args(["--http-listen", &listen])
            .args(["--membership", "local"])
            .args(["--anti-entropy-period-ms", "2000"])
            .args(["--worker-threads", "1"])
            .args(["--read-level", "one"])
            .args(["--write-level", node.spec.write_level])
            .args(["--tls-ca", &dir.join("ca.pem").to_string_lossy()])
            .args(["--tls-cert", &file(".pem")])
            .args(["--tls-key", &file(".key")]);
        if !seeds.is_empty() {
            command.args(["--seeds", &seeds.join(",")]);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("a log file"))
            .spawn()
            .expect("ip netns exec starts");
        node.logs.push(log);
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
            .unwrap_or_else(|_| panic!("{} did not report ready; see {:?}", node.name, node.logs));
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        };
        node.peer = Some(field("peer"));
        node.resp = Some(field("resp"));
        node.http = Some(field("http"));
        self.track(child.id());
        self.nodes[i].child = Some(child);
    }

    fn track(&self, pid: u32) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = live
            .iter_mut()
            .find(|(ns, _)| ns.first() == Some(&self.bridge_ns))
        {
            entry.1.push(pid);
        }
    }

    /// Kills node `i` with SIGKILL: no goodbye, no handoff. Every process
    /// in its namespace goes (faketime runs the node as its child).
    pub(crate) fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        kill_all_in(&node.ns);
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.resp = None;
        node.http = None;
    }

    /// The body of `path` on node `i`'s HTTP endpoint, if it answers.
    /// Straight to the node: a proxy set in the environment is outside the
    /// lab's namespaces.
    pub(crate) fn http_get(&self, i: usize, path: &str) -> Option<String> {
        let http = self.nodes[i].http?;
        let agent: ureq::Agent = ureq::Agent::config_builder().proxy(None).build().into();
        agent
            .get(&format!("http://{http}{path}"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    }

    /// The JSON `/status` of node `i`, if it answers.
    pub(crate) fn status(&self, i: usize) -> Option<serde_json::Value> {
        serde_json::from_str(&self.http_get(i, "/status")?).ok()
    }

    /// Waits until every running node reports every running node as a
    /// member in state `alive` (the state each announces once it has had an
    /// anti-entropy period to fill its partitions).
    pub(crate) fn wait_all_alive(&self, within: Duration) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        wait_until("every node to report every node alive", within, || {
            let seen: Vec<Vec<(String, String)>> = running
                .iter()
                .map(|&i| {
                    let status = self.status(i).unwrap_or_default();
                    let members = status["members"].as_array().cloned().unwrap_or_default();
                    members
                        .iter()
                        .map(|m| (m["name"].to_string(), m["state"].to_string()))
                        .collect()
                })
                .collect();
            let alive = seen
                .iter()
                .all(|v| v.len() == running.len() && v.iter().all(|(_, s)| s == "\"alive\""));
            if alive {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        });
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways,
    /// with packet filter rules in the nodes' namespaces.
    pub(crate) fn cut(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let (ns, other) = (&self.nodes[from].ns, self.nodes[to].ip);
                    iptables(ns, &format!("-A INPUT -s {other} -j DROP"));
                    iptables(ns, &format!("-A OUTPUT -d {other} -j DROP"));
                }
            }
        }
    }

    /// Loses `loss_percent` of the packets between nodes `a` and `b` and
    /// delays the rest by `delay` ± `jitter` each way: rules in `a`'s
    /// namespace, and a thread there that holds the packets the kernel queues.
    pub(crate) fn degrade(
        &mut self,
        a: usize,
        b: usize,
        loss_percent: u32,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) {
        let ns = self.nodes[a].ns.clone();
        let other = self.nodes[b].ip.to_string();
        let probability = format!("{:.2}", f64::from(loss_percent) / 100.0);
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let rule = format!("-A {chain} {dir} {other}");
            iptables(
                &ns,
                &format!("{rule} -m statistic --mode random --probability {probability} -j DROP"),
            );
            iptables(
                &ns,
                &format!("{rule} -j NFQUEUE --queue-num 0 --queue-bypass"),
            );
        }
        self.delayer = Some(Delayer::start(&ns, 0, delay, jitter, seed));
    }

    /// Packets node `i`'s rules have dropped since they were set.
    pub(crate) fn dropped(&self, i: usize) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns])
            .args(["iptables-legacy", "-L", "-v", "-x", "-n"])
            .output()
            .expect("iptables lists its rules");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                (words.get(2) == Some(&"DROP")).then(|| words[0].parse::<u64>().ok())?
            })
            .sum()
    }

    /// Removes every rule and stops the delay: the network is whole again.
    /// Returns how many packets were delayed since the last heal.
    pub(crate) fn heal(&mut self) -> u64 {
        for node in &self.nodes {
            iptables(&node.ns, "-F");
        }
        self.delayer.take().map_or(0, Delayer::stop)
    }

    /// The lines of node `i`'s logs (every start) that contain `text`.
    pub(crate) fn log_lines(&self, i: usize, text: &str) -> Vec<String> {
        self.nodes[i]
            .logs
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.contains(text))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(delayer) = self.delayer.take() {
            delayer.stop();
        }
        let pids: Vec<u32> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .map(|mut c| {
                let _ = c.kill();
                let _ = c.wait();
                c.id()
            })
            .collect();
        let mut namespaces = vec![self.bridge_ns.clone()];
        namespaces.extend(self.nodes.iter().map(|n| n.ns.clone()));
        remove(&namespaces, &pids);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(ns, _)| ns.first() != Some(&self.bridge_ns));
        if std::thread::panicking() {
            // Keep the nodes' logs for whoever reads the failure.
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a temporary directory"),
            );
            eprintln!("the nodes' logs are in {}", dir.keep().display());
        }
    }
}

/// Polls `condition` until it holds; panics after `within`.
pub(crate) fn wait_for(
    what: &str,
    within: Duration,
    mut condition: impl FnMut() -> bool,
) -> Duration {
    wait_until(what, within, || {
        if condition() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
}

/// Polls `check` until it passes; panics after `within` with what it last said.
pub(crate) fn wait_until(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let why = match check() {
            Ok(()) => return start.elapsed(),
            Err(why) => why,
        };
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}: {why}"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
}
