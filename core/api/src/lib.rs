//! The client daemon's local API: what the CLI, the desktop app and scripts
//! say to the privileged daemon over its Unix socket, and what it answers.
//!
//! One JSON object per line each way: a [`Request`] in an [`Envelope`]
//! that names the API version, then a [`Response`]. A
//! [`Request::Subscribe`] turns the connection into a stream: after the
//! first answer, one [`Event`] per line until either side hangs up.
//! Errors carry an [`ErrorKind`] a program can act on beside the message.
//! The socket is owned by root with mode 0600 (or 0660 with a group the
//! operator chose), so only those allowed can steer the tunnel.
//!
//! What it does not do: run anything. These are wire types and a small
//! client; the GUI and the CLI's unprivileged commands link only this.
//!
//! May depend on: `hopwire_proto` (node roles). May not depend on:
//! `hopwire_client`, `hopwire_net`, `hopwire_sys`, `hopwire_node_runtime`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/hopwire/hopwire.sock";
/// Longest request or response line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// The version of this API. A request of another version is refused with
/// [`ErrorKind::Version`]; a request without one is taken as version 1.
pub const API_VERSION: u32 = 2;

/// A request as it goes on the wire: `{"v":2,"cmd":"status"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default = "version_one")]
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

fn version_one() -> u32 {
    1
}

/// What went wrong, for a program to act on without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No exit matches the filters (country, price cap), or none is known.
    NoExit,
    /// A hop could not be reached, or failed while the circuit was built.
    HopUnreachable,
    /// The exit refused the session.
    ExitRefused,
    /// The account's balance or a channel's deposit does not cover the hops.
    Funds,
    /// The ledger could not be reached.
    LedgerUnreachable,
    /// The daemon cannot do this as configured (e.g. no ledger to pay on).
    Config,
    /// The operating system refused to set the tunnel up.
    Platform,
    /// The caller may not do this.
    NotPermitted,
    /// The request is malformed or its values are out of range.
    BadInput,
    /// The request speaks another API version.
    Version,
    /// Something inside the daemon failed.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

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
        role: Option<hopwire_proto::record::Role>,
        #[serde(default)]
        country: Option<String>,
    },
    /// Turns this connection into a stream of [`Event`]s (JSON lines),
    /// after a first [`Response::Subscribed`] with the status now.
    Subscribe,
    /// The settings; with `change`, first changes (and persists) the
    /// fields it names. Answered with [`Response::Settings`].
    Settings {
        #[serde(default)]
        change: SettingsChange,
    },
}

/// What the user chose about leaks and DNS; persisted by the daemon in its
/// state directory (`settings.json`) and applied at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Block everything but the tunnel while disconnected too, and after
    /// the daemon is killed, restarted or the machine rebooted.
    pub lockdown: bool,
    /// Let traffic to and from the local network (private and link-local
    /// ranges) go around the tunnel.
    pub allow_lan: bool,
    /// Carry IPv6 through the tunnel when the exit offers it; off, IPv6
    /// is blocked whatever the exit offers.
    pub ipv6: bool,
    /// Resolvers to use through the tunnel instead of the exit's; empty
    /// means the exit's.
    pub dns: Vec<IpAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            lockdown: false,
            allow_lan: false,
            ipv6: true,
            dns: Vec::new(),
        }
    }
}

/// The settings to change; fields left out keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SettingsChange {
    pub lockdown: Option<bool>,
    pub allow_lan: Option<bool>,
    pub ipv6: Option<bool>,
    pub dns: Option<Vec<IpAddr>>,
}

impl SettingsChange {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// `settings` with this change applied.
    pub fn apply(&self, settings: &Settings) -> Settings {
        Settings {
            lockdown: self.lockdown.unwrap_or(settings.lockdown),
            allow_lan: self.allow_lan.unwrap_or(settings.allow_lan),
            ipv6: self.ipv6.unwrap_or(settings.ipv6),
            dns: self.dns.clone().unwrap_or_else(|| settings.dns.clone()),
        }
    }
}

/// Hops a circuit has unless asked otherwise.
pub const DEFAULT_HOPS: u8 = 3;

fn default_hops() -> u8 {
    DEFAULT_HOPS
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok {
        status: Status,
    },
    Error {
        kind: ErrorKind,
        message: String,
        status: Status,
    },
    Nodes {
        nodes: Vec<NodeInfo>,
    },
    Wallet {
        wallet: WalletInfo,
    },
    /// The answer to [`Request::Subscribe`]; events follow, one per line.
    Subscribed {
        status: Status,
    },
    Settings {
        settings: Settings,
    },
}

