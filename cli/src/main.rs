//! `hopwire`: the Hopwire client.
//!
//! `hopwire daemon` runs privileged and owns the tunnel; `connect`, `status`
//! and `disconnect` are unprivileged clients of its local API; `testnet`
//! builds a whole Hopwire network in namespaces on this machine and shows
//! it working. The tunnel itself is the client runtime of `hopwire-client`;
//! the daemon ([`daemon`]) runs it on Linux and serves its API.

mod daemon;
mod testnet;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use daemon::DaemonConfig;
use hopwire_api::{self as api, NodeInfo, Request, Response, State, Status};
use hopwire_proto::record::Role;

#[derive(Parser)]
#[command(name = "hopwire", version, about = "Hopwire: a peer-to-peer VPN")]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "HOPWIRE_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the privileged daemon that owns the tunnel (as root).
    Daemon {
        /// Let this group use the API socket (mode 0660); default is root only.
        #[arg(long)]
        group: Option<String>,
        /// Name of the client's TUN device.
        #[arg(long, default_value = "hopwire0")]
        tun: String,
        /// Resolver file pointed at the tunnel's DNS while connected.
        #[arg(long, default_value = "/etc/resolv.conf")]
        resolv_conf: PathBuf,
        /// Where the daemon records its changes to the system (default: beside the socket).
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// What survives a reboot: the wallet's key and channels, the guard, DHT peers.
        #[arg(long, env = "HOPWIRE_STATE_DIR", default_value = "/var/lib/hopwire")]
        state_dir: PathBuf,
        /// DHT peers to join through (`/ip4/ADDR/tcp/PORT/p2p/PEER_ID`, repeatable;
        /// space-separated in the environment variable).
        #[arg(long, env = "HOPWIRE_BOOTSTRAP", value_delimiter = ' ')]
        bootstrap: Vec<String>,
        /// The ledger to pay nodes on: an embedded ledger's service (`IP:PORT`) or a chain's
        /// contract (`eip155:CHAIN_ID:CONTRACT@http://IP:PORT`); without it only free nodes can be used.
        #[arg(long, env = "HOPWIRE_LEDGER")]
        ledger: Option<hopwire_net::ledger::LedgerAddr>,
        /// Each payment channel's deposit: this many MiB at the hop's price.
        /// A channel running low while a circuit pays through it is topped
        /// up by as much as it holds (at most 16 deposits).
        #[arg(long, env = "HOPWIRE_DEPOSIT_MIB", default_value_t = 1024)]
        deposit_mib: u64,
    },
    /// Show the wallet: ledger account, balance, and the channels opened to hops.
    Wallet {
        #[arg(long)]
        json: bool,
        /// First start closing every channel no circuit uses: their
        /// deposits come back after the ledger's challenge period.
        #[arg(long)]
        close: bool,
    },
    /// List the nodes the DHT knows.
    Nodes {
        /// Only nodes of this role.
        #[arg(long, value_parser = ["exit", "relay"])]
        role: Option<String>,
        /// Only exits in this country (ISO code).
        #[arg(long)]
        country: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Connect through a circuit of nodes found in the DHT, or built from records given here.
    Connect {
        /// Node records (`hopwire1.…`) to choose the path from; none means the DHT's.
        records: Vec<String>,
        /// A file with more node records, one per line (`#` starts a comment).
        #[arg(long)]
        nodes: Option<PathBuf>,
        /// Hops in the circuit: 1 (exit only) to 3 (guard, middle, exit).
        #[arg(long, default_value_t = api::DEFAULT_HOPS)]
        hops: u8,
        /// Only exits in this country (ISO code, e.g. DE).
        #[arg(long)]
        country: Option<String>,
        /// Only nodes that charge at most this per GiB (the ledger's smallest unit).
        #[arg(long)]
        max_price: Option<u64>,
    },
    /// Show the tunnel's state; with --watch, keep printing what changes.
    Status {
        #[arg(long)]
        json: bool,
        /// Follow the daemon's events (state changes, circuits, traffic each second) until it stops.
        #[arg(long)]
        watch: bool,
    },
    /// Disconnect and restore routes and DNS.
    Disconnect,
    /// Show the settings, or change them (persisted by the daemon).
    Settings {
        /// Block everything but the tunnel while disconnected too, and across crashes and reboots.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        lockdown: Option<bool>,
        /// Let traffic to and from the local network go around the tunnel.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        allow_lan: Option<bool>,
        /// Carry IPv6 through the tunnel when the exit offers it (off: block IPv6).
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        ipv6: Option<bool>,
        /// Resolvers to use through the tunnel (comma-separated) instead of the exit's.
        #[arg(long, value_delimiter = ',', conflicts_with = "exit_dns")]
        dns: Option<Vec<std::net::IpAddr>>,
        /// Use the exit's resolver again.
        #[arg(long)]
        exit_dns: bool,
        /// Every setting back to its default (e.g. after the settings file was damaged).
        #[arg(long, conflicts_with_all = ["lockdown", "allow_lan", "ipv6", "dns", "exit_dns"])]
        reset: bool,
        #[arg(long)]
        json: bool,
    },
    /// Apply lockdown's block before networking starts (an early boot unit runs this).
    BootBlock {
        /// The daemon's state directory, where its settings are.
        #[arg(long, env = "HOPWIRE_STATE_DIR", default_value = "/var/lib/hopwire")]
        state_dir: PathBuf,
        /// Name of the client's TUN device (as given to the daemon).
        #[arg(long, default_value = "hopwire0")]
        tun: String,
    },
    /// Build a local Hopwire network in namespaces, download through it, and tear it down (as root).
    Testnet(testnet::Args),
    /// Write the manual pages (hopwire.1 and one per command) into DIR: for
    /// the package.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hopwire: {}", hopwire_net::process::describe(e.as_ref()));
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Daemon {
            group,
            tun,
            resolv_conf,
            state_file,
            state_dir,
            bootstrap,
            ledger,
            deposit_mib,
        } => {
            hopwire_net::process::init_logging();
            if !is_root() {
                bail!("the daemon needs root to create its TUN device and set routes; run `sudo hopwire daemon`");
            }
            let bootstrap = bootstrap
                .iter()
                .map(|b| {
                    hopwire_net::dht::parse_dht_addr(b)
                        .with_context(|| format!("--bootstrap `{b}` is not /ip4/ADDR/tcp/PORT/p2p/PEER_ID"))
                })
                .collect::<Result<Vec<_>>>()?;
            let config = DaemonConfig {
                client: hopwire_client::runtime::ClientConfig {
                    state_dir,
                    bootstrap,
                    ledger,
                    deposit_mib,
                },
                state_file: state_file.unwrap_or_else(|| cli.socket.with_extension("state.json")),
                socket: cli.socket,
                group,
                tun_name: tun,
                resolv_conf,
            };
            runtime.block_on(daemon::serve(config, hopwire_net::process::shutdown_signal()))?;
            Ok(0)
        }
        Command::Connect {
            records,
            nodes,
            hops,
            country,
            max_price,
        } => {
            let mut records: Vec<String> = records.iter().map(|r| r.trim().to_owned()).collect();
            if let Some(file) = nodes {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                records.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                );
            }
            // Check the records here too, so a typo is caught without a daemon.
            for (i, r) in records.iter().enumerate() {
                if let Err(e) = r.parse::<hopwire_proto::record::VerifiedRecord>() {
                    bail!("record {}: {e}", i + 1);
                }
            }
            let response = runtime.block_on(api::call(
                &cli.socket,
                &Request::Connect {
                    records,
                    hops,
                    country,
                    max_price,
                },
                hopwire_client::tunnel::BUILD_TIMEOUT * 4 + Duration::from_secs(10),
            ))?;
            report(response, false)
        }
        Command::Nodes { role, country, json } => {
            let role = role.map(|r| if r == "exit" { Role::Exit } else { Role::Relay });
            let response = runtime.block_on(api::call(
                &cli.socket,
                &Request::Nodes { role, country },
                hopwire_net::dht::LOOKUP_TIMEOUT * 3,
            ))?;
            match response {
                Response::Nodes { nodes } => print_answer(&nodes, json, |n| nodes_text(n)),
                Response::Error { message, .. } => bail!("{message}"),
                _ => bail!("the daemon answered something else than a node list"),
            }
        }
        Command::Wallet { json, close } => {
            let request = Request::Wallet { close };
            let response = runtime.block_on(api::call(&cli.socket, &request, Duration::from_secs(10)))?;
            match response {
                Response::Wallet { wallet } => print_answer(&wallet, json, wallet_text),
                Response::Error { message, .. } => bail!("{message}"),
                _ => bail!("the daemon answered something else than the wallet"),
            }
        }
        Command::Status { json, watch: true } => runtime.block_on(watch(&cli.socket, json)),
        Command::Status { json, watch: false } => {
            let response = runtime.block_on(api::call(&cli.socket, &Request::Status, Duration::from_secs(5)))?;
            report(response, json)
        }
        Command::Disconnect => {
            let response = runtime.block_on(api::call(&cli.socket, &Request::Disconnect, Duration::from_secs(10)))?;
            report(response, false)
        }
        Command::Settings {
            lockdown,
            allow_lan,
            ipv6,
            dns,
            exit_dns,
            reset,
            json,
        } => {
            let change = if reset {
                let d = api::Settings::default();
                api::SettingsChange {
                    lockdown: Some(d.lockdown),
                    allow_lan: Some(d.allow_lan),
                    ipv6: Some(d.ipv6),
                    dns: Some(d.dns),
                }
            } else {
                api::SettingsChange {
                    lockdown,
                    allow_lan,
                    ipv6,
                    dns: if exit_dns { Some(Vec::new()) } else { dns },
                }
            };
            let request = Request::Settings { change };
            match runtime.block_on(api::call(&cli.socket, &request, Duration::from_secs(10)))? {
                Response::Settings { settings } => print_answer(&settings, json, settings_text),
                Response::Error { message, .. } => bail!("{message}"),
                _ => bail!("the daemon answered something else than the settings"),
            }
        }
        Command::BootBlock { state_dir, tun } => boot_block(&state_dir, &tun),
        Command::Testnet(args) => runtime.block_on(testnet::run(args)),
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
            Ok(0)
        }
    }
}

