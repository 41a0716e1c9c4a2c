//! The client's money: its ledger account (a key kept beside the daemon's
//! state), the channels it opened to hops, and what it signed to each, kept
//! in sled so spending survives a restart.
//!
//! On the embedded ledger the account is an ed25519 key (`wallet.key`) that
//! also signs every receipt. On a chain it is a secp256k1 key
//! (`wallet-evm.key`) whose address funds channels and pays their gas;
//! each channel's receipts are signed by a key of its own, derived from
//! that one and the channel's id (so nothing need be stored for it, and
//! receipts of two channels share no key).
//!
//! One channel per hop, reused by every circuit through that hop: a
//! circuit pays through it as a new session, on top of what earlier
//! sessions signed. A new channel is opened with a deposit of
//! `deposit_mib` MiB at the hop's price (at least two chunks) when the hop
//! has none with room for two more chunks. While a circuit pays through a
//! channel, it is topped up once half a deposit or less is left, by as
//! much as it holds (so a long or fast session keeps its circuit and
//! needs few top-ups). A channel is closed (its deposit comes back after
//! the ledger's challenge period) once it is spent, after a day unused, or
//! when the user asks (`hopwire wallet --close`).
//! Receipts are signed by [`PayerChannel`]; the wallet opens channels,
//! lends them to circuits and remembers them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ed25519_dalek::SigningKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use hopwire_api::{ChannelInfo, ErrorKind, SessionInfo};
use hopwire_net::ledger::{LazyLedger, LedgerAccess, LedgerAddr, LedgerError};
use hopwire_net::protect::Protect;
use hopwire_proto::pay::{PayerChannel, PayerKey};
use hopwire_proto::record::{hex, VerifiedRecord};

/// Bytes a client pays beyond what it counted itself, at the least (1/64
/// of what it counted once that is more): cells lost between a hop and the
/// client are counted by the hop only.
const TOLERANCE_BYTES: u64 = 1 << 20;

/// A top-up adds at most this many deposits' worth.
const MAX_TOP_UP: u64 = 16;

/// A channel unused this long is closed, so its deposit comes back.
const IDLE_CLOSE_S: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error(transparent)]
    Key(#[from] hopwire_net::keys::KeyError),
    #[error("wallet store {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("{action}: {source}")]
    Ledger {
        action: String,
        #[source]
        source: LedgerError,
    },
    #[error("pricing a deposit for {node}: {source}")]
    Price {
        node: String,
        #[source]
        source: hopwire_proto::pay::PayError,
    },
}

impl WalletError {
    /// What a program should make of it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WalletError::Key(_) | WalletError::Store { .. } => ErrorKind::Internal,
            WalletError::Ledger {
                source: LedgerError::Unreachable(_),
                ..
            } => ErrorKind::LedgerUnreachable,
            WalletError::Ledger { .. } | WalletError::Price { .. } => ErrorKind::Funds,
        }
    }
}

/// One channel as the wallet keeps it (a sled value; the API shows it as
/// [`ChannelInfo`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub channel: String,
    /// The hop paid (short id).
    pub payee: String,
    /// Its identity key (hex).
    pub payee_key: String,
    pub price_per_gib: u64,
    pub chunk_bytes: u64,
    pub deposit: u64,
    /// What the newest receipt signed to it says, in all.
    pub signed: u64,
    /// Bytes the client counted on that hop, over every session.
    pub bytes: u64,
    /// Circuits that paid through it.
    pub sessions: u64,
    /// The newest receipt's sequence number and bytes (a new session goes
    /// on from them).
    pub seq: u64,
    pub receipt_bytes: u64,
    pub domain: String,
    /// Unix seconds when it was opened, and last used.
    pub opened_at: u64,
    pub used_at: u64,
    /// When its close takes effect (unix seconds), once the client started it.
    pub close_at: Option<u64>,
    /// The deposit's rest came back to the account.
    pub finalized: bool,
}

impl ChannelRecord {
    fn open(&self) -> bool {
        self.close_at.is_none() && !self.finalized
    }

    /// Whether the deposit has room for two more chunks at `quote`: a
    /// session's prepayment and one chunk of use.
    fn has_room(&self, quote: &hopwire_proto::pay::Quote) -> bool {
        quote
            .price_of(2 * quote.chunk_bytes)
            .is_ok_and(|room| self.deposit.saturating_sub(self.signed) >= room)
    }

