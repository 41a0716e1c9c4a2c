//! Exit policy: Tor-style accept/reject rules by destination range and port.
//!
//! A policy is an ordered list of rules; the first rule that matches a packet
//! decides. A packet that matches no rule is accepted, so a policy that wants
//! a default-deny ends with `reject *:*`.
//!
//! Rule syntax (one string per rule, as in `node.toml`):
//! `accept|reject ADDR[:PORTS]` where `ADDR` is `*`, an address or a CIDR
//! range (IPv6 in brackets when a port follows: `[2001:db8::/32]:443`) and
//! `PORTS` is `*`, `N` or `N-M`. A port rule only matches TCP and UDP.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::packet::{PacketInfo, PROTO_TCP, PROTO_UDP};

/// Ranges no client may reach through an exit by default: the operator's LAN
/// and everything else that is not the public internet.
pub const DEFAULT_REJECTS: &[&str] = &[
    "reject 0.0.0.0/8:*",
    "reject 10.0.0.0/8:*",
    "reject 100.64.0.0/10:*",
    "reject 127.0.0.0/8:*",
    "reject 169.254.0.0/16:*",
    "reject 172.16.0.0/12:*",
    "reject 192.168.0.0/16:*",
    "reject 224.0.0.0/3:*",
    "reject [::1/128]:*",
    "reject [fc00::/7]:*",
    "reject [fe80::/10]:*",
    "reject [ff00::/8]:*",
    "reject *:25",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("exit policy rule `{rule}`: {reason}")]
pub struct PolicyError {
    pub rule: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// One accept or reject rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// `None` is `*`: every address.
    pub net: Option<IpNet>,
    /// `None` is `*`: every port and every protocol.
    pub ports: Option<PortRange>,
}

impl Rule {
    fn matches(&self, dst: IpAddr, protocol: u8, port: Option<u16>) -> bool {
        if let Some(net) = &self.net {
            if !net.contains(&dst) {
                return false;
            }
        }
        match self.ports {
            None => true,
            Some(range) => {
                matches!(protocol, PROTO_TCP | PROTO_UDP) && port.is_some_and(|p| range.first <= p && p <= range.last)
            }
        }
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PolicyError {
            rule: s.to_owned(),
            reason,
        };
        let mut words = s.split_whitespace();
        let action = match words.next() {
            Some("accept") => Action::Accept,
            Some("reject") => Action::Reject,
            _ => return Err(err("must start with `accept` or `reject`")),
        };
        let target = words.next().ok_or_else(|| err("missing address"))?;
        if words.next().is_some() {
            return Err(err("expected `accept|reject ADDR[:PORTS]`"));
        }
        let (addr, ports) = split_addr_ports(target).ok_or_else(|| err("bad address"))?;
        let net = match addr {
            "*" => None,
            a => Some(parse_net(a).ok_or_else(|| err("bad address or CIDR range"))?),
        };
        let ports = match ports {
            None | Some("*") => None,
            Some(p) => Some(parse_ports(p).ok_or_else(|| err("bad port or port range"))?),
        };
        Ok(Rule { action, net, ports })
    }
}

fn split_addr_ports(target: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = target.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        match after {
            "" => Some((addr, None)),
            p => Some((addr, Some(p.strip_prefix(':')?))),
        }
    } else if target.matches(':').count() > 1 {
        // A bare IPv6 address or range without a port.
        Some((target, None))
    } else {
        match target.split_once(':') {
            Some((a, p)) => Some((a, Some(p))),
            None => Some((target, None)),
        }
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

fn parse_ports(s: &str) -> Option<PortRange> {
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = s.parse().ok()?;
            (p, p)
        }
    };
    (first <= last && first > 0).then_some(PortRange { first, last })
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Accept => "accept",
            Action::Reject => "reject",
        };
        let addr = match self.net {
            None => "*".to_owned(),
            Some(IpNet::V4(n)) => n.to_string(),
            Some(IpNet::V6(n)) => format!("[{n}]"),
        };
        match self.ports {
            None => write!(f, "{action} {addr}:*"),
            Some(PortRange { first, last }) if first == last => write!(f, "{action} {addr}:{first}"),
            Some(PortRange { first, last }) => write!(f, "{action} {addr}:{first}-{last}"),
        }
    }
}

/// An ordered rule list; the first match decides, no match accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
}

