//! `hopwire-node`: the headless Hopwire node for a VPS or a router.
//!
//! It creates keys and a commented `node.toml` (`init`), relays circuits
//! and/or serves as their exit (`run`), and prints the one-line record
//! clients build circuits with (`show-record`). Everything protocol-related
//! lives in `hopwire-core`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use hopwire_net::keys::{self, NodeKeys};
use hopwire_net::ledger::{Ledger, LedgerAddr};
use hopwire_net::store::{ReceiptStore, StoreError};
use hopwire_node_runtime::config::{self, LoadedConfig, NodeConfig, DEFAULT_CONFIG};
use hopwire_node_runtime::control;
use hopwire_node_runtime::payee::SettlePolicy;
use hopwire_node_runtime::{dht_address, own_record, NodeRuntime, PaidOn};
use hopwire_proto::onion::keys::OnionKeys;
use hopwire_proto::record::{short_id, Role};
use hopwire_proto::time::unix_now;

#[derive(Parser)]
#[command(
    name = "hopwire-node",
    version,
    about = "Hopwire node: relay circuits and serve as an exit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node's keys and a commented node.toml: in DIR, or where
    /// the installed unit reads them (/etc/hopwire/node.toml, keys in
    /// /var/lib/hopwire-node; an exit also gets the unit's exit drop-in).
    /// Existing keys and config are kept unless --force.
    Init {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The address clients dial (this server's public IP and port).
        #[arg(long)]
        public_address: Option<std::net::SocketAddr>,
        /// What the node does: relay, exit, bootstrap (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "relay,exit")]
        roles: Vec<Role>,
        /// Replace existing keys and config (the node gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Serve until SIGINT or SIGTERM; SIGHUP re-reads the exit policy and
    /// the prices. The exit role needs CAP_NET_ADMIN and
    /// CAP_NET_BIND_SERVICE (root, or the unit's exit drop-in).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Serve an embedded ledger (channels, balances, settlement) over TCP:
    /// what a testnet or a single operator's network settles on.
    Ledger {
        #[arg(long, default_value = "0.0.0.0:7300")]
        listen: std::net::SocketAddr,
        /// Where the ledger keeps its state (sled).
        #[arg(long)]
        db: PathBuf,
        /// The domain receipts for this ledger carry.
        #[arg(long, default_value = "testnet")]
        domain: String,
        /// Seconds a payee has to settle after a payer starts closing.
        #[arg(long, default_value_t = 86_400)]
        challenge_s: u64,
        /// Credit an account at start, `HEX_PUBLIC_KEY=AMOUNT` (repeatable): how a testnet funds its clients.
        #[arg(long)]
        fund: Vec<String>,
    },
    /// Run a local EVM development chain (anvil, installed by the setup
    /// script) with the payment-channel contract and a test token deployed:
    /// what `hopwire testnet --ledger evm` settles on. Never real money.
    /// Prints the ledger address nodes and clients are given.
    Devchain {
        /// Where its JSON-RPC listens.
        #[arg(long, default_value = "127.0.0.1:8545")]
        listen: std::net::SocketAddr,
        /// A directory for the chain's state (kept across restarts, saved
        /// every second) and its deployment.
        #[arg(long)]
        dir: PathBuf,
        /// Seconds a payee has to settle after a payer starts closing.
        #[arg(long, default_value_t = 60)]
        challenge_s: u64,
        /// Base fee per gas, in wei (0.01 gwei: what an L2 charges).
        #[arg(long, default_value_t = 10_000_000)]
        base_fee_wei: u64,
        /// When it first deploys: give an address 100 of the chain's coin
        /// (for gas) and UNITS of the test token, `0xADDRESS=UNITS` (repeatable).
        #[arg(long)]
        fund: Vec<String>,
    },
    /// What an EVM ledger's chain shows: token balances of --account, and
    /// the gas of every transaction by kind, as JSON.
    ChainStats {
        /// The ledger, `eip155:CHAIN_ID:CONTRACT@http://IP:PORT`.
        #[arg(long)]
        ledger: hopwire_net::ledger::evm::EvmAddr,
        #[arg(long)]
        account: Vec<hopwire_net::ledger::evm::Address>,
    },
    /// What this node earned: the newest receipt of every channel, settled or not.
    /// Reads the node's receipt store, or asks the running node, which holds
    /// it, over its control socket.
    Earnings {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Settle on the ledger every channel owing at least --min and more
    /// than the fee of settling it; each channel's fee and net are shown
    /// first. A running node does it (over its control socket) and leaves
    /// the channels its circuits pay through until their sessions end.
    Settle {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Skip channels owing less than this.
        #[arg(long, default_value_t = 1)]
        min: u64,
    },
    /// Print the record clients pass to `hopwire connect` (a charging node
    /// paid on an embedded ledger asks the ledger's service its domain).
    ShowRecord {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print the record with its parts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the manual pages (hopwire-node.1 and one per command) into
    /// DIR: for the package.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("hopwire-node: {}", hopwire_net::process::describe(e.as_ref()));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            dir,
            public_address,
            roles,
            force,
        } => init(dir.as_deref(), public_address, &roles, force),
        Command::Run { config } => serve(&config),
        Command::Ledger {
            listen,
            db,
            domain,
            challenge_s,
            fund,
        } => ledger(listen, &db, &domain, challenge_s, &fund),
        Command::Devchain {
            listen,
            dir,
            challenge_s,
            base_fee_wei,
            fund,
        } => devchain(listen, &dir, challenge_s, base_fee_wei, &fund),
        Command::ChainStats { ledger, account } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let stats = runtime.block_on(hopwire_net::ledger::evm::stats::read(ledger, &account))?;
            println!("{}", serde_json::to_string(&stats)?);
            Ok(())
        }
        Command::ShowRecord { config, json } => {
            as_node_user(&config)?;
            show_record(&config, json)
        }
        Command::Earnings { config, json } => {
            as_node_user(&config)?;
            earnings(&config, json)
        }
        Command::Settle { config, min } => {
            as_node_user(&config)?;
            settle(&config, min)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))
        }
    }
}