    fn quote(&self) -> hopwire_proto::pay::Quote {
        hopwire_proto::pay::Quote {
            price_per_gib: self.price_per_gib,
            chunk_bytes: self.chunk_bytes,
            grace_bytes: 0,
        }
    }
}

/// One connect session (connect to disconnect, across its circuits): what
/// it paid each hop, as the hops confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Unix seconds.
    pub started_at: u64,
    pub ended_at: u64,
    pub spent: u64,
    /// Hop (short id) → paid.
    pub hops: std::collections::BTreeMap<String, u64>,
}

pub struct Wallet {
    key: AccountKey,
    ledger: LazyLedger,
    deposit_mib: u64,
    channels: sled::Tree,
    /// Connect sessions by when they ended (big-endian unix seconds, then
    /// a counter): what each spent.
    sessions: sled::Tree,
    /// Channels a circuit pays through now, with the bytes counted on
    /// them before it.
    lent: Mutex<HashMap<[u8; 32], u64>>,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wallet")
            .field("account", &hopwire_proto::record::short_id(&self.account()))
            .field("ledger", &self.ledger.addr().to_string())
            .finish_non_exhaustive()
    }
}

/// The embedded ledger's account key in `dir` (`wallet.key`), created on
/// first use.
pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, WalletError> {
    let path = dir.join("wallet.key");
    if !path.exists() {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        hopwire_net::keys::write_key(&path, &secret, false)?;
    }
    Ok(SigningKey::from_bytes(&hopwire_net::keys::read_key(&path)?))
}

/// A chain account's key in `dir` (`wallet-evm.key`), created on first use.
pub fn load_or_create_evm_key(dir: &Path) -> Result<hopwire_net::ledger::evm::Signer, WalletError> {
    Ok(hopwire_net::keys::load_or_create_evm_key(&dir.join("wallet-evm.key"))?)
}

/// The key a wallet's account is, by the kind of ledger.
#[derive(Clone)]
enum AccountKey {
    Ed25519(SigningKey),
    Evm(hopwire_net::ledger::evm::Signer),
}

impl AccountKey {
    /// The account key in `dir` for the kind of ledger at `ledger`.
    fn load(dir: &Path, ledger: &LedgerAddr) -> Result<Self, WalletError> {
        Ok(match ledger {
            LedgerAddr::Service(_) => AccountKey::Ed25519(load_or_create_key(dir)?),
            LedgerAddr::Evm(_) => AccountKey::Evm(load_or_create_evm_key(dir)?),
        })
    }

    /// What a ledger handle acts with for this account.
    fn access(&self) -> LedgerAccess {
        match self {
            AccountKey::Ed25519(key) => LedgerAccess {
                ed25519: Some(key.clone()),
                ..LedgerAccess::default()
            },
            AccountKey::Evm(key) => LedgerAccess {
                evm: Some(key.clone()),
                ..LedgerAccess::default()
            },
        }
    }

    fn account(&self) -> [u8; 32] {
        match self {
            AccountKey::Ed25519(key) => key.verifying_key().to_bytes(),
            AccountKey::Evm(key) => hopwire_proto::pay::scheme::address_word(key.address()),
        }
    }

    /// The key that signs channel `id`'s receipts: the account key on the
    /// embedded ledger; on a chain, one derived from the account key and
    /// the channel (HKDF-SHA256), so channels share no receipt key.
    fn receipt_key(&self, id: [u8; 32]) -> PayerKey {
        match self {
            AccountKey::Ed25519(key) => PayerKey::from(key.clone()),
            AccountKey::Evm(key) => {
                let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"hopwire evm receipt key v1"), &key.to_bytes()[..]);
                // A 32-byte string is a valid secp256k1 key unless it is 0
                // or past the group order (odds about 2^-128): try the next.
                (0u8..=255)
                    .find_map(|n| {
                        let mut secret = [0u8; 32];
                        hk.expand_multi_info(&[&id[..], &[n]], &mut secret).ok()?;
                        k256::ecdsa::SigningKey::from_slice(&secret).ok()
                    })
                    .map(PayerKey::from)
                    .unwrap_or_else(|| unreachable!("256 derivations cannot all be invalid keys"))
            }
        }
    }
}

/// Channel `id`'s record in `channels`.
fn load_record(channels: &sled::Tree, id: [u8; 32]) -> Option<ChannelRecord> {
    let bytes = channels.get(id).ok().flatten()?;
    postcard::from_bytes(&bytes).ok()
}

