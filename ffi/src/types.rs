//! What crosses the boundary: the runtime's and the daemon API's types as
//! records and enums every binding language can hold. Addresses travel as
//! text (`"100.87.0.2"`, `"198.18.1.2:4000"`), amounts in the ledger's
//! smallest unit, times in unix seconds.

use std::collections::HashMap;
use std::net::IpAddr;

use hopwire_api as api;
use hopwire_client::platform::TunnelConfig;
use hopwire_proto::record::Role;

/// What went wrong, by kind: the same kinds as the daemon's API
/// (`hopwire_api::ErrorKind`), plus [`ErrorKind::Closed`] for a call on a
/// session that has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ErrorKind {
    /// No exit matches the filters (country, price cap), or none is known.
    NoExit,
    /// A hop could not be reached, or failed while the circuit was built.
    HopUnreachable,
    ExitRefused,
    /// The balance or a channel's deposit does not cover the hops.
    Funds,
    LedgerUnreachable,
    /// The session cannot do this as configured (e.g. no ledger to pay on).
    Config,
    /// The host refused or failed to set the tunnel up (a bad descriptor,
    /// a protector that said no).
    Platform,
    NotPermitted,
    /// An argument is malformed or out of range.
    BadInput,
    Version,
    Internal,
    /// The session was closed; make a new one.
    Closed,
}

impl From<api::ErrorKind> for ErrorKind {
    fn from(kind: api::ErrorKind) -> Self {
        use api::ErrorKind as K;
        match kind {
            K::NoExit => Self::NoExit,
            K::HopUnreachable => Self::HopUnreachable,
            K::ExitRefused => Self::ExitRefused,
            K::Funds => Self::Funds,
            K::LedgerUnreachable => Self::LedgerUnreachable,
            K::Config => Self::Config,
            K::Platform => Self::Platform,
            K::NotPermitted => Self::NotPermitted,
            K::BadInput => Self::BadInput,
            K::Version => Self::Version,
            K::Internal => Self::Internal,
        }
    }
}