/// Prints an answer as pretty JSON with `json`, else as `text` renders it.
fn print_answer<T: serde::Serialize>(value: &T, json: bool, text: impl FnOnce(&T) -> String) -> Result<i32> {
    let out = if json {
        serde_json::to_string_pretty(value).context("encoding the answer")? + "\n"
    } else {
        text(value)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    Ok(0)
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        other => Err(format!("`{other}`: say on or off")),
    }
}

/// With lockdown (or settings that cannot be read), loads the daemon's
/// firewall before anything else runs, so nothing leaks between boot and
/// the daemon's start; the daemon takes the table over when it starts.
fn boot_block(state_dir: &std::path::Path, tun: &str) -> Result<i32> {
    let settings = hopwire_client::settings::effective_at_boot(state_dir);
    if !settings.lockdown {
        println!("lockdown is off: nothing blocked before the daemon starts");
        return Ok(0);
    }
    let firewall = hopwire_sys::firewall::Firewall::default();
    let rules = hopwire_sys::firewall::Rules {
        tun,
        dns: &[],
        ipv6: false,
        allow_lan: settings.allow_lan,
    };
    firewall
        .load(&firewall.script(&rules))
        .context("loading the lockdown firewall")?;
    println!("lockdown: everything but the tunnel ({tun}) is blocked until the daemon starts");
    Ok(0)
}

