//! The Debian packages, installed on this machine with `dpkg` as an operator
//! would: the packaged node serves as an exit in a testnet namespace the way
//! its unit runs it, the packaged daemon carries the client's traffic the
//! way its unit runs it, an upgrade keeps the node's identity and receipts,
//! and removal and purge leave what Debian policy says. And the node's
//! container image, built with podman, serves as an exit as an unprivileged
//! user with only the capabilities it is given.
//!
//! The packages are what `scripts/package.sh` built into `target/deb/`
//! (and a newer build of the same into `target/deb/upgrade/`). There is
//! no systemd here to start units, so the test runs the installed binaries
//! with the user, groups and capabilities the units give them (`setpriv`),
//! and `systemd-analyze verify` checks the installed units.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hopwire_e2e::*;
use serde_json::Value;

/// The mode udev gives the TUN clone device `/dev/net/tun` on a standard
/// Debian host (`KERNEL=="tun", MODE="0666"` in `50-udev-default.rules`), which
/// an exit not running as root opens it through. Test machines without udev
/// may leave it `0600`, so the unprivileged exits here open a node of their
/// own with this mode: the same device (10, 200), as a host would have it.
const STANDARD_TUN: &str = "0666";

/// A uid from systemd's dynamic-user range, as `DynamicUser=yes` picks one.
const NODE_UID: &str = "61933";
const STATE: &str = "/var/lib/hopwire-node";
const CONFIG: &str = "/etc/hopwire/node.toml";
const DROP_IN: &str = "/etc/systemd/system/hopwire-node.service.d/exit.conf";
const NODE: &str = "/usr/bin/hopwire-node";
const DAEMON: &str = "/usr/bin/hopwire";

/// The `.deb` of `package` in `dir` (built by `scripts/package.sh`).
fn deb(dir: &Path, package: &str) -> PathBuf {
    let prefix = format!("{package}_");
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/package.sh first)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one {package} package in {}: {found:?}", dir.display());
    found.into_iter().next().unwrap_or_default()
}

fn debian_dir() -> PathBuf {
    bin_dir()
        .parent()
        .map(|target| target.join("deb"))
        .unwrap_or_else(|| panic!("no target dir above {}", bin_dir().display()))
}

/// `dpkg-query`'s status and version of `package`, if dpkg knows it.
fn dpkg_status(package: &str) -> Option<(String, String)> {
    let out = run("dpkg-query", &["-W", "-f=${Status}|${Version}", package]);
    let (status, version) = out.stdout.trim().split_once('|')?;
    (out.success() && !status.is_empty()).then(|| (status.to_owned(), version.to_owned()))
}

fn installed(package: &str) -> Option<String> {
    dpkg_status(package).and_then(|(status, version)| (status == "install ok installed").then_some(version))
}

fn purge_all() {
    for p in ["hopwire", "hopwire-node"] {
        if dpkg_status(p).is_some() {
            run("dpkg", &["--purge", p]).ok();
        }
    }
}

/// Purges both packages when the test ends, however it ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        purge_all();
    }
}

fn group_id(name: &str) -> String {
    let out = run("getent", &["group", name]).ok();
    out.stdout
        .split(':')
        .nth(2)
        .unwrap_or_else(|| panic!("getent group {name}: {out}"))
        .to_owned()
}

fn verify_unit(unit: &str) {
    let out = run("systemd-analyze", &["verify", "--man=no", unit]);
    assert!(
        out.success() && out.stderr.trim().is_empty(),
        "systemd-analyze verify {unit}: {out}"
    );
}

