//! The system's network settings: NAT and forwarding on an exit, routes and
//! DNS on a client.
//!
//! Everything here runs `ip`, `nft` and, where systemd-resolved manages the
//! resolver, `resolvectl` (as wg-quick does) and records what it
//! changed in a small state file before changing it, so the next start after
//! a crash can undo it. Only what Hopwire added is removed: routes and DNS
//! that were there before are left exactly as they were. [`tun`] creates
//! TUN devices; [`firewall`] is the client's fail-closed nftables table.
//!
//! What it does not do: decide when to change anything (the daemon and the
//! exit do), or move packets.
//!
//! May not depend on: any other Hopwire crate. Used by the client daemon
//! and the node runtime, never by the client runtime.

pub mod firewall;
pub mod tun;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("running `{command}`: {source} (is iproute2/nftables installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no route to {0} on this machine")]
    NoRoute(IpAddr),
    #[error("{path} is 0 and cannot be set here ({source}): an exit needs forwarding on (the package's exit drop-in turns it on; else `sysctl -w {sysctl}=1`)")]
    Forwarding {
        path: &'static str,
        sysctl: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A Linux capability a Hopwire process may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    bit: u32,
}

/// TUN devices, addresses, routes, nftables, socket marks.
pub const NET_ADMIN: Capability = Capability {
    name: "CAP_NET_ADMIN",
    bit: 12,
};
/// Ports below `net.ipv4.ip_unprivileged_port_start` (an exit's DNS
/// forwarder on port 53).
pub const NET_BIND_SERVICE: Capability = Capability {
    name: "CAP_NET_BIND_SERVICE",
    bit: 10,
};

/// Those of `wanted` this process does not hold in its effective set
/// (all of them if `/proc/self/status` cannot be read).
pub fn lacking(wanted: &[Capability]) -> Vec<Capability> {
    let effective = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))?
            .trim()
            .to_owned();
        u64::from_str_radix(&hex, 16).ok()
    });
    wanted
        .iter()
        .copied()
        .filter(|c| effective.is_none_or(|set| set & (1 << c.bit) == 0))
        .collect()
}

/// Whether binding `port` needs [`NET_BIND_SERVICE`] here.
pub fn port_is_privileged(port: u16) -> bool {
    read_file(Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start"))
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_none_or(|start| u32::from(port) < start)
}

/// Runs a command and returns its stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String, SysError> {
    run_with_input(program, args, None)
}

