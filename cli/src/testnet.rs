//! `hopwire testnet`: a whole Hopwire network on this machine, in network
//! namespaces, running the real binaries.
//!
//! Topology (namespace names are `PREFIX-NAME`):
//!
//! ```text
//!  client 198.18.2.2 ── inet ── 198.18.1.2 exit ── 10.77.0.2 lan
//!     2001:2:2::2        │  │   2001:2:1::2
//!                        │  ├── 198.19.1.2 exit2 (no IPv6)
//!       198.18.0.10 ─────┘  ├── 100.65.0.2 relay1
//!       2001:2::10          └── 100.66.0.2 relay2 …
//!   (HTTP + DNS: the
//!    pretend internet)
//! ```
//!
//! IPv6 lives in 2001:2::/48 (the benchmarking range): the client, the
//! first exit and the pretend internet have it, so IPv6 goes through a
//! tunnel to the first exit and must be blocked through any other.
//!
//! `inet` routes between everyone and hosts the pretend internet; every node
//! sits in its own /16, so path selection may put any of them on one
//! circuit; `lan` is the first exit operator's private network, which the
//! default exit policy keeps clients out of. Nothing touches the host's own routes,
//! DNS or firewall: every address lives inside the namespaces made here.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hopwire_api::{self as api, Request, Response, State, Status};
use hopwire_proto::record::hex;
use hopwire_sys as sys;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use sha2::{Digest, Sha256};

const INET_SERVER: &str = "198.18.0.10";
const INET_SERVER_V6: &str = "2001:2::10";
/// The first exit's address; others are listed in the summary.
const EXIT_UPLINK: &str = "198.18.1.2";
const CLIENT_UPLINK: &str = "198.18.2.2";
const LAN_SERVER: &str = "10.77.0.2";
const EXIT_PORT: u16 = 4433;
/// The ledger service, in the bootstrap node's namespace.
const LEDGER: &str = "100.90.0.2:7300";
/// The local EVM chain's JSON-RPC (`--ledger evm`), there too.
const CHAIN_RPC: &str = "100.90.0.2:8545";
/// What one unit of the test token (a millionth of a token) is worth in
/// wei of the chain's coin, for weighing gas (a token at 1/2000 of the coin).
const UNIT_VALUE_WEI: u64 = 500_000_000;
/// Regions the testnet's relays declare, in turn.
const RELAY_REGIONS: [&str; 8] = ["FR", "SE", "CH", "AT", "PL", "CZ", "IT", "ES"];
const EXIT_REGIONS: [&str; 4] = ["DE", "NL", "US", "JP"];
const SERVER_SCRIPT: &str = include_str!("inet.py");
/// Tools the testnet runs, and the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("ping", "iputils-ping"),
    ("python3", "python3"),
    ("sha256sum", "coreutils"),
];

/// The client namespace's nftables table that drops packets for `--loss`.
const LOSS_TABLE: &str = "hopwire_testnet_loss";