/// The installed node, run in the exit's namespace as `hopwire-node.service`
/// with its exit drop-in runs it: the dynamic user, no groups, only
/// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE (ambient, so `ip` and `nft` get
/// them too), no new privileges. Under `strace` into `trace`, when given.
fn start_packaged_exit(tn: &mut Testnet, log: &str, trace: Option<&Path>) {
    let log = tn.dir.join(log);
    let caps = "+net_admin,+net_bind_service";
    let trace = trace.map(|t| t.to_string_lossy().into_owned());
    let traced: Vec<&str> = match &trace {
        Some(t) => vec!["/usr/bin/strace", "-f", "-qq", "-o", t],
        None => Vec::new(),
    };
    let bounding = format!("-all,{caps}");
    // In a mount namespace of its own, over a clone device as a standard host
    // has it (see `STANDARD_TUN`), then as the unit's user.
    let standard_tun = format!(
        "mount -t tmpfs -o mode=0755,size=16k hopwire-tun /dev/net && mknod -m {STANDARD_TUN} /dev/net/tun c 10 200 && exec \"$@\""
    );
    let mut args = vec![
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &standard_tun,
        "sh",
        "setpriv",
        "--reuid",
        NODE_UID,
        "--regid",
        NODE_UID,
        "--clear-groups",
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
        "--bounding-set",
        &bounding,
        "--no-new-privs",
    ];
    args.extend(traced);
    args.extend([NODE, "run", "--config", CONFIG]);
    let bg = Background::start_in_ns("exit node", &tn.ns.exit, "unshare", &args, &log, &[]);
    tn.extra_logs.push(log.clone());
    tn.extra.push(bg);
    poll_until("the packaged exit to serve", 60, Duration::from_millis(250), || {
        if let Some(bg) = tn.extra.last_mut() {
            bg.assert_running();
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        text.contains("node serving").then_some(()).ok_or(text)
    });
}

/// The system calls `SystemCallFilter=` lines of the installed `unit` allow:
/// the first line's groups and calls, less those of every `~` line.
fn allowed_syscalls(unit: &str) -> std::collections::BTreeSet<String> {
    fn resolve(item: &str, into: &mut std::collections::BTreeSet<String>) {
        if !item.starts_with('@') {
            into.insert(item.to_owned());
            return;
        }
        let out = run("systemd-analyze", &["syscall-filter", item]).ok();
        for line in out.stdout.lines().skip(1).map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                resolve(line, into);
            }
        }
    }
    let text = fs::read_to_string(unit).unwrap_or_else(|e| panic!("{unit}: {e}"));
    let (mut allowed, mut denied) = (Default::default(), Default::default());
    for value in text.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        match value.strip_prefix('~') {
            Some(deny) => deny.split_whitespace().for_each(|i| resolve(i, &mut denied)),
            None => value.split_whitespace().for_each(|i| resolve(i, &mut allowed)),
        }
    }
    assert!(!allowed.is_empty(), "{unit} has a system-call allow list");
    allowed.difference(&denied).cloned().collect()
}

/// The system calls a `strace -f` log shows made.
fn syscalls_made(trace: &Path) -> std::collections::BTreeSet<String> {
    let text = fs::read_to_string(trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    text.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, call)| call.trim_start()))
        .filter_map(|call| call.split_once('(').map(|(name, _)| name))
        .filter(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// `hopwire-node ARGS` from the package, as root in the exit's namespace
/// (it runs itself again as the node's user: the state is that user's).
fn node_cli(tn: &Testnet, args: &[&str]) -> Output {
    ns_exec(&tn.ns.exit, NODE, args)
}

fn identity(tn: &Testnet) -> String {
    let shown = json(&node_cli(tn, &["show-record", "--json"]).ok());
    shown["identity"].as_str().expect("identity").to_owned()
}

/// Connects through the exit whose `show-record --json` is `shown` (and the
/// testnet's relays) and downloads the test file byte-exact.
fn download_through(tn: &Testnet, shown: &Value, tag: &str) {
    let record = shown["record"].as_str().expect("record").to_owned();
    let exit_id = shown["identity"].as_str().expect("identity");
    let mut records: Vec<String> = tn.summary["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"].as_str() != Some("exit"))
        .filter_map(|n| n["record"].as_str().map(str::to_owned))
        .collect();
    records.push(record);
    let nodes = tn.dir.join(format!("nodes-packaged-{tag}.txt"));
    fs::write(&nodes, records.join("\n") + "\n").expect("write nodes file");
    let hops = tn.summary["hops"].as_u64().unwrap_or(3).to_string();
    tn.cli(&["connect", "--hops", &hops, "--nodes", &nodes.to_string_lossy()])
        .ok();
    let st = tn.wait_state("connected", 60);
    assert_eq!(
        st["exit"]["id"].as_str(),
        Some(exit_id),
        "the packaged node is the exit: {st}"
    );
    let url = tn.summary["download"]["url"].as_str().expect("download url").to_owned();
    let got = tn.dir.join(format!("download-packaged-{tag}.bin"));
    tn.curl_client(&url, Some(&got), 60).ok();
    assert_eq!(
        sha256_file(&got),
        tn.summary["download"]["sha256"].as_str().expect("sha256"),
        "byte-exact through the packaged exit ({tag})"
    );
    tn.disconnect();
}

