//! A mobile host, played on Linux: the client runtime run the way Android's
//! `VpnService` (or an iOS packet tunnel provider) runs it, through
//! [`FdPlatform`]. The end-to-end test of the file-descriptor platform
//! drives it in the testnet's client namespace.
//!
//! The "operating system" here makes a TUN device when the runtime asks,
//! routes all IPv4 into it, and hands the runtime a duplicate of its file
//! descriptor; it protects a socket by binding it to the uplink device
//! (`SO_BINDTODEVICE`), so the socket leaves outside the tunnel as
//! Android's `protect()` makes it. Every protect call is appended to the
//! protect log (`fd peer`).
//!
//! ```text
//! fd_host STATE_DIR LEDGER NODES_FILE TUN UPLINK PROTECT_LOG [BOOTSTRAP]
//! ```
//!
//! With BOOTSTRAP (a DHT peer's `/ip4/…/tcp/…/p2p/…`), the runtime joins
//! the DHT through it, so its DHT connections are protected too.
//!
//! Prints the status as one JSON line once connected (and, with
//! BOOTSTRAP, once it has looked the nodes up in the DHT), then runs until
//! SIGTERM or SIGINT and disconnects.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use hopwire_client::platform::{FdHost, FdPlatform, HostError, TunnelConfig};
use hopwire_client::runtime::{Client, ClientConfig, ConnectRequest};

struct LinuxHost {
    tun: String,
    uplink: String,
    protect_log: Mutex<std::fs::File>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl FdHost for LinuxHost {
    fn establish(&self, config: &TunnelConfig) -> Result<OwnedFd, HostError> {
        self.make_interface(config).map_err(HostError)
    }

    fn protect(&self, socket: BorrowedFd<'_>) -> bool {
        let bound = socket2::SockRef::from(&socket).bind_device(Some(self.uplink.as_bytes()));
        let mut log = self.protect_log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(log, "{} {}", socket.as_raw_fd(), bound.is_ok());
        bound.is_ok()
    }

    fn teardown(&self) {
        // The routes go with the device when the runtime closes it.
    }
}

impl LinuxHost {
    fn make_interface(&self, config: &TunnelConfig) -> Result<OwnedFd, String> {
        let device = tun_rs::DeviceBuilder::new()
            .name(&self.tun)
            .ipv4(config.inner_v4, 32, None)
            .mtu(config.mtu)
            .build_sync()
            .map_err(|e| format!("creating {}: {e}", self.tun))?;
        // What VpnService.Builder.addRoute("0.0.0.0", 0) does.
        ip(&["-4", "route", "add", "0.0.0.0/1", "dev", &self.tun])?;
        ip(&["-4", "route", "add", "128.0.0.0/1", "dev", &self.tun])?;
        // The runtime gets its own descriptor; this one closes here, and
        // the interface lives as long as the runtime's does.
        device
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("duplicating the TUN descriptor: {e}"))
    }
}

fn arg(args: &[String], i: usize, what: &str) -> Result<String, String> {
    args.get(i).cloned().ok_or_else(|| {
        format!("usage: fd_host STATE_DIR LEDGER NODES_FILE TUN UPLINK PROTECT_LOG [BOOTSTRAP] (missing {what})")
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    hopwire_net::process::init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let state_dir = PathBuf::from(arg(&args, 0, "STATE_DIR")?);
    let ledger: hopwire_net::ledger::LedgerAddr =
        arg(&args, 1, "LEDGER")?.parse().map_err(|e| format!("LEDGER: {e}"))?;
    let nodes = std::fs::read_to_string(arg(&args, 2, "NODES_FILE")?).map_err(|e| format!("NODES_FILE: {e}"))?;
    let records: Vec<String> = nodes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let protect_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(arg(&args, 5, "PROTECT_LOG")?)
        .map_err(|e| format!("PROTECT_LOG: {e}"))?;
    let host = LinuxHost {
        tun: arg(&args, 3, "TUN")?,
        uplink: arg(&args, 4, "UPLINK")?,
        protect_log: Mutex::new(protect_log),
    };
    let bootstrap =
        match args.get(6) {
            Some(b) => vec![hopwire_net::dht::parse_dht_addr(b)
                .ok_or_else(|| format!("BOOTSTRAP `{b}` is not /ip4/…/tcp/…/p2p/…"))?],
            None => Vec::new(),
        };
    let config = ClientConfig {
        state_dir,
        bootstrap,
        ledger: Some(ledger),
        deposit_mib: 64,
    };
    let client = Client::start(FdPlatform::new(host), config).map_err(|e| e.to_string())?;
    let request = ConnectRequest {
        records,
        hops: 3,
        country: None,
        max_price: None,
    };
    client.connect(request).await.map_err(|e| e.to_string())?;
    // A DHT lookup while connected: its connections are protected too.
    let nodes = client.nodes(None, None).await.map_err(|e| e.to_string())?;
    eprintln!("fd_host: the DHT lists {} nodes", nodes.len());
    println!(
        "{}",
        serde_json::to_string(&client.status()).map_err(|e| e.to_string())?
    );
    hopwire_net::process::shutdown_signal().await;
    let status = client.disconnect().await;
    println!("{}", serde_json::to_string(&status).map_err(|e| e.to_string())?);
    Ok(())
}
