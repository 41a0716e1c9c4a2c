//! Inner addresses for client sessions on an exit.
//!
//! The exit's TUN subnet gives one address to the exit itself (the gateway,
//! the first host) and one to each session. Addresses of WireGuard peers
//! listed in the config are reserved up front; the rest are lent on demand
//! and returned when a session ends.
//!
//! An exit that carries IPv6 gives each session the twin of its IPv4
//! address in an IPv6 /96 ([`V6Twins`]): the IPv4 address is the low 32
//! bits. One pool then lends both, and a packet from the internet finds
//! its session by either address.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// An IPv6 /96 whose addresses are twins of the inner IPv4 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Twins {
    net: Ipv6Net,
}

/// The default: a ULA /96 (`fd68:7769:7200::/96`, "hwi" in the global id).
pub const DEFAULT_V6_TWINS: &str = "fd68:7769:7200::/96";

impl V6Twins {
    /// `None` unless `net` is a /96.
    pub fn new(net: Ipv6Net) -> Option<Self> {
        (net.prefix_len() == 96).then(|| Self { net: net.trunc() })
    }

    pub fn net(&self) -> Ipv6Net {
        self.net
    }

    /// The IPv6 twin of `v4`.
    pub fn twin(&self, v4: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.net.network()) | u128::from(u32::from(v4)))
    }

    /// The IPv4 address whose twin `v6` is, if it lies in this /96.
    pub fn v4_of(&self, v6: Ipv6Addr) -> Option<Ipv4Addr> {
        self.net.contains(&v6).then(|| Ipv4Addr::from(u128::from(v6) as u32))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error(
        "inner subnet {0} is too small: it needs room for the gateway and at least one client (use /30 or larger)"
    )]
    TooSmall(Ipv4Net),
    #[error("all {0} client addresses of the inner subnet are in use")]
    Exhausted(usize),
    #[error("address {addr} is not a client address of the inner subnet {net}")]
    OutOfRange { addr: Ipv4Addr, net: Ipv4Net },
    #[error("address {0} is already taken")]
    Taken(Ipv4Addr),
}

#[derive(Debug, Clone)]
pub struct AddressPool {
    net: Ipv4Net,
    taken: BTreeSet<Ipv4Addr>,
    /// Where the next search starts, so a freed address is not handed out
    /// again at once (a late packet of the old session must not reach the new).
    cursor: u32,
}

impl AddressPool {
    pub fn new(net: Ipv4Net) -> Result<Self, PoolError> {
        let net = net.trunc();
        if net.prefix_len() > 30 {
            return Err(PoolError::TooSmall(net));
        }
        Ok(Self {
            net,
            taken: BTreeSet::new(),
            cursor: 0,
        })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    /// The exit's own address in the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net.network()) + 1)
    }

    fn first_client(&self) -> u32 {
        u32::from(self.net.network()) + 2
    }

    fn last_client(&self) -> u32 {
        u32::from(self.net.broadcast()) - 1
    }

    fn capacity(&self) -> usize {
        (self.last_client() - self.first_client() + 1) as usize
    }

    pub fn in_use(&self) -> usize {
        self.taken.len()
    }

    /// Takes a specific address (a configured WireGuard peer's).
    pub fn reserve(&mut self, addr: Ipv4Addr) -> Result<(), PoolError> {
        let a = u32::from(addr);
        if a < self.first_client() || a > self.last_client() {
            return Err(PoolError::OutOfRange { addr, net: self.net });
        }
        if !self.taken.insert(addr) {
            return Err(PoolError::Taken(addr));
        }
        Ok(())
    }

    /// Lends the next free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, PoolError> {
        let capacity = self.capacity();
        if self.taken.len() >= capacity {
            return Err(PoolError::Exhausted(capacity));
        }
        for step in 0..capacity as u32 {
            let offset = (self.cursor + step) % capacity as u32;
            let addr = Ipv4Addr::from(self.first_client() + offset);
            if self.taken.insert(addr) {
                self.cursor = (offset + 1) % capacity as u32;
                return Ok(addr);
            }
        }
        Err(PoolError::Exhausted(capacity))
    }

    pub fn release(&mut self, addr: Ipv4Addr) {
        self.taken.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_embed_the_ipv4_address() {
        let twins = V6Twins::new(DEFAULT_V6_TWINS.parse().expect("net")).expect("a /96");
        let v4: std::net::Ipv4Addr = "100.87.0.5".parse().expect("v4");
        let v6 = twins.twin(v4);
        assert_eq!(v6.to_string(), "fd68:7769:7200::6457:5");
        assert_eq!(twins.v4_of(v6), Some(v4));
        assert_eq!(twins.v4_of("2001:2::10".parse().expect("v6")), None);
        assert!(V6Twins::new("fd00::/64".parse().expect("net")).is_none());
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test net")
    }

    #[test]
    fn hands_out_distinct_addresses_until_exhausted() {
        let mut pool = AddressPool::new(net("100.87.0.0/29")).expect("fits");
        assert_eq!(pool.gateway(), Ipv4Addr::new(100, 87, 0, 1));
        let got: Vec<_> = (0..5).map(|_| pool.allocate().expect("free")).collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(100, 87, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(100, 87, 0, 6)));
        assert_eq!(pool.allocate(), Err(PoolError::Exhausted(5)));
        pool.release(Ipv4Addr::new(100, 87, 0, 4));
        assert_eq!(pool.allocate(), Ok(Ipv4Addr::new(100, 87, 0, 4)));
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let mut pool = AddressPool::new(net("100.87.0.0/24")).expect("fits");
        let a = pool.allocate().expect("free");
        pool.release(a);
        assert_ne!(pool.allocate().expect("free"), a);
    }

    #[test]
    fn reservations_are_checked() {
        let mut pool = AddressPool::new(net("100.87.0.0/24")).expect("fits");
        pool.reserve(Ipv4Addr::new(100, 87, 0, 2)).expect("free");
        assert_eq!(
            pool.reserve(Ipv4Addr::new(100, 87, 0, 2)),
            Err(PoolError::Taken(Ipv4Addr::new(100, 87, 0, 2)))
        );
        assert!(matches!(
            pool.reserve(Ipv4Addr::new(100, 87, 0, 1)),
            Err(PoolError::OutOfRange { .. })
        ));
        assert!(matches!(
            pool.reserve(Ipv4Addr::new(100, 87, 0, 255)),
            Err(PoolError::OutOfRange { .. })
        ));
        assert_eq!(pool.allocate(), Ok(Ipv4Addr::new(100, 87, 0, 3)));
        assert!(AddressPool::new(net("100.87.0.0/31")).is_err());
    }
}