#[test]
fn packages_install_serve_upgrade_remove_and_purge() {
    require_root();
    for tool in ["dpkg", "setpriv", "systemd-analyze", "strace"] {
        require_tool(tool);
    }
    let debs = debian_dir();
    let (client_deb, node_deb) = (deb(&debs, "hopwire"), deb(&debs, "hopwire-node"));
    let upgrade = debs.join("upgrade");
    let (client_up, node_up) = (deb(&upgrade, "hopwire"), deb(&upgrade, "hopwire-node"));
    purge_all();
    let _purge = Purge;
    assert!(
        !Path::new(STATE).exists() && !Path::new(CONFIG).exists(),
        "a clean machine"
    );

    // Install: binaries, units, the group; no node config, so no node.
    let out = run(
        "dpkg",
        &["-i", &node_deb.to_string_lossy(), &client_deb.to_string_lossy()],
    )
    .ok();
    let first = installed("hopwire-node").unwrap_or_else(|| panic!("hopwire-node installed: {out}"));
    assert_eq!(installed("hopwire").as_deref(), Some(first.as_str()), "{out}");
    assert!(
        out.stdout.contains("hopwire-node: not started"),
        "the installer says why no node runs yet: {out}"
    );
    for unit in [
        "/usr/lib/systemd/system/hopwire.service",
        "/usr/lib/systemd/system/hopwire-lockdown.service",
        "/usr/lib/systemd/system/hopwire-node.service",
    ] {
        verify_unit(unit);
    }
    // The node's unit would not start: its conditions, evaluated here.
    let unit = fs::read_to_string("/usr/lib/systemd/system/hopwire-node.service").expect("unit");
    let conditions: Vec<&str> = unit.lines().filter(|l| l.starts_with("Condition")).collect();
    assert!(!conditions.is_empty(), "{unit}");
    let mut args = vec!["condition"];
    args.extend(&conditions);
    let condition = run("systemd-analyze", &args);
    assert!(!condition.success(), "the node's unit would not start: {condition}");
    for file in [
        "/usr/bin/hopwire-gui",
        "/usr/share/applications/hopwire.desktop",
        "/usr/share/icons/hicolor/128x128/apps/hopwire.png",
        "/usr/lib/sysusers.d/hopwire.conf",
        "/usr/share/hopwire-node/exit.conf",
        "/usr/share/hopwire-node/60-hopwire-exit.conf",
        "/usr/share/man/man1/hopwire.1.gz",
        "/usr/share/man/man1/hopwire-connect.1.gz",
        "/usr/share/man/man1/hopwire-gui.1.gz",
        "/usr/share/man/man1/hopwire-node.1.gz",
        "/usr/share/man/man1/hopwire-node-earnings.1.gz",
    ] {
        assert!(Path::new(file).is_file(), "{file} installed");
    }
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "hopwire"]).ok();
    assert!(
        conffiles.stdout.contains("/etc/hopwire/daemon.env"),
        "the daemon's settings are a conffile: {conffiles}"
    );
    let hopwire_gid = group_id("hopwire");

    // The testnet, whose exit the packaged node replaces.
    let mut tn = Testnet::start("hwk1", 4);
    let testnet_exit = tn.exit_config();
    tn.stop_exit("TERM");

    // `init` without --dir writes where the unit reads, and links the exit
    // drop-in once the config names the exit role.
    let exit_node = tn.node(tn.field(&["exit", "identity"]));
    let public = exit_node["addr"].as_str().expect("exit addr").to_owned();
    let init = run(
        NODE,
        &["init", "--roles", "exit", "--public-address", &format!("{public}:4433")],
    )
    .ok();
    assert!(
        Path::new(CONFIG).is_file() && Path::new(STATE).join("identity.key").is_file(),
        "{init}"
    );
    assert_eq!(
        fs::read_link(DROP_IN).ok().as_deref(),
        Some(Path::new("/usr/share/hopwire-node/exit.conf")),
        "{init}"
    );
    assert_eq!(
        fs::metadata(STATE).expect("state dir").permissions().mode() & 0o777,
        0o700
    );
    // The operator's config: the testnet exit's, keys where the unit keeps them.
    let text = fs::read_to_string(&testnet_exit).expect("testnet exit config");
    let text = text.replace("key_dir = \".\"", &format!("key_dir = \"{STATE}\""));
    assert!(text.contains(STATE), "key_dir set in {text}");
    fs::write(CONFIG, text).expect("write node.toml");
    let again = run(NODE, &["init"]).ok();
    assert!(
        again.stdout.contains("keeping the existing keys")
            && again.stdout.contains(&format!("keeping the existing {CONFIG}")),
        "init again keeps keys and config: {again}"
    );
    verify_unit("/usr/lib/systemd/system/hopwire-node.service");
    let unit_dir = TempDir::new("hwk1-units");
    let with_drop_in = unit_dir.path().join("hopwire-node.service.d");
    fs::create_dir_all(&with_drop_in).expect("unit dir");
    fs::copy(
        "/usr/lib/systemd/system/hopwire-node.service",
        unit_dir.path().join("hopwire-node.service"),
    )
    .expect("copy unit");
    fs::copy(DROP_IN, with_drop_in.join("exit.conf")).expect("copy drop-in");
    verify_unit(&unit_dir.path().join("hopwire-node.service").to_string_lossy());

    // What systemd does before the exit starts: the state directory given to
    // the dynamic user, forwarding on from the package's sysctl.d file
    // (the node itself may no longer write /proc/sys).
    run("chown", &["-R", &format!("{NODE_UID}:{NODE_UID}"), STATE]).ok();
    ns_exec(&tn.ns.exit, "sh", &["-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]).ok();
    ns_exec(
        &tn.ns.exit,
        "/lib/systemd/systemd-sysctl",
        &["/usr/share/hopwire-node/60-hopwire-exit.conf"],
    )
    .ok();
    // Without the drop-in's capabilities the exit says what it needs.
    let bare = ns_exec(
        &tn.ns.exit,
        "setpriv",
        &[
            "--reuid",
            NODE_UID,
            "--regid",
            NODE_UID,
            "--clear-groups",
            "--no-new-privs",
            NODE,
            "run",
            "--config",
            CONFIG,
        ],
    );
    assert!(
        !bare.success()
            && bare
                .stderr
                .contains("the exit role needs CAP_NET_ADMIN and CAP_NET_BIND_SERVICE"),
        "{bare}"
    );
    let trace = tn.dir.join("packaged-exit.strace");
    fs::write(&trace, "").expect("trace file");
    run("chown", &[NODE_UID, &trace.to_string_lossy()]).ok();
    start_packaged_exit(&mut tn, "packaged-exit.log", Some(&trace));
    let exit_id = identity(&tn);
    let state = fs::metadata(STATE).expect("state");
    assert_eq!(
        state.uid().to_string(),
        NODE_UID,
        "show-record as root left the state to the node's user"
    );

    // The packaged daemon too, as its unit runs it: root with nothing but
    // CAP_NET_ADMIN, in the `hopwire` group, which may use its socket.
    kill_and_wait(
        tn.summary["client"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .expect("client pid"),
        "TERM",
    );
    tn.restart_client_with(
        "packaged-daemon.log",
        &[
            "setpriv",
            "--regid",
            &hopwire_gid,
            "--clear-groups",
            "--inh-caps",
            "-all",
            "--bounding-set",
            "-all,+net_admin",
            "--no-new-privs",
        ],
        Path::new(DAEMON),
        &["--group", "hopwire"],
    );
    let socket = tn.socket.to_string_lossy().into_owned();
    let as_user = |groups: &str| {
        let mut args = vec!["--reuid", "65534", "--regid", "65534"];
        if groups.is_empty() {
            args.push("--clear-groups");
        } else {
            args.extend(["--groups", groups]);
        }
        args.extend([DAEMON, "--socket", socket.as_str(), "status", "--json"]);
        run("setpriv", &args)
    };
    let member = as_user(&hopwire_gid);
    assert!(member.success(), "a member of `hopwire` uses the socket: {member}");
    let stranger = as_user("");
    assert!(!stranger.success(), "anyone else may not: {stranger}");

    download_through(&tn, &json(&node_cli(&tn, &["show-record", "--json"]).ok()), "first");
    // The node itself gets SIGTERM (strace would detach and leave it running).
    let node_pid = run("pgrep", &["-x", "-f", &format!("{NODE} run --config {CONFIG}")]).ok();
    for pid in node_pid.stdout.split_whitespace().filter_map(|p| p.parse().ok()) {
        kill_and_wait(pid, "TERM");
    }
    tn.stop_exit("TERM");
    // Every system call the exit (and the `ip` and `nft` it ran) made, from
    // start to stop through a session, is one the unit's filter allows.
    let made = syscalls_made(&trace);
    let allowed = allowed_syscalls("/usr/lib/systemd/system/hopwire-node.service");
    assert!(made.len() > 20, "the trace saw the node work: {made:?}");
    let refused: Vec<&String> = made.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "the unit's SystemCallFilter would refuse {refused:?}"
    );
    let earned = json(&node_cli(&tn, &["earnings", "--json"]).ok());
    let channels = earned["channels"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        earned["earned"].as_u64() > Some(0) && channels > 0,
        "the exit earned: {earned}"
    );
    let key_sum = sha256_file(&Path::new(STATE).join("identity.key"));

    // Upgrade: a newer build installed over it keeps keys, config, drop-in
    // and receipts; the node serves on with the same identity and resumes
    // the same channel.
    let out = run(
        "dpkg",
        &["-i", &node_up.to_string_lossy(), &client_up.to_string_lossy()],
    )
    .ok();
    let second = installed("hopwire-node").unwrap_or_default();
    assert!(
        second != first && !second.is_empty(),
        "upgraded {first} → {second}: {out}"
    );
    assert_eq!(sha256_file(&Path::new(STATE).join("identity.key")), key_sum);
    assert!(fs::read_to_string(CONFIG).is_ok_and(|t| t.contains(STATE)));
    assert!(fs::read_link(DROP_IN).is_ok(), "the exit drop-in survives the upgrade");
    let kept = json(&node_cli(&tn, &["earnings", "--json"]).ok());
    assert_eq!(kept["earned"], earned["earned"], "receipts survive the upgrade: {kept}");
    start_packaged_exit(&mut tn, "packaged-exit-upgraded.log", None);
    assert_eq!(identity(&tn), exit_id, "same identity after the upgrade");
    download_through(&tn, &json(&node_cli(&tn, &["show-record", "--json"]).ok()), "upgraded");
    tn.stop_exit("TERM");
    let resumed = json(&node_cli(&tn, &["earnings", "--json"]).ok());
    assert_eq!(
        resumed["channels"].as_array().map(Vec::len),
        Some(channels),
        "the client's channel resumed: {resumed}"
    );
    assert!(resumed["earned"].as_u64() > earned["earned"].as_u64(), "{resumed}");
    eprintln!("[e2e] the packaged exit {exit_id} ({first} → {second}) earned {earned} then {resumed}");
    // The testnet's own daemon binary, for its teardown.
    if let Some(pos) = tn.extra.iter().position(|b| b.name == "restarted client daemon") {
        tn.extra.remove(pos).stop();
    }
    tn.restart_client("client-after-packaged.log");

    // Remove: programs and units go; config, keys and receipts stay.
    let out = run("dpkg", &["--remove", "hopwire-node", "hopwire"]).ok();
    for gone in [
        NODE,
        DAEMON,
        "/usr/bin/hopwire-gui",
        "/usr/lib/systemd/system/hopwire-node.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} removed: {out}");
    }
    for kept in [
        CONFIG,
        "/etc/hopwire/daemon.env",
        "/var/lib/hopwire-node/identity.key",
        "/var/lib/hopwire-node/receipts",
    ] {
        assert!(Path::new(kept).exists(), "{kept} kept on removal: {out}");
    }
    assert_eq!(
        dpkg_status("hopwire-node").map(|s| s.0).as_deref(),
        Some("deinstall ok config-files")
    );

    // Purge: everything the packages and `init` made is gone; the system
    // group stays, as policy asks.
    let out = run("dpkg", &["--purge", "hopwire-node", "hopwire"]).ok();
    for gone in [
        STATE,
        "/etc/hopwire",
        DROP_IN,
        "/etc/systemd/system/hopwire-node.service.d",
        "/var/lib/hopwire",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} purged: {out}");
    }
    assert!(dpkg_status("hopwire-node").is_none_or(|(s, _)| s.starts_with("unknown") || s.contains("not-installed")));
    group_id("hopwire");
}