fn store_record(channels: &sled::Tree, id: [u8; 32], record: &ChannelRecord) {
    if let Ok(bytes) = postcard::to_stdvec(record) {
        // Not flushed each time (sled does within half a second): a
        // receipt lost in a crash only makes the hop refuse to resume, and
        // a new channel is opened.
        let _ = channels.insert(id, bytes);
    }
}

/// Keeps channel `id`'s deposit as `deposit` in its record, unless the
/// record already says more (a deposit never shrinks).
fn raise_deposit(channels: &sled::Tree, id: [u8; 32], deposit: u64) {
    if let Some(mut r) = load_record(channels, id) {
        r.deposit = r.deposit.max(deposit);
        store_record(channels, id, &r);
    }
}

impl Wallet {
    /// Opens the wallet kept in `dir` (key and `wallet/` sled store) for
    /// the ledger at `ledger`. Every connection to the ledger passes
    /// through `protect` first.
    pub fn open(dir: &Path, ledger: LedgerAddr, deposit_mib: u64, protect: Protect) -> Result<Self, WalletError> {
        let key = AccountKey::load(dir, &ledger)?;
        let ledger = LazyLedger::new(ledger, key.access(), Some(protect));
        let path = dir.join("wallet");
        let (channels, sessions) = hopwire_net::store::open_db(&path)
            .and_then(|db| Ok((db.open_tree("channels")?, db.open_tree("sessions")?)))
            .map_err(|source| WalletError::Store { path, source })?;
        Ok(Self {
            key,
            ledger,
            deposit_mib: deposit_mib.max(1),
            channels,
            sessions,
            lent: Mutex::default(),
        })
    }

    /// The ledger account this wallet pays from.
    pub fn account(&self) -> [u8; 32] {
        self.key.account()
    }

    /// The account as a user funds it: an address (`0x…`) on a chain, the
    /// public key in hex on the embedded ledger.
    pub fn account_text(&self) -> String {
        match &self.key {
            AccountKey::Ed25519(_) => hex(&self.account()),
            AccountKey::Evm(key) => key.address().to_checksum(None),
        }
    }

    /// The domain of its ledger (asks the ledger the first time): hops
    /// must be paid on it.
    pub async fn domain(&self) -> Result<String, WalletError> {
        self.ledger.domain().await.map_err(|source| WalletError::Ledger {
            action: "asking the ledger its domain".into(),
            source,
        })
    }

    /// What the account holds outside channels.
    pub async fn balance(&self) -> Result<u64, WalletError> {
        let account = self.account();
        self.ledger
            .call(move |l| l.balance(account))
            .await
            .map_err(|source| WalletError::Ledger {
                action: "asking the ledger for the balance".into(),
                source,
            })
    }

    /// A channel for a circuit's session with `hop`: the hop's channel if
    /// it has one open, unused by another circuit, with room for two more
    /// chunks at its price; else a new one opened on the ledger.
    pub async fn channel_for(&self, hop: &VerifiedRecord, session: [u8; 16]) -> Result<PayerChannel, WalletError> {
        let quote = hop.record().quote;
        let payee_key = hex(&hop.record().identity);
        let reusable = {
            let lent = hopwire_proto::sync::lock(&self.lent);
            self.records()
                .into_iter()
                .find(|(id, r)| r.open() && r.payee_key == payee_key && !lent.contains_key(id) && r.has_room(&quote))
        };
        if let Some((id, r)) = reusable {
            hopwire_proto::sync::lock(&self.lent).insert(id, r.bytes);
            let channel = PayerChannel::new(
                self.key.receipt_key(id),
                r.domain,
                id,
                session,
                r.deposit,
                quote,
                TOLERANCE_BYTES,
            )
            .resume(r.seq, r.signed, r.receipt_bytes);
            return Ok(channel);
        }
        self.open_channel(hop, session).await
    }

    /// What a channel to `hop` is funded with: `deposit_mib` MiB at its
    /// price, and at least two chunks.
    fn deposit_for(&self, hop: &VerifiedRecord) -> Result<u64, WalletError> {
        let quote = hop.record().quote;
        let price = |source| WalletError::Price {
            node: hop.short_id(),
            source,
        };
        Ok(quote
            .price_of(self.deposit_mib.saturating_mul(1 << 20))
            .map_err(price)?
            .max(quote.price_of(2 * quote.chunk_bytes).map_err(price)?))
    }