/// A call that failed: one exception class per [`ErrorKind`], whose
/// message is what a user can read (Kotlin `HopwireException.NoExit`,
/// Swift `HopwireError.NoExit`, Python `HopwireError.NoExit`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum HopwireError {
    #[error("{0}")]
    NoExit(String),
    #[error("{0}")]
    HopUnreachable(String),
    #[error("{0}")]
    ExitRefused(String),
    #[error("{0}")]
    Funds(String),
    #[error("{0}")]
    LedgerUnreachable(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Platform(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Version(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Closed(String),
}

impl HopwireError {
    pub fn new(kind: ErrorKind, message: String) -> Self {
        match kind {
            ErrorKind::NoExit => Self::NoExit(message),
            ErrorKind::HopUnreachable => Self::HopUnreachable(message),
            ErrorKind::ExitRefused => Self::ExitRefused(message),
            ErrorKind::Funds => Self::Funds(message),
            ErrorKind::LedgerUnreachable => Self::LedgerUnreachable(message),
            ErrorKind::Config => Self::Config(message),
            ErrorKind::Platform => Self::Platform(message),
            ErrorKind::NotPermitted => Self::NotPermitted(message),
            ErrorKind::BadInput => Self::BadInput(message),
            ErrorKind::Version => Self::Version(message),
            ErrorKind::Internal => Self::Internal(message),
            ErrorKind::Closed => Self::Closed(message),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadInput(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    pub fn closed() -> Self {
        Self::Closed("this session has been closed; create a new one".to_owned())
    }
}

impl From<hopwire_client::runtime::Error> for HopwireError {
    fn from(e: hopwire_client::runtime::Error) -> Self {
        Self::new(e.kind().into(), hopwire_net::process::describe(&e))
    }
}

/// What the host's OS must set up for the tunnel: Android's
/// `VpnService.Builder`, iOS's `NEPacketTunnelNetworkSettings`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TunnelSettings {
    /// The interface's IPv4 address, a /32.
    pub inner_v4: String,
    /// Its IPv6 address (a /128) when the exit carries IPv6.
    pub inner_v6: Option<String>,
    pub mtu: u16,
    /// Resolvers, reached through the tunnel.
    pub dns: Vec<String>,
    /// Routes into the tunnel: always both `0.0.0.0/0` and `::/0`, so
    /// IPv6 the exit does not carry goes into the tunnel and is dropped
    /// there rather than leaking around it.
    pub routes: Vec<Route>,
    /// Addresses the host may route around the tunnel (the first hop and
    /// the ledger). On Android, protected sockets already bypass it; iOS
    /// puts these in `excludedRoutes`.
    pub excluded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Route {
    pub address: String,
    pub prefix: u8,
}

impl From<&TunnelConfig> for TunnelSettings {
    fn from(c: &TunnelConfig) -> Self {
        Self {
            inner_v4: c.inner_v4.to_string(),
            inner_v6: c.inner_v6.map(|a| a.to_string()),
            mtu: c.mtu,
            dns: c.dns.iter().map(IpAddr::to_string).collect(),
            routes: vec![
                Route {
                    address: "0.0.0.0".to_owned(),
                    prefix: 0,
                },
                Route {
                    address: "::".to_owned(),
                    prefix: 0,
                },
            ],
            excluded: c.bypass.iter().map(IpAddr::to_string).collect(),
        }
    }
}

/// What a connect asks for.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConnectOptions {
    /// Only exits in this country (ISO code, e.g. `"DE"`).
    #[uniffi(default = None)]
    pub country: Option<String>,
    /// 1 to 3.
    #[uniffi(default = 3)]
    pub hops: u8,
    /// Only nodes that charge at most this per GiB.
    #[uniffi(default = None)]
    pub max_price_per_gib: Option<u64>,
    /// `hopwire1.` node records to build from instead of asking the DHT.
    #[uniffi(default = [])]
    pub records: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum State {
    Disconnected,
    Connecting,
    Connected,
    Reconnecting,
    Error,
}

impl From<api::State> for State {
    fn from(s: api::State) -> Self {
        match s {
            api::State::Disconnected => Self::Disconnected,
            api::State::Connecting => Self::Connecting,
            api::State::Connected => Self::Connected,
            api::State::Reconnecting => Self::Reconnecting,
            api::State::Error => Self::Error,
        }
    }
}

/// The tunnel's state with what each state knows.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TunnelState {
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

impl From<api::TunnelState> for TunnelState {
    fn from(s: api::TunnelState) -> Self {
        match s {
            api::TunnelState::Disconnected => Self::Disconnected,
            api::TunnelState::Connecting => Self::Connecting,
            api::TunnelState::Connected => Self::Connected,
            api::TunnelState::Reconnecting { reason, attempt } => Self::Reconnecting { reason, attempt },
            api::TunnelState::Error { kind, message } => Self::Error {
                kind: kind.into(),
                message,
            },
        }
    }
}

/// One node of the circuit.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Hop {
    /// Short form of the node's identity key.
    pub id: String,
    pub addr: String,
    pub region: String,
}

impl From<api::HopInfo> for Hop {
    fn from(h: api::HopInfo) -> Self {
        Self {
            id: h.id,
            addr: h.addr.to_string(),
            region: h.region,
        }
    }
}

/// What the client paid one hop of its circuit.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct HopPayment {
    pub id: String,
    pub price_per_gib: u64,
    /// What the hop confirmed it holds a receipt for.
    pub paid: u64,
    /// Bytes counted on that hop (cells, both ways).
    pub bytes: u64,
    /// Bytes the newest receipt pays that hop for ahead of what it carried:
    /// one chunk, or on a fast circuit what the hop carries in half a second.
    pub ahead: u64,
}

impl From<api::HopPayment> for HopPayment {
    fn from(p: api::HopPayment) -> Self {
        Self {
            id: p.id,
            price_per_gib: p.price_per_gib,
            paid: p.paid,
            bytes: p.bytes,
            ahead: p.ahead,
        }
    }
}

/// What the user chose about leaks and DNS (persisted in the state
/// directory). On a phone the OS owns the firewall: lockdown there is
/// Android's always-on "block connections without VPN" and iOS's
/// `includeAllNetworks`, which the app sets from this.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Settings {
    pub lockdown: bool,
    pub allow_lan: bool,
    /// Carry IPv6 through the tunnel when the exit offers it.
    pub ipv6: bool,
    /// Resolvers instead of the exit's; empty: the exit's.
    pub dns: Vec<String>,
}

impl From<api::Settings> for Settings {
    fn from(s: api::Settings) -> Self {
        Self {
            lockdown: s.lockdown,
            allow_lan: s.allow_lan,
            ipv6: s.ipv6,
            dns: s.dns.iter().map(IpAddr::to_string).collect(),
        }
    }
}

/// The settings to change; fields left `None` keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct SettingsChange {
    #[uniffi(default = None)]
    pub lockdown: Option<bool>,
    #[uniffi(default = None)]
    pub allow_lan: Option<bool>,
    #[uniffi(default = None)]
    pub ipv6: Option<bool>,
    /// `Some([])` goes back to the exit's resolvers.
    #[uniffi(default = None)]
    pub dns: Option<Vec<String>>,
}

impl TryFrom<SettingsChange> for api::SettingsChange {
    type Error = HopwireError;

    fn try_from(c: SettingsChange) -> Result<Self, HopwireError> {
        let dns = c
            .dns
            .map(|list| {
                list.iter()
                    .map(|a| {
                        a.trim()
                            .parse::<IpAddr>()
                            .map_err(|_| HopwireError::bad_input(format!("DNS server `{a}` is not an IP address")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            lockdown: c.lockdown,
            allow_lan: c.allow_lan,
            ipv6: c.ipv6,
            dns,
        })
    }
}

/// Everything the status screen shows.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Status {
    pub state: State,
    /// Why the tunnel is in error or reconnecting, or a payment problem.
    pub error: Option<String>,
    /// Rebuild attempts since the circuit was lost, while reconnecting.
    pub attempt: Option<u32>,
    /// Every hop, first (guard) to last (exit).
    pub circuit: Vec<Hop>,
    pub build_ms: Option<f64>,
    pub inner_v4: Option<String>,
    pub inner_v6: Option<String>,
    /// Why IPv6 is blocked while the tunnel is up; `None`: it is carried.
    pub ipv6_blocked: Option<String>,
    pub mtu: Option<u16>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Throughput over the last second, bits per second.
    pub tx_bps: u64,
    pub rx_bps: u64,
    pub rtt_ms: Option<f64>,
    pub payments: Vec<HopPayment>,
    /// Paid this session, over every circuit it used.
    pub spent: u64,
    pub settings: Settings,
    /// Why the session holds everything closed whatever the state (an
    /// unreadable settings file; fixed by setting the settings again).
    pub fail_closed: Option<String>,
}

impl From<api::Status> for Status {
    fn from(s: api::Status) -> Self {
        Self {
            state: s.state.into(),
            error: s.error,
            attempt: s.attempt,
            circuit: s.circuit.into_iter().map(Hop::from).collect(),
            build_ms: s.build_ms,
            inner_v4: s.inner_addr.map(|a| a.to_string()),
            inner_v6: s.inner_v6.map(|a| a.to_string()),
            ipv6_blocked: s.ipv6_blocked,
            mtu: s.mtu,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            tx_bps: s.tx_bps,
            rx_bps: s.rx_bps,
            rtt_ms: s.rtt_ms,
            payments: s.payments.into_iter().map(HopPayment::from).collect(),
            spent: s.spent,
            settings: s.settings.into(),
            fail_closed: s.fail_closed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NodeRole {
    Relay,
    Exit,
    Bootstrap,
}

impl From<NodeRole> for Role {
    fn from(r: NodeRole) -> Self {
        match r {
            NodeRole::Relay => Role::Relay,
            NodeRole::Exit => Role::Exit,
            NodeRole::Bootstrap => Role::Bootstrap,
        }
    }
}

impl From<Role> for NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Relay => NodeRole::Relay,
            Role::Exit => NodeRole::Exit,
            Role::Bootstrap => NodeRole::Bootstrap,
        }
    }
}

/// One node the DHT knows.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Node {
    pub id: String,
    pub roles: Vec<NodeRole>,
    pub region: String,
    pub addr: String,
    pub capacity_mbit: u32,
    pub price_per_gib: u64,
    pub rtt_ms: Option<f64>,
    /// Seconds since the node signed its record.
    pub age_s: u64,
}

impl From<api::NodeInfo> for Node {
    fn from(n: api::NodeInfo) -> Self {
        Self {
            id: n.id,
            roles: n.roles.into_iter().map(NodeRole::from).collect(),
            region: n.region,
            addr: n.addr.to_string(),
            capacity_mbit: n.capacity_mbit,
            price_per_gib: n.price_per_gib,
            rtt_ms: n.rtt_ms,
            age_s: n.age_s,
        }
    }
}

/// One payment channel.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Channel {
    pub channel: String,
    /// The hop paid (short id).
    pub payee: String,
    pub price_per_gib: u64,
    pub deposit: u64,
    /// What the newest receipt signed to it says, in all.
    pub signed: u64,
    pub bytes: u64,
    pub sessions: u64,
    pub opened_at: u64,
    pub used_at: u64,
    /// When its close takes effect, once closing.
    pub close_at: Option<u64>,
    /// The deposit's rest came back to the account.
    pub finalized: bool,
}

impl From<api::ChannelInfo> for Channel {
    fn from(c: api::ChannelInfo) -> Self {
        Self {
            channel: c.channel,
            payee: c.payee,
            price_per_gib: c.price_per_gib,
            deposit: c.deposit,
            signed: c.signed,
            bytes: c.bytes,
            sessions: c.sessions,
            opened_at: c.opened_at,
            used_at: c.used_at,
            close_at: c.close_at,
            finalized: c.finalized,
        }
    }
}

/// One connect session: what it paid each hop.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SpendingSession {
    pub started_at: u64,
    pub ended_at: u64,
    pub spent: u64,
    /// Hop (short id) → paid.
    pub hops: HashMap<String, u64>,
}

/// The wallet: account, balance, channels, recent sessions.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Wallet {
    /// The ledger account: an ed25519 public key in hex on the embedded
    /// ledger, an address (`0x…`) on a chain.
    pub account: String,
    pub ledger: String,
    /// What the account holds outside channels, if the ledger answered.
    pub balance: Option<u64>,
    pub ledger_error: Option<String>,
    pub channels: Vec<Channel>,
    pub sessions: Vec<SpendingSession>,
}