// ------------------------------------------------------------ container

const IMAGE: &str = "localhost/hopwire-node:test";
const BASE: &str = "localhost/hopwire-base:bookworm";
const CONTAINER: &str = "hwk2-exit";

/// `podman` as it runs in this sandbox: runc under cgroupfs, and ulimits
/// no higher than the sandbox's own (raising them is refused here).
fn podman(args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    let limited = matches!(args.first(), Some(&"run") | Some(&"build"));
    if let Some((first, rest)) = args.split_first() {
        cmd.arg(first);
        if limited {
            cmd.args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]);
        }
        cmd.args(rest);
    }
    run_timeout(&mut cmd, Duration::from_secs(600))
}

/// The stand-in for `debian:bookworm-slim` (no registry is reachable here):
/// a minimal Debian 12 from mmdebstrap, imported once and kept.
fn base_image() {
    if podman(&["image", "exists", BASE]).success() {
        return;
    }
    let tmp = TempDir::new("hwk2-rootfs");
    let tar = tmp.path().join("rootfs.tar");
    run_timeout(
        std::process::Command::new("mmdebstrap")
            .args(["--variant=minbase", "--quiet", "bookworm"])
            .arg(&tar),
        Duration::from_secs(600),
    )
    .ok();
    podman(&["import", &tar.to_string_lossy(), BASE]).ok();
}

