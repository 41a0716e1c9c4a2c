//! Harness for Hopwire's end-to-end tests.
//!
//! What it does: finds the built binaries, runs commands with a time bound,
//! builds a kept testnet (`hopwire testnet --keep --json`) and tears it down
//! again in `Drop`, creates extra namespaces and background processes that are
//! removed in `Drop` too, and polls with a step bound so a stuck system fails a
//! test instead of hanging it.
//!
//! What it does not do: it never builds namespaces of its own for the testnet
//! (the `hopwire` binary does that) and it never sends traffic outside the
//! namespaces a test creates. The tests need root; without it they fail.

use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long one ordinary command may take before the harness kills it.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `hopwire testnet --keep` may take (namespaces, both daemons, a download).
pub const TESTNET_TIMEOUT: Duration = Duration::from_secs(240);

/// End-to-end tests share the machine's CPU and its namespaces: one at a time,
/// also under plain `cargo test` (nextest runs them in the `e2e` group).
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------- binaries

/// The directory holding `hopwire` and `hopwire-node`: `$HOPWIRE_BIN_DIR`, or
/// the cargo target dir this test executable was built in.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOPWIRE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot find the test executable: {e}"));
    // target/debug/deps/e2e-xxxx -> target/debug
    let deps = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()));
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    dir.to_owned()
}

/// The path of one binary; panics with a clear message when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} is missing: run `cargo build --workspace --bins` first (or set HOPWIRE_BIN_DIR)",
        path.display()
    );
    path
}

/// An example program of the workspace (`cargo build --workspace --examples`).
pub fn example_bin(name: &str) -> PathBuf {
    bin(&format!("examples/{name}"))
}

pub fn hopwire_bin() -> PathBuf {
    bin("hopwire")
}

pub fn node_bin() -> PathBuf {
    bin("hopwire-node")
}

/// Panics unless the test runs as root: the tests build namespaces and TUN
/// devices, and a run that silently skips them would prove nothing.
pub fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the end-to-end tests need root (network namespaces, TUN devices); effective uid is {euid}"
    );
}

/// Panics unless `program` is on PATH.
pub fn require_tool(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed; the end-to-end tests need it (apt-get install the package providing it)"
    );
}

// ---------------------------------------------------------------- commands

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub command: String,
    /// `None` when the harness killed the command after its time bound.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Panics with the whole output unless the command exited 0.
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed after its time bound".into(),
        };
        write!(
            f,
            "`{}`: {status}\n--- stdout\n{}\n--- stderr\n{}\n---",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader<R: Read + Send + 'static>(mut r: R, buf: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&chunk[..n]),
            }
        }
    })
}

/// Runs `cmd` to completion, at most `timeout`; stdin is closed. A command
/// that outlives the bound is killed and reported as timed out. Background
/// processes that keep stdout open do not block the caller past the exit of
/// the command itself.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
    let out_buf = Arc::new(Mutex::new(Vec::new()));
    let err_buf = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(reader(o, out_buf.clone()));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(reader(e, err_buf.clone()));
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    // Let the readers drain what the command wrote; a daemon it left behind
    // may hold the pipes open forever, so this wait is bounded too.
    let drain = Instant::now() + Duration::from_secs(3);
    while Instant::now() < drain && readers.iter().any(|r| !r.is_finished()) {
        thread::sleep(Duration::from_millis(10));
    }
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    Output {
        command,
        status,
        stdout: text(&out_buf),
        stderr: text(&err_buf),
    }
}

pub fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    run_timeout(Command::new(program).args(args), CMD_TIMEOUT)
}

/// Runs `program args` inside network namespace `ns`.
pub fn ns_exec(ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    ns_exec_timeout(ns, program, args, CMD_TIMEOUT)
}

pub fn ns_exec_timeout(ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program).args(args);
    run_timeout(&mut cmd, timeout)
}

/// `curl` inside `ns`: body to `out` (or discarded), at most `max_time` seconds.
pub fn curl(ns: &str, url: &str, out: Option<&Path>, max_time: u32) -> Output {
    let max = max_time.to_string();
    let target = out
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/dev/null".into());
    let args = ["-sS", "-f", "--noproxy", "*", "--max-time", &max, "-o", &target, url];
    ns_exec_timeout(ns, "curl", &args, Duration::from_secs(u64::from(max_time) + 30))
}

