//! Inner addresses for client sessions on an exit.
//!
//! The exit's TUN subnet gives one address to the exit itself (the gateway,
//! the first host) and one to each session. Addresses of WireGuard peers
//! listed in the config are reserved up front; the rest are lent on demand
//! and returned when a session ends.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

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