    /// Opens a new channel to `hop` on the ledger, for a circuit.
    pub async fn open_channel(&self, hop: &VerifiedRecord, session: [u8; 16]) -> Result<PayerChannel, WalletError> {
        let quote = hop.record().quote;
        let deposit = self.deposit_for(hop)?;
        let mut id = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let payee = hop.record().payout;
        let key = self.key.receipt_key(id);
        let payer = key.account();
        let domain = self
            .ledger
            .call(move |l| l.open(id, payer, payee, deposit).map(|_| l.domain().to_owned()))
            .await
            .map_err(|source| WalletError::Ledger {
                action: format!("opening a channel to {} on the ledger", hop.short_id()),
                source,
            })?;
        let channel = PayerChannel::new(key, domain, id, session, deposit, quote, TOLERANCE_BYTES);
        hopwire_proto::sync::lock(&self.lent).insert(id, 0);
        self.remember(&channel, hop);
        Ok(channel)
    }

    /// Whether a circuit paying through `channel` to `hop` should top it
    /// up now: at most half a deposit is left, so the top-up has the time
    /// that half takes to carry before the deposit runs out.
    pub fn wants_top_up(&self, channel: &PayerChannel, hop: &VerifiedRecord) -> bool {
        self.deposit_for(hop).is_ok_and(|deposit| channel.left() <= deposit / 2)
    }

    /// Tops channel `id` to `hop`, whose deposit is `deposit`, up on the
    /// ledger while a circuit pays through it, so the circuit goes on
    /// instead of ending when the deposit is spent; the deposit in all. It
    /// adds as much as the channel holds (at least a deposit's worth, at
    /// most [`MAX_TOP_UP`] of them), so a long fast session needs few
    /// top-ups and each one comes earlier; if the account cannot afford
    /// that, a deposit's worth.
    pub async fn top_up(&self, hop: &VerifiedRecord, id: [u8; 32], deposit: u64) -> Result<u64, WalletError> {
        let base = self.deposit_for(hop)?;
        let doubled = deposit.clamp(base, base.saturating_mul(MAX_TOP_UP));
        let top_up = |amount: u64| async move {
            let channels = self.channels.clone();
            self.ledger
                .call(move |l| {
                    let state = l.top_up(id, amount)?;
                    // Kept as the ledger answers, even if the circuit that
                    // asked has ended meanwhile.
                    raise_deposit(&channels, id, state.deposit);
                    Ok(state)
                })
                .await
                .map_err(|source| WalletError::Ledger {
                    action: format!("topping up the channel to {} on the ledger", hop.short_id()),
                    source,
                })
        };
        let (amount, state) = match top_up(doubled).await {
            Ok(state) => (doubled, state),
            Err(_) if doubled > base => (base, top_up(base).await?),
            Err(e) => return Err(e),
        };
        tracing::info!(
            hop = %hop.short_id(),
            channel = %hopwire_proto::record::short_id(&id),
            amount,
            deposit = state.deposit,
            "topped up a channel"
        );
        Ok(state.deposit)
    }

    /// Keeps what `channel` has signed so far; called before a receipt is
    /// sent, so a later session goes on past it.
    pub fn remember(&self, channel: &PayerChannel, hop: &VerifiedRecord) {
        let id = channel.channel();
        let now = hopwire_proto::time::unix_now();
        let before = hopwire_proto::sync::lock(&self.lent).get(&id).copied().unwrap_or(0);
        let old = self.load(id);
        let record = ChannelRecord {
            channel: hopwire_proto::record::short_id(&id),
            payee: hop.short_id(),
            payee_key: hex(&hop.record().identity),
            price_per_gib: channel.quote().price_per_gib,
            chunk_bytes: channel.quote().chunk_bytes,
            // A top-up may have landed before the circuit heard of it.
            deposit: channel.deposit().max(old.as_ref().map_or(0, |r| r.deposit)),
            signed: channel.signed_amount(),
            bytes: before + channel.measured(),
            sessions: old.as_ref().map_or(0, |r| r.sessions),
            seq: channel.seq(),
            receipt_bytes: channel.receipt_bytes(),
            domain: channel.domain().to_owned(),
            opened_at: old.as_ref().map_or(now, |r| r.opened_at),
            used_at: now,
            close_at: None,
            finalized: false,
        };
        self.store(id, &record);
    }

