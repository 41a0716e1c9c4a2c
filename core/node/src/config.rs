//! `node.toml`: the exit node's configuration, parsed and validated.
//!
//! Parsing never touches the system; [`NodeConfig::load`] reads one file and
//! every error names that file and the field at fault.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use hopwire_net::dht::parse_dht_addr;
use hopwire_net::keys;
use hopwire_net::ledger::evm::{Address, U256};
use hopwire_net::ledger::LedgerAddr;
use hopwire_proto::policy::ExitPolicy;
use hopwire_proto::pool::{AddressPool, V6Twins, DEFAULT_V6_TWINS};
use hopwire_proto::record::{parse_identity, Role};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub relay: RelaySection,
    #[serde(default)]
    pub exit: ExitSection,
    #[serde(default)]
    pub wireguard: WireguardSection,
    #[serde(default)]
    pub dht: DhtSection,
    #[serde(default)]
    pub pay: PaySection,
}

/// What the node charges, published in its record.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaySection {
    /// Price per GiB carried, in the ledger's smallest unit; 0 is free.
    #[serde(default)]
    pub price_per_gib: u64,
    /// Paid for at a time: clients prepay one chunk and stay one ahead.
    #[serde(default = "default_chunk_mib")]
    pub chunk_mib: u64,
    /// Carried beyond what is paid before the node stops forwarding.
    #[serde(default = "default_chunk_mib")]
    pub grace_mib: u64,
    /// The ledger channels are checked and settled on: an embedded
    /// ledger's service (`ip:port`) or a chain's contract
    /// (`eip155:<chain id>:<contract>@http://<ip>:<port>`); required when
    /// the node charges.
    #[serde(default)]
    pub ledger: Option<LedgerAddr>,
    /// On a chain: the address earnings are paid to (default: the address
    /// of the node's gas key, `evm.key` in its key directory).
    #[serde(default, deserialize_with = "address")]
    pub payout: Option<Address>,
    /// On a chain paying in an ERC-20: what one unit is worth in wei of the
    /// chain's coin, to weigh gas against earnings (a native-coin ledger
    /// knows it). Decimal.
    #[serde(default, deserialize_with = "wei")]
    pub unit_value_wei: Option<U256>,
    /// The running node settles, every `settle_every_s` seconds, each
    /// channel its payer has started closing (what is not settled before
    /// the close takes effect is lost), each channel owing more than
    /// `settle_fee_multiple` times what settling it costs (on a chain) and,
    /// when this is above 0, each channel owing at least this much; the
    /// last two only once no circuit pays through the channel (at most one
    /// settlement per session). It never settles a channel for less than
    /// the fee.
    #[serde(default)]
    pub settle_min: u64,
    #[serde(default = "default_settle_every_s")]
    pub settle_every_s: u64,
    /// Settle only when what a channel owes is more than this many times
    /// the fee (100: fees stay under 1 % of earnings).
    #[serde(default = "default_settle_fee_multiple")]
    pub settle_fee_multiple: u64,
}

fn address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an address (0x and 40 hex digits)")))
}

fn wei<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<U256>, D::Error> {
    let s = String::deserialize(d)?;
    U256::from_str_radix(&s, 10)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a decimal number of wei")))
}

impl Default for PaySection {
    fn default() -> Self {
        Self {
            price_per_gib: 0,
            chunk_mib: default_chunk_mib(),
            grace_mib: default_chunk_mib(),
            ledger: None,
            payout: None,
            unit_value_wei: None,
            settle_min: 0,
            settle_every_s: default_settle_every_s(),
            settle_fee_multiple: default_settle_fee_multiple(),
        }
    }
}

impl PaySection {
    pub fn quote(&self) -> hopwire_proto::pay::Quote {
        hopwire_proto::pay::Quote {
            price_per_gib: self.price_per_gib,
            chunk_bytes: self.chunk_mib << 20,
            grace_bytes: self.grace_mib << 20,
        }
    }
}