impl ExitPolicy {
    /// The operator's rules are checked first, then [`DEFAULT_REJECTS`]
    /// (unless the operator turned them off), then everything is accepted.
    pub fn new(operator_rules: &[String], default_rejects: bool) -> Result<Self, PolicyError> {
        let mut rules = operator_rules
            .iter()
            .map(|r| r.parse())
            .collect::<Result<Vec<Rule>, _>>()?;
        if default_rejects {
            rules.extend(
                DEFAULT_REJECTS
                    .iter()
                    .map(|r| r.parse::<Rule>().unwrap_or_else(|e| unreachable!("built-in rule: {e}"))),
            );
        }
        Ok(Self { rules })
    }

    /// The policy with only the default rejects.
    pub fn default_policy() -> Self {
        Self::new(&[], true).unwrap_or_else(|e| unreachable!("built-in rules: {e}"))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn decide(&self, dst: IpAddr, protocol: u8, port: Option<u16>) -> Action {
        self.rules
            .iter()
            .find(|r| r.matches(dst, protocol, port))
            .map_or(Action::Accept, |r| r.action)
    }

    pub fn allows(&self, packet: &PacketInfo) -> bool {
        self.decide(packet.dst, packet.protocol, packet.dst_port) == Action::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PROTO_ICMP;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn default_rejects_lan_loopback_link_local_and_smtp() {
        let p = ExitPolicy::default_policy();
        for lan in [
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
        ] {
            assert_eq!(p.decide(ip(lan), PROTO_TCP, Some(80)), Action::Reject, "{lan}");
            assert_eq!(p.decide(ip(lan), PROTO_ICMP, None), Action::Reject, "{lan}");
        }
        assert_eq!(p.decide(ip("fe80::1"), PROTO_UDP, Some(53)), Action::Reject);
        assert_eq!(p.decide(ip("198.18.0.10"), PROTO_TCP, Some(25)), Action::Reject);
        assert_eq!(p.decide(ip("198.18.0.10"), PROTO_UDP, Some(25)), Action::Reject);
        assert_eq!(p.decide(ip("198.18.0.10"), PROTO_TCP, Some(80)), Action::Accept);
        assert_eq!(p.decide(ip("198.18.0.10"), PROTO_ICMP, None), Action::Accept);
        assert_eq!(p.decide(ip("2001:db8::1"), PROTO_TCP, Some(443)), Action::Accept);
    }

    #[test]
    fn operator_rules_come_first() {
        let p = ExitPolicy::new(&["accept 10.200.0.0/24:*".into()], true).expect("valid");
        assert_eq!(p.decide(ip("10.200.0.7"), PROTO_TCP, Some(80)), Action::Accept);
        assert_eq!(p.decide(ip("10.201.0.7"), PROTO_TCP, Some(80)), Action::Reject);
        let strict = ExitPolicy::new(&["accept *:443".into(), "reject *:*".into()], true).expect("valid");
        assert_eq!(strict.decide(ip("198.18.0.1"), PROTO_TCP, Some(443)), Action::Accept);
        assert_eq!(strict.decide(ip("198.18.0.1"), PROTO_TCP, Some(80)), Action::Reject);
        assert_eq!(strict.decide(ip("198.18.0.1"), PROTO_ICMP, None), Action::Reject);
    }

    #[test]
    fn port_ranges_and_ipv6_brackets() {
        let r: Rule = "reject [2001:db8::/32]:6881-6999".parse().expect("valid");
        assert!(r.matches(ip("2001:db8::5"), PROTO_TCP, Some(6900)));
        assert!(!r.matches(ip("2001:db8::5"), PROTO_TCP, Some(7000)));
        assert!(!r.matches(ip("2001:db9::5"), PROTO_TCP, Some(6900)));
        assert_eq!(r.to_string(), "reject [2001:db8::/32]:6881-6999");
        let bare: Rule = "accept 198.18.0.1".parse().expect("valid");
        assert_eq!(bare.to_string(), "accept 198.18.0.1/32:*");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for bad in [
            "allow *:*",
            "reject",
            "reject 10.0.0.0/33",
            "reject *:70000",
            "reject *:9-3",
            "reject *:0",
            "reject a b",
        ] {
            let e = bad.parse::<Rule>().expect_err(bad);
            assert_eq!(e.rule, bad);
        }
    }
}