#[derive(clap::Args)]
// A flag given twice takes the last value (tests add to a default set).
#[command(args_override_self = true)]
pub struct Args {
    /// Leave the network running and print how to enter it.
    #[arg(long)]
    keep: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Names the namespaces `PREFIX-inet`, `PREFIX-exit`, … (1-8 of a-z, 0-9).
    #[arg(long, default_value = "hw")]
    prefix: String,
    /// Size of the test file to download, in MiB.
    #[arg(long, default_value_t = 32)]
    size_mb: u64,
    /// Hops in the client's circuit.
    #[arg(long, default_value_t = 3)]
    hops: u8,
    /// Relay nodes to start.
    #[arg(long, default_value_t = 4)]
    relays: u8,
    /// Exit nodes to start.
    #[arg(long, default_value_t = 2)]
    exits: u8,
    /// What the client's ledger account holds at start.
    #[arg(long, default_value_t = 1_000_000_000)]
    client_funds: u64,
    /// Every node charges nothing (payments off), e.g. to measure their cost.
    #[arg(long)]
    free: bool,
    /// Nodes limit no circuit and no neighbour (`circuit_rate_mbit` and
    /// `peer_rate_mbit` 0), so a benchmark measures the software, not the
    /// defaults of 1 and 2 Gbit/s.
    #[arg(long)]
    no_rate_limits: bool,
    /// What the hops are paid on: the embedded ledger, or a local EVM chain
    /// (anvil) with the payment-channel contract.
    #[arg(long, value_enum, default_value_t = LedgerKind::Embedded)]
    ledger: LedgerKind,
    /// The client's deposit per payment channel, in MiB at the hop's price.
    #[arg(long, default_value_t = 1024)]
    deposit_mib: u64,
    /// Drops this share, in percent, of the UDP packets reaching the client
    /// while it downloads the test file (nftables in its namespace): a
    /// lossy last mile, as on poor Wi-Fi or a mobile network.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=50))]
    loss: u8,
    /// Tear down a network left by `--keep` and exit.
    #[arg(long)]
    down: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LedgerKind {
    Embedded,
    Evm,
}

/// The ledger the testnet started.
struct LedgerUp {
    /// What nodes and the client are given (`pay.ledger`, `--ledger`).
    addr: String,
    log: PathBuf,
    /// The client's account (hex word).
    client_account: String,
}

/// One Hopwire node of the testnet.
struct NodePlan {
    /// `exit`, `exit2`, …, `relay1`, …: also its namespace's suffix.
    name: String,
    role: &'static str,
    addr: std::net::Ipv4Addr,
    router: std::net::Ipv4Addr,
    region: &'static str,
    /// What it charges per GiB (`[pay] price_per_gib`).
    price_per_gib: u64,
}

impl NodePlan {
    /// The inet router's end of the node's link.
    fn router_dev(&self) -> String {
        format!("to-{}", self.name)
    }
}

/// Exits first, then relays; each in a /16 of its own.
fn plan(exits: u8, relays: u8) -> Vec<NodePlan> {
    use std::net::Ipv4Addr;
    let exits = (1..=exits).map(|k| {
        let net = match k {
            1 => [198, 18, 1],
            2 => [198, 19, 1],
            k => [100, 96 + k, 0],
        };
        NodePlan {
            name: if k == 1 { "exit".into() } else { format!("exit{k}") },
            role: "exit",
            addr: Ipv4Addr::new(net[0], net[1], net[2], 2),
            router: Ipv4Addr::new(net[0], net[1], net[2], 1),
            region: EXIT_REGIONS[usize::from(k - 1) % EXIT_REGIONS.len()],
            price_per_gib: 2_000_000 + 1_000_000 * u64::from(k - 1),
        }
    });
    let relays = (1..=relays).map(|i| NodePlan {
        name: format!("relay{i}"),
        role: "relay",
        addr: Ipv4Addr::new(100, 64 + i, 0, 2),
        router: Ipv4Addr::new(100, 64 + i, 0, 1),
        region: RELAY_REGIONS[usize::from(i - 1) % RELAY_REGIONS.len()],
        price_per_gib: 1_000_000,
    });
    exits.chain(relays).collect()
}

/// The DHT bootstrap node: in a /16 of its own, no circuits.
fn bootstrap_plan() -> NodePlan {
    NodePlan {
        name: "boot".into(),
        role: "bootstrap",
        addr: std::net::Ipv4Addr::new(100, 90, 0, 2),
        router: std::net::Ipv4Addr::new(100, 90, 0, 1),
        region: "ZZ",
        price_per_gib: 0,
    }
}

/// One testnet's names and files.
struct Testnet {
    prefix: String,
    dir: PathBuf,
    bin_dir: PathBuf,
    children: Vec<Child>,
    /// Nodes charge nothing.
    free: bool,
    /// Nodes limit no circuit and no neighbour.
    no_rate_limits: bool,
    /// What nodes are paid on (`pay.ledger`), once it runs.
    ledger: String,
}

pub async fn run(args: Args) -> Result<i32> {
    if args.prefix.is_empty()
        || args.prefix.len() > 8
        || !args
            .prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("--prefix `{}` must be 1-8 characters of a-z and 0-9", args.prefix);
    }
    if !(1..=3).contains(&args.hops) {
        bail!("--hops must be 1 to 3, not {}", args.hops);
    }
    if args.exits == 0 || args.exits > 8 || args.relays > 20 {
        bail!("--exits must be 1 to 8 and --relays 0 to 20");
    }
    if args.relays + 1 < args.hops {
        bail!(
            "a {}-hop circuit needs at least {} relays (--relays {})",
            args.hops,
            args.hops - 1,
            args.relays
        );
    }
    if !crate::is_root() {
        bail!(
            "the testnet needs root: it creates network namespaces, veth links and TUN devices. \
             Run it as root, e.g. `sudo hopwire testnet` (it never touches the host's own routes, DNS or firewall)"
        );
    }
    let exe = std::env::current_exe().context("finding the hopwire binary")?;
    let mut net = Testnet {
        dir: PathBuf::from("/run/hopwire-testnet").join(&args.prefix),
        prefix: args.prefix.clone(),
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        children: Vec::new(),
        free: args.free,
        no_rate_limits: args.no_rate_limits,
        ledger: LEDGER.to_owned(),
    };
    if args.down {
        net.down();
        println!("testnet {} torn down", args.prefix);
        return Ok(0);
    }
    check_tools()?;
    // A network of the same name left by an earlier run goes first.
    net.down();
    let outcome = tokio::select! {
        r = net.up_and_check(&args) => r,
        () = hopwire_net::process::shutdown_signal() => Err(anyhow!("interrupted")),
    };
    match outcome {
        Ok(summary) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).context("encoding summary")?
                );
            } else {
                print_summary(&summary, args.keep);
            }
            if !args.keep {
                net.down();
            }
            Ok(0)
        }
        Err(e) => {
            net.print_logs();
            net.down();
            Err(e.context(format!("testnet {} failed and was torn down", args.prefix)))
        }
    }
}

fn check_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
        .map(|(tool, package)| format!("{tool} (apt install {package})"))
        .collect();
    if !missing.is_empty() {
        bail!("the testnet needs these tools: {}", missing.join(", "));
    }
    Ok(())
}