fn default_chunk_mib() -> u64 {
    4
}

fn default_settle_every_s() -> u64 {
    600
}

fn default_settle_fee_multiple() -> u64 {
    100
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhtSection {
    /// Where the node's DHT (libp2p over TCP) listens.
    #[serde(default = "default_dht_listen")]
    pub listen: SocketAddr,
    /// DHT peers to join through: `/ip4/ADDR/tcp/PORT/p2p/PEER_ID`, as
    /// `hopwire-node show-record --json` prints them (`dht_addr`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

impl Default for DhtSection {
    fn default() -> Self {
        Self {
            listen: default_dht_listen(),
            bootstrap: Vec::new(),
        }
    }
}

fn default_dht_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4433))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Where this node listens for Hopwire (QUIC) connections.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address clients dial: the VPS's public IP and port.
    pub public_address: Option<SocketAddr>,
    /// Directory of the key files, relative to the config file.
    #[serde(default = "default_key_dir")]
    pub key_dir: PathBuf,
    /// What the node does for others: `relay`, `exit`, or both.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// ISO 3166 country code clients see, e.g. "DE"; "ZZ" is unknown.
    #[serde(default = "default_region")]
    pub region: String,
    /// Identities (64 hex digits) of the operator's other nodes.
    #[serde(default)]
    pub family: Vec<String>,
    /// Where to serve Prometheus metrics over HTTP; unset means off.
    pub metrics_listen: Option<SocketAddr>,
    /// What the node can carry, Mbit/s, as published in its record.
    #[serde(default = "default_capacity")]
    pub capacity_mbit: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// Most one circuit may carry through this node, Mbit/s; 0 is unlimited.
    #[serde(default = "default_circuit_rate")]
    pub circuit_rate_mbit: u64,
    /// Most one neighbouring node (all its circuits) may send, Mbit/s; 0 is unlimited.
    #[serde(default = "default_peer_rate")]
    pub peer_rate_mbit: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            circuit_rate_mbit: default_circuit_rate(),
            peer_rate_mbit: default_peer_rate(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitSection {
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    #[serde(default = "default_inner_subnet")]
    pub inner_subnet: Ipv4Net,
    /// Carry clients' IPv6 when this machine has an IPv6 default route.
    #[serde(default = "yes")]
    pub ipv6: bool,
    /// The ULA /96 in which each client's inner IPv4 address has its IPv6
    /// twin (NAT66 out of the uplink).
    #[serde(default = "default_inner_subnet_v6")]
    pub inner_subnet_v6: Ipv6Net,
    /// Resolvers the exit forwards its clients' DNS queries to; empty means
    /// the ones in the exit's `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Operator rules, checked before the default rejects.
    #[serde(default)]
    pub policy: Vec<String>,
    /// Keep the built-in rejects (private ranges, loopback, link-local, SMTP).
    #[serde(default = "yes")]
    pub default_rejects: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireguardSection {
    /// UDP address for stock WireGuard clients; unset means off.
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub peers: Vec<WireguardPeer>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireguardPeer {
    pub public_key: String,
    /// The peer's inner address, inside `exit.inner_subnet`.
    pub address: Ipv4Addr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 4433))
}
fn default_key_dir() -> PathBuf {
    PathBuf::from(".")
}
fn default_roles() -> Vec<Role> {
    vec![Role::Relay, Role::Exit]
}
fn default_capacity() -> u32 {
    100
}
fn default_region() -> String {
    "ZZ".into()
}
fn default_circuit_rate() -> u64 {
    1000
}
fn default_peer_rate() -> u64 {
    2000
}
fn default_tun_name() -> String {
    "hwexit0".into()
}
fn default_inner_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(100, 87, 0, 0), 16).unwrap_or_else(|e| unreachable!("{e}"))
}
fn default_inner_subnet_v6() -> Ipv6Net {
    DEFAULT_V6_TWINS.parse().unwrap_or_else(|e| unreachable!("{e}"))
}
fn yes() -> bool {
    true
}

