//! Naming a ledger and reaching it: [`LedgerAddr`] (what configs and flags
//! hold), [`LedgerAccess`] (the keys a handle acts with), and
//! [`LazyLedger`] (connected on first use; each call on a blocking thread).

use std::net::SocketAddr;
use std::sync::Arc;

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;

use super::evm::{EvmAddr, EvmLedger};
use super::service::RemoteLedger;
use super::{Ledger, LedgerError};
use crate::protect::Protect;

/// Where a ledger is: an embedded ledger's service (`<ip>:<port>`) or an
/// EVM chain's contract (`eip155:<chain id>:<contract>@http://<ip>:<port>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerAddr {
    Service(SocketAddr),
    Evm(EvmAddr),
}

impl LedgerAddr {
    /// Where its connections go (what a client lets around its tunnel).
    pub fn socket(&self) -> SocketAddr {
        match self {
            LedgerAddr::Service(addr) => *addr,
            LedgerAddr::Evm(evm) => evm.rpc,
        }
    }

    /// The domain its receipts carry, when the address says it: a chain's
    /// does; an embedded ledger's service must be asked.
    pub fn stated_domain(&self) -> Option<String> {
        match self {
            LedgerAddr::Service(_) => None,
            LedgerAddr::Evm(evm) => Some(evm.domain()),
        }
    }

    /// Connects, acting with `access`; every connection passes through
    /// `protect` first.
    pub fn connect(&self, access: &LedgerAccess, protect: Option<Protect>) -> Result<Arc<dyn Ledger>, LedgerError> {
        Ok(match self {
            LedgerAddr::Service(addr) => {
                let remote = RemoteLedger::connect_protected(*addr, protect)?;
                Arc::new(match &access.ed25519 {
                    Some(key) => remote.with_key(key.clone()),
                    None => remote,
                })
            }
            LedgerAddr::Evm(addr) => {
                let ledger = EvmLedger::connect(*addr, access.evm.clone(), protect)?;
                Arc::new(match access.unit_value_wei {
                    Some(wei) => ledger.with_unit_value_wei(wei),
                    None => ledger,
                })
            }
        })
    }
}

impl std::fmt::Display for LedgerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerAddr::Service(addr) => addr.fmt(f),
            LedgerAddr::Evm(evm) => evm.fmt(f),
        }
    }
}

impl std::str::FromStr for LedgerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("eip155:") {
            return s.parse().map(LedgerAddr::Evm);
        }
        s.parse().map(LedgerAddr::Service).map_err(|_| {
            format!("`{s}` is not a ledger: an embedded ledger's service is `<ip>:<port>`, an EVM ledger `eip155:<chain id>:<contract>@http://<ip>:<port>`")
        })
    }
}

impl serde::Serialize for LedgerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LedgerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a ledger handle acts with: the key for its kind of ledger (none:
/// reads and settlement only).
#[derive(Clone, Default)]
pub struct LedgerAccess {
    /// Signs operations on an embedded ledger's service.
    pub ed25519: Option<ed25519_dalek::SigningKey>,
    /// Sends (and pays the gas of) transactions on a chain.
    pub evm: Option<PrivateKeySigner>,
    /// What one unit of an ERC-20 ledger is worth in wei of the chain's
    /// coin, to price gas in units.
    pub unit_value_wei: Option<U256>,
}

impl std::fmt::Debug for LedgerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerAccess")
            .field("ed25519", &self.ed25519.is_some())
            .field("evm", &self.evm.as_ref().map(PrivateKeySigner::address))
            .field("unit_value_wei", &self.unit_value_wei)
            .finish()
    }
}

/// A ledger for async code: connected on first use (a failed connect is
/// tried again by the next call), each call run on a blocking thread.
pub struct LazyLedger {
    addr: LedgerAddr,
    access: LedgerAccess,
    protect: Option<Protect>,
    connected: tokio::sync::OnceCell<Arc<dyn Ledger>>,
}

impl std::fmt::Debug for LazyLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyLedger")
            .field("addr", &self.addr.to_string())
            .finish_non_exhaustive()
    }
}

impl LazyLedger {
    /// A ledger reached at `addr`, acting with `access`; with `protect`,
    /// every connection passes through it first (so it bypasses the
    /// client's tunnel).
    pub fn new(addr: LedgerAddr, access: LedgerAccess, protect: Option<Protect>) -> Self {
        Self {
            addr,
            access,
            protect,
            connected: tokio::sync::OnceCell::new(),
        }
    }

    pub fn addr(&self) -> LedgerAddr {
        self.addr
    }

    /// The connected ledger, if a call connected it.
    pub fn connected(&self) -> Option<Arc<dyn Ledger>> {
        self.connected.get().cloned()
    }

    /// The domain its receipts carry: from the address if it says it, else
    /// from the ledger (connecting first if need be; then it is kept).
    pub async fn domain(&self) -> Result<String, LedgerError> {
        match self.addr.stated_domain() {
            Some(domain) => Ok(domain),
            None => self.call(|l| Ok(l.domain().to_owned())).await,
        }
    }

    /// Runs `f` on the ledger (connecting first if need be).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let ledger = self
            .connected
            .get_or_try_init(|| {
                let (addr, access, protect) = (self.addr, self.access.clone(), self.protect.clone());
                blocking(move || addr.connect(&access, protect))
            })
            .await?
            .clone();
        blocking(move || f(ledger.as_ref())).await
    }
}

/// Runs a blocking call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LedgerError::Unreachable(format!("the ledger call did not finish: {e}")))?
}