/// The installed unit's exit drop-in (CAP_NET_ADMIN, /dev/net/tun,
/// forwarding), as the package ships it, and where `init` links it.
const EXIT_DROP_IN: &str = "/usr/share/hopwire-node/exit.conf";
const EXIT_DROP_IN_LINK: &str = "/etc/systemd/system/hopwire-node.service.d/exit.conf";

fn init(dir: Option<&Path>, public_address: Option<std::net::SocketAddr>, roles: &[Role], force: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // In DIR: config and keys together. Installed: where the unit reads them.
    let (config_path, key_dir, key_dir_in_config) = match dir {
        Some(dir) => (dir.join("node.toml"), dir.to_owned(), PathBuf::from(".")),
        None => (
            PathBuf::from(config::DEFAULT_CONFIG),
            PathBuf::from(config::DEFAULT_STATE_DIR),
            PathBuf::from(config::DEFAULT_STATE_DIR),
        ),
    };
    for (d, mode) in [
        (&key_dir, 0o700),
        (&config_path.parent().unwrap_or(Path::new(".")).to_owned(), 0o755),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    let keys = match NodeKeys::load(&key_dir) {
        Ok(keys) if !force => {
            println!(
                "keeping the existing keys in {} (--force replaces them)",
                key_dir.display()
            );
            keys
        }
        _ => {
            let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
            keys.save(&key_dir, force)?;
            keys::save_onion_keys(&key_dir, &OnionKeys::generate(&mut rand::rngs::OsRng, unix_now()))?;
            keys
        }
    };
    if force || !config_path.exists() {
        std::fs::write(
            &config_path,
            config::template(public_address, roles, &key_dir_in_config),
        )
        .with_context(|| format!("writing {}", config_path.display()))?;
    } else {
        println!("keeping the existing {} (--force replaces it)", config_path.display());
    }
    let loaded = NodeConfig::load(&config_path)?;
    println!(
        "node {} initialised\nconfig: {}\nkeys:   {}",
        short_id(&keys.identity.verifying_key().to_bytes()),
        config_path.display(),
        key_dir.display()
    );
    if dir.is_some() {
        println!(
            "next: edit the config, then run `hopwire-node run --config {}`",
            config_path.display()
        );
        return Ok(());
    }
    // Files written by root in a state directory the service's user owns
    // already (a re-run after the first start) stay readable to it.
    give_to_owner_of(&key_dir)?;
    link_exit_drop_in(loaded.config.node.roles.contains(&Role::Exit))?;
    println!("next: edit the config, then `systemctl enable --now hopwire-node` (after an edit: `systemctl reload hopwire-node` for the exit policy and prices, `systemctl restart hopwire-node` for the rest)");
    Ok(())
}

/// The exit role needs the installed unit's exit drop-in; a node without
/// it must not keep one.
fn link_exit_drop_in(exit: bool) -> Result<()> {
    let (shipped, link) = (Path::new(EXIT_DROP_IN), Path::new(EXIT_DROP_IN_LINK));
    let linked = std::fs::read_link(link).is_ok_and(|target| target == shipped);
    if exit && !linked {
        if !shipped.exists() {
            println!("exit role: {EXIT_DROP_IN} is missing (not installed from the package): run the node as root");
            return Ok(());
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::os::unix::fs::symlink(shipped, link)
            .with_context(|| format!("linking {} to {}", link.display(), shipped.display()))?;
        println!("exit role: linked {EXIT_DROP_IN_LINK} (CAP_NET_ADMIN, /dev/net/tun, IP forwarding); run `systemctl daemon-reload`");
    } else if !exit && linked {
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
        println!("no exit role: removed {EXIT_DROP_IN_LINK}; run `systemctl daemon-reload`");
    }
    Ok(())
}

/// Makes every file in `dir` belong to `dir`'s owner.
fn give_to_owner_of(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if owner.uid() == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        std::os::unix::fs::lchown(&path, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("giving {} to the node's user", path.display()))?;
    }
    Ok(())
}

/// Run as root on a node whose state belongs to its own user (the
/// installed unit's dynamic user), a command that writes there runs again
/// as that user, so nothing it creates is root's.
fn as_node_user(config: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    const AGAIN: &str = "HOPWIRE_NODE_AS_OWNER";
    if std::env::var_os(AGAIN).is_some() {
        return Ok(());
    }
    let key_dir = NodeConfig::load(config)?.key_dir;
    let (Ok(me), Ok(state)) = (std::fs::metadata("/proc/self"), std::fs::metadata(&key_dir)) else {
        return Ok(());
    };
    if me.uid() != 0 || state.uid() == 0 {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .uid(state.uid())
        .gid(state.gid())
        .env(AGAIN, "1")
        .exec();
    Err(error).with_context(|| {
        format!(
            "running again as uid {}, the owner of {}",
            state.uid(),
            key_dir.display()
        )
    })
}

fn load(config: &Path) -> Result<(LoadedConfig, NodeKeys)> {
    let loaded = NodeConfig::load(config)?;
    let keys = NodeKeys::load(&loaded.key_dir)?;
    Ok((loaded, keys))
}

fn serve(config: &Path) -> Result<()> {
    hopwire_net::process::init_logging();
    let (loaded, keys) = load(config)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
        let (reload, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                // One pending reload reads the file as it is by then.
                let _ = reload.try_send(());
            }
        });
        let node = NodeRuntime::new(loaded, keys).reload_on(reloads);
        node.run(hopwire_net::process::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

fn ledger(listen: std::net::SocketAddr, db: &Path, domain: &str, challenge_s: u64, fund: &[String]) -> Result<()> {
    hopwire_net::process::init_logging();
    let ledger = hopwire_net::ledger::EmbeddedLedger::open_at(db, domain, challenge_s)?;
    for f in fund {
        let (account, amount) = f
            .split_once('=')
            .and_then(|(k, a)| Some((hopwire_proto::record::parse_identity(k)?, a.parse::<u64>().ok()?)))
            .with_context(|| format!("--fund {f}: expected 64 hex digits=AMOUNT"))?;
        let balance = ledger.fund(account, amount)?;
        println!("funded {} with {amount}: balance {balance}", short_id(&account));
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        hopwire_node_runtime::ledger_service::listen(listen, ledger)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        hopwire_net::process::shutdown_signal().await;
        Ok(())
    })
}

fn devchain(
    listen: std::net::SocketAddr,
    dir: &Path,
    challenge_s: u64,
    base_fee_wei: u64,
    fund: &[String],
) -> Result<()> {
    use hopwire_net::ledger::evm::{devnet, Address, U256};
    hopwire_net::process::init_logging();
    let funds = fund
        .iter()
        .map(|f| {
            f.split_once('=')
                .and_then(|(a, u)| Some((a.parse::<Address>().ok()?, u.parse::<u64>().ok()?)))
                .with_context(|| format!("--fund {f}: expected 0xADDRESS=UNITS"))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let state = dir.join("anvil-state.json");
    let (state_s, base_fee) = (state.to_string_lossy().into_owned(), base_fee_wei.to_string());
    let anvil = devnet::Anvil::start(
        listen,
        &[
            "--state",
            &state_s,
            "--state-interval",
            "1",
            "--block-base-fee-per-gas",
            &base_fee,
            // Gas costs the base fee alone, as on an uncongested L2.
            "--disable-min-priority-fee",
        ],
    )?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let (deployed, fresh) =
            devnet::Deployed::load_or_deploy(&dir.join("deployment.json"), anvil.rpc, challenge_s).await?;
        if fresh {
            for (address, units) in &funds {
                deployed
                    .fund(*address, U256::from(100u128 * 1_000_000_000_000_000_000), *units)
                    .await?;
                println!("funded {address} with 100 coin and {units} units");
            }
        }
        println!("devchain ready: ledger = {} (anvil pid {})", deployed.addr, anvil.pid());
        hopwire_net::process::shutdown_signal().await;
        anyhow::Ok(())
    })?;
    anvil.stop();
    Ok(())
}

/// The node's receipt store; [`StoreError::InUse`] if the running node
/// holds it.
fn receipts(loaded: &LoadedConfig) -> Result<ReceiptStore, StoreError> {
    ReceiptStore::open_dir(&loaded.key_dir.join("receipts"))
}

/// The node's ledger, acting as the node (on a chain, with its gas key).
fn ledger_of(loaded: &LoadedConfig, keys: &NodeKeys) -> Result<(std::sync::Arc<dyn Ledger>, [u8; 32])> {
    let addr = ledger_addr(loaded)?;
    let (payout, access) = hopwire_node_runtime::payout(loaded, keys, &addr)?;
    Ok((addr.connect(&access, None)?, payout))
}

fn ledger_addr(loaded: &LoadedConfig) -> Result<LedgerAddr> {
    loaded
        .config
        .pay
        .ledger
        .with_context(|| format!("{}: pay.ledger is not set", loaded.path.display()))
}

/// A report of the receipt store (`earnings` or `settle`): made here from
/// the store while the node is stopped, asked of the running node, which
/// holds the store, otherwise.
fn report(
    loaded: &LoadedConfig,
    request: &control::Request,
    here: impl FnOnce(&ReceiptStore) -> Result<serde_json::Value>,
) -> Result<serde_json::Value> {
    match receipts(loaded) {
        Ok(store) => here(&store),
        Err(StoreError::InUse(dir)) => control::ask(&loaded.key_dir, request).with_context(|| {
            format!(
                "the receipt store {} is in use by the running node, and asking it failed",
                dir.display()
            )
        }),
        Err(e) => Err(e.into()),
    }
}

/// A fee and a net from a report's row, as shown: units and gas, `?` where
/// the ledger could not price it, `-` for a channel not weighed.
fn fee_and_net(row: &serde_json::Value, weighed: bool) -> (String, String) {
    if !weighed {
        return ("-".into(), "-".into());
    }
    let fee = match (row["fee"].as_u64(), row["fee_gas"].as_u64()) {
        (Some(units), Some(gas)) if gas > 0 => format!("{units} ({gas} gas)"),
        (Some(units), _) => units.to_string(),
        (None, Some(gas)) => format!("? ({gas} gas)"),
        (None, None) => "?".into(),
    };
    let net = row["net"].as_f64().map_or("?".into(), |n| format!("{n:.0}"));
    (fee, net)
}

fn earnings(config: &Path, json: bool) -> Result<()> {
    let (loaded, keys) = load(config)?;
    let report = report(&loaded, &control::Request::Earnings, |store| {
        let ledger = ledger_of(&loaded, &keys);
        let ledger = match &ledger {
            Ok((l, payout)) => Ok((l.as_ref(), *payout)),
            Err(e) => Err(format!("{e:#}")),
        };
        // What settling each unsettled channel would cost now, and whether the
        // running node would settle it.
        let policy = SettlePolicy::of(&loaded.config.pay);
        Ok(hopwire_node_runtime::earnings::earnings(
            store,
            ledger,
            &policy,
            &|_| false,
        )?)
    })?;
    if json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{:<16}  {:>14}  {:>12}  {:>12}  {:>12}  {:>18}  {:>12}",
        "channel", "bytes", "earned", "settled", "unsettled", "fee to settle", "net"
    );
    let rows = report["channels"].as_array().map(Vec::as_slice).unwrap_or_default();
    for r in rows {
        let verdict = r["settle"].as_str();
        let (fee, net) = fee_and_net(r, verdict.is_some());
        let n = |field: &str| r[field].as_u64().unwrap_or(0);
        println!(
            "{:<16}  {:>14}  {:>12}  {:>12}  {:>12}  {:>18}  {:>12}",
            r["channel"].as_str().unwrap_or("?"),
            n("bytes"),
            n("amount"),
            n("settled"),
            n("unsettled"),
            fee,
            net
        );
        if let Some(why) = verdict.filter(|v| *v != "due") {
            println!("  not settled yet: {why}");
        }
    }
    let n = |field: &str| report[field].as_u64().unwrap_or(0);
    println!(
        "{} channels: earned {}, settled {}, unsettled {}",
        rows.len(),
        n("earned"),
        n("settled"),
        n("unsettled")
    );
    match (report["ledger_balance"].as_u64(), report["ledger_error"].as_str()) {
        (Some(b), _) => println!("ledger balance: {b}"),
        (None, e) => println!("ledger balance: unknown ({})", e.unwrap_or("no answer")),
    }
    Ok(())
}