/// Removes the test's container however the test ends.
struct Container;

impl Drop for Container {
    fn drop(&mut self) {
        podman(&["rm", "--force", "--time", "5", CONTAINER]);
    }
}

#[test]
fn the_node_image_serves_as_an_unprivileged_exit() {
    require_root();
    for tool in ["podman", "runc", "mmdebstrap"] {
        require_tool(tool);
    }
    let debs = debian_dir();
    deb(&debs, "hopwire-node");
    base_image();
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/container/Containerfile");
    podman(&[
        "build",
        "--quiet",
        "--build-arg",
        &format!("BASE={BASE}"),
        "--file",
        &containerfile.to_string_lossy(),
        "--tag",
        IMAGE,
        &debs.to_string_lossy(),
    ])
    .ok();
    let uid = podman(&["run", "--rm", "--entrypoint", "id", IMAGE, "-u"]).ok();
    let uid = uid.stdout.trim().to_owned();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "the image's user is not root: {uid}"
    );

    let mut tn = Testnet::start("hwk2", 4);
    let testnet_exit = tn.exit_config();
    tn.stop_exit("TERM");
    let exit_node = tn.node(tn.field(&["exit", "identity"]));
    let public = format!("{}:4433", exit_node["addr"].as_str().expect("exit addr"));
    let volume = TempDir::new("hwk2-volume");
    run("chown", &[&format!("{uid}:{uid}"), &volume.path().to_string_lossy()]).ok();
    let mount = format!("{}:/var/lib/hopwire-node", volume.path().display());
    let init = podman(&[
        "run",
        "--rm",
        "--volume",
        &mount,
        IMAGE,
        "init",
        "--dir",
        "/var/lib/hopwire-node",
        "--roles",
        "exit",
        "--public-address",
        &public,
    ])
    .ok();
    assert!(volume.path().join("identity.key").is_file(), "{init}");
    // The operator's config: the testnet exit's (keys beside it, as init wrote).
    let config = volume.path().join("node.toml");
    fs::copy(&testnet_exit, &config).expect("copy config");
    run("chown", &[&format!("{uid}:{uid}"), &config.to_string_lossy()]).ok();

    // As its README says to run an exit, in the exit's network namespace
    // (where forwarding is on, as --sysctl would set it).
    ns_exec(
        &tn.ns.exit,
        "sysctl",
        &["-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
    )
    .ok();
    // The container's /dev/net/tun takes its mode from the host's node.
    let devices = TempDir::new("hwk2-dev");
    let tun_node = devices.path().join("tun");
    run(
        "mknod",
        &["-m", STANDARD_TUN, &tun_node.to_string_lossy(), "c", "10", "200"],
    )
    .ok();
    let tun_device = format!("{}:/dev/net/tun", tun_node.display());
    let _container = Container;
    podman(&[
        "run",
        "--detach",
        "--name",
        CONTAINER,
        "--network",
        &format!("ns:/run/netns/{}", tn.ns.exit),
        "--cap-drop",
        "all",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "NET_BIND_SERVICE",
        "--device",
        &tun_device,
        "--volume",
        &mount,
        IMAGE,
    ])
    .ok();
    poll_until("the container's node to serve", 60, Duration::from_millis(250), || {
        let logs = podman(&["logs", CONTAINER]);
        (logs.stdout + &logs.stderr)
            .contains("node serving")
            .then_some(())
            .ok_or_else(|| podman(&["logs", CONTAINER]).to_string())
    });
    // Its process: the image's user, holding exactly the two capabilities.
    let status = podman(&["exec", CONTAINER, "cat", "/proc/1/status"]).ok().stdout;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert_eq!(field("Uid:"), uid, "{status}");
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).ok(),
        Some((1 << 12) | (1 << 10)),
        "CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only: {status}"
    );

    let shown = json(
        &podman(&[
            "exec",
            CONTAINER,
            "hopwire-node",
            "show-record",
            "--config",
            "/var/lib/hopwire-node/node.toml",
            "--json",
        ])
        .ok(),
    );
    download_through(&tn, &shown, "container");

    // A reload through the container runtime, then a clean stop: the exit
    // takes its TUN device and NAT table with it.
    podman(&["kill", "--signal", "HUP", CONTAINER]).ok();
    poll_until("the container's node to reload", 40, Duration::from_millis(250), || {
        let logs = podman(&["logs", CONTAINER]);
        (logs.stdout + &logs.stderr)
            .contains("reloaded")
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    podman(&["stop", "--time", "10", CONTAINER]).ok();
    let exited = podman(&["inspect", "--format", "{{.State.ExitCode}}", CONTAINER]).ok();
    assert_eq!(exited.stdout.trim(), "0", "{}", podman(&["logs", CONTAINER]));
    let links = link_names(&tn.ns.exit);
    assert!(
        !links.iter().any(|l| l.starts_with("hwexit")),
        "TUN device removed: {links:?}"
    );
    let nat = ns_exec(&tn.ns.exit, "nft", &["list", "tables"]).ok();
    assert!(!nat.stdout.contains("hopwire_"), "NAT table removed: {nat}");
}
