//! The desktop app end to end, in a real window: the built `hopwire-gui`
//! under Xvfb, driven through WebDriver (tauri-driver 2.x in front of
//! WebKitWebDriver), against the real client daemon of a testnet.
//!
//! The app runs outside the namespaces, as a desktop program does, and
//! reaches the daemon through its socket file. The test clicks connect and
//! sees the window say connected with the path `hopwire status --json`
//! names; downloads through the tunnel and sees the throughput chart move
//! and every hop's payment appear; kills the circuit's middle relay and
//! sees the window go reconnecting, then connected over a new path;
//! disconnects; kills the daemon and sees the window say so, then carry on
//! when it is back; starts a second instance, which hands over to the first
//! (the first window, minimized, is shown and focused again) and exits; and
//! points a fresh window at a daemon of another API version, which the
//! window names.
//!
//! Each step is saved as a PNG (`window-<step>.png`) in the testnet's
//! directory and, kept after the testnet is torn down, in
//! `target/debug/window-test/` beside the tauri-driver logs (which hold the
//! app's own output). With `HOPWIRE_UPDATE_SCREENSHOT=1` the connected
//! window with traffic is also copied to `client-gui/screenshot.png`.
//!
//! The WebDriver client is the few W3C calls the test needs, as HTTP/1.1
//! over `std::net::TcpStream`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hopwire_e2e::*;
use serde_json::{json, Value};

const INET_SERVER: &str = "198.18.0.10";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// ---------------------------------------------------------------- tools

/// `program` on PATH, or in `~/.cargo/bin` (where `cargo install` puts
/// tauri-driver); panics naming what to install otherwise.
fn find_tool(program: &str, install: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not installed; the window test needs it ({install})"))
}

/// An X display number nobody uses.
fn free_display() -> u32 {
    (57..120)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free X display number between :57 and :119")
}

/// Two TCP ports on 127.0.0.1 that were free a moment ago.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = |l: &TcpListener| l.local_addr().expect("local addr").port();
    (port(&a), port(&b))
}

/// A directory of mode 0700 (as `XDG_RUNTIME_DIR` must be).
fn private_dir(path: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(path);
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    path.to_owned()
}

/// Calls `probe` every `every` until it returns `Ok`, for at most `within`.
fn wait_for<T>(what: &str, within: Duration, every: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("gave up after {within:?} waiting for {what}; last seen: {seen}");
        }
        thread::sleep(every);
    }
}

/// A process the test started as the leader of a process group of its own,
/// with its output in `log`; in `Drop` the whole group is stopped (TERM,
/// then KILL): tauri-driver takes WebKitWebDriver, the app and WebKit's
/// helpers with it.
struct Group {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Group {
    fn start(name: &str, cmd: &mut Command, log: &Path) -> Self {
        let file = fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let file2 = file.try_clone().expect("dup log");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Self {
            name: name.into(),
            child,
            log: log.to_owned(),
        }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
    }