impl From<api::WalletInfo> for Wallet {
    fn from(w: api::WalletInfo) -> Self {
        Self {
            account: w.account,
            ledger: w.ledger.to_string(),
            balance: w.balance,
            ledger_error: w.ledger_error,
            channels: w.channels.into_iter().map(Channel::from).collect(),
            sessions: w
                .sessions
                .into_iter()
                .map(|s| SpendingSession {
                    started_at: s.started_at,
                    ended_at: s.ended_at,
                    spent: s.spent,
                    hops: s.hops.into_iter().collect(),
                })
                .collect(),
        }
    }
}

/// What the session tells its listener.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum Event {
    /// The tunnel changed state.
    State { state: TunnelState },
    /// A circuit is up (after a connect or a rebuild).
    Circuit {
        circuit: Vec<Hop>,
        build_ms: f64,
        inner_v4: String,
        inner_v6: Option<String>,
        ipv6_blocked: Option<String>,
        mtu: u16,
    },
    /// The settings in force changed.
    Settings { settings: Settings },
    /// Each second while connected.
    Traffic {
        bytes_sent: u64,
        bytes_received: u64,
        tx_bps: u64,
        rx_bps: u64,
        rtt_ms: Option<f64>,
        payments: Vec<HopPayment>,
        spent: u64,
    },
    /// The wallet's channels changed.
    Wallet { channels: Vec<Channel> },
    /// The listener was too slow: `missed` events were dropped; the
    /// next ones follow.
    Lagged { missed: u64 },
}

impl From<api::Event> for Event {
    fn from(e: api::Event) -> Self {
        match e {
            api::Event::State { state } => Self::State { state: state.into() },
            api::Event::Circuit {
                circuit,
                build_ms,
                inner_addr,
                inner_v6,
                ipv6_blocked,
                mtu,
            } => Self::Circuit {
                circuit: circuit.into_iter().map(Hop::from).collect(),
                build_ms,
                inner_v4: inner_addr.to_string(),
                inner_v6: inner_v6.map(|a| a.to_string()),
                ipv6_blocked,
                mtu,
            },
            api::Event::Settings { settings, .. } => Self::Settings {
                settings: settings.into(),
            },
            api::Event::Traffic {
                bytes_sent,
                bytes_received,
                tx_bps,
                rx_bps,
                rtt_ms,
                payments,
                spent,
            } => Self::Traffic {
                bytes_sent,
                bytes_received,
                tx_bps,
                rx_bps,
                rtt_ms,
                payments: payments.into_iter().map(HopPayment::from).collect(),
                spent,
            },
            api::Event::Wallet { channels } => Self::Wallet {
                channels: channels.into_iter().map(Channel::from).collect(),
            },
            api::Event::Lagged { missed } => Self::Lagged { missed },
        }
    }
}