fn settings_text(s: &api::Settings) -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    let dns = if s.dns.is_empty() {
        "the exit's".to_owned()
    } else {
        s.dns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    };
    format!(
        "lockdown:   {}\nallow LAN:  {}\nIPv6:       {}\nDNS:        {dns}\n",
        on(s.lockdown),
        on(s.allow_lan),
        on(s.ipv6)
    )
}

/// True when running as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Prints the status, then every event the daemon pushes (one JSON object
/// per line with `json`), until the daemon goes away.
async fn watch(socket: &std::path::Path, json: bool) -> Result<i32> {
    use std::io::Write as _;
    let mut subscription = api::Subscription::open(socket, Duration::from_secs(5)).await?;
    let mut out = std::io::stdout();
    let first = if json {
        serde_json::to_string(&subscription.status).context("encoding status")? + "\n"
    } else {
        status_text(&subscription.status)
    };
    if out.write_all(first.as_bytes()).and_then(|()| out.flush()).is_err() {
        return Ok(0);
    }
    while let Some(event) = subscription.next().await? {
        let line = if json {
            serde_json::to_string(&event).context("encoding an event")?
        } else {
            event_text(&event)
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    eprintln!("hopwire: the daemon closed the event stream");
    Ok(1)
}

fn event_text(event: &api::Event) -> String {
    use api::{Event, TunnelState};
    match event {
        Event::State { state } => match state {
            TunnelState::Reconnecting { reason, attempt } => {
                format!("state:    reconnecting (attempt {attempt}): {reason}")
            }
            TunnelState::Error { kind, message } => format!("state:    error ({kind}): {message}"),
            other => format!("state:    {}", other.state()),
        },
        Event::Circuit {
            circuit,
            build_ms,
            inner_addr,
            inner_v6,
            mtu,
            ..
        } => {
            let hops: Vec<String> = circuit.iter().map(|h| format!("{} ({})", h.id, h.region)).collect();
            let v6 = inner_v6.map(|a| format!(" and {a}")).unwrap_or_default();
            format!(
                "circuit:  {}, built in {build_ms:.0} ms; address {inner_addr}{v6} (mtu {mtu})",
                hops.join(" → ")
            )
        }
        Event::Traffic {
            tx_bps,
            rx_bps,
            rtt_ms,
            spent,
            ..
        } => format!(
            "traffic:  {:.1} Mbit/s up, {:.1} Mbit/s down, rtt {}, spent {spent}",
            *tx_bps as f64 / 1e6,
            *rx_bps as f64 / 1e6,
            rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into())
        ),
        Event::Wallet { channels } => format!("wallet:   {} channels", channels.len()),
        Event::Settings { settings, fail_closed } => {
            let blocked = fail_closed
                .as_ref()
                .map(|w| format!("; BLOCKED: {w}"))
                .unwrap_or_default();
            format!(
                "settings: {}{blocked}",
                settings_text(settings).trim_end().replace('\n', ", ")
            )
        }
        Event::Lagged { missed } => format!("(fell behind by {missed} events; the daemon dropped this watcher)"),
    }
}

/// Prints the daemon's answer; an error answer is a non-zero exit.
fn report(response: Response, json: bool) -> Result<i32> {
    let (status, error) = match response {
        Response::Ok { status } => (status, None),
        Response::Error { message, status, .. } => (status, Some(message)),
        _ => bail!("the daemon answered something else than a status"),
    };
    let text = if json {
        serde_json::to_string_pretty(&status).context("encoding status")? + "\n"
    } else {
        status_text(&status)
    };
    // A reader that stops early (`| head`) is not an error.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    match error {
        Some(message) => bail!("{message}"),
        None => Ok(0),
    }
}