fn settle(config: &Path, min: u64) -> Result<()> {
    let (loaded, keys) = load(config)?;
    let report = report(&loaded, &control::Request::Settle { min }, |store| {
        let (ledger, _) = ledger_of(&loaded, &keys)?;
        // By hand: anything owing more than its fee (and at least --min).
        Ok(hopwire_node_runtime::earnings::settle(
            store,
            ledger.as_ref(),
            min,
            &|_| false,
            unix_now(),
        )?)
    })?;
    println!("{:<16}  {:>12}  {:>18}  {:>12}  what", "channel", "owed", "fee", "net");
    let channels = report["channels"].as_array().map(Vec::as_slice).unwrap_or_default();
    for c in channels {
        let (fee, net) = fee_and_net(c, true);
        let what = match c["skip"].as_str() {
            None => "settle".to_owned(),
            Some(why) => format!("skip: {why}"),
        };
        println!(
            "{:<16}  {:>12}  {:>18}  {:>12}  {what}",
            c["channel"].as_str().unwrap_or("?"),
            c["owed"].as_u64().unwrap_or(0),
            fee,
            net
        );
    }
    let due = channels.iter().filter(|c| c["skip"].is_null()).count();
    println!("settling {due} of {} channels that owe anything", channels.len());
    for s in report["settled"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let channel = s["channel"].as_str().unwrap_or("?");
        match (s["paid"].as_u64(), s["error"].as_str()) {
            (Some(paid), _) => println!("  {channel}: paid {paid}"),
            (None, e) => println!("  {channel}: not settled: {}", e.unwrap_or("?")),
        }
    }
    let n = |field: &str| report[field].as_u64().unwrap_or(0);
    if n("transactions") > 0 {
        println!(
            "settled {}; fees about {} ({} transactions, {} gas, {} wei)",
            n("paid"),
            n("fees"),
            n("transactions"),
            n("gas"),
            report["fee_wei"].as_str().unwrap_or("?")
        );
    } else {
        println!("settled {}", n("paid"));
    }
    Ok(())
}