pub(crate) fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, SysError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn = |source| SysError::Spawn {
        command: command.clone(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if input.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if !out.status.success() {
        return Err(SysError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_file(path: &Path, text: &str) -> Result<(), SysError> {
    std::fs::write(path, text).map_err(|source| SysError::File {
        path: path.to_owned(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, SysError> {
    std::fs::read_to_string(path).map_err(|source| SysError::File {
        path: path.to_owned(),
        source,
    })
}

/// Loads a state file left by a previous run, if any.
fn load_state<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("ignoring unreadable state file {}: {e}", path.display());
            None
        }
    }
}

fn save_state<T: Serialize>(path: &Path, state: &T) -> Result<(), SysError> {
    let text = serde_json::to_string_pretty(state).unwrap_or_else(|e| unreachable!("state serializes: {e}"));
    write_file(path, &text)
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether this machine has an IPv6 default route (an exit then carries
/// its clients' IPv6).
pub fn has_ipv6_uplink() -> bool {
    run("ip", &["-6", "route", "show", "default"]).is_ok_and(|out| !out.trim().is_empty())
}

/// Adds `addr/prefix` to `dev` (without duplicate address detection: the
/// address is ours alone).
pub fn add_address(dev: &str, addr: IpAddr, prefix: u8) -> Result<(), SysError> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let cidr = format!("{addr}/{prefix}");
    let mut args = vec![family, "addr", "add", cidr.as_str(), "dev", dev];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    run("ip", &args).map(drop)
}

/// Removes `addr/prefix` from `dev`.
pub fn del_address(dev: &str, addr: IpAddr, prefix: u8) -> Result<(), SysError> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    run("ip", &[family, "addr", "del", &format!("{addr}/{prefix}"), "dev", dev]).map(drop)
}

/// What an exit changed: forwarding and one nftables table of its own.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExitNat {
    table: String,
    /// IPv4 forwarding before, when the exit turned it on (a packaged exit
    /// finds it on already: its unit sets it).
    ip_forward_before: Option<String>,
    /// The same for IPv6, when the exit carries IPv6.
    #[serde(default)]
    ip6_forward_before: Option<String>,
    #[serde(skip)]
    state_file: PathBuf,
}

impl ExitNat {
    /// Undoes what a crashed run left behind (recorded in `state_file`),
    /// then enables forwarding and masquerade for `subnet` (and NAT66 for
    /// `subnet_v6`, if given) behind TUN `tun`.
    ///
    /// The table also keeps clients off the exit host itself (only DNS and
    /// ping to the gateway, and the node's DHT on `dht_port`: the DHT is
    /// public anyway, and a connected client's DHT traffic comes through its
    /// tunnel) and lets into the TUN only replies to what the clients
    /// started, so unsolicited inbound traffic never reaches them.
    pub fn setup(
        tun: &str,
        subnet: Ipv4Net,
        subnet_v6: Option<Ipv6Net>,
        dht_port: u16,
        state_file: &Path,
    ) -> Result<Self, SysError> {
        if let Some(mut stale) = load_state::<ExitNat>(state_file) {
            tracing::info!(
                "undoing network settings left by a previous run ({})",
                state_file.display()
            );
            stale.state_file = state_file.to_owned();
            stale.teardown();
        }
        let table = format!("hopwire_{}", tun.replace('-', "_"));
        let off = |path: &str| {
            read_file(Path::new(path))
                .map(|v| v.trim().to_owned())
                .map(|v| (v != "1").then_some(v))
        };
        let mut nat = ExitNat {
            table: table.clone(),
            ip_forward_before: off(IP_FORWARD)?,
            ip6_forward_before: match subnet_v6 {
                Some(_) => off(IP6_FORWARD)?,
                None => None,
            },
            state_file: state_file.to_owned(),
        };
        save_state(state_file, &nat)?;
        let nat66 = subnet_v6
            .map(|net| format!("\n    ip6 saddr {net} oifname != \"{tun}\" masquerade"))
            .unwrap_or_default();
        let script = format!(
            r#"table inet {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{tun}" masquerade{nat66}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{tun}" accept
    oifname "{tun}" ct state established,related accept
    oifname "{tun}" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{tun}" ct state established,related accept
    iifname "{tun}" udp dport 53 accept
    iifname "{tun}" tcp dport 53 accept
    iifname "{tun}" tcp dport {dht_port} accept
    iifname "{tun}" icmp type echo-request accept
    iifname "{tun}" icmpv6 type echo-request accept
    iifname "{tun}" drop
  }}
}}
"#
        );
        // Replace any same-named table atomically.
        let _ = run("nft", &["delete", "table", "inet", &table]);
        run_with_input("nft", &["-f", "-"], Some(&script))?;
        if let Err(e) = nat.turn_forwarding_on() {
            nat.teardown();
            return Err(e);
        }
        Ok(nat)
    }

    /// Turns on the forwarding that was off; one it could not turn on was
    /// not changed, so teardown leaves it alone.
    fn turn_forwarding_on(&mut self) -> Result<(), SysError> {
        let all = [
            (&mut self.ip_forward_before, IP_FORWARD, "net.ipv4.ip_forward"),
            (
                &mut self.ip6_forward_before,
                IP6_FORWARD,
                "net.ipv6.conf.all.forwarding",
            ),
        ];
        for (before, path, sysctl) in all {
            if before.is_some() {
                if let Err(source) = std::fs::write(path, "1\n") {
                    *before = None;
                    return Err(SysError::Forwarding { path, sysctl, source });
                }
            }
        }
        Ok(())
    }

    /// Removes the table and restores forwarding; safe to call twice.
    pub fn teardown(&mut self) {
        // Older runs made an `ip` table of the same name.
        for family in ["inet", "ip"] {
            if let Err(e) = run("nft", &["delete", "table", family, &self.table]) {
                tracing::debug!("nft table {family} {} already gone: {e}", self.table);
            }
        }
        if let Some(before) = &self.ip_forward_before {
            if let Err(e) = write_file(Path::new(IP_FORWARD), &format!("{before}\n")) {
                tracing::warn!("restoring ip_forward: {e}");
            }
        }
        if let Some(before) = &self.ip6_forward_before {
            if let Err(e) = write_file(Path::new(IP6_FORWARD), &format!("{before}\n")) {
                tracing::warn!("restoring IPv6 forwarding: {e}");
            }
        }
        let _ = std::fs::remove_file(&self.state_file);
    }
}

/// How the kernel reaches an address now: `ip route get`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouteHop {
    pub gateway: Option<IpAddr>,
    pub dev: String,
}

pub fn route_get(addr: IpAddr) -> Result<RouteHop, SysError> {
    let family = if addr.is_ipv4() { "-4" } else { "-6" };
    let out = run("ip", &[family, "-j", "route", "get", &addr.to_string()])?;
    let hops: Vec<RouteHop> = serde_json::from_str(&out).map_err(|_| SysError::NoRoute(addr))?;
    hops.into_iter().next().ok_or(SysError::NoRoute(addr))
}