impl Testnet {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        sys::run("ip", args)?;
        Ok(())
    }

    /// Runs a program inside the namespace of `role` and returns its stdout.
    fn exec(&self, role: &str, program: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(role);
        let mut full = vec!["netns", "exec", ns.as_str(), program];
        full.extend_from_slice(args);
        Ok(sys::run("ip", &full)?)
    }

    /// Starts a long-running program inside a namespace, output to `log`.
    fn spawn(&mut self, role: &str, program: &Path, args: &[&str], log: &Path) -> Result<u32> {
        use std::os::unix::process::CommandExt;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a Ctrl-C meant for us is handled by us.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    fn build_topology(&self, nodes: &[NodePlan]) -> Result<()> {
        let names = ["inet", "client", "lan"]
            .into_iter()
            .chain(nodes.iter().map(|n| n.name.as_str()));
        for name in names {
            let ns = self.ns(name);
            self.ip(&["netns", "add", &ns])?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (inet, client, lan, exit) = (self.ns("inet"), self.ns("client"), self.ns("lan"), self.ns("exit"));
        let mut links = vec![
            (
                client.clone(),
                "eth0".to_owned(),
                "198.18.2.2/30".to_owned(),
                inet.clone(),
                "to-client".to_owned(),
                "198.18.2.1/30".to_owned(),
            ),
            (
                lan.clone(),
                "eth0".into(),
                "10.77.0.2/24".into(),
                exit.clone(),
                "lan0".into(),
                "10.77.0.1/24".into(),
            ),
        ];
        for n in nodes {
            links.push((
                self.ns(&n.name),
                "up0".into(),
                format!("{}/30", n.addr),
                inet.clone(),
                n.router_dev(),
                format!("{}/30", n.router),
            ));
        }
        for (a_ns, a, a_addr, b_ns, b, b_addr) in &links {
            self.ip(&[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ])?;
            for (ns, dev, addr) in [(a_ns, a, a_addr), (b_ns, b, b_addr)] {
                self.ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
                self.ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        // The pretend internet host is the router's own address.
        self.ip(&["-n", &inet, "addr", "add", &format!("{INET_SERVER}/32"), "dev", "lo"])?;
        self.ip(&["-n", &client, "route", "add", "default", "via", "198.18.2.1"])?;
        // IPv6: the client, the first exit and the internet host.
        let v6 = [
            (&inet, "lo", "2001:2::10/128"),
            (&inet, "to-client", "2001:2:2::1/64"),
            (&client, "eth0", "2001:2:2::2/64"),
            (&inet, "to-exit", "2001:2:1::1/64"),
            (&exit, "up0", "2001:2:1::2/64"),
        ];
        for (ns, dev, addr) in v6 {
            self.ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        self.ip(&["-n", &client, "-6", "route", "add", "default", "via", "2001:2:2::1"])?;
        self.ip(&["-n", &exit, "-6", "route", "add", "default", "via", "2001:2:1::1"])?;
        self.exec("inet", "sh", &["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])?;
        self.ip(&["-n", &lan, "route", "add", "default", "via", "10.77.0.1"])?;
        for n in nodes {
            self.ip(&[
                "-n",
                &self.ns(&n.name),
                "route",
                "add",
                "default",
                "via",
                &n.router.to_string(),
            ])?;
        }
        self.exec("inet", "sh", &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        // `ip netns exec` bind-mounts these over /etc/resolv.conf.
        for name in std::iter::once("client").chain(nodes.iter().map(|n| n.name.as_str())) {
            let dir = Path::new("/etc/netns").join(self.ns(name));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(dir.join("resolv.conf"), format!("nameserver {INET_SERVER}\n"))
                .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
        }
        Ok(())
    }

    /// Initialises, configures and starts one node; returns its summary.
    /// `bootstrap` is the DHT address of the bootstrap node (none for itself).
    async fn start_node(&mut self, n: &NodePlan, bootstrap: Option<&str>) -> Result<serde_json::Value> {
        let dir = self.dir.join(&n.name);
        let node = self.bin_dir.join("hopwire-node");
        let public = format!("{}:{EXIT_PORT}", n.addr);
        let dir_s = dir.to_string_lossy().into_owned();
        sys::run(
            &node.to_string_lossy(),
            &["init", "--dir", &dir_s, "--public-address", &public, "--roles", n.role],
        )?;
        let config = dir.join("node.toml");
        let text = std::fs::read_to_string(&config).context("reading a node.toml")?;
        let text = text
            .replace("dns_upstream = []", &format!("dns_upstream = [\"{INET_SERVER}:53\"]"))
            .replace("region = \"ZZ\"", &format!("region = \"{}\"", n.region))
            .replace(
                "price_per_gib = 0",
                &format!("price_per_gib = {}", if self.free { 0 } else { n.price_per_gib }),
            )
            .replace(
                "# ledger = \"203.0.113.9:7300\"",
                &format!("ledger = \"{}\"", self.ledger),
            )
            .replace(
                "# unit_value_wei = \"1000000000\"",
                &format!("unit_value_wei = \"{UNIT_VALUE_WEI}\""),
            )
            // Channels a client closes are settled within seconds.
            .replace("settle_every_s = 600", "settle_every_s = 2");
        // The testnet's relays live in 100.64.0.0/10, which exits refuse by
        // default: the client's DHT traffic, which goes through its tunnel
        // once connected, must reach them.
        let text = if n.role == "exit" {
            text.replace("\npolicy = []\n", "\npolicy = [\"accept 100.64.0.0/10:4433\"]\n")
        } else {
            text
        };
        let text = match bootstrap {
            Some(b) => text.replace("\nbootstrap = []\n", &format!("\nbootstrap = [\"{b}\"]\n")),
            None => text,
        };
        let text = if self.no_rate_limits {
            text.replace("\ncircuit_rate_mbit = 1000\n", "\ncircuit_rate_mbit = 0\n")
                .replace("\npeer_rate_mbit = 2000\n", "\npeer_rate_mbit = 0\n")
        } else {
            text
        };
        std::fs::write(&config, text).context("writing a node.toml")?;
        let config_s = config.to_string_lossy().into_owned();
        let log = self.dir.join(format!("{}.log", n.name));
        let pid = self.spawn(&n.name, &node, &["run", "--config", &config_s], &log)?;
        self.wait_for_log(&log, "node serving", &format!("node {}", n.name))
            .await?;
        // In the node's namespace: a charging node asks its ledger's service
        // for the domain its record names.
        let shown = self.exec(
            &n.name,
            &node.to_string_lossy(),
            &["show-record", "--config", &config_s, "--json"],
        )?;
        let shown: serde_json::Value = serde_json::from_str(&shown).context("reading show-record --json")?;
        Ok(json!({
            "name": n.name, "namespace": self.ns(&n.name), "addr": n.addr, "role": n.role, "region": n.region,
            "price_per_gib": if self.free { 0 } else { n.price_per_gib },
            "identity": shown["identity"], "record": shown["record"], "wg_public_key": shown["wg_public_key"],
            "dht_addr": shown["dht_addr"], "payout": shown["payout"], "config": config, "pid": pid, "log": log,
        }))
    }

    async fn up_and_check(&mut self, args: &Args) -> Result<serde_json::Value> {
        std::fs::create_dir_all(self.dir.join("www")).with_context(|| format!("creating {}", self.dir.display()))?;
        let nodes = plan(args.exits, args.relays);
        let mut all = vec![bootstrap_plan()];
        all.extend(plan(args.exits, args.relays));
        self.build_topology(&all)?;

        // The pretend internet and the exit's LAN host.
        let script = self.dir.join("inet.py");
        std::fs::write(&script, SERVER_SCRIPT).context("writing the server script")?;
        let www = self.dir.join("www");
        let test_file = www.join("test.bin");
        let sha256 = write_random_file(&test_file, args.size_mb)?;
        let lan_www = self.dir.join("lan-www");
        std::fs::create_dir_all(&lan_www).context("creating lan-www")?;
        std::fs::write(lan_www.join("index.html"), "the exit operator's private LAN\n").context("lan index")?;
        let python = PathBuf::from("python3");
        let access_log = self.dir.join("inet-access.log");
        let (s, w, a) = (
            script.to_string_lossy(),
            www.to_string_lossy(),
            access_log.to_string_lossy(),
        );
        self.spawn(
            "inet",
            &python,
            &[&s, INET_SERVER, &w, &a, INET_SERVER_V6],
            &self.dir.join("inet.log"),
        )?;
        let lan_log = self.dir.join("lan-access.log");
        let (lw, ll) = (lan_www.to_string_lossy(), lan_log.to_string_lossy());
        self.spawn("lan", &python, &[&s, LAN_SERVER, &lw, &ll], &self.dir.join("lan.log"))?;

        // The ledger every node is paid on, with the client's account funded.
        // The client keeps its state apart from its socket, as on a real
        // machine (/var/lib/hopwire and /run/hopwire).
        let client_dir = self.dir.join("client");
        let state_dir = client_dir.join("state");
        std::fs::create_dir_all(&state_dir).context("creating the client's state dir")?;
        let ledger = match args.ledger {
            LedgerKind::Embedded => self.start_embedded_ledger(&state_dir, args.client_funds).await?,
            LedgerKind::Evm => self.start_chain(&state_dir, &nodes, args.client_funds).await?,
        };
        self.ledger = ledger.addr.clone();

        // The nodes, and the list of their records the client picks from.
        // The bootstrap node first: everyone else finds the others through it.
        let boot = self.start_node(&bootstrap_plan(), None).await?;
        let boot_addr = boot["dht_addr"]
            .as_str()
            .ok_or_else(|| anyhow!("the bootstrap node has no DHT address"))?
            .to_owned();
        let mut started = Vec::new();
        for n in &nodes {
            started.push(self.start_node(n, Some(&boot_addr)).await?);
        }
        let records: Vec<String> = started
            .iter()
            .filter_map(|n| n["record"].as_str().map(str::to_owned))
            .collect();
        let nodes_file = self.dir.join("nodes.txt");
        std::fs::write(&nodes_file, records.join("\n") + "\n").context("writing nodes.txt")?;

        // On a chain, what the nodes hold before they carry anything.
        let chain_before = match args.ledger {
            LedgerKind::Evm if !self.free => {
                let accounts: Vec<String> = started.iter().filter_map(payout_address).collect();
                Some(self.chain_stats(&accounts)?)
            }
            _ => None,
        };

        // The client daemon.
        let socket = client_dir.join("run").join("hopwire.sock");
        let socket_s = socket.to_string_lossy().into_owned();
        let client_log = self.dir.join("client.log");
        let hopwire = self.bin_dir.join("hopwire");
        let client_pid = self.spawn(
            "client",
            &hopwire,
            &[
                "--socket",
                &socket_s,
                "daemon",
                "--state-dir",
                &state_dir.to_string_lossy(),
                "--bootstrap",
                &boot_addr,
                "--ledger",
                &ledger.addr,
                "--deposit-mib",
                &args.deposit_mib.to_string(),
            ],
            &client_log,
        )?;
        self.wait_for_daemon(&socket).await?;
        // The client knows only the bootstrap node: it waits until the DHT
        // shows every node, then builds its path from what it found.
        let discovered = self.wait_for_discovery(&socket, nodes.len()).await?;

        let started_at = Instant::now();
        let connect = Request::Connect {
            records: Vec::new(),
            hops: args.hops,
            country: None,
            max_price: None,
        };
        let status = match api::call(&socket, &connect, Duration::from_secs(60)).await? {
            Response::Ok { status } => status,
            Response::Error { message, .. } => bail!("connecting the client: {message}"),
            _ => bail!("the daemon answered a connect with something else than a status"),
        };
        let connect_ms = started_at.elapsed().as_secs_f64() * 1000.0;
        let exit_ip = status
            .exit
            .as_ref()
            .map(|e| e.addr.ip().to_string())
            .unwrap_or_default();
        let name_of = |id: &str| {
            started
                .iter()
                .find(|n| n["identity"].as_str() == Some(id))
                .and_then(|n| n["name"].as_str())
                .unwrap_or("?")
                .to_owned()
        };
        let path: Vec<String> = std::iter::once(format!("client {CLIENT_UPLINK}"))
            .chain(
                status
                    .circuit
                    .iter()
                    .map(|h| format!("{} {} ({}, {})", name_of(&h.id), h.id, h.addr.ip(), h.region)),
            )
            .chain(std::iter::once(format!("internet {INET_SERVER}")))
            .collect();

        if args.loss > 0 {
            self.lossy_last_mile(args.loss)?;
        }
        // Through the tunnel: a DNS name served by the pretend internet.
        let url = "http://files.hopwire.test/test.bin";
        let out = self.dir.join("client-download.bin");
        let out_s = out.to_string_lossy().into_owned();
        let measured = self.exec(
            "client",
            "curl",
            &[
                "-sS",
                "--fail",
                "--max-time",
                "300",
                "-o",
                &out_s,
                "-w",
                "%{size_download} %{time_total}",
                url,
            ],
        )?;
        if args.loss > 0 {
            self.exec("client", "nft", &["delete", "table", "inet", LOSS_TABLE])?;
        }
        let mut fields = measured.split_whitespace();
        let bytes: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        let seconds: f64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0.0);
        let got = sha256_file(&out)?;
        let _ = std::fs::remove_file(&out);
        if got != sha256 {
            bail!("the downloaded file differs from the served one (sha256 {got} != {sha256})");
        }
        let seen = std::fs::read_to_string(&access_log).unwrap_or_default();
        let server_saw = seen
            .lines()
            .rev()
            .find(|l| l.ends_with("/test.bin"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("")
            .to_owned();
        if server_saw != exit_ip {
            bail!("the internet server saw the download come from `{server_saw}`, not from the exit {exit_ip}");
        }
        let rtt_ms = self.ping_rtt()?;
        // A packet of the tunnel's full MTU crosses the whole circuit unfragmented.
        let mtu = status.mtu.unwrap_or(0);
        let payload = mtu.saturating_sub(28).to_string();
        self.exec(
            "client",
            "ping",
            &[
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &payload,
                INET_SERVER,
            ],
        )
        .context("a full-size packet did not cross the circuit")?;
        // Let the last usage reports and receipts cross, then see what each
        // hop was paid against what it carried.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let status = self.status(&socket).await.unwrap_or(status);
        let payments = payment_summary(&status, &name_of);
        let first_exit = &started[0];
        // On a chain, the demo ends with settlement: the client closes its
        // channels, and each hop settles inside the challenge period; their
        // balances before and after. A kept network stays connected.
        let settlement = match chain_before.as_ref().filter(|_| !args.keep) {
            Some(before) => Some(self.settle_on_chain(&socket, &status, &started, before).await?),
            None => None,
        };

        Ok(json!({
            "prefix": self.prefix,
            "namespaces": {
                "inet": self.ns("inet"), "exit": self.ns("exit"),
                "client": self.ns("client"), "lan": self.ns("lan"),
            },
            "addresses": {
                "inet_server": INET_SERVER, "exit_uplink": EXIT_UPLINK,
                "client_uplink": CLIENT_UPLINK, "lan_server": LAN_SERVER,
            },
            "dir": self.dir,
            "nodes": started,
            "bootstrap": boot,
            "discovery": { "via": "dht", "bootstrap": boot_addr, "nodes_found": discovered },
            "nodes_file": nodes_file,
            "hops": args.hops,
            "path": path,
            "circuit": status.circuit,
            "exit": {
                "config": first_exit["config"], "pid": first_exit["pid"], "record": first_exit["record"],
                "identity": first_exit["identity"], "wg_public_key": first_exit["wg_public_key"], "log": first_exit["log"],
            },
            "client": {
                "socket": socket, "pid": client_pid, "log": client_log, "state_dir": state_dir,
                "inner_addr": status.inner_addr, "mtu": status.mtu, "connect_ms": round2(connect_ms),
                "build_ms": status.build_ms,
            },
            "download": {
                "url": url, "bytes": bytes, "seconds": seconds,
                "mbit_per_s": round2(if seconds > 0.0 { bytes as f64 * 8.0 / seconds / 1e6 } else { 0.0 }),
                "sha256": sha256, "sha256_ok": true,
            },
            "full_size_packet": { "mtu": mtu, "crossed": true },
            "loss_percent": args.loss,
            "server_saw": server_saw,
            "rtt_ms": rtt_ms,
            "ledger": {
                "kind": if args.ledger == LedgerKind::Evm { "evm" } else { "embedded" },
                "addr": ledger.addr, "log": ledger.log, "client_account": ledger.client_account, "funds": args.client_funds,
            },
            "settlement": settlement,
            "payments": payments,
            "spent": status.spent,
            "payment_bytes": status.payment_bytes,
        }))
    }

    /// Drops `percent` % of the UDP packets reaching the client, at random
    /// (the kernel here has no netem): cells, QUIC and DNS alike, until the
    /// table is deleted.
    fn lossy_last_mile(&self, percent: u8) -> Result<()> {
        let table = ["inet", LOSS_TABLE];
        self.exec("client", "nft", &[&["add", "table"][..], &table].concat())?;
        let chain = [
            "{", "type", "filter", "hook", "input", "priority", "-10", ";", "policy", "accept", ";", "}",
        ];
        self.exec(
            "client",
            "nft",
            &[&["add", "chain"][..], &table, &["input"], &chain].concat(),
        )?;
        let below = percent.to_string();
        let rule = [
            "meta", "l4proto", "udp", "numgen", "random", "mod", "100", "<", &below, "drop",
        ];
        self.exec(
            "client",
            "nft",
            &[&["add", "rule"][..], &table, &["input"], &rule].concat(),
        )
        .context("adding the loss rule (nftables)")?;
        Ok(())
    }

    /// The embedded ledger's service in the bootstrap namespace, with the
    /// client's account funded.
    async fn start_embedded_ledger(&mut self, state_dir: &Path, funds: u64) -> Result<LedgerUp> {
        let account = hopwire_client::wallet::load_or_create_key(state_dir)?
            .verifying_key()
            .to_bytes();
        let log = self.dir.join("ledger.log");
        let db = self.dir.join("ledger");
        let node_bin = self.bin_dir.join("hopwire-node");
        let fund = format!("{}={funds}", hex(&account));
        self.spawn(
            "boot",
            &node_bin,
            &[
                "ledger",
                "--listen",
                LEDGER,
                "--db",
                &db.to_string_lossy(),
                "--challenge-s",
                "60",
                "--fund",
                &fund,
            ],
            &log,
        )?;
        self.wait_for_log(&log, "ledger serving", "the ledger").await?;
        Ok(LedgerUp {
            addr: LEDGER.to_owned(),
            log,
            client_account: hex(&account),
        })
    }

    /// A local EVM chain in the bootstrap namespace (`hopwire-node
    /// devchain`): the contract and test token deployed, the client funded
    /// with tokens and gas, every charging node with gas for settling.
    async fn start_chain(&mut self, state_dir: &Path, nodes: &[NodePlan], funds: u64) -> Result<LedgerUp> {
        let client = hopwire_client::wallet::load_or_create_evm_key(state_dir)?.address();
        let mut fund = vec![format!("{client}={funds}")];
        for n in nodes {
            let dir = self.dir.join(&n.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = hopwire_net::keys::load_or_create_evm_key(&dir.join(hopwire_net::keys::EVM_FILE))?;
            fund.push(format!("{}=0", key.address()));
        }
        let log = self.dir.join("chain.log");
        let chain_dir = self.dir.join("chain");
        let mut args: Vec<String> = vec![
            "devchain".into(),
            "--listen".into(),
            CHAIN_RPC.into(),
            "--dir".into(),
            chain_dir.to_string_lossy().into_owned(),
            "--challenge-s".into(),
            "60".into(),
        ];
        for f in &fund {
            args.extend(["--fund".to_owned(), f.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node_bin = self.bin_dir.join("hopwire-node");
        self.spawn("boot", &node_bin, &args, &log)?;
        self.wait_for_log(&log, "devchain ready", "the local chain").await?;
        let text = std::fs::read_to_string(&log).context("reading the chain's log")?;
        let addr = text
            .lines()
            .find_map(|l| l.split("ledger = ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("the chain's log names no ledger"))?
            .to_owned();
        Ok(LedgerUp {
            addr,
            log,
            client_account: hopwire_proto::record::hex(&hopwire_proto::pay::scheme::address_word(client)),
        })
    }

    /// `hopwire-node chain-stats` for `accounts`, from inside the bootstrap
    /// namespace (where the chain is).
    fn chain_stats(&self, accounts: &[String]) -> Result<serde_json::Value> {
        let node_bin = self.bin_dir.join("hopwire-node");
        let mut args = vec!["chain-stats", "--ledger", self.ledger.as_str()];
        for a in accounts {
            args.extend(["--account", a.as_str()]);
        }
        let out = self.exec("boot", &node_bin.to_string_lossy(), &args)?;
        serde_json::from_str(&out).context("reading chain-stats")
    }

    /// Disconnects, closes the client's channels, and waits until every
    /// paid hop holds on the chain what the client paid it (a hop settles
    /// when a channel owes enough to be worth its fee, and always inside a
    /// closing channel's challenge period); each hop's balance before and
    /// after, and the gas of every kind of transaction.
    async fn settle_on_chain(
        &mut self,
        socket: &Path,
        status: &Status,
        started: &[serde_json::Value],
        before: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let paid: Vec<(String, String, u64)> = status
            .payments
            .iter()
            .filter_map(|p| {
                let node = started.iter().find(|n| n["identity"].as_str() == Some(p.id.as_str()))?;
                Some((node["name"].as_str()?.to_owned(), payout_address(node)?, p.paid))
            })
            .collect();
        let accounts: Vec<String> = paid.iter().map(|(_, a, _)| a.clone()).collect();
        // Disconnected, the circuit's channels are idle and can close.
        api::call(socket, &Request::Disconnect, Duration::from_secs(30)).await?;
        match api::call(socket, &Request::Wallet { close: true }, Duration::from_secs(60)).await? {
            Response::Wallet { .. } => {}
            Response::Error { message, .. } => bail!("closing the client's channels: {message}"),
            _ => bail!("the daemon answered a wallet request with something else"),
        }
        let balance = |stats: &serde_json::Value, a: &str| stats["balances"][a.to_lowercase()].as_u64().unwrap_or(0);
        let gained = |after: &serde_json::Value, a: &str| balance(after, a).saturating_sub(balance(before, a));
        let mut after = before.clone();
        for _ in 0..60 {
            after = self.chain_stats(&accounts)?;
            if paid.iter().all(|(_, a, p)| gained(&after, a) >= *p) {
                break;
            }
            self.check_children()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rows: Vec<serde_json::Value> = paid
            .iter()
            .map(|(name, a, p)| {
                json!({ "name": name, "payout": a, "paid_by_client": p,
                        "before": balance(before, a), "after": balance(&after, a), "settled": gained(&after, a) })
            })
            .collect();
        if let Some((name, _, p)) = paid.iter().find(|(_, a, p)| gained(&after, a) < *p) {
            bail!("hop {name} was paid {p} by the client but not settled on the chain within 30 s of the client closing its channels");
        }
        Ok(json!({ "hops": rows, "gas": after["gas"], "gas_price_wei": after["last_gas_price_wei"] }))
    }

    async fn status(&self, socket: &Path) -> Result<Status> {
        match api::call(socket, &Request::Status, Duration::from_secs(5)).await? {
            Response::Ok { status } | Response::Error { status, .. } => Ok(status),
            _ => bail!("the daemon answered a status request with something else"),
        }
    }

    /// Average round trip through the tunnel to the pretend internet.
    fn ping_rtt(&self) -> Result<f64> {
        let out = self.exec("client", "ping", &["-c", "10", "-i", "0.2", "-q", INET_SERVER])?;
        // rtt min/avg/max/mdev = 0.101/0.137/0.166/0.022 ms
        out.lines()
            .find_map(|l| l.split(" = ").nth(1))
            .and_then(|v| v.split('/').nth(1))
            .and_then(|avg| avg.parse().ok())
            .ok_or_else(|| anyhow!("could not read ping's output: {out}"))
    }

    async fn wait_for_log(&mut self, log: &Path, needle: &str, what: &str) -> Result<()> {
        for _ in 0..100 {
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
                return Ok(());
            }
            self.check_children()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{what} did not start within 10 s (log: {})", log.display())
    }

    /// Polls the client's DHT until it lists `expected` nodes; returns how
    /// many it found.
    async fn wait_for_discovery(&mut self, socket: &Path, expected: usize) -> Result<usize> {
        let ask = Request::Nodes {
            role: None,
            country: None,
        };
        let mut seen = 0;
        for _ in 0..60 {
            if let Ok(Response::Nodes { nodes }) = api::call(socket, &ask, Duration::from_secs(30)).await {
                seen = nodes.len();
                if seen >= expected {
                    return Ok(seen);
                }
            }
            self.check_children()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("the client's DHT found {seen} of {expected} nodes within 30 s")
    }

    async fn wait_for_daemon(&mut self, socket: &Path) -> Result<()> {
        for _ in 0..100 {
            if self.status(socket).await.is_ok_and(|s| s.state == State::Disconnected) {
                return Ok(());
            }
            self.check_children()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the client daemon did not answer on {} within 10 s", socket.display())
    }

    /// Fails if a process we started has already exited.
    fn check_children(&mut self) -> Result<()> {
        for child in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("process {} exited early ({status})", child.id());
            }
        }
        Ok(())
    }

    fn print_logs(&self) {
        for name in [
            "client.log",
            "exit.log",
            "exit2.log",
            "relay1.log",
            "relay2.log",
            "inet.log",
            "chain.log",
        ] {
            let path = self.dir.join(name);
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- last lines of {name} ---");
                for l in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{l}");
                }
            }
        }
    }

    /// Stops every process in the namespaces (client first, so it restores
    /// its settings), deletes the namespaces and the files. Safe to repeat.
    fn down(&mut self) {
        let listed = sys::run("ip", &["netns", "list"]).unwrap_or_default();
        let own = format!("{}-", self.prefix);
        let mut namespaces: Vec<String> = listed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&own))
            .map(str::to_owned)
            .collect();
        // The client first, so its daemon restores what it changed.
        namespaces.sort_by_key(|n| !n.ends_with("-client"));
        for ns in &namespaces {
            let pids = sys::run("ip", &["netns", "pids", ns]).unwrap_or_default();
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if pids.is_empty() {
                continue;
            }
            let mut args = vec!["-TERM"];
            args.extend(&pids);
            let _ = sys::run("kill", &args);
            for _ in 0..30 {
                if sys::run("ip", &["netns", "pids", ns]).is_ok_and(|p| p.trim().is_empty()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let left = sys::run("ip", &["netns", "pids", ns]).unwrap_or_default();
            let left: Vec<&str> = left.split_whitespace().collect();
            if !left.is_empty() {
                let mut args = vec!["-KILL"];
                args.extend(&left);
                let _ = sys::run("kill", &args);
            }
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
        for ns in &namespaces {
            let _ = sys::run("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A charging node's payout address (`0x…`), from its record's 32-byte word.
fn payout_address(node: &serde_json::Value) -> Option<String> {
    Some(format!("0x{}", node["payout"].as_str()?.get(24..)?))
}

/// What each charging hop was paid against what it carried at its price:
/// the difference is within what the client paid ahead (one chunk, 4 MiB,
/// or on a fast circuit what the hop carries in half a second) plus the
/// client's tolerance (1 MiB, or 1/64 of what it counted).
fn payment_summary(status: &Status, name_of: &dyn Fn(&str) -> String) -> Vec<serde_json::Value> {
    status
        .payments
        .iter()
        .map(|p| {
            let quote = hopwire_proto::pay::Quote {
                price_per_gib: p.price_per_gib,
                ..hopwire_proto::pay::Quote::FREE
            };
            let owed = quote.price_of(p.bytes).unwrap_or(u64::MAX);
            let tolerance = (1u64 << 20).max(p.bytes / hopwire_proto::pay::LOSS_SHARE);
            let slack = quote
                .price_of(p.ahead.max(quote.chunk_bytes) + tolerance)
                .unwrap_or(u64::MAX);
            json!({
                "name": name_of(&p.id), "id": p.id, "price_per_gib": p.price_per_gib,
                "bytes": p.bytes, "lost": p.lost, "paid": p.paid, "owed": owed, "ahead": p.ahead, "slack_price": slack,
                "within_prepaid": p.paid.abs_diff(owed) <= slack,
            })
        })
        .collect()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Writes `mib` MiB of random bytes and returns their sha256 in hex.
fn write_random_file(path: &Path, mib: u64) -> Result<String> {
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill_bytes(&mut chunk);
        hasher.update(&chunk);
        file.write_all(&chunk)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(hex(&hasher.finalize()))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&hasher.finalize()))
}

fn print_summary(s: &serde_json::Value, keep: bool) {
    let d = &s["download"];
    let path: Vec<&str> = s["path"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    println!("Hopwire testnet `{}`", s["prefix"].as_str().unwrap_or(""));
    println!("  path:       {}", path.join(" → "));
    println!(
        "  tunnel:     {} hops, inner address {}, mtu {}, circuit built in {} ms",
        s["hops"],
        s["client"]["inner_addr"].as_str().unwrap_or("?"),
        s["client"]["mtu"],
        s["client"]["build_ms"]
    );
    println!(
        "  download:   {} bytes in {:.2} s = {} Mbit/s, sha256 matches",
        d["bytes"],
        d["seconds"].as_f64().unwrap_or(0.0),
        d["mbit_per_s"]
    );
    println!(
        "  discovery:  {} nodes found in the DHT through the bootstrap node alone",
        s["discovery"]["nodes_found"]
    );
    println!(
        "  round trip: {} ms through the tunnel (ping {INET_SERVER})",
        s["rtt_ms"]
    );
    println!(
        "  privacy:    the internet host saw {} (the exit), not the client's {CLIENT_UPLINK}",
        s["server_saw"].as_str().unwrap_or("?")
    );
    println!(
        "  mtu:        a {}-byte packet crossed the circuit unfragmented",
        s["full_size_packet"]["mtu"]
    );
    if s["loss_percent"].as_u64().is_some_and(|l| l > 0) {
        println!(
            "  loss:       {} % of the UDP packets to the client dropped during the download",
            s["loss_percent"]
        );
    }
    for p in s["payments"].as_array().into_iter().flatten() {
        let lost = match p["lost"].as_u64() {
            Some(l) if l > 0 => format!(", {l} of them sent back and lost"),
            _ => String::new(),
        };
        println!(
            "  paid:       {} {} units for {} bytes{lost} at {}/GiB (owed {}, {})",
            p["name"].as_str().unwrap_or("?"),
            p["paid"],
            p["bytes"],
            p["price_per_gib"],
            p["owed"],
            if p["within_prepaid"].as_bool() == Some(true) {
                "within what was paid ahead"
            } else {
                "OFF BY MORE THAN WAS PAID AHEAD"
            }
        );
    }
    if let Some(chain) = s["settlement"].as_object() {
        for h in chain["hops"].as_array().into_iter().flatten() {
            println!(
                "  settled:    {} on chain: {} → {} units (+{}, the client paid {}) at {}",
                h["name"].as_str().unwrap_or("?"),
                h["before"],
                h["after"],
                h["settled"],
                h["paid_by_client"],
                h["payout"].as_str().unwrap_or("?")
            );
        }
        let gas = &chain["gas"];
        let show = |kind: &str| {
            let all: Vec<String> = gas[kind]
                .as_array()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            if all.is_empty() {
                "-".to_owned()
            } else {
                all.join(", ")
            }
        };
        println!(
            "  gas:        approve {}; open {}; settle {}; close {} (at {} wei/gas)",
            show("approve"),
            show("open"),
            show("settle"),
            show("start_close"),
            chain["gas_price_wei"]
        );
    }
    if keep {
        let ns = &s["namespaces"];
        println!("\nLeft running. Enter a namespace with:");
        for role in ["client", "inet", "lan"] {
            println!("  ip netns exec {} bash", ns[role].as_str().unwrap_or(""));
        }
        for n in s["nodes"].as_array().into_iter().flatten() {
            println!("  ip netns exec {} bash", n["namespace"].as_str().unwrap_or(""));
        }
        println!("Node records:  {}", s["nodes_file"].as_str().unwrap_or(""));
        println!(
            "Client status: hopwire --socket {} status",
            s["client"]["socket"].as_str().unwrap_or("")
        );
        println!(
            "Tear down:     hopwire testnet --down --prefix {}",
            s["prefix"].as_str().unwrap_or("")
        );
    } else {
        println!("  torn down.");
    }
}