    fn signal_group(&self, signal: &str) {
        let _ = run("kill", &[&format!("-{signal}"), "--", &format!("-{}", self.child.id())]);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "[window] ---- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        self.signal_group("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group outlived its leader goes too.
        self.signal_group("KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Xvfb on a free display, until dropped.
fn start_xvfb(artefacts: &Path) -> (Group, String) {
    let xvfb = find_tool("Xvfb", "apt-get install xvfb");
    let n = free_display();
    let display = format!(":{n}");
    let mut group = Group::start(
        "Xvfb",
        Command::new(xvfb).args([&display, "-screen", "0", "1280x900x24", "-nolisten", "tcp"]),
        &artefacts.join("xvfb.log"),
    );
    wait_for(
        &format!("Xvfb to listen on {display}"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            group.assert_running();
            let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
            if socket.exists() {
                Ok(())
            } else {
                Err(format!("no {}", socket.display()))
            }
        },
    );
    (group, display)
}

/// What the app is started with: the driver passes its environment on.
struct AppEnv<'a> {
    display: &'a str,
    socket: &'a Path,
    runtime: &'a Path,
    home: &'a Path,
}

impl AppEnv<'_> {
    fn apply(&self, cmd: &mut Command) {
        cmd.env("DISPLAY", self.display)
            .env("HOPWIRE_SOCKET", self.socket)
            .env("XDG_RUNTIME_DIR", self.runtime)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_DATA_HOME", self.home.join("data"))
            .env("XDG_CACHE_HOME", self.home.join("cache"))
            // No accessibility bus under a bare X server.
            .env("NO_AT_BRIDGE", "1")
            .env_remove("WAYLAND_DISPLAY");
    }
}

/// tauri-driver (with WebKitWebDriver behind it) for apps started with
/// `env`, until dropped; returns its port once it answers.
fn start_driver(artefacts: &Path, tag: &str, env: &AppEnv) -> (Group, u16) {
    let tauri_driver = find_tool("tauri-driver", "cargo install tauri-driver --locked");
    let native = find_tool("WebKitWebDriver", "apt-get install webkit2gtk-driver");
    let (port, native_port) = free_ports();
    let mut cmd = Command::new(tauri_driver);
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--native-port")
        .arg(native_port.to_string())
        .arg("--native-driver")
        .arg(native);
    env.apply(&mut cmd);
    let mut group = Group::start(
        &format!("tauri-driver ({tag})"),
        &mut cmd,
        &artefacts.join(format!("tauri-driver-{tag}.log")),
    );
    wait_for(
        "tauri-driver to answer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            group.assert_running();
            http(port, "GET", "/status", None, Duration::from_secs(5)).map(|_| ())
        },
    );
    (group, port)
}

// ---------------------------------------------------------------- WebDriver

/// One HTTP/1.1 request to 127.0.0.1:`port`; the status and the JSON body.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, Value), String> {
    let what = format!("{method} {path}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{what}: connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{what}: send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("{what}: read: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{what}: no HTTP header in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{what}: bad status line in {head:?}"))?;
    let mut payload = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        payload = dechunk(&payload).ok_or_else(|| format!("{what}: bad chunked body"))?;
    }
    let value = if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&payload).map_err(|e| {
            format!(
                "{what}: {status} body is not JSON ({e}): {}",
                String::from_utf8_lossy(&payload)
            )
        })?
    };
    Ok((status, value))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Where screenshots go: the testnet's directory and one kept after it.
/// They are taken from the X server (ImageMagick's `import` of the window
/// named Hopwire), as a user would see the window: WebKitWebDriver's own
/// screenshot never answers while WebKit draws without GPU compositing,
/// as the app makes it.
struct Shots {
    display: String,
    dirs: Vec<PathBuf>,
}

impl Shots {
    /// Saves the window as `window-<name>.png` in every dir; returns the
    /// last copy's path.
    fn take(&self, name: &str) -> Result<PathBuf, String> {
        let mut kept = PathBuf::new();
        for dir in &self.dirs {
            let path = dir.join(format!("window-{name}.png"));
            if kept.as_os_str().is_empty() {
                let out = Command::new("import")
                    .env("DISPLAY", &self.display)
                    .args(["-window", "Hopwire"])
                    .arg(&path)
                    .output()
                    .map_err(|e| format!("run import: {e}"))?;
                if !out.status.success() {
                    return Err(format!("import: {}", String::from_utf8_lossy(&out.stderr).trim()));
                }
                let png = fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
                if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
                    return Err(format!("{} is not a PNG", path.display()));
                }
            } else {
                fs::copy(&kept, &path).map_err(|e| format!("copy to {}: {e}", path.display()))?;
            }
            kept = path;
        }
        Ok(kept)
    }
}

/// A WebDriver session on one app window; deleted (which ends the app) in
/// `Drop`, after a screenshot and the page's text if the test is failing.
struct Session {
    port: u16,
    id: String,
    shots: Arc<Shots>,
}