/// What the daemon pushes to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The tunnel changed state.
    State { state: TunnelState },
    /// A circuit is up (after a connect or a rebuild).
    Circuit {
        circuit: Vec<HopInfo>,
        build_ms: f64,
        inner_addr: Ipv4Addr,
        #[serde(default)]
        inner_v6: Option<Ipv6Addr>,
        /// Why IPv6 is blocked on this circuit; `None` when it is carried.
        #[serde(default)]
        ipv6_blocked: Option<String>,
        mtu: u16,
    },
    /// The settings in force changed (from any client), or what holds the
    /// firewall closed did.
    Settings {
        settings: Settings,
        fail_closed: Option<String>,
    },
    /// Each second while connected: traffic, round trip and spending.
    Traffic {
        bytes_sent: u64,
        bytes_received: u64,
        tx_bps: u64,
        rx_bps: u64,
        rtt_ms: Option<f64>,
        /// What each charging hop of the current circuit was paid.
        payments: Vec<HopPayment>,
        /// Paid this session, over every circuit it used.
        spent: u64,
    },
    /// The wallet's channels changed (opened, closing, finalized).
    Wallet { channels: Vec<ChannelInfo> },
    /// This subscriber fell behind by `missed` events and is dropped; a
    /// client that wants more subscribes again and reads faster.
    Lagged { missed: u64 },
}

/// The tunnel's state with what each state knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TunnelState {
    #[default]
    Disconnected,
    Connecting,
    Connected,
    /// The circuit was lost; traffic is held back while a new one is built.
    Reconnecting {
        reason: String,
        attempt: u32,
    },
    /// Connecting failed; nothing is retried until the user connects again.
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl TunnelState {
    /// The state's name, without what it knows.
    pub fn state(&self) -> State {
        match self {
            TunnelState::Disconnected => State::Disconnected,
            TunnelState::Connecting => State::Connecting,
            TunnelState::Connected => State::Connected,
            TunnelState::Reconnecting { .. } => State::Reconnecting,
            TunnelState::Error { .. } => State::Error,
        }
    }
}

/// One node as `hopwire nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub roles: Vec<hopwire_proto::record::Role>,
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
    Reconnecting,
    Error,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Disconnected => "disconnected",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
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
    /// Why the tunnel is in error or reconnecting, why the last attempt
    /// failed, or a payment problem while connected.
    pub error: Option<String>,
    /// What kind of error, in the error state.
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// Rebuild attempts since the circuit was lost, while reconnecting.
    #[serde(default)]
    pub attempt: Option<u32>,
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
    /// The tunnel's inner IPv6 address, when the exit carries IPv6.
    #[serde(default)]
    pub inner_v6: Option<Ipv6Addr>,
    /// Why IPv6 is blocked while the tunnel is up (the exit has none, or
    /// the settings turned it off); `None` when it goes through the tunnel.
    #[serde(default)]
    pub ipv6_blocked: Option<String>,
    /// The settings in force.
    #[serde(default)]
    pub settings: Settings,
    /// Why everything but the tunnel is blocked whatever the state (an
    /// unreadable settings or network state file); fixed by the user.
    #[serde(default)]
    pub fail_closed: Option<String>,
}

/// What the client paid one hop of its circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopPayment {
    pub id: String,
    pub price_per_gib: u64,
    /// What the hop confirmed it holds a receipt for.
    pub paid: u64,
    /// Bytes the client counted on that hop (cells, both ways, and the
    /// cells it sent back that were lost on the way, as its layer's
    /// counters show, up to an eighth more).
    pub bytes: u64,
    /// Of `bytes`, the cells the hop sent back that were lost on the way.
    #[serde(default)]
    pub lost: u64,
    /// Bytes the client's newest receipt pays that hop for ahead of what
    /// they agree it carried: one chunk, or on a fast circuit what the hop
    /// carries in half a second (the most a circuit can leave prepaid).
    #[serde(default)]
    pub ahead: u64,
}

/// The client's wallet, as `hopwire wallet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletInfo {
    /// The ledger account: an ed25519 public key in hex on the embedded
    /// ledger, an address (`0x…`) on a chain.
    pub account: String,
    /// Where the ledger is (`ip:port`, or `eip155:…@http://ip:port`).
    pub ledger: String,
    /// What the account holds outside channels, if the ledger answered.
    pub balance: Option<u64>,
    pub ledger_error: Option<String>,
    pub channels: Vec<ChannelInfo>,
    /// The last connect sessions, newest first: what each paid each hop.
    pub sessions: Vec<SessionInfo>,
}

/// One payment channel as `hopwire wallet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub channel: String,
    /// The hop paid (short id).
    pub payee: String,
    pub price_per_gib: u64,
    pub deposit: u64,
    /// What the newest receipt signed to it says, in all.
    pub signed: u64,
    /// Bytes the client counted on that hop, over every session.
    pub bytes: u64,
    /// Circuits that paid through it.
    pub sessions: u64,
    /// Unix seconds when it was opened, and last used.
    pub opened_at: u64,
    pub used_at: u64,
    /// When its close takes effect (unix seconds), once the client started it.
    pub close_at: Option<u64>,
    /// The deposit's rest came back to the account.
    pub finalized: bool,
}

/// One connect session (connect to disconnect, across its circuits): what
/// it paid each hop, as the hops confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Unix seconds.
    pub started_at: u64,
    pub ended_at: u64,
    pub spent: u64,
    /// Hop (short id) → paid.
    pub hops: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the hopwire daemon at {path}: {source} (start it with `hopwire daemon` as root, or `systemctl start hopwire`; if it runs, ask for its socket's group)")]
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
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
}