fn nodes_text(nodes: &[NodeInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<16}  {:<12}  {:<6}  {:>9}  {:>10}  {:>8}  {:>7}  {}\n",
        "id", "roles", "region", "capacity", "price/GiB", "rtt", "age", "address"
    );
    for n in nodes {
        let roles: Vec<String> = n.roles.iter().map(ToString::to_string).collect();
        let rtt = n.rtt_ms.map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<16}  {:<12}  {:<6}  {:>4} Mb/s  {:>10}  {:>8}  {:>6}s  {}",
            n.id,
            roles.join(","),
            n.region,
            n.capacity_mbit,
            n.price_per_gib,
            rtt,
            n.age_s,
            n.addr
        );
    }
    let _ = writeln!(out, "{} nodes", nodes.len());
    out
}

fn status_text(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match (s.error_kind, s.attempt) {
        (Some(kind), _) => {
            let _ = writeln!(out, "state:    {} ({kind})", s.state);
        }
        (None, Some(attempt)) => {
            let _ = writeln!(out, "state:    {} (attempt {attempt})", s.state);
        }
        (None, None) => {
            let _ = writeln!(out, "state:    {}", s.state);
        }
    }
    if let Some(e) = &s.error {
        let _ = writeln!(out, "reason:   {e}");
    }
    if let Some(why) = &s.fail_closed {
        let _ = writeln!(out, "BLOCKED:  {why}");
    }
    let on = |b: bool| if b { "on" } else { "off" };
    let _ = writeln!(
        out,
        "settings: lockdown {}, allow LAN {}, IPv6 {}, DNS {}",
        on(s.settings.lockdown),
        on(s.settings.allow_lan),
        on(s.settings.ipv6),
        if s.settings.dns.is_empty() {
            "the exit's".to_owned()
        } else {
            s.settings
                .dns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if s.state == State::Disconnected {
        if s.settings.lockdown {
            let _ = writeln!(out, "blocked:  everything but the tunnel (lockdown)");
        }
        return out;
    }
    if !s.circuit.is_empty() {
        let hops: Vec<String> = s.circuit.iter().map(|h| format!("{} ({})", h.id, h.region)).collect();
        let build = s
            .build_ms
            .map(|ms| format!(", built in {ms:.0} ms"))
            .unwrap_or_default();
        let _ = writeln!(out, "circuit:  {}{build}", hops.join(" → "));
    }
    if let Some(exit) = &s.exit {
        let _ = writeln!(out, "exit:     {} at {}", exit.id, exit.addr);
    }
    if let Some(a) = s.inner_addr {
        let _ = writeln!(out, "address:  {a} (mtu {})", s.mtu.unwrap_or(0));
    }
    match (&s.inner_v6, &s.ipv6_blocked) {
        (Some(a), _) => {
            let _ = writeln!(out, "IPv6:     {a} through the tunnel");
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "IPv6:     {why}");
        }
        (None, None) => {}
    }
    let _ = writeln!(
        out,
        "traffic:  {} sent, {} received",
        human_bytes(s.bytes_sent),
        human_bytes(s.bytes_received)
    );
    let _ = writeln!(
        out,
        "now:      {:.1} Mbit/s up, {:.1} Mbit/s down",
        s.tx_bps as f64 / 1e6,
        s.rx_bps as f64 / 1e6
    );
    if let Some(rtt) = s.rtt_ms {
        let _ = writeln!(out, "rtt:      {rtt:.1} ms to the first hop");
    }
    if !s.payments.is_empty() || s.spent > 0 {
        let _ = writeln!(out, "spent:    {} this session", s.spent);
        for p in &s.payments {
            let _ = writeln!(
                out,
                "  {}  {} per GiB: paid {} for {}",
                p.id,
                p.price_per_gib,
                p.paid,
                human_bytes(p.bytes)
            );
        }
    }
    out
}

fn wallet_text(w: &api::WalletInfo) -> String {
    use std::fmt::Write as _;
    let mut out = format!("account:  {}\nledger:   {}\n", w.account, w.ledger);
    match (w.balance, &w.ledger_error) {
        (Some(b), _) => {
            let _ = writeln!(out, "balance:  {b}");
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "balance:  unknown ({e})");
        }
        (None, None) => {}
    }
    let _ = writeln!(
        out,
        "{:<16}  {:<16}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  state",
        "channel", "hop", "price/GiB", "deposit", "signed", "carried", "sessions"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for c in &w.channels {
        let state = match (c.finalized, c.close_at) {
            (true, _) => "closed".to_owned(),
            (false, Some(at)) if at > now => format!("closing (deposit back in {} s)", at - now),
            (false, Some(_)) => "closing (deposit due back)".to_owned(),
            (false, None) => "open".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<16}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {state}",
            c.channel,
            c.payee,
            c.price_per_gib,
            c.deposit,
            c.signed,
            human_bytes(c.bytes),
            c.sessions
        );
    }
    let spent: u64 = w.channels.iter().map(|c| c.signed).sum();
    let _ = writeln!(out, "{} channels, {spent} signed in all", w.channels.len());
    if !w.sessions.is_empty() {
        let _ = writeln!(out, "\nrecent sessions (newest first):");
        for s in &w.sessions {
            let hops: Vec<String> = s.hops.iter().map(|(hop, paid)| format!("{hop} {paid}")).collect();
            let _ = writeln!(
                out,
                "  {} s ago, {} s long: spent {} ({})",
                now.saturating_sub(s.ended_at),
                s.ended_at.saturating_sub(s.started_at),
                s.spent,
                hops.join(", ")
            );
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
