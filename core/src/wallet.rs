//! The client's money: its ledger account (an ed25519 key kept beside the
//! daemon's state), the channels it opened to the hops of its circuits, and
//! what it signed to each, kept in sled so spending survives a restart.
//!
//! Each circuit opens one channel per charging hop, with a deposit of
//! `deposit_mib` MiB at that hop's price (at least two chunks). A channel's
//! receipts are signed by [`PayerChannel`]; the wallet only opens channels
//! and remembers them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::ledger::service::{LazyLedger, Signed};
use crate::ledger::Ledger;
use crate::pay::PayerChannel;
use crate::record::VerifiedRecord;

/// Bytes a client pays beyond what it counted itself: cells lost between a
/// hop and the client are counted by the hop only.
const TOLERANCE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error("wallet store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
}

/// One channel as `hopwire wallet` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub channel: String,
    /// The hop paid (short id).
    pub payee: String,
    pub price_per_gib: u64,
    pub deposit: u64,
    /// What the newest receipt signed to it says, in all.
    pub signed: u64,
    /// Bytes the client counted on that hop.
    pub bytes: u64,
    /// Unix seconds when it was opened.
    pub opened_at: u64,
    /// When its close takes effect (unix seconds), once the client started it.
    #[serde(default)]
    pub close_at: Option<u64>,
    /// The deposit's rest came back to the account.
    #[serde(default)]
    pub finalized: bool,
}

pub struct Wallet {
    key: SigningKey,
    ledger_addr: SocketAddr,
    ledger: LazyLedger,
    deposit_mib: u64,
    channels: sled::Tree,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("account", &crate::record::short_id(&self.account()))
            .field("ledger", &self.ledger_addr)
            .finish_non_exhaustive()
    }
}

/// The account key in `dir` (`wallet.key`), created on first use.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, WalletError> {
    let path = dir.join("wallet.key");
    if !path.exists() {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        crate::keys::write_key(&path, &secret, false)?;
    }
    Ok(SigningKey::from_bytes(&crate::keys::read_key(&path)?))
}

impl Wallet {
    /// Opens the wallet kept in `dir` (key and `wallet/` sled store).
    pub fn open(dir: &Path, ledger_addr: SocketAddr, deposit_mib: u64) -> Result<Self, WalletError> {
        let key = load_or_create_key(dir)?;
        let path = dir.join("wallet");
        let channels = sled::open(&path)
            .and_then(|db| db.open_tree("channels"))
            .map_err(|source| WalletError::Store { path, source })?;
        Ok(Self {
            key,
            ledger_addr,
            ledger: LazyLedger::new(ledger_addr),
            deposit_mib: deposit_mib.max(1),
            channels,
        })
    }

    /// The ledger account this wallet pays from.
    pub fn account(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// What the account holds outside channels.
    pub async fn balance(&self) -> Result<u64, String> {
        let account = self.account();
        self.ledger.call(move |l| l.balance(account)).await
    }

    /// Opens a channel to `hop` for one circuit on the ledger.
    pub async fn open_channel(&self, hop: &VerifiedRecord, session: [u8; 16]) -> Result<PayerChannel, String> {
        let quote = hop.record().quote;
        let deposit = quote
            .price_of(self.deposit_mib.saturating_mul(1 << 20))
            .map_err(|e| e.to_string())?
            .max(quote.price_of(2 * quote.chunk_bytes).map_err(|e| e.to_string())?);
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let payee = hop.record().identity;
        let key = self.key.clone();
        let open = Signed::Open { id, payee, deposit };
        let domain = self
            .ledger
            .call(move |l| l.authorized(&key, open).map(|_| l.domain().to_owned()))
            .await
            .map_err(|e| format!("opening a channel to {} on the ledger: {e}", hop.short_id()))?;
        let channel = PayerChannel::new(self.key.clone(), domain, id, session, deposit, quote, TOLERANCE_BYTES);
        self.remember(&channel, hop);
        Ok(channel)
    }

    /// Keeps what `channel` has signed so far (best effort: the ledger
    /// and the hop hold the receipts that matter).
    pub fn remember(&self, channel: &PayerChannel, hop: &VerifiedRecord) {
        let id = channel.channel();
        let opened_at = self.load(id).map_or_else(crate::node::unix_now, |r| r.opened_at);
        let record = ChannelRecord {
            channel: crate::record::short_id(&id),
            payee: hop.short_id(),
            price_per_gib: channel.quote().price_per_gib,
            deposit: channel.deposit(),
            signed: channel.signed_amount(),
            bytes: channel.measured(),
            opened_at,
            close_at: None,
            finalized: false,
        };
        self.store(id, &record);
    }

    fn load(&self, id: [u8; 32]) -> Option<ChannelRecord> {
        let bytes = self.channels.get(id).ok().flatten()?;
        postcard::from_bytes(&bytes).ok()
    }

    fn store(&self, id: [u8; 32], record: &ChannelRecord) {
        if let Ok(bytes) = postcard::to_stdvec(record) {
            let _ = self.channels.insert(id, bytes);
        }
    }

    /// Starts closing a circuit's channels: after the ledger's challenge
    /// period (in which the hops settle) the rest of each deposit can come
    /// back ([`Wallet::reclaim`]).
    pub async fn close(&self, channels: Vec<[u8; 32]>) {
        for id in channels {
            let key = self.key.clone();
            match self
                .ledger
                .call(move |l| l.authorized(&key, Signed::StartClose { id }))
                .await
            {
                Ok(state) => {
                    if let Some(mut r) = self.load(id) {
                        r.close_at = state.close_at;
                        self.store(id, &r);
                    }
                }
                Err(e) => tracing::warn!("closing channel {}: {e}", crate::record::short_id(&id)),
            }
        }
    }

    /// Brings back the rest of every deposit whose close has taken effect;
    /// returns how much came back.
    pub async fn reclaim(&self) -> u64 {
        let now = crate::node::unix_now();
        let due: Vec<([u8; 32], ChannelRecord)> = self
            .channels
            .iter()
            .filter_map(|kv| {
                let (k, v) = kv.ok()?;
                let record: ChannelRecord = postcard::from_bytes(&v).ok()?;
                let id = <[u8; 32]>::try_from(&k[..]).ok()?;
                (!record.finalized && record.close_at.is_some_and(|at| at <= now)).then_some((id, record))
            })
            .collect();
        let mut back = 0;
        for (id, mut record) in due {
            if let Ok(amount) = self.ledger.call(move |l| l.finalize(id, now)).await {
                back += amount;
                record.finalized = true;
                self.store(id, &record);
            }
        }
        back
    }

    /// Every channel this wallet opened, oldest first.
    pub fn channels(&self) -> Vec<ChannelRecord> {
        let mut all: Vec<ChannelRecord> = self
            .channels
            .iter()
            .values()
            .filter_map(|v| postcard::from_bytes(&v.ok()?).ok())
            .collect();
        all.sort_by_key(|c| c.opened_at);
        all
    }
}