/// Where a charging node is paid, for its record: asks an embedded
/// ledger's service its domain.
fn paid_on(loaded: &LoadedConfig, keys: &NodeKeys) -> Result<Option<PaidOn>> {
    if loaded.config.pay.quote().is_free() {
        return Ok(None);
    }
    let addr = ledger_addr(loaded)?;
    let (payout, access) = hopwire_node_runtime::payout(loaded, keys, &addr)?;
    let domain = match addr.stated_domain() {
        Some(domain) => domain,
        None => addr
            .connect(&access, None)
            .with_context(|| format!("asking the ledger at {addr} its domain (the record names it)"))?
            .domain()
            .to_owned(),
    };
    Ok(Some(PaidOn { domain, payout }))
}

fn show_record(config: &Path, json: bool) -> Result<()> {
    let (loaded, keys) = load(config)?;
    let now = unix_now();
    let onion = keys::load_onion_keys(&loaded.key_dir, now)?;
    let paid_on = paid_on(&loaded, &keys)?;
    let record = own_record(&loaded, &keys, &onion, paid_on.as_ref(), now)?.to_signed_string(&keys.identity);
    if json {
        let identity = keys.identity.verifying_key().to_bytes();
        let value = serde_json::json!({
            "record": record,
            "identity": short_id(&identity),
            "identity_hex": hopwire_proto::record::hex(&identity),
            "roles": loaded.config.node.roles,
            "region": loaded.config.node.region,
            "wg_public_key": keys::wg_public_to_string(&keys.wg_public()),
            "dht_addr": dht_address(&loaded, &keys).map(|a| a.to_string()),
            "ledger": paid_on.as_ref().map(|p| p.domain.clone()),
            "payout": paid_on.as_ref().map(|p| hopwire_proto::record::hex(&p.payout)),
        });
        println!("{value}");
    } else {
        println!("{record}");
    }
    Ok(())
}
