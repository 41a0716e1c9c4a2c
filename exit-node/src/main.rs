//! `hopwire-node`: the headless Hopwire node for a VPS or a router.
//!
//! It creates keys and a commented `node.toml` (`init`), relays circuits
//! and/or serves as their exit (`run`), and prints the one-line record
//! clients build circuits with (`show-record`). Everything protocol-related
//! lives in `hopwire-core`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hopwire_net::keys::{self, NodeKeys};
use hopwire_net::ledger::service::RemoteLedger;
use hopwire_net::ledger::Ledger;
use hopwire_net::store::ReceiptStore;
use hopwire_node_runtime::config::{self, LoadedConfig, NodeConfig};
use hopwire_node_runtime::{dht_address, own_record, NodeRuntime};
use hopwire_proto::onion::keys::OnionKeys;
use hopwire_proto::record::short_id;
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
    /// Create the node's keys and a commented node.toml in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The address clients dial (this server's public IP and port).
        #[arg(long)]
        public_address: Option<std::net::SocketAddr>,
        /// Replace existing keys (the node gets a new identity).
        #[arg(long)]
        force: bool,
    },
    /// Serve until SIGINT or SIGTERM (the exit role needs root: TUN, NAT).
    Run {
        #[arg(long)]
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
    /// What this node earned: the newest receipt of every channel, settled or not.
    /// Reads the node's receipt store, so run it while the node is stopped.
    Earnings {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Settle every channel whose unsettled amount is at least --min on the
    /// ledger (fees are shown first). Run it while the node is stopped.
    Settle {
        #[arg(long)]
        config: PathBuf,
        /// Skip channels owing less than this.
        #[arg(long, default_value_t = 1)]
        min: u64,
    },
    /// Print the record clients pass to `hopwire connect`.
    ShowRecord {
        #[arg(long)]
        config: PathBuf,
        /// Print the record with its parts as JSON.
        #[arg(long)]
        json: bool,
    },
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
            force,
        } => init(&dir, public_address, force),
        Command::Run { config } => serve(&config),
        Command::Ledger {
            listen,
            db,
            domain,
            challenge_s,
            fund,
        } => ledger(listen, &db, &domain, challenge_s, &fund),
        Command::ShowRecord { config, json } => show_record(&config, json),
        Command::Earnings { config, json } => earnings(&config, json),
        Command::Settle { config, min } => settle(&config, min),
    }
}

fn init(dir: &Path, public_address: Option<std::net::SocketAddr>, force: bool) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    keys.save(dir, force)?;
    keys::save_onion_keys(dir, &OnionKeys::generate(&mut rand::rngs::OsRng, unix_now()))?;
    let config_path = dir.join("node.toml");
    if force || !config_path.exists() {
        std::fs::write(&config_path, config::template(public_address))
            .with_context(|| format!("writing {}", config_path.display()))?;
    }
    println!(
        "node {} initialised in {}\nconfig: {}\nnext: edit it, then run `hopwire-node run --config {}`",
        short_id(&keys.identity.verifying_key().to_bytes()),
        dir.display(),
        config_path.display(),
        config_path.display()
    );
    Ok(())
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
        let node = NodeRuntime::new(loaded, keys);
        node.run(hopwire_net::process::shutdown_signal()).await
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

/// The node's receipt store; a clear error if the running node holds it.
fn receipts(loaded: &LoadedConfig) -> Result<ReceiptStore> {
    Ok(ReceiptStore::open_dir(&loaded.key_dir.join("receipts"))?)
}

fn ledger_of(loaded: &LoadedConfig) -> Result<RemoteLedger> {
    let addr = loaded
        .config
        .pay
        .ledger
        .with_context(|| format!("{}: pay.ledger is not set", loaded.path.display()))?;
    Ok(RemoteLedger::connect(addr)?)
}

fn earnings(config: &Path, json: bool) -> Result<()> {
    let (loaded, keys) = load(config)?;
    let all = receipts(&loaded)?.all()?;
    let identity = keys.identity.verifying_key().to_bytes();
    let balance = ledger_of(&loaded).and_then(|l| Ok(l.balance(identity)?));
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|s| {
            let r = &s.receipt.receipt;
            serde_json::json!({
                "channel": short_id(&r.channel),
                "bytes": r.cumulative_bytes,
                "amount": r.cumulative_amount,
                "settled": s.settled,
                "unsettled": r.cumulative_amount.saturating_sub(s.settled),
            })
        })
        .collect();
    let total = |field: &str| rows.iter().filter_map(|r| r[field].as_u64()).sum::<u64>();
    let (earned, settled, unsettled) = (total("amount"), total("settled"), total("unsettled"));
    if json {
        let value = serde_json::json!({
            "channels": rows, "earned": earned, "settled": settled, "unsettled": unsettled,
            "ledger_balance": balance.as_ref().ok(),
            "ledger_error": balance.as_ref().err().map(|e| e.to_string()),
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "{:<16}  {:>14}  {:>12}  {:>12}  {:>12}",
        "channel", "bytes", "earned", "settled", "unsettled"
    );
    for r in &rows {
        println!(
            "{:<16}  {:>14}  {:>12}  {:>12}  {:>12}",
            r["channel"].as_str().unwrap_or("?"),
            r["bytes"],
            r["amount"],
            r["settled"],
            r["unsettled"]
        );
    }
    println!(
        "{} channels: earned {earned}, settled {settled}, unsettled {unsettled}",
        rows.len()
    );
    match balance {
        Ok(b) => println!("ledger balance: {b}"),
        Err(e) => println!("ledger balance: unknown ({e})"),
    }
    Ok(())
}

fn settle(config: &Path, min: u64) -> Result<()> {
    let (loaded, _) = load(config)?;
    let store = receipts(&loaded)?;
    let ledger = ledger_of(&loaded)?;
    let fee = ledger.settle_fee();
    let min = min.max(1);
    let due = store
        .all()?
        .iter()
        .filter(|s| s.receipt.receipt.cumulative_amount.saturating_sub(s.settled) >= min)
        .count() as u64;
    println!(
        "{due} channels owe at least {min}; the ledger's fee is {fee} per settlement ({} in all; channels owing no more than the fee are left)",
        fee * due
    );
    let mut paid_total = 0;
    for s in hopwire_node_runtime::payee::settle_due(&store, &ledger, min, false, unix_now())? {
        match s.paid {
            Ok(paid) => {
                paid_total += paid;
                println!("  {}: paid {paid}", short_id(&s.channel));
            }
            Err(e) => println!("  {}: not settled: {e}", short_id(&s.channel)),
        }
    }
    println!("settled {paid_total}");
    Ok(())
}

fn show_record(config: &Path, json: bool) -> Result<()> {
    let (loaded, keys) = load(config)?;
    let now = unix_now();
    let onion = keys::load_onion_keys(&loaded.key_dir, now)?;
    let record = own_record(&loaded, &keys, &onion, now)?.to_signed_string(&keys.identity);
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
        });
        println!("{value}");
    } else {
        println!("{record}");
    }
    Ok(())
}