impl Default for ExitSection {
    fn default() -> Self {
        Self {
            tun_name: default_tun_name(),
            inner_subnet: default_inner_subnet(),
            ipv6: true,
            inner_subnet_v6: default_inner_subnet_v6(),
            dns_upstream: Vec::new(),
            policy: Vec::new(),
            default_rejects: true,
        }
    }
}

/// A validated configuration together with what was derived from it.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub config: NodeConfig,
    pub policy: ExitPolicy,
    pub key_dir: PathBuf,
    pub wg_peers: Vec<(boringtun::x25519::PublicKey, Ipv4Addr)>,
    /// Where clients' IPv6 addresses come from, if the exit may carry IPv6.
    pub v6_twins: Option<V6Twins>,
    pub family: Vec<[u8; 32]>,
    pub bootstrap: Vec<libp2p::Multiaddr>,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        if let Some(addr) = config.node.public_address {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(invalid(
                    "node.public_address",
                    format!("{addr} is not an address clients can dial"),
                ));
            }
        }
        for (field, mib) in [
            ("pay.chunk_mib", config.pay.chunk_mib),
            ("pay.grace_mib", config.pay.grace_mib),
        ] {
            if !(1..=1024).contains(&mib) {
                return Err(invalid(field, format!("{mib} must be between 1 and 1024 (MiB)")));
            }
        }
        if config.pay.settle_fee_multiple == 0 {
            return Err(invalid(
                "pay.settle_fee_multiple",
                "must be at least 1 (settling for less than its fee loses money)".into(),
            ));
        }
        if config.pay.price_per_gib > 0 && config.pay.ledger.is_none() {
            return Err(invalid(
                "pay.ledger",
                "a node that charges (pay.price_per_gib > 0) needs the address of the ledger it is paid on".into(),
            ));
        }
        if config.node.roles.is_empty() {
            return Err(invalid("node.roles", "list at least one of \"relay\", \"exit\"".into()));
        }
        let region = &config.node.region;
        if region.len() != 2 || !region.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "node.region",
                format!("`{region}` must be a two-letter country code like \"DE\""),
            ));
        }
        let family = config
            .node
            .family
            .iter()
            .map(|f| parse_identity(f).ok_or_else(|| invalid("node.family", format!("`{f}` is not 64 hex digits"))))
            .collect::<Result<Vec<_>, _>>()?;
        let bootstrap = config
            .dht
            .bootstrap
            .iter()
            .map(|b| {
                parse_dht_addr(b)
                    .ok_or_else(|| invalid("dht.bootstrap", format!("`{b}` is not /ip4/ADDR/tcp/PORT/p2p/PEER_ID")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tun = &config.exit.tun_name;
        if tun.is_empty() || tun.len() > 15 || !tun.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid(
                "exit.tun_name",
                format!("`{tun}` must be 1-15 characters of a-z, 0-9, - or _"),
            ));
        }
        let mut pool =
            AddressPool::new(config.exit.inner_subnet).map_err(|e| invalid("exit.inner_subnet", e.to_string()))?;
        let v6_twins = match V6Twins::new(config.exit.inner_subnet_v6) {
            Some(t) => config.exit.ipv6.then_some(t),
            None => {
                return Err(invalid(
                    "exit.inner_subnet_v6",
                    format!("`{}` must be a /96", config.exit.inner_subnet_v6),
                ))
            }
        };
        let policy = ExitPolicy::new(&config.exit.policy, config.exit.default_rejects)
            .map_err(|e| invalid("exit.policy", e.to_string()))?;
        let mut wg_peers = Vec::new();
        for peer in &config.wireguard.peers {
            let key = keys::parse_wg_public(&peer.public_key).ok_or_else(|| {
                invalid(
                    "wireguard.peers.public_key",
                    format!("`{}` is not a base64 WireGuard public key", peer.public_key),
                )
            })?;
            pool.reserve(peer.address)
                .map_err(|e| invalid("wireguard.peers.address", e.to_string()))?;
            if wg_peers
                .iter()
                .any(|(k, _): &(boringtun::x25519::PublicKey, _)| k.as_bytes() == key.as_bytes())
            {
                return Err(invalid(
                    "wireguard.peers.public_key",
                    format!("{} is listed twice", peer.public_key),
                ));
            }
            wg_peers.push((key, peer.address));
        }
        if !wg_peers.is_empty() && config.wireguard.listen.is_none() {
            return Err(invalid(
                "wireguard.listen",
                "peers are listed but no UDP listen address is set".into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let key_dir = base.join(&config.node.key_dir);
        Ok(LoadedConfig {
            path: path.to_owned(),
            config,
            policy,
            key_dir,
            wg_peers,
            v6_twins,
            family,
            bootstrap,
        })
    }
}

/// Where an installed node reads its configuration (the package's unit
/// runs `hopwire-node run` with it; every command defaults to it).
pub const DEFAULT_CONFIG: &str = "/etc/hopwire/node.toml";
/// Where an installed node keeps its keys, receipts and DHT peers (the
/// unit's `StateDirectory`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/hopwire-node";

impl NodeConfig {
    /// The parts of the configuration that differ between `self` and `new`
    /// beyond what a running node reloads (the exit policy and the prices):
    /// those take effect at the next restart.
    pub fn needs_restart(&self, new: &NodeConfig) -> Vec<&'static str> {
        let exit = |e: &ExitSection| ExitSection {
            policy: Vec::new(),
            default_rejects: true,
            ..e.clone()
        };
        let pay = |p: &PaySection| PaySection {
            price_per_gib: u64::from(p.price_per_gib > 0),
            chunk_mib: 0,
            grace_mib: 0,
            ..p.clone()
        };
        [
            ("[node]", self.node != new.node),
            ("[relay]", self.relay != new.relay),
            (
                "[exit] beyond policy and default_rejects",
                exit(&self.exit) != exit(&new.exit),
            ),
            ("[wireguard]", self.wireguard != new.wireguard),
            ("[dht]", self.dht != new.dht),
            (
                "[pay] beyond price_per_gib, chunk_mib and grace_mib (or between free and charging)",
                pay(&self.pay) != pay(&new.pay),
            ),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect()
    }
}

/// The commented `node.toml` that `hopwire-node init` writes: keys in
/// `key_dir` (relative to the file, or absolute), doing `roles`.
pub fn template(public_address: Option<SocketAddr>, roles: &[Role], key_dir: &Path) -> String {
    let public = match public_address {
        Some(a) => format!("public_address = \"{a}\""),
        None => "# public_address = \"203.0.113.7:4433\"   # set this to your server's public IP".into(),
    };
    let roles = roles.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    let key_dir = key_dir.display();
    format!(
        r#"# Hopwire node configuration. Every setting below shows its default.

[node]
# Where the node accepts Hopwire (QUIC) connections.
listen = "0.0.0.0:4433"
# The address clients dial; `hopwire-node show-record` puts it in the record.
{public}
# Directory holding identity.key, wireguard.key and onion.key (relative to
# this file), the receipts this node earned and its DHT peers.
key_dir = "{key_dir}"
# What this node does for others: "relay" (carries circuits onward), "exit"
# (ends them and sends traffic to the internet; needs root for TUN and NAT),
# "bootstrap" (a DHT server new peers join through). Installed from the
# package, the exit role also needs the unit's exit drop-in (`hopwire-node
# init` links it).
roles = [{roles}]
# Country code clients see when they pick a path, e.g. "DE"; "ZZ" is unknown.
region = "ZZ"
# Identities (64 hex digits, from `hopwire-node show-record --json`) of your
# other nodes: clients never put two of them on one circuit.
family = []
# What this node can carry, Mbit/s; published so clients can spread load.
capacity_mbit = 100
# Prometheus metrics over HTTP, e.g. "127.0.0.1:9100"; unset means off.
# metrics_listen = "127.0.0.1:9100"

[relay]
# Most one circuit, and one neighbouring node, may carry through this node (Mbit/s, 0 = no limit).
circuit_rate_mbit = 1000
peer_rate_mbit = 2000

[exit]
# TUN device and the inner subnet clients get addresses from.
tun_name = "hwexit0"
inner_subnet = "100.87.0.0/16"
# IPv6 for clients, when this machine has an IPv6 default route: each client
# gets the twin of its IPv4 address in this /96, NAT66 out of the uplink.
ipv6 = true
inner_subnet_v6 = "fd68:7769:7200::/96"
# Resolvers for clients' DNS queries; empty means this machine's /etc/resolv.conf.
dns_upstream = []
# Exit policy, first match wins: "accept|reject ADDR[/LEN][:PORT[-PORT]]".
# The policy and the [pay] prices are re-read on SIGHUP (`systemctl reload
# hopwire-node`) without dropping circuits; other changes need a restart.
# Example: allow one LAN host, then the built-in rejects still apply.
#   policy = ["accept 192.168.1.10:443"]
policy = []
# Built-in rejects: private, loopback, link-local and multicast ranges, and port 25.
default_rejects = true

[dht]
# Discovery: the node publishes its record in a Kademlia DHT (TCP).
listen = "0.0.0.0:4433"
# Peers to join through, as `hopwire-node show-record --json` prints them (dht_addr):
# bootstrap = ["/ip4/203.0.113.9/tcp/4433/p2p/12D3KooW..."]
bootstrap = []

[pay]
# What clients pay per GiB this node carries, in the ledger's smallest unit
# (0 = free). Published in the record; clients can filter with --max-price.
price_per_gib = 0
# Clients prepay one chunk and stay one ahead; past the grace unpaid, the
# node stops forwarding for them.
chunk_mib = 4
grace_mib = 4
# The ledger channels are checked and settled on; needed to charge. Either an
# embedded ledger's service, or a payment-channel contract on an EVM chain
# (chain id, contract, and a JSON-RPC endpoint of that chain):
# ledger = "203.0.113.9:7300"
# ledger = "eip155:8453:0x…contract…@http://203.0.113.9:8545"
# On a chain, earnings go to payout (default: the address of evm.key in the
# key directory, which also pays the gas of settling; fund it with a little
# of the chain's coin). For a contract paying in an ERC-20, unit_value_wei
# says what one unit is worth in wei, so gas can be weighed against earnings.
# payout = "0x…"
# unit_value_wei = "1000000000"
# Every settle_every_s the running node settles each channel whose client
# started closing it (unsettled earnings are lost once the close takes
# effect), each channel owing more than settle_fee_multiple times the fee
# of settling it, and, if settle_min > 0, each channel owing at least
# settle_min (these two once its session ended: at most one settlement per
# session); never one owing less than the fee.
settle_min = 0
settle_every_s = 600
settle_fee_multiple = 100

[wireguard]
# Plain WireGuard over UDP for stock clients listed below; unset means off.
# listen = "0.0.0.0:51820"
# [[wireguard.peers]]
# public_key = "base64 key from `wg pubkey`"
# address = "100.87.255.2"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadedConfig, ConfigError> {
        NodeConfig::parse(Path::new("/etc/hopwire/node.toml"), text)
    }

    #[test]
    fn template_parses_with_defaults() {
        let both = [Role::Relay, Role::Exit];
        let c = parse(&template(
            Some("198.18.2.2:4433".parse().expect("addr")),
            &both,
            Path::new("."),
        ))
        .expect("template is valid");
        assert_eq!(c.config.node.listen.port(), 4433);
        assert_eq!(c.config.exit.inner_subnet.to_string(), "100.87.0.0/16");
        assert!(c.config.wireguard.listen.is_none());
        assert_eq!(c.key_dir, Path::new("/etc/hopwire/."));
        assert!(!c.policy.allows(&hopwire_proto::packet::PacketInfo {
            src: "100.87.0.2".parse().expect("ip"),
            dst: "192.168.1.1".parse().expect("ip"),
            protocol: 6,
            dst_port: Some(80),
        }));
        parse(&template(None, &both, Path::new("."))).expect("template without address is valid");
        // What `hopwire-node init` writes for the package's unit.
        let installed = parse(&template(None, &[Role::Relay], Path::new(DEFAULT_STATE_DIR))).expect("valid");
        assert_eq!(installed.key_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(installed.config.node.roles, vec![Role::Relay]);
    }

    #[test]
    fn a_reload_names_what_only_a_restart_applies() {
        let text = template(None, &[Role::Relay, Role::Exit], Path::new("."));
        let old = parse(&text).expect("valid").config;
        let edited = |from: &str, to: &str| {
            assert!(text.contains(from), "{from}");
            parse(&text.replacen(from, to, 1)).expect("valid").config
        };
        // Reloaded in place: the policy and the prices.
        let new = edited("policy = []", "policy = [\"reject 198.18.0.0/15\"]");
        assert!(old.needs_restart(&new).is_empty());
        let new = edited("chunk_mib = 4", "chunk_mib = 8");
        assert!(old.needs_restart(&new).is_empty());
        // Not: anything else, or starting to charge (that needs a ledger).
        let new = edited("capacity_mbit = 100", "capacity_mbit = 200");
        assert_eq!(old.needs_restart(&new), vec!["[node]"]);
        let new = edited("tun_name = \"hwexit0\"", "tun_name = \"hwexit1\"");
        assert_eq!(
            old.needs_restart(&new),
            vec!["[exit] beyond policy and default_rejects"]
        );
        let new = edited("price_per_gib = 0", "price_per_gib = 10\nledger = \"198.18.0.9:7300\"");
        assert_eq!(old.needs_restart(&new).len(), 1);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse("[node]\nlisten = \"nope\"\n").expect_err("bad addr").to_string();
        assert!(e.starts_with("config /etc/hopwire/node.toml:"), "{e}");
        let e = parse("[node]\n[exit]\ninner_subnet = \"100.87.0.0/31\"\n")
            .expect_err("small")
            .to_string();
        assert!(e.contains("exit.inner_subnet"), "{e}");
        let e = parse("[node]\n[exit]\npolicy = [\"allow *:*\"]\n")
            .expect_err("policy")
            .to_string();
        assert!(e.contains("exit.policy") && e.contains("allow *:*"), "{e}");
        let e = parse("[node]\nbogus = 1\n").expect_err("unknown field").to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[node]\npublic_address = \"0.0.0.0:4433\"\n")
            .expect_err("unspecified")
            .to_string();
        assert!(e.contains("node.public_address"), "{e}");
        let e = parse("[node]\n[exit]\ntun_name = \"a-very-long-device-name\"\n")
            .expect_err("long")
            .to_string();
        assert!(e.contains("exit.tun_name"), "{e}");
    }

    #[test]
    fn wireguard_peers_are_checked() {
        let key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        let ok = format!("[node]\n[wireguard]\nlisten = \"0.0.0.0:51820\"\n[[wireguard.peers]]\npublic_key = \"{key}\"\naddress = \"100.87.255.2\"\n");
        assert_eq!(parse(&ok).expect("valid").wg_peers.len(), 1);
        let outside = ok.replace("100.87.255.2", "10.0.0.2");
        assert!(parse(&outside)
            .expect_err("outside")
            .to_string()
            .contains("wireguard.peers.address"));
        let no_listen = ok.replace("listen = \"0.0.0.0:51820\"\n", "");
        assert!(parse(&no_listen)
            .expect_err("no listen")
            .to_string()
            .contains("wireguard.listen"));
        let bad_key = ok.replace(key, "abc");
        assert!(parse(&bad_key).expect_err("key").to_string().contains("public_key"));
    }
}