/// Sends one request to the daemon at `socket` and waits up to `timeout`.
pub async fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ApiError> {
    let mut connection = Connection::open(socket, request).await?;
    tokio::time::timeout(timeout, connection.read())
        .await
        .map_err(|_| ApiError::Io {
            path: socket.to_owned(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
}

/// A stream of the daemon's events: [`Subscription::next`] until `None`
/// (the daemon went away).
#[derive(Debug)]
pub struct Subscription {
    connection: Connection,
    /// The status when the subscription started.
    pub status: Status,
}

impl Subscription {
    /// Subscribes to the daemon at `socket`.
    pub async fn open(socket: &Path, timeout: Duration) -> Result<Self, ApiError> {
        let mut connection = Connection::open(socket, &Request::Subscribe).await?;
        let first = tokio::time::timeout(timeout, connection.read::<Response>())
            .await
            .map_err(|_| ApiError::Io {
                path: socket.to_owned(),
                source: std::io::ErrorKind::TimedOut.into(),
            })??;
        match first {
            Response::Subscribed { status } => Ok(Self { connection, status }),
            Response::Error { kind, message, .. } => Err(ApiError::Refused { kind, message }),
            other => Err(ApiError::BadAnswer {
                path: socket.to_owned(),
                message: format!("expected a subscription, got {other:?}"),
            }),
        }
    }

    /// The next event; `None` once the daemon closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ApiError> {
        match self.connection.read::<Event>().await {
            Ok(e) => Ok(Some(e)),
            Err(ApiError::NoAnswer { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One connection to the daemon: a request written, JSON lines read.
#[derive(Debug)]
struct Connection {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    _write: tokio::net::unix::OwnedWriteHalf,
    line: String,
}

impl Connection {
    async fn open(socket: &Path, request: &Request) -> Result<Self, ApiError> {
        let stream = UnixStream::connect(socket).await.map_err(|source| ApiError::Connect {
            path: socket.to_owned(),
            source,
        })?;
        let (read, mut write) = stream.into_split();
        let envelope = Envelope {
            v: API_VERSION,
            request: request.clone(),
        };
        let mut line = serde_json::to_string(&envelope).unwrap_or_else(|e| unreachable!("request encodes: {e}"));
        line.push('\n');
        write.write_all(line.as_bytes()).await.map_err(|source| ApiError::Io {
            path: socket.to_owned(),
            source,
        })?;
        Ok(Self {
            path: socket.to_owned(),
            reader: BufReader::new(read),
            _write: write,
            line: String::new(),
        })
    }

    async fn read<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, ApiError> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut self.line)
            .await
            .map_err(|source| ApiError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ApiError::NoAnswer {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(&self.line).map_err(|e| ApiError::BadAnswer {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
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
        let e: Envelope = serde_json::from_str(r#"{"v":2,"cmd":"subscribe"}"#).expect("parses");
        assert_eq!((e.v, e.request), (2, Request::Subscribe));
        let old: Envelope = serde_json::from_str(r#"{"cmd":"status"}"#).expect("parses");
        assert_eq!(old.v, 1, "a request without a version is version 1");
        let state = Event::State {
            state: TunnelState::Reconnecting {
                reason: "hop 2 lost".into(),
                attempt: 3,
            },
        };
        assert_eq!(
            serde_json::to_string(&state).expect("enc"),
            r#"{"event":"state","state":{"state":"reconnecting","reason":"hop 2 lost","attempt":3}}"#
        );
        let err = Response::Error {
            kind: ErrorKind::NoExit,
            message: "no exit".into(),
            status: Status::default(),
        };
        assert!(serde_json::to_string(&err)
            .expect("enc")
            .contains(r#""kind":"no_exit""#));
        let ok = Response::Ok {
            status: Status::default(),
        };
        let text = serde_json::to_string(&ok).expect("enc");
        assert!(text.contains(r#""state":"disconnected""#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).expect("dec"), ok);
    }

    #[test]
    fn settings_default_to_off_with_ipv6_and_changes_touch_only_what_they_name() {
        let s: Settings = serde_json::from_str("{}").expect("an empty file is the defaults");
        assert_eq!(s, Settings::default());
        assert!(!s.lockdown && !s.allow_lan && s.ipv6 && s.dns.is_empty());
        assert!(
            serde_json::from_str::<Settings>(r#"{"lockdwn":true}"#).is_err(),
            "a misspelt setting is an error, not silently the default"
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"settings","change":{"lockdown":true}}"#).expect("parses");
        let Request::Settings { change } = r else {
            panic!("a settings request")
        };
        let changed = change.apply(&s);
        assert_eq!(changed, Settings { lockdown: true, ..s });
        let r: Request = serde_json::from_str(r#"{"cmd":"settings"}"#).expect("parses");
        assert_eq!(
            r,
            Request::Settings {
                change: SettingsChange::default()
            }
        );
    }
}
