//! The client's firewall: one nftables table of its own (`inet`, so IPv4
//! and IPv6 alike) that lets out only what may leave while the tunnel is
//! wanted, and drops everything else.
//!
//! Let out: packets into the tunnel device (DNS only to the tunnel's
//! resolvers, IPv6 only when the tunnel carries it), the daemon's own
//! protected sockets (they carry [`MARK`]: the link to the first hop,
//! ledger calls, DHT lookups made while the tunnel is down), loopback,
//! what keeps the link up (DHCP, IPv6 neighbour discovery), and with
//! [`Rules::allow_lan`] the local network (private, link-local and
//! multicast ranges; never DNS); in: the same, and replies to what went
//! out. The table belongs to no process: a daemon killed with `kill -9`
//! leaves it in place, so traffic stays blocked until a daemon starts
//! again and decides.
//!
//! What it does not do: decide when to block (the daemon does, per tunnel
//! state and settings).

use std::net::IpAddr;

use crate::{run, run_with_input, SysError};

/// The packet mark of the daemon's protected sockets (`SO_MARK`).
pub const MARK: u32 = 0x6877_6972;

/// The local network with allow-LAN: private, shared, link-local and
/// multicast ranges.
const LAN_V4: &str = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 169.254.0.0/16, 224.0.0.0/4";
const LAN_V6: &str = "fe80::/10, fc00::/7, ff00::/8";

/// What the table lets through besides loopback and the marked sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules<'a> {
    /// The tunnel device (it need not exist yet).
    pub tun: &'a str,
    /// The tunnel's resolvers: DNS to any other address is dropped.
    pub dns: &'a [IpAddr],
    /// IPv6 goes through the tunnel; otherwise it is dropped there too.
    pub ipv6: bool,
    pub allow_lan: bool,
}

/// The daemon's nftables table.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
}

impl Default for Firewall {
    fn default() -> Self {
        Self::new("hopwire")
    }
}

impl Firewall {
    pub fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
        }
    }

    /// The table for `rules`, replacing whatever this table held (the
    /// `add`/`delete` pair makes the load one transaction even when the
    /// table is not there yet).
    pub fn script(&self, rules: &Rules) -> String {
        let table = &self.table;
        let tun = rules.tun;
        let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = rules.dns.iter().partition(|a| a.is_ipv4());
        let set = |addrs: &[IpAddr]| addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
        let mut tunnel_dns = String::new();
        for (family, addrs) in [("ip", &v4), ("ip6", &v6)] {
            if !addrs.is_empty() {
                let addrs = set(addrs);
                tunnel_dns.push_str(&format!(
                    "    oifname \"{tun}\" {family} daddr {{ {addrs} }} udp dport 53 accept\n    oifname \"{tun}\" {family} daddr {{ {addrs} }} tcp dport 53 accept\n"
                ));
            }
        }
        let tun_v6 = if rules.ipv6 {
            String::new()
        } else {
            format!("    oifname \"{tun}\" meta nfproto ipv6 drop\n")
        };
        let (lan_out, lan_in) = if rules.allow_lan {
            (
                format!("    ip daddr {{ {LAN_V4}, 255.255.255.255 }} accept\n    ip6 daddr {{ {LAN_V6} }} accept\n"),
                format!("    ip saddr {{ {LAN_V4} }} accept\n    ip6 saddr {{ {LAN_V6} }} accept\n"),
            )
        } else {
            (String::new(), String::new())
        };
        format!(
            r#"add table inet {table}
delete table inet {table}
table inet {table} {{
  chain output {{
    type filter hook output priority filter; policy drop;
    oif "lo" accept
    meta mark {MARK:#x} accept
{tunnel_dns}    udp dport 53 drop
    tcp dport 53 drop
{tun_v6}    oifname "{tun}" accept
    udp sport 68 udp dport 67 accept
    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept
{lan_out}  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    iifname "{tun}" accept
    ct state established,related accept
    udp sport 67 udp dport 68 accept
    icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept
{lan_in}  }}
}}
"#
        )
    }

    /// Loads a [`Firewall::script`]: in one transaction, so no packet
    /// passes between the old rules and the new.
    pub fn load(&self, script: &str) -> Result<(), SysError> {
        run_with_input("nft", &["-f", "-"], Some(script)).map(drop)
    }

    /// Removes the table (nothing blocked any more); fine if it is not there.
    pub fn remove(&self) {
        if let Err(e) = run("nft", &["delete", "table", "inet", &self.table]) {
            tracing::debug!("firewall table {} already gone: {e}", self.table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(dns: &[IpAddr], ipv6: bool, allow_lan: bool) -> String {
        Firewall::default().script(&Rules {
            tun: "hopwire0",
            dns,
            ipv6,
            allow_lan,
        })
    }

    #[test]
    fn the_rules_drop_by_default_and_let_out_only_the_tunnel_and_marked_sockets() {
        let script = rules(&[], false, false);
        assert!(script.starts_with("add table inet hopwire\ndelete table inet hopwire\n"));
        assert_eq!(script.matches("policy drop;").count(), 2, "{script}");
        assert!(script.contains("oifname \"hopwire0\" accept"));
        assert!(script.contains("meta mark 0x68776972 accept"));
        assert!(!script.contains("policy accept"));
        assert!(!script.contains("192.168.0.0/16"), "no LAN unless allowed");
    }

    #[test]
    fn dns_goes_only_to_the_tunnel_resolvers_and_ipv6_only_when_carried() {
        let dns: Vec<IpAddr> = vec!["100.87.0.1".parse().expect("ip"), "fd00::1".parse().expect("ip")];
        let script = rules(&dns, false, true);
        let accept = script
            .find("ip daddr { 100.87.0.1 } udp dport 53 accept")
            .expect("the resolver");
        assert!(script.contains("ip6 daddr { fd00::1 } tcp dport 53 accept"));
        let drop = script.find("udp dport 53 drop").expect("other DNS dropped");
        let tun = script.find("oifname \"hopwire0\" accept").expect("tunnel");
        let lan = script.find("ip daddr { 10.0.0.0/8").expect("LAN allowed");
        assert!(
            accept < drop && drop < tun && drop < lan,
            "DNS is decided before the tunnel and the LAN"
        );
        assert!(script.contains("oifname \"hopwire0\" meta nfproto ipv6 drop"));
        assert!(!rules(&dns, true, true).contains("nfproto ipv6 drop"));
    }
}