impl Session {
    fn new(port: u16, app: &Path, shots: Arc<Shots>) -> Self {
        let caps = json!({"capabilities": {"alwaysMatch": {"tauri:options": {"application": app}}}});
        let value = wait_for(
            "a WebDriver session on the app",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || match http(port, "POST", "/session", Some(&caps), Duration::from_secs(60))? {
                (200, v) => Ok(v),
                (status, v) => Err(format!("{status}: {v}")),
            },
        );
        let id = value["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session answered without an id: {value}"))
            .to_owned();
        Self { port, id, shots }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let full = format!("/session/{}{path}", self.id);
        // tauri-driver now and then loses its pooled connection to
        // WebKitWebDriver ("connection reset") and hangs up without an
        // answer; the request did not reach the window: send it again.
        let mut tries = 0;
        let (status, v) = loop {
            match http(self.port, method, &full, body.as_ref(), Duration::from_secs(60)) {
                Ok(answer) => break answer,
                Err(e) if tries < 4 && e.contains("no HTTP header") => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        };
        if (200..300).contains(&status) {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{method} {path}: {status} {}: {}",
                v["value"]["error"].as_str().unwrap_or("?"),
                v["value"]["message"].as_str().unwrap_or("")
            ))
        }
    }

    fn find(&self, css: &str) -> Result<String, String> {
        let v = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})))?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{css}: no element reference in {v}"))
    }

    fn click(&self, css: &str) -> Result<(), String> {
        let e = self.find(css)?;
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})))
            .map(|_| ())
    }

    /// The element's rendered text (empty while it is not shown).
    fn text(&self, css: &str) -> Result<String, String> {
        let e = self.find(css)?;
        let v = self.call("GET", &format!("/element/{e}/text"), None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    fn attr(&self, css: &str, name: &str) -> Result<Option<String>, String> {
        let e = self.find(css)?;
        let v = self.call("GET", &format!("/element/{e}/attribute/{name}"), None)?;
        Ok(v.as_str().map(str::to_owned))
    }

    fn displayed(&self, css: &str) -> Result<bool, String> {
        let e = self.find(css)?;
        let v = self.call("GET", &format!("/element/{e}/displayed"), None)?;
        v.as_bool().ok_or_else(|| format!("{css}: displayed answered {v}"))
    }

    fn js(&self, script: &str) -> Result<Value, String> {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    fn js_async(&self, script: &str) -> Result<Value, String> {
        self.call("POST", "/execute/async", Some(json!({"script": script, "args": []})))
    }

    /// Saves the window as `window-<name>.png`; returns the kept copy's path.
    fn screenshot(&self, name: &str) -> PathBuf {
        let kept = self
            .shots
            .take(name)
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        eprintln!("[window] screenshot {}", kept.display());
        kept
    }

    fn tab(&self, tab: &str) {
        self.click(&format!("#tab-{tab}"))
            .unwrap_or_else(|e| panic!("clicking tab {tab}: {e}"));
        wait_for(
            &format!("the {tab} screen"),
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let shown = self.displayed(&format!("#screen-{tab}"))?;
                shown.then_some(()).ok_or_else(|| "not shown".to_owned())
            },
        );
    }

    /// Until `#state` says `state` (read while the connect screen is shown).
    fn wait_state(&self, state: &str, within: Duration) {
        wait_for(
            &format!("the window to say {state}"),
            within,
            Duration::from_millis(200),
            || {
                let word = self.text("#state")?;
                let reason = self.text("#state-reason").unwrap_or_default();
                (word == state).then_some(()).ok_or(format!("{word:?} ({reason})"))
            },
        );
    }

    /// The ids of the hops the circuit screen draws, in order.
    fn hop_ids(&self) -> Result<Vec<String>, String> {
        let v = self.js(
            "return Array.from(document.querySelectorAll('#circuit-path .hop')).map(e => e.getAttribute('data-id'))",
        )?;
        Ok(strings(&v))
    }

    /// Each `.payment` row of the money screen as (hop id, paid).
    fn payments(&self) -> Result<Vec<(String, u64)>, String> {
        let v = self.js("return Array.from(document.querySelectorAll('#payments .payment'))\
             .map(e => [e.getAttribute('data-id'), Number(e.getAttribute('data-paid'))])")?;
        Ok(v.as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Starts recording every state and reason the connect screen shows,
    /// as it is drawn (a state shown for a few milliseconds is caught
    /// too), with the time since this call. Clears what was recorded.
    fn record_states(&self) {
        self.js(
            "const read = (id) => (document.getElementById(id) || {}).textContent || '';\n\
             if (!window.__hwSeen) {\n\
               window.__hwSeen = [];\n\
               window.__hwNote = () => {\n\
                 const now = [read('state'), read('state-reason')];\n\
                 const last = window.__hwSeen[window.__hwSeen.length - 1];\n\
                 if (!last || last[0] !== now[0] || last[1] !== now[1])\n\
                   window.__hwSeen.push([...now, Math.round(performance.now() - window.__hwSince)]);\n\
               };\n\
               const o = new MutationObserver(window.__hwNote);\n\
               for (const id of ['state', 'state-reason'])\n\
                 o.observe(document.getElementById(id), {childList: true, characterData: true, subtree: true});\n\
             }\n\
             window.__hwSince = performance.now();\n\
             window.__hwSeen.length = 0;\n\
             window.__hwNote();\n\
             return true;",
        )
        .expect("installing the state recorder");
    }

    fn recorded_states(&self) -> Vec<Drawn> {
        let v = self
            .js("return window.__hwSeen || []")
            .expect("reading the state recorder");
        v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| Drawn {
                        state: r[0].as_str().unwrap_or("").to_owned(),
                        reason: r[1].as_str().unwrap_or("").to_owned(),
                        ms: r[2].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The main window's (visible, focused), as the app's own window API
    /// answers (`core:window:default` allows both queries).
    fn window_shown(&self) -> Result<(bool, bool), String> {
        let v = self.js_async(
            "const done = arguments[arguments.length - 1];\n\
             const inv = window.__TAURI_INTERNALS__.invoke;\n\
             Promise.all([inv('plugin:window|is_visible', {label: 'main'}), inv('plugin:window|is_focused', {label: 'main'})])\n\
               .then(done, (e) => done(String(e)));",
        )?;
        match (v[0].as_bool(), v[1].as_bool()) {
            (Some(visible), Some(focused)) => Ok((visible, focused)),
            _ => Err(format!("the window API answered {v}")),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if thread::panicking() {
            if let Err(e) = self.shots.take("failure") {
                eprintln!("[window] no failure screenshot: {e}");
            }
            let text = self.js("return document.body.innerText").unwrap_or_else(Value::String);
            let text: String = text.as_str().unwrap_or_default().chars().take(3000).collect();
            eprintln!("[window] ---- the window's text when the test failed:\n{text}");
        }
        let _ = http(
            self.port,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
            Duration::from_secs(20),
        );
    }
}

/// What the connect screen showed, and when (ms after recording began).
#[derive(Debug)]
struct Drawn {
    state: String,
    reason: String,
    ms: u64,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- testnet

fn circuit_ids(st: &Value) -> Vec<String> {
    st["circuit"]
        .as_array()
        .map(|c| c.iter().filter_map(|h| h["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn pid_of(v: &Value) -> u32 {
    v["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid in {v}"))
}

/// The testnet node whose identity is `id`.
fn node<'a>(tn: &'a Testnet, id: &str) -> &'a Value {
    tn.summary["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["identity"].as_str() == Some(id)))
        .unwrap_or_else(|| panic!("node {id} is not among the testnet's nodes: {:#}", tn.summary))
}

// ---------------------------------------------------------------- fake daemon

/// A daemon of another API version: it answers every request with the
/// version error the real daemon gives (and the status it carries).
struct FakeDaemon {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeDaemon {
    const VERSION: u32 = 9;

    fn start(path: &Path, status: Value) -> Self {
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let Ok(reader) = stream.try_clone() else { continue };
                if BufReader::new(reader).read_line(&mut line).is_err() || line.is_empty() {
                    continue;
                }
                let v = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|r| r["v"].as_u64())
                    .unwrap_or(1);
                requests2
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.trim().to_owned());
                let answer = json!({
                    "result": "error",
                    "kind": "version",
                    "message": format!(
                        "this daemon speaks API version {}, the request version {v}: use a hopwire CLI or app of the daemon's version",
                        Self::VERSION
                    ),
                    "status": status,
                });
                let _ = stream.write_all(format!("{answer}\n").as_bytes());
            }
        });
        Self {
            path: path.to_owned(),
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------- the test

#[test]
fn the_window_connects_shows_path_traffic_and_payments_rides_out_a_lost_relay_and_daemon_and_names_a_version_mismatch()
{
    let started = Instant::now();
    let step = |n: &str| eprintln!("[window] {:>6.1} s  {n}", started.elapsed().as_secs_f64());
    let app = bin("hopwire-gui");
    find_tool("Xvfb", "apt-get install xvfb");
    find_tool("WebKitWebDriver", "apt-get install webkit2gtk-driver");
    find_tool("tauri-driver", "cargo install tauri-driver --locked");
    require_tool("curl");
    require_tool("sysctl");

    // ---- 1. A testnet, its client disconnected; Xvfb, tauri-driver, a window.
    step("1. testnet");
    let mut tn = Testnet::start("hww1", 64);
    tn.disconnect();
    let idle_status = tn.status();
    let artefacts = bin_dir().join("window-test");
    let _ = fs::remove_dir_all(&artefacts);
    fs::create_dir_all(&artefacts).expect("create the artefacts dir");
    let home = TempDir::new("window-home");
    let runtime = private_dir(&home.path().join("run"));
    let socket = tn.socket.clone();
    let (_xvfb, display) = start_xvfb(&artefacts);
    let shots = Arc::new(Shots {
        display: display.clone(),
        dirs: vec![tn.dir.clone(), artefacts.clone()],
    });
    let env = AppEnv {
        display: &display,
        socket: &socket,
        runtime: &runtime,
        home: home.path(),
    };
    let (driver, port) = start_driver(&artefacts, "daemon", &env);
    step("1. a window on the daemon");
    let win = Session::new(port, &app, shots.clone());
    // The page is up and has heard the daemon (the exits it knows).
    wait_for(
        "the window to load and list the daemon's exits",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let hint = win.text("#exits-hint")?;
            hint.contains("known").then_some(()).ok_or(hint)
        },
    );
    win.wait_state("disconnected", Duration::from_secs(10));
    assert_eq!(win.text("#connect-button").expect("button"), "Connect");
    win.record_states();

    // ---- 2. Connect: the window says connected, with the daemon's path.
    step("2. connect");
    win.click("#connect-button").expect("click connect");
    win.wait_state("connected", Duration::from_secs(60));
    let st = tn.wait_state("connected", 10);
    let ids = circuit_ids(&st);
    assert_eq!(ids.len(), 3, "a 3-hop circuit: {st}");
    let seen = win.recorded_states();
    assert!(
        seen.iter().any(|d| d.state == "connecting"),
        "the window went straight to connected without saying connecting: {seen:?}"
    );
    assert_eq!(win.text("#connect-button").expect("button"), "Disconnect");
    win.tab("circuit");
    wait_for(
        "the circuit screen to draw the daemon's path",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let drawn = win.hop_ids()?;
            (drawn == ids)
                .then_some(())
                .ok_or(format!("drawn {drawn:?}, status {ids:?}"))
        },
    );
    let roles = win
        .js("return Array.from(document.querySelectorAll('#circuit-path .hop')).map(e => e.getAttribute('data-role'))")
        .expect("roles");
    assert_eq!(strings(&roles), ["guard", "middle", "exit"]);
    assert!(win.displayed("#circuit-path").expect("path"), "the path is not shown");
    win.screenshot("2-connected");

    // ---- 3. Traffic: the chart moves; every hop is paid.
    step("3. download");
    // curl's rate limit holds back its reads, not the sender: with the
    // kernel's 32 MiB receive window the rest of the file would cross the
    // tunnel in one burst and leave it idle. A small window in the client's
    // namespace keeps the traffic at the limit for the whole download.
    ns_exec(&tn.ns.client, "sysctl", &["-w", "net.ipv4.tcp_rmem=4096 131072 262144"]).ok();
    let mut download = Background::start_in_ns(
        "rate-limited download",
        &tn.ns.client,
        "curl",
        &[
            "-sS",
            "--noproxy",
            "*",
            "--fail",
            "--limit-rate",
            "2M",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            &format!("http://{INET_SERVER}/test.bin"),
        ],
        &tn.dir.join("window-download.log"),
        &[],
    );
    let chart = |win: &Session| -> Result<(u64, f64), String> {
        let points = win.attr("#throughput-chart", "data-points")?.unwrap_or_default();
        let rx = win.attr("#throughput-chart", "data-last-rx")?.unwrap_or_default();
        Ok((points.parse().unwrap_or(0), rx.parse().unwrap_or(0.0)))
    };
    let (points_before, _) = chart(&win).expect("chart");
    // Ten seconds of samples with the download under way: a curve to see.
    let (points, rx) = wait_for(
        "the throughput chart to move",
        Duration::from_secs(40),
        Duration::from_millis(250),
        || {
            let (points, rx) = chart(&win)?;
            (points >= points_before + 10 && rx > 1e6)
                .then_some((points, rx))
                .ok_or(format!("{points} points (from {points_before}), last rx {rx} bit/s"))
        },
    );
    eprintln!("[window] chart: {points} points, last rx {rx} bit/s");
    let rx_now = win.text("#rx-now").expect("rx");
    assert!(rx_now.contains("Mbit/s"), "the download rate shown is {rx_now:?}");
    let traffic_shot = win.screenshot("3-traffic");
    if std::env::var_os("HOPWIRE_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let readme_shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-gui/screenshot.png");
        fs::copy(&traffic_shot, &readme_shot).expect("copy the screenshot for the README");
        eprintln!("[window] copied to {}", readme_shot.display());
    }
    win.tab("money");
    wait_for(
        "every hop's payment on the money screen",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let paid = win.payments()?;
            ids.iter()
                .all(|id| paid.iter().any(|(p, n)| p == id && *n > 0))
                .then_some(())
                .ok_or(format!("{paid:?} for circuit {ids:?}"))
        },
    );
    assert!(
        win.displayed("#payments").expect("payments"),
        "the payments table is not shown"
    );
    win.screenshot("3-payments");

    // ---- 4. The middle relay dies: reconnecting, then connected anew.
    step("4. kill the middle relay");
    win.tab("circuit");
    win.record_states();
    let middle = ids[1].clone();
    kill_and_wait(pid_of(node(&tn, &middle)), "KILL");
    let mut header_seen: Vec<String> = Vec::new();
    let new_ids = wait_for(
        "the window to be connected over a circuit without the killed middle",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            // One request a probe: the header's state word and the path.
            let v = win.js("return [document.getElementById('header-state').textContent, \
                 Array.from(document.querySelectorAll('#circuit-path .hop')).map(e => e.getAttribute('data-id'))]")?;
            let word = v[0].as_str().unwrap_or_default().to_owned();
            let drawn = strings(&v[1]);
            if header_seen.last() != Some(&word) {
                header_seen.push(word.clone());
            }
            (word == "connected" && drawn.len() == 3 && !drawn.contains(&middle))
                .then_some(drawn.clone())
                .ok_or(format!("{word}, path {drawn:?}"))
        },
    );
    let seen = win.recorded_states();
    eprintln!("[window] header polled every 50 ms after the kill: {header_seen:?}; drawn:");
    for d in &seen {
        eprintln!("[window]   +{:>5} ms  {}: {}", d.ms, d.state, d.reason);
    }
    let reconnecting = seen
        .iter()
        .find(|d| d.state == "reconnecting")
        .unwrap_or_else(|| panic!("the window never said reconnecting: {seen:?}"));
    assert!(
        reconnecting.reason.contains("The circuit was lost"),
        "the reconnecting window does not say why: {reconnecting:?}"
    );
    assert_eq!(
        seen.last().map(|d| d.state.as_str()),
        Some("connected"),
        "the window did not end connected: {seen:?}"
    );
    let st = tn.wait_state("connected", 10);
    assert_eq!(new_ids, circuit_ids(&st), "the window's new path is not the daemon's");
    assert!(
        win.js("return document.getElementById('circuit-path').classList.contains('stale')")
            .expect("stale")
            == Value::Bool(false),
        "the new path is still drawn as stale"
    );
    // The download carries on over the new circuit: fresh samples, at speed.
    let (points_now, _) = chart(&win).expect("chart");
    let (points, rx) = wait_for(
        "the chart to show traffic over the new circuit",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let (points, rx) = chart(&win)?;
            (points >= points_now + 3 && rx > 1e6)
                .then_some((points, rx))
                .ok_or(format!("{points} points (from {points_now}), last rx {rx} bit/s"))
        },
    );
    eprintln!("[window] chart after the rebuild: {points} points, last rx {rx} bit/s");
    win.screenshot("4-reconnected");
    // Traffic crosses the new middle, and the window shows it paid.
    win.tab("money");
    wait_for(
        "the new middle's payment",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let paid = win.payments()?;
            paid.iter()
                .any(|(p, n)| *p == new_ids[1] && *n > 0)
                .then_some(())
                .ok_or(format!("{paid:?} for circuit {new_ids:?}"))
        },
    );

    // ---- 5. Disconnect from the window.
    step("5. disconnect");
    download.stop();
    win.tab("connect");
    assert_eq!(win.text("#connect-button").expect("button"), "Disconnect");
    win.click("#connect-button").expect("click disconnect");
    win.wait_state("disconnected", Duration::from_secs(30));
    tn.wait_state("disconnected", 10);
    assert_eq!(win.text("#connect-button").expect("button"), "Connect");
    win.screenshot("5-disconnected");

    // ---- 6. The daemon dies, and comes back.
    step("6. kill the daemon");
    kill_and_wait(pid_of(&tn.summary["client"]), "KILL");
    wait_for(
        "the window to say the daemon is gone",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            let shown = win.displayed("#daemon-missing")?;
            let kind = win.attr("#daemon-missing", "data-kind")?.unwrap_or_default();
            (shown && kind == "daemon_missing")
                .then_some(())
                .ok_or(format!("shown {shown}, kind {kind:?}"))
        },
    );
    let title = win.text("#daemon-missing-title").expect("title");
    let message = win.text("#daemon-missing-message").expect("message");
    assert!(title.contains("not running"), "{title}");
    assert!(
        message.contains(&*tn.socket.to_string_lossy()),
        "the message names no socket: {message}"
    );
    win.screenshot("6-daemon-missing");
    tn.restart_client("client-window-restart.log");
    wait_for(
        "the window to carry on with the restarted daemon",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let shown = win.displayed("#daemon-missing")?;
            let word = win.text("#state")?;
            (!shown && word == "disconnected")
                .then_some(())
                .ok_or(format!("notice shown {shown}, state {word:?}"))
        },
    );
    win.screenshot("6-daemon-back");

    // ---- 7. A second instance hands over to the first and exits.
    step("7. a second instance");
    win.call("POST", "/window/minimize", Some(json!({})))
        .expect("minimize the window");
    wait_for(
        "the minimized window to be hidden",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let (visible, focused) = win.window_shown()?;
            (!visible)
                .then_some(())
                .ok_or(format!("visible {visible}, focused {focused}"))
        },
    );
    thread::sleep(Duration::from_secs(1));
    assert!(!win.window_shown().expect("window").0, "the window came back by itself");
    let second_log = artefacts.join("second-instance.log");
    let log = fs::File::create(&second_log).expect("create the second instance's log");
    let mut cmd = Command::new(&app);
    env.apply(&mut cmd);
    let mut second = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("start a second instance");
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait for the second instance") {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = second.kill();
            let _ = second.wait();
            panic!(
                "the second instance still runs after 10 s (it opened a window of its own?): {}",
                tail(&second_log, 20)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "the second instance failed ({status}): {}",
        tail(&second_log, 20)
    );
    eprintln!("[window] the second instance exited in {:?}", t0.elapsed());
    wait_for(
        "the first window to be shown and focused again",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let (visible, focused) = win.window_shown()?;
            (visible && focused)
                .then_some(())
                .ok_or(format!("visible {visible}, focused {focused}"))
        },
    );
    assert_eq!(win.text("#state").expect("the first window answers"), "disconnected");
    win.screenshot("7-shown-again");

    // ---- 8. A daemon of another API version: a fresh window says so.
    step("8. another API version");
    drop(win);
    drop(driver);
    let fake = FakeDaemon::start(&home.path().join("fake.sock"), idle_status);
    let runtime2 = private_dir(&home.path().join("run2"));
    let env2 = AppEnv {
        socket: &fake.path,
        runtime: &runtime2,
        ..env
    };
    let (_driver2, port2) = start_driver(&artefacts, "version", &env2);
    let win2 = Session::new(port2, &app, shots.clone());
    wait_for(
        "the window to name the version mismatch",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let shown = win2.displayed("#daemon-missing")?;
            let kind = win2.attr("#daemon-missing", "data-kind")?.unwrap_or_default();
            (shown && kind == "version")
                .then_some(())
                .ok_or(format!("shown {shown}, kind {kind:?}"))
        },
    );
    let title = win2.text("#daemon-missing-title").expect("title");
    let message = win2.text("#daemon-missing-message").expect("message");
    let hint = win2.text("#daemon-missing-hint").expect("hint");
    eprintln!("[window] version notice: {title} / {message} / {hint}");
    assert!(
        message.contains("version 9") && message.contains("version 2"),
        "{message}"
    );
    assert!(hint.contains("version"), "{hint}");
    assert!(title.contains("do not match"), "{title}");
    win2.screenshot("8-version");
    let requests = fake.requests();
    assert!(!requests.is_empty(), "the app never asked the fake daemon");
    assert!(
        requests.iter().all(|r| r.contains("\"v\":2")),
        "the app did not speak API version 2: {requests:?}"
    );
    drop(win2);
    step("done");
}