/// The stub resolver systemd-resolved puts in resolv.conf.
const RESOLVED_STUB: &str = "127.0.0.53";

/// What a client changed: routes it added, and the DNS of the tunnel link
/// it set through resolved or the resolv.conf it replaced.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ClientNet {
    /// `ip` argument lists that added a route; deleting replays them with `del`.
    routes: Vec<Vec<String>>,
    resolv_conf: Option<PathBuf>,
    resolv_backup: Option<String>,
    /// The link whose DNS resolved was given (`resolvectl revert` undoes it).
    #[serde(default)]
    resolved_link: Option<String>,
    #[serde(skip)]
    state_file: PathBuf,
    /// How the machine reached the internet before the tunnel took over.
    #[serde(skip)]
    uplink: Option<RouteHop>,
}

impl ClientNet {
    /// Undoes what a crashed daemon left behind. A state file that cannot
    /// be read is moved aside (`.unreadable`) and reported: what it would
    /// have undone is unknown, so the caller should fail closed.
    pub fn recover(state_file: &Path) -> Result<(), String> {
        let text = match std::fs::read_to_string(state_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("network state file {}: {e}", state_file.display())),
        };
        match serde_json::from_str::<ClientNet>(&text) {
            Ok(mut stale) => {
                tracing::info!(
                    "undoing network settings left by a previous run ({})",
                    state_file.display()
                );
                stale.state_file = state_file.to_owned();
                stale.restore();
                Ok(())
            }
            Err(e) => {
                let aside = state_file.with_extension("unreadable");
                let _ = std::fs::rename(state_file, &aside);
                Err(format!(
                    "the network state file {} is unreadable ({e}; kept as {}): routes or DNS a crashed run left cannot be undone; everything but the tunnel stays blocked until a tunnel is up again (connect, then disconnect)",
                    state_file.display(),
                    aside.display()
                ))
            }
        }
    }

    pub fn new(state_file: &Path) -> Self {
        Self {
            state_file: state_file.to_owned(),
            ..Self::default()
        }
    }

    fn add_route(&mut self, args: &[&str]) -> Result<(), SysError> {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.insert(
            full.iter().position(|a| a == "route").map_or(0, |i| i + 1),
            "add".into(),
        );
        self.routes.push(full.clone());
        save_state(&self.state_file, self)?;
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        run("ip", &refs).inspect_err(|_| {
            self.routes.pop();
        })?;
        Ok(())
    }

    /// Sends all IPv4 through `tun` except packets to `first_hop` (the node
    /// the tunnel's own packets go to), and IPv6 too when `ipv6` (the
    /// tunnel carries it); otherwise IPv6 is unreachable, not leaked.
    pub fn route_all_through(&mut self, tun: &str, first_hop: IpAddr, ipv6: bool) -> Result<(), SysError> {
        self.uplink = Some(route_get(first_hop)?);
        self.bypass(first_hop)?;
        self.add_route(&["-4", "route", "0.0.0.0/1", "dev", tun])?;
        self.add_route(&["-4", "route", "128.0.0.0/1", "dev", tun])?;
        self.route_v6(tun, ipv6)
    }

    /// Routes all IPv6 through `tun` (`through`) or makes it unreachable,
    /// replacing the IPv6 catch-alls added before.
    pub fn route_v6(&mut self, tun: &str, through: bool) -> Result<(), SysError> {
        let is_v6_catch_all =
            |r: &Vec<String>| r.first().is_some_and(|f| f == "-6") && r.iter().any(|a| a.ends_with("::/1"));
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.routes).into_iter().partition(is_v6_catch_all);
        self.routes = kept;
        for args in old {
            Self::delete_route(args);
        }
        save_state(&self.state_file, self)?;
        if !read_file(Path::new("/proc/sys/net/ipv6/conf/all/disable_ipv6")).is_ok_and(|v| v.trim() == "0") {
            return Ok(());
        }
        if through {
            self.add_route(&["-6", "route", "::/1", "dev", tun])?;
            self.add_route(&["-6", "route", "8000::/1", "dev", tun])
        } else {
            self.add_route(&["-6", "route", "unreachable", "::/1"])?;
            self.add_route(&["-6", "route", "unreachable", "8000::/1"])
        }
    }

    /// Replays an `add` argument list with `del`.
    fn delete_route(mut args: Vec<String>) {
        if let Some(add) = args.iter().position(|a| a == "add") {
            args[add] = "del".into();
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = run("ip", &refs) {
            // Routes through the TUN device vanish with it.
            tracing::debug!("route already gone: {e}");
        }
    }

    /// Sends packets to `addr` the way the machine reached the internet
    /// before the tunnel (for a new first hop after a circuit change).
    pub fn bypass(&mut self, addr: IpAddr) -> Result<(), SysError> {
        let hop = match &self.uplink {
            Some(hop) => hop.clone(),
            None => route_get(addr)?,
        };
        let (family, host) = match addr {
            IpAddr::V4(a) => ("-4", format!("{a}/32")),
            IpAddr::V6(a) => ("-6", format!("{a}/128")),
        };
        let exists = run("ip", &[family, "route", "show", "exact", &host])
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false);
        if exists {
            return Ok(());
        }
        let via = hop.gateway.map(|g| g.to_string());
        let mut args = vec![family, "route", &host];
        if let Some(g) = &via {
            args.extend(["via", g.as_str()]);
        }
        args.extend(["dev", hop.dev.as_str()]);
        self.add_route(&args)
    }

    /// Removes the routes around the tunnel for every address but `addr`.
    pub fn keep_only_bypass(&mut self, addrs: &[IpAddr]) {
        let keep: Vec<String> = addrs
            .iter()
            .map(|addr| match addr {
                IpAddr::V4(a) => format!("{a}/32"),
                IpAddr::V6(a) => format!("{a}/128"),
            })
            .collect();
        let mut stale = Vec::new();
        self.routes.retain(|r| {
            // A bypass is a host route with a device, unlike the catch-alls.
            let host = r.iter().position(|a| a == "add").and_then(|i| r.get(i + 1));
            let is_bypass = host.is_some_and(|h| h.ends_with("/32") || h.ends_with("/128"));
            if is_bypass && !host.is_some_and(|h| keep.contains(h)) {
                stale.push(r.clone());
                false
            } else {
                true
            }
        });
        for args in stale {
            Self::delete_route(args);
        }
        if let Err(e) = save_state(&self.state_file, self) {
            tracing::warn!("recording network settings: {e}");
        }
    }

    /// Points the system resolver at `servers` (reached through `tun`).
    /// Where systemd-resolved manages the resolver (resolv.conf names its
    /// stub), the tunnel link gets the servers and the `~.` routing
    /// domain, so every query goes there; elsewhere resolv.conf is
    /// rewritten in place, so a bind-mounted one (as in `ip netns exec`)
    /// keeps working.
    pub fn set_dns(&mut self, tun: &str, resolv_conf: &Path, servers: &[IpAddr]) -> Result<(), SysError> {
        if servers.is_empty() {
            return Ok(());
        }
        let before = read_file(resolv_conf)?;
        let stub = before
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .any(|a| a.trim() == RESOLVED_STUB);
        if stub {
            return self.set_link_dns(tun, servers);
        }
        if self.resolv_backup.is_none() {
            self.resolv_backup = Some(before);
            self.resolv_conf = Some(resolv_conf.to_owned());
            save_state(&self.state_file, self)?;
        }
        let mut text = String::from("# written by the hopwire daemon while connected; restored on disconnect\n");
        for s in servers {
            text.push_str(&format!("nameserver {s}\n"));
        }
        write_file(resolv_conf, &text)
    }

    /// Gives the tunnel link its DNS through resolved, as the only link
    /// for every domain (`~.`) and the default route for queries.
    fn set_link_dns(&mut self, tun: &str, servers: &[IpAddr]) -> Result<(), SysError> {
        self.resolved_link = Some(tun.to_owned());
        save_state(&self.state_file, self)?;
        let servers: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
        let mut dns = vec!["dns", tun];
        dns.extend(servers.iter().map(String::as_str));
        run("resolvectl", &dns)?;
        run("resolvectl", &["domain", tun, "~."])?;
        run("resolvectl", &["default-route", tun, "yes"]).map(drop)
    }

    /// Removes what was added, newest first, and restores the DNS.
    pub fn restore(&mut self) {
        if let (Some(path), Some(text)) = (self.resolv_conf.take(), self.resolv_backup.take()) {
            if let Err(e) = write_file(&path, &text) {
                tracing::warn!("restoring DNS: {e}");
            }
        }
        if let Some(link) = self.resolved_link.take() {
            // Gone with the link anyway; reverting says so to resolved.
            if let Err(e) = run("resolvectl", &["revert", &link]) {
                tracing::debug!("resolved already forgot {link}: {e}");
            }
        }
        while let Some(args) = self.routes.pop() {
            Self::delete_route(args);
        }
        let _ = std::fs::remove_file(&self.state_file);
    }
}