    /// A circuit is over: its channels are free for the next one. Those
    /// without room for another session, and any unused for a day, start
    /// closing.
    pub async fn release(&self, ids: Vec<[u8; 32]>) {
        {
            let mut lent = hopwire_proto::sync::lock(&self.lent);
            for id in &ids {
                lent.remove(id);
            }
        }
        for id in ids {
            if let Some(mut r) = self.load(id) {
                r.sessions += 1;
                self.store(id, &r);
            }
        }
        let now = hopwire_proto::time::unix_now();
        let done: Vec<[u8; 32]> = self
            .idle()
            .into_iter()
            .filter(|(_, r)| !r.has_room(&r.quote()) || now.saturating_sub(r.used_at) >= IDLE_CLOSE_S)
            .map(|(id, _)| id)
            .collect();
        self.close(done).await;
    }

    /// A channel the hop would not take (it lost or never saw the newest
    /// receipt): closed, and the circuit opens another.
    pub async fn retire(&self, id: [u8; 32]) {
        hopwire_proto::sync::lock(&self.lent).remove(&id);
        self.close(vec![id]).await;
    }

    /// Starts closing every channel no circuit uses; how many.
    pub async fn close_idle(&self) -> usize {
        let ids: Vec<[u8; 32]> = self.idle().into_iter().map(|(id, _)| id).collect();
        let n = ids.len();
        self.close(ids).await;
        n
    }

    /// Open channels no circuit uses.
    fn idle(&self) -> Vec<([u8; 32], ChannelRecord)> {
        let lent = hopwire_proto::sync::lock(&self.lent);
        self.records()
            .into_iter()
            .filter(|(id, r)| r.open() && !lent.contains_key(id))
            .collect()
    }

    fn records(&self) -> Vec<([u8; 32], ChannelRecord)> {
        self.channels
            .iter()
            .filter_map(|kv| {
                let (k, v) = kv.ok()?;
                Some((<[u8; 32]>::try_from(&k[..]).ok()?, postcard::from_bytes(&v).ok()?))
            })
            .collect()
    }

    fn load(&self, id: [u8; 32]) -> Option<ChannelRecord> {
        load_record(&self.channels, id)
    }

    fn store(&self, id: [u8; 32], record: &ChannelRecord) {
        store_record(&self.channels, id, record);
    }

    /// Starts closing channels: after the ledger's challenge period (in
    /// which the hops settle) the rest of each deposit can come back
    /// ([`Wallet::reclaim`]).
    async fn close(&self, channels: Vec<[u8; 32]>) {
        for id in channels {
            let now = hopwire_proto::time::unix_now();
            match self.ledger.call(move |l| l.start_close(id, now)).await {
                Ok(state) => {
                    if let Some(mut r) = self.load(id) {
                        r.close_at = state.close_at;
                        self.store(id, &r);
                    }
                }
                Err(e) => tracing::warn!("closing channel {}: {e}", hopwire_proto::record::short_id(&id)),
            }
        }
    }

    /// Brings back the rest of every deposit whose close has taken effect;
    /// returns how much came back.
    pub async fn reclaim(&self) -> u64 {
        let now = hopwire_proto::time::unix_now();
        let due: Vec<([u8; 32], ChannelRecord)> = self
            .records()
            .into_iter()
            .filter(|(_, r)| !r.finalized && r.close_at.is_some_and(|at| at <= now))
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

    /// Keeps what a connect session spent.
    pub fn record_session(&self, session: SessionRecord) {
        let mut key = session.ended_at.to_be_bytes().to_vec();
        key.extend_from_slice(&self.sessions.len().to_be_bytes());
        if let Ok(bytes) = postcard::to_stdvec(&session) {
            let _ = self.sessions.insert(key, bytes);
        }
    }

    /// The last `n` connect sessions, newest first.
    pub fn sessions(&self, n: usize) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .rev()
            .filter_map(|kv| postcard::from_bytes::<SessionRecord>(&kv.ok()?.1).ok())
            .take(n)
            .map(|s| SessionInfo {
                started_at: s.started_at,
                ended_at: s.ended_at,
                spent: s.spent,
                hops: s.hops,
            })
            .collect()
    }

    /// Every channel this wallet opened, oldest first.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut all: Vec<ChannelRecord> = self.records().into_iter().map(|(_, r)| r).collect();
        all.sort_by_key(|c| c.opened_at);
        all.into_iter()
            .map(|c| ChannelInfo {
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
            })
            .collect()
    }
}
