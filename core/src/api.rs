//! The client daemon's local API: what the CLI, the desktop app and scripts
//! say to the privileged daemon over its Unix socket, and what it answers.
//!
//! One JSON object per line each way: a [`Request`], then a [`Response`].
//! The socket is owned by root with mode 0600 (or 0660 with a group the
//! operator chose), so only those allowed can steer the tunnel.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hopwire/hopwire.sock";
/// Longest request or response line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Build a circuit of `hops` hops from the nodes named by `records`
    /// (`hopwire1.` strings) and connect through it.
    Connect {
        records: Vec<String>,
        #[serde(default = "default_hops")]
        hops: u8,
        /// Only exits in this country (ISO code).
        #[serde(default)]
        country: Option<String>,
        /// Only nodes that charge at most this per GiB.
        #[serde(default)]
        max_price: Option<u64>,
    },
    Disconnect,
    Status,
    /// The wallet: account, balance, channels; with `close`, first start
    /// closing every channel no circuit uses.
    Wallet {
        #[serde(default)]
        close: bool,
    },
    /// The nodes the DHT knows, optionally only of one role or country.
    Nodes {
        #[serde(default)]
        role: Option<crate::record::Role>,
        #[serde(default)]
        country: Option<String>,
    },
}

/// Hops a circuit has unless asked otherwise.
pub const DEFAULT_HOPS: u8 = 3;

fn default_hops() -> u8 {
    DEFAULT_HOPS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok { status: Status },
    Error { message: String, status: Status },
    Nodes { nodes: Vec<NodeInfo> },
    Wallet { wallet: WalletInfo },
}

/// One node as `hopwire nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub roles: Vec<crate::record::Role>,
    pub region: String,
    pub addr: SocketAddr,
    pub capacity_mbit: u32,
    /// What it charges per GiB, in the ledger's smallest unit.
    pub price_per_gib: u64,
    /// Round trip over the DHT connection to it, if measured.
    pub rtt_ms: Option<f64>,
    /// Seconds since the node signed its record.
    pub age_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Disconnected,
    Connecting,
    Connected,
    Error,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Disconnected => "disconnected",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Error => "error",
        })
    }
}

/// One node of the circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopInfo {
    /// Short form of the node's identity key.
    pub id: String,
    pub addr: SocketAddr,
    pub region: String,
}

/// Everything `hopwire status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    pub state: State,
    /// Why the tunnel is in error (or why the last attempt failed).
    pub error: Option<String>,
    /// The exit the tunnel leaves from (the circuit's last hop).
    pub exit: Option<HopInfo>,
    /// Every hop, first (guard) to last (exit).
    pub circuit: Vec<HopInfo>,
    /// How long building the current circuit took.
    pub build_ms: Option<f64>,
    pub inner_addr: Option<Ipv4Addr>,
    /// Inner bytes sent into and received from the tunnel this session.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Throughput over the last second, bits per second.
    pub tx_bps: u64,
    pub rx_bps: u64,
    pub mtu: Option<u16>,
    /// Smoothed round-trip time of the link to the exit.
    pub rtt_ms: Option<f64>,
    /// What the current circuit's charging hops were paid.
    #[serde(default)]
    pub payments: Vec<HopPayment>,
    /// Paid this session, over every circuit it used.
    #[serde(default)]
    pub spent: u64,
    /// Bytes of payment messages on the client's link, current circuit.
    #[serde(default)]
    pub payment_bytes: u64,
}

/// What the client paid one hop of its circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopPayment {
    pub id: String,
    pub price_per_gib: u64,
    /// What the hop confirmed it holds a receipt for.
    pub paid: u64,
    /// Bytes the client counted on that hop (cells, both ways).
    pub bytes: u64,
}

/// The client's wallet, as `hopwire wallet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletInfo {
    /// The ledger account (hex public key).
    pub account: String,
    pub ledger: SocketAddr,
    /// What the account holds outside channels, if the ledger answered.
    pub balance: Option<u64>,
    pub ledger_error: Option<String>,
    pub channels: Vec<crate::wallet::ChannelRecord>,
    /// The last connect sessions, newest first: what each paid each hop.
    pub sessions: Vec<crate::wallet::SessionRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the hopwire daemon at {path}: {source} (start it with `sudo hopwire daemon`)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the hopwire daemon at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the hopwire daemon at {path} gave no answer")]
    NoAnswer { path: PathBuf },
    #[error("the hopwire daemon at {path} answered something unreadable: {message}")]
    BadAnswer { path: PathBuf, message: String },
}

/// Sends one request to the daemon at `socket` and waits up to `timeout`.
pub async fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ApiError> {
    let io = |source| ApiError::Io {
        path: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket).await.map_err(|source| ApiError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).unwrap_or_else(|e| unreachable!("request encodes: {e}"));
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let n = tokio::time::timeout(timeout, reader.read_line(&mut answer))
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    if n == 0 {
        return Err(ApiError::NoAnswer {
            path: socket.to_owned(),
        });
    }
    serde_json::from_str(&answer).map_err(|e| ApiError::BadAnswer {
        path: socket.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r: Request = serde_json::from_str(r#"{"cmd":"connect","records":["hopwire1.x"]}"#).expect("parses");
        assert_eq!(
            r,
            Request::Connect {
                records: vec!["hopwire1.x".into()],
                hops: DEFAULT_HOPS,
                country: None,
                max_price: None,
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).expect("enc"),
            r#"{"cmd":"status"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
        let ok = Response::Ok {
            status: Status::default(),
        };
        let text = serde_json::to_string(&ok).expect("enc");
        assert!(text.contains(r#""state":"disconnected""#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).expect("dec"), ok);
    }
}
