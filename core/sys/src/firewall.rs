//! The client's firewall: one nftables table of its own (`inet`, so IPv4
//! and IPv6 alike) that lets out only what may leave while the tunnel is
//! wanted, and drops everything else.
//!
//! Let out: packets into the tunnel device, the daemon's own protected
//! sockets (they carry [`MARK`]: the link to the first hop, ledger calls,
//! DHT lookups made while the tunnel is down), loopback, and what keeps the
//! link up (DHCP, IPv6 neighbour discovery); in: the same, and replies to
//! what went out. The table belongs to no process: a daemon killed with
//! `kill -9` leaves it in place, so traffic stays blocked until a daemon
//! starts again and decides.
//!
//! What it does not do: decide when to block (the daemon does, per tunnel
//! state).

use crate::{run, run_with_input, SysError};

/// The packet mark of the daemon's protected sockets (`SO_MARK`).
pub const MARK: u32 = 0x6877_6972;

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

    /// The rules that block everything but the tunnel on `tun`.
    fn script(&self, tun: &str) -> String {
        let table = &self.table;
        format!(
            r#"add table inet {table}
delete table inet {table}
table inet {table} {{
  chain output {{
    type filter hook output priority filter; policy drop;
    oif "lo" accept
    oifname "{tun}" accept
    meta mark {MARK:#x} accept
    udp sport 68 udp dport 67 accept
    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    iifname "{tun}" accept
    ct state established,related accept
    udp sport 67 udp dport 68 accept
    icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept
  }}
}}
"#
        )
    }

    /// Blocks everything but the tunnel on `tun`, replacing whatever this
    /// table held in one transaction: no packet passes in between.
    pub fn block(&self, tun: &str) -> Result<(), SysError> {
        run_with_input("nft", &["-f", "-"], Some(&self.script(tun))).map(drop)
    }

    /// Removes the table (nothing blocked any more); fine if it is not there.
    pub fn remove(&self) {
        if let Err(e) = run("nft", &["delete", "table", "inet", &self.table]) {
            tracing::debug!("firewall table {} already gone: {e}", self.table);
        }
    }

    /// Whether the table is in place (left by a daemon that was killed).
    pub fn is_present(&self) -> bool {
        run("nft", &["list", "table", "inet", &self.table]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_drop_by_default_and_let_out_only_the_tunnel_and_marked_sockets() {
        let script = Firewall::default().script("hopwire0");
        assert!(script.starts_with("add table inet hopwire\ndelete table inet hopwire\n"));
        assert_eq!(script.matches("policy drop;").count(), 2, "{script}");
        assert!(script.contains("oifname \"hopwire0\" accept"));
        assert!(script.contains("meta mark 0x68776972 accept"));
        assert!(!script.contains("policy accept"));
    }
}