/// Calls `probe` every `interval` until it returns `Some`, at most `steps`
/// times. Panics naming `what` and the last observation otherwise.
pub fn poll_until<T>(what: &str, steps: u32, interval: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::from("(never probed)");
    for step in 0..steps {
        match probe() {
            Ok(v) => return v,
            Err(seen) => last = seen,
        }
        if step + 1 < steps {
            thread::sleep(interval);
        }
    }
    panic!("gave up waiting for {what} after {steps} probes {interval:?} apart; last seen: {last}");
}

pub fn sha256_file(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    hex(&Sha256::digest(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh scratch directory under the system temp dir, removed in `Drop`.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hopwire-e2e-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- processes

/// True while any thread of process `pid` exists and is not a zombie. A
/// killed multi-threaded process shows its main thread as a zombie while
/// the others are still exiting, and holding its sockets: it is not gone
/// until they are.
pub fn pid_alive(pid: u32) -> bool {
    let live = |stat: &str| {
        // "pid (comm) S ..." - the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    };
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| live(&stat)))
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid` and waits until it is gone.
pub fn kill_and_wait(pid: u32, signal: &str) {
    if !pid_alive(pid) {
        return;
    }
    let _ = run("kill", &[&format!("-{signal}"), &pid.to_string()]);
    let gone = (0..300).any(|_| {
        if pid_alive(pid) {
            thread::sleep(Duration::from_millis(50));
            false
        } else {
            true
        }
    });
    if !gone {
        let _ = run("kill", &["-KILL", &pid.to_string()]);
        let _ = (0..100).any(|_| {
            thread::sleep(Duration::from_millis(50));
            !pid_alive(pid)
        });
    }
}

/// A process the test started in the background, with its output in a log
/// file; killed in `Drop`.
#[derive(Debug)]
pub struct Background {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Background {
    /// Starts `program args` inside `ns` with stdout and stderr appended to `log`.
    pub fn start_in_ns(
        name: &str,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Self {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let file2 = file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup log {}: {e}", log.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let command = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        Self {
            name: name.into(),
            child,
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 60)
            );
        }
    }

    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = run("kill", &["-TERM", &self.child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a text file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

// ---------------------------------------------------------------- namespaces

/// A network namespace the test created itself; deleted in `Drop` (which
/// also removes every interface inside it, and the peer ends of its veths).
#[derive(Debug)]
pub struct ScratchNs {
    pub name: String,
}

impl ScratchNs {
    pub fn new(name: &str) -> Self {
        assert!(name.len() <= 15, "namespace name {name} is too long");
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name]).ok();
        let ns = Self { name: name.into() };
        ns.exec("ip", &["link", "set", "lo", "up"]).ok();
        ns
    }

    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        ns_exec(&self.name, program, args)
    }

    /// Network interfaces inside the namespace, by name.
    pub fn links(&self) -> Vec<String> {
        link_names(&self.name)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

pub fn link_names(ns: &str) -> Vec<String> {
    let out = ns_exec(ns, "ip", &["-o", "link", "show"]).ok();
    out.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .collect()
}

pub fn netns_list() -> Vec<String> {
    run("ip", &["netns", "list"])
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------- testnet

/// The namespaces of a testnet, from its JSON summary.
#[derive(Debug, Clone)]
pub struct Namespaces {
    pub inet: String,
    pub exit: String,
    pub client: String,
    pub lan: String,
}

/// A kept testnet: `hopwire testnet --keep --json --prefix P`, torn down with
/// `hopwire testnet --down --prefix P` in `Drop`, together with every extra
/// process and namespace the test attached to it. When the test is failing,
/// `Drop` first prints the logs so the failure can be read from CI output.
#[derive(Debug)]
pub struct Testnet {
    pub prefix: String,
    pub summary: Value,
    pub ns: Namespaces,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Processes the test started (restarted exit nodes, wireguard-go, ...).
    pub extra: Vec<Background>,
    /// Namespaces the test created besides the testnet's own.
    pub extra_ns: Vec<ScratchNs>,
    /// Extra log files to show when the test fails.
    pub extra_logs: Vec<PathBuf>,
    _serial: MutexGuard<'static, ()>,
}

/// Runs `hopwire testnet --down --prefix P` (idempotent) and reports failure on stderr.
pub fn testnet_down(prefix: &str) -> Output {
    let out = run_timeout(
        Command::new(hopwire_bin()).args(["testnet", "--down", "--prefix", prefix]),
        CMD_TIMEOUT,
    );
    if !out.success() {
        eprintln!("[e2e] teardown of testnet {prefix} failed: {out}");
    }
    out
}

/// Guard that tears a testnet down even if starting it failed halfway.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        testnet_down(&self.0);
    }
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("testnet summary has no string at {}: {v:#}", path.join(".")))
}

/// Parses the one JSON object `hopwire testnet --json` prints.
pub fn parse_summary(stdout: &str) -> Value {
    let trimmed = stdout.trim();
    serde_json::from_str(trimmed)
        .or_else(|_| {
            let start = trimmed.find('{').unwrap_or(0);
            serde_json::from_str(&trimmed[start..])
        })
        .unwrap_or_else(|e| panic!("testnet --json did not print one JSON object ({e}); stdout was:\n{stdout}"))
}

impl Testnet {
    /// Builds a kept testnet under `prefix` with a test file of `size_mb` MiB.
    /// It has one exit (so which exit carries the traffic is known) and the
    /// testnet's default relays and circuit length.
    pub fn start(prefix: &str, size_mb: u32) -> Self {
        Self::start_with(prefix, size_mb, &[])
    }

    /// Like [`Testnet::start`], with more `hopwire testnet` arguments
    /// (e.g. `--relays 2`).
    pub fn start_with(prefix: &str, size_mb: u32, extra: &[&str]) -> Self {
        Self::start_with_env(prefix, size_mb, extra, &[])
    }

    /// Like [`Testnet::start_with`], with environment variables for every
    /// process of the testnet (nodes, ledger, client).
    pub fn start_with_env(prefix: &str, size_mb: u32, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let serial = serial();
        require_root();
        let hopwire = hopwire_bin();
        node_bin();
        // A previous run that was killed may have left this prefix behind.
        testnet_down(prefix);
        let down = DownOnDrop(prefix.to_owned());
        let size = size_mb.to_string();
        let out = run_timeout(
            Command::new(&hopwire)
                .args([
                    "testnet",
                    "--keep",
                    "--json",
                    "--prefix",
                    prefix,
                    "--size-mb",
                    &size,
                    "--exits",
                    "1",
                ])
                .args(extra)
                .envs(env.iter().copied()),
            TESTNET_TIMEOUT,
        );
        assert!(out.success(), "hopwire testnet --keep failed: {out}");
        let summary = parse_summary(&out.stdout);
        let ns = Namespaces {
            inet: str_field(&summary, &["namespaces", "inet"]).to_owned(),
            exit: str_field(&summary, &["namespaces", "exit"]).to_owned(),
            client: str_field(&summary, &["namespaces", "client"]).to_owned(),
            lan: str_field(&summary, &["namespaces", "lan"]).to_owned(),
        };
        let dir = PathBuf::from(str_field(&summary, &["dir"]));
        let socket = PathBuf::from(str_field(&summary, &["client", "socket"]));
        std::mem::forget(down);
        let tn = Self {
            prefix: prefix.to_owned(),
            summary,
            ns,
            dir,
            socket,
            extra: Vec::new(),
            extra_ns: Vec::new(),
            extra_logs: Vec::new(),
            _serial: serial,
        };
        assert_eq!(
            tn.summary["download"]["sha256_ok"],
            Value::Bool(true),
            "testnet download failed its checksum: {:#}",
            tn.summary
        );
        tn
    }

    pub fn field(&self, path: &[&str]) -> &str {
        str_field(&self.summary, path)
    }

    pub fn exit_pid(&self) -> u32 {
        self.summary["exit"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("testnet summary has no exit.pid: {:#}", self.summary))
    }

    pub fn record(&self) -> String {
        self.field(&["exit", "record"]).to_owned()
    }

    /// The testnet node (from the summary) whose identity is `id`.
    pub fn node(&self, id: &str) -> &Value {
        self.summary["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["identity"].as_str() == Some(id)))
            .unwrap_or_else(|| panic!("node {id} is not among the testnet's nodes: {:#}", self.summary))
    }

    /// `hopwire-node ARGS` where the exit runs (it reaches the ledger from there).
    pub fn node_cli(&self, args: &[&str]) -> Output {
        ns_exec(&self.ns.exit, node_bin(), args)
    }

    pub fn exit_config(&self) -> PathBuf {
        PathBuf::from(self.field(&["exit", "config"]))
    }

    pub fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    pub fn access_log(&self) -> PathBuf {
        self.dir.join("inet-access.log")
    }

    /// The lines of the pretend internet's access log as (peer, path).
    pub fn access_entries(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(peer, path)| (peer.trim().to_owned(), path.trim().to_owned()))
            .collect()
    }

    /// The client ns's resolv.conf as `ip netns exec` bind-mounts it.
    pub fn client_resolv_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/netns/{}/resolv.conf", self.ns.client))
    }

    pub fn client_resolv(&self) -> String {
        let p = self.client_resolv_path();
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Starts the client daemon again (after the test stopped it) on the
    /// same socket, state directory, bootstrap node and ledger, logging to
    /// `log` in the testnet's dir; waits until it answers.
    pub fn restart_client(&mut self, log: &str) {
        self.restart_client_with(log, &[], &hopwire_bin(), &[]);
    }

    /// Like [`Testnet::restart_client`], with the daemon binary `daemon`
    /// started through `launcher` (e.g. `setpriv` and its options) and given
    /// `extra` daemon options.
    pub fn restart_client_with(&mut self, log: &str, launcher: &[&str], daemon: &Path, extra: &[&str]) {
        let socket = self.socket.to_string_lossy().into_owned();
        let daemon = daemon.to_string_lossy().into_owned();
        let mut args: Vec<&str> = launcher.iter().skip(1).copied().collect();
        if !launcher.is_empty() {
            args.push(&daemon);
        }
        args.extend([
            "--socket",
            &socket,
            "daemon",
            "--state-dir",
            self.field(&["client", "state_dir"]),
            "--bootstrap",
            self.field(&["bootstrap", "dht_addr"]),
            "--ledger",
            self.field(&["ledger", "addr"]),
        ]);
        args.extend(extra);
        let program = launcher.first().copied().unwrap_or(&daemon).to_owned();
        let daemon = Background::start_in_ns(
            "restarted client daemon",
            &self.ns.client,
            program,
            &args,
            &self.dir.join(log),
            &[],
        );
        self.extra.push(daemon);
        poll_until(
            "the restarted daemon to answer",
            120,
            Duration::from_millis(250),
            || {
                let out = self.cli(&["status", "--json"]);
                out.success().then_some(()).ok_or_else(|| out.to_string())
            },
        );
    }

    /// `hopwire --socket S ARGS` (the CLI itself needs no namespace).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(hopwire_bin());
        cmd.arg("--socket").arg(&self.socket).args(args);
        run_timeout(&mut cmd, CMD_TIMEOUT)
    }

    /// `hopwire status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]).ok();
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
    }

    fn try_status(&self) -> Result<Value, String> {
        let out = self.cli(&["status", "--json"]);
        if !out.success() {
            return Err(out.to_string());
        }
        serde_json::from_str(out.stdout.trim()).map_err(|e| format!("not JSON ({e}): {}", out.stdout))
    }

    /// Polls `status --json` (every 250 ms, at most `secs` seconds) until
    /// `accept` returns true; returns that status.
    pub fn wait_status(&self, what: &str, secs: u32, accept: impl Fn(&Value) -> bool) -> Value {
        poll_until(what, secs * 4, Duration::from_millis(250), || {
            let st = self.try_status()?;
            if accept(&st) {
                Ok(st)
            } else {
                Err(st.to_string())
            }
        })
    }

    pub fn wait_state(&self, state: &str, secs: u32) -> Value {
        self.wait_status(&format!("client state {state}"), secs, |st| st["state"] == state)
    }

    pub fn disconnect(&self) {
        self.cli(&["disconnect"]).ok();
        self.wait_state("disconnected", 30);
    }

    /// Connects the way the testnet did: a circuit of the same number of
    /// hops, chosen among the testnet's nodes (`nodes_file`).
    pub fn reconnect(&self) {
        let nodes = self.field(&["nodes_file"]).to_owned();
        let hops = self.summary["hops"].as_u64().unwrap_or(3).to_string();
        let out = self.cli(&["connect", "--hops", &hops, "--nodes", &nodes]);
        assert!(out.success(), "connect failed: {out}");
        self.wait_state("connected", 60);
    }

    /// The address of the last hop of the client's circuit, from `status --json`.
    pub fn exit_addr(&self) -> String {
        let st = self.status();
        st["exit"]["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("status has no exit.addr: {st}"))
            .to_owned()
    }

    pub fn curl_client(&self, url: &str, out: Option<&Path>, max_time: u32) -> Output {
        curl(&self.ns.client, url, out, max_time)
    }

    /// Stops the exit node started by the testnet (or by `restart_exit`),
    /// with `signal`, and waits until it is gone.
    pub fn stop_exit(&mut self, signal: &str) {
        // A restarted exit is ours to stop; the original one we stop by pid.
        if let Some(pos) = self.extra.iter().position(|b| b.name == "exit node") {
            let mut bg = self.extra.remove(pos);
            if signal == "KILL" {
                let _ = bg.child.kill();
                let _ = bg.child.wait();
            } else {
                bg.stop();
            }
            return;
        }
        kill_and_wait(self.exit_pid(), signal);
    }

    /// Starts `hopwire-node run --config <exit config>` inside the exit ns.
    pub fn restart_exit(&mut self) {
        let log = self.dir.join(format!("exit-restart-{}.log", self.extra.len()));
        let config = self.exit_config();
        let config = config.to_string_lossy().into_owned();
        let bg = Background::start_in_ns(
            "exit node",
            &self.ns.exit,
            node_bin(),
            &["run", "--config", &config],
            &log,
            &[],
        );
        self.extra_logs.push(log);
        self.extra.push(bg);
        // Give it a moment, then make sure it did not die on its config.
        thread::sleep(Duration::from_secs(1));
        if let Some(bg) = self.extra.last_mut() {
            bg.assert_running();
        }
    }

    /// Edits the exit's node.toml with `edit` applied to its TOML table.
    pub fn edit_exit_config(&self, edit: impl FnOnce(&mut toml::Table)) {
        let path = self.exit_config();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()));
        edit(&mut table);
        let out = toml::to_string(&table).unwrap_or_else(|e| panic!("serialise {}: {e}", path.display()));
        fs::write(&path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// `ip -4/-6 route` and `rule` of the client ns, all tables.
    pub fn client_routes(&self) -> String {
        let mut s = String::new();
        for args in [
            ["-4", "route", "show", "table", "all"],
            ["-6", "route", "show", "table", "all"],
            ["-4", "rule", "show", "", ""],
            ["-6", "rule", "show", "", ""],
        ] {
            let args: Vec<&str> = args.iter().copied().filter(|a| !a.is_empty()).collect();
            let out = ns_exec(&self.ns.client, "ip", &args).ok();
            s.push_str(&format!("# ip {}\n{}", args.join(" "), out.stdout));
        }
        s
    }

    fn dump_logs(&self) {
        eprintln!("[e2e] ---- testnet {} summary:\n{:#}", self.prefix, self.summary);
        match self.try_status() {
            Ok(st) => eprintln!("[e2e] ---- client status: {st}"),
            Err(e) => eprintln!("[e2e] ---- client status unavailable: {e}"),
        }
        let mut logs = Vec::new();
        for key in ["exit", "client"] {
            if let Some(p) = self.summary[key]["log"].as_str() {
                logs.push(PathBuf::from(p));
            }
        }
        // The relays too: a circuit is often lost at one of them.
        let nodes = self.summary["nodes"].as_array().into_iter().flatten();
        logs.extend(nodes.filter_map(|n| n["log"].as_str()).map(PathBuf::from));
        logs.extend(self.extra.iter().map(|b| b.log.clone()));
        logs.extend(self.extra_logs.iter().cloned());
        logs.sort();
        logs.dedup();
        for log in logs {
            eprintln!("[e2e] ---- last lines of {}:\n{}", log.display(), tail(&log, 80));
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        for bg in &mut self.extra {
            bg.stop();
        }
        self.extra.clear();
        self.extra_ns.clear();
        testnet_down(&self.prefix);
    }
}

/// True if `addr` is inside `net`/`len`.
pub fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & mask == u32::from(net) & mask
}

/// A command's standard output as JSON.
pub fn json(out: &Output) -> Value {
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The `nameserver` addresses of a resolv.conf text.
pub fn nameservers(resolv: &str) -> Vec<String> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
        .collect()
}
