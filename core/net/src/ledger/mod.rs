//! Settlement: the [`Ledger`] trait, an embedded ledger on sled for single
//! machines and testnets, ([`service`]) that ledger served over TCP to
//! every node and client of a testnet, and ([`evm`]) a payment-channel
//! contract on an EVM chain. [`LedgerAddr`] names either kind; a
//! [`LazyLedger`] connects to it on first use, for async code.
//!
//! A ledger knows every account's balance and each channel's payer, payee,
//! deposit, what was settled, and when a close takes effect. Opening or
//! topping up a channel moves the deposit out of the payer's balance;
//! settling moves receipts' amounts into the payee's; finalizing returns
//! the rest to the payer. Settling with a receipt pays the payee
//! `cumulative − already settled`; a close waits out a challenge period in
//! which the payee can still settle the latest receipt. The trait is what
//! an existing chain would implement: the channel code only ever calls it.
//! Time is passed in (unix seconds), so the rules are testable.

use std::path::Path;

use serde::{Deserialize, Serialize};

use hopwire_proto::pay::{PayError, SignedReceipt};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("no channel {0}")]
    NoChannel(String),
    #[error("channel {0} already exists")]
    Exists(String),
    #[error("channel {0} is closed")]
    Closed(String),
    #[error("channel {0} cannot be finalized before {close_at} (unix time)", close_at = .1)]
    ChallengePeriod(String, u64),
    #[error("receipt refused: {0}")]
    Receipt(#[from] PayError),
    #[error("amount overflows")]
    Overflow,
    #[error("ledger storage: {0}")]
    Storage(String),
    #[error("balance {balance} is less than the {needed} asked for")]
    InsufficientFunds { balance: u64, needed: u64 },
    #[error("ledger unreachable: {0}")]
    Unreachable(String),
    #[error("ledger refused: {0}")]
    Refused(String),
}

/// What a ledger knows about one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub id: [u8; 32],
    /// The account that signs the channel's receipts (on the embedded
    /// ledger also the one that funded it; on a chain, the key the funder
    /// named at open).
    pub payer: [u8; 32],
    pub payee: [u8; 32],
    pub deposit: u64,
    pub settled: u64,
    /// When a started close takes effect (unix seconds).
    pub close_at: Option<u64>,
    pub finalized: bool,
}

pub mod addr;
pub mod evm;
pub mod service;

pub use addr::{LazyLedger, LedgerAccess, LedgerAddr};

/// What settling one receipt would cost, before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fee {
    /// In the ledger's units; `None` if the ledger cannot say what its
    /// gas is worth in them.
    pub units: Option<u64>,
    /// Gas, and its price in wei of the chain's coin (0 off chain).
    pub gas: u64,
    pub price_wei: u128,
}

impl Fee {
    /// A ledger that charges nothing to settle.
    pub const FREE: Fee = Fee {
        units: Some(0),
        gas: 0,
        price_wei: 0,
    };
}

/// What a handle's own transactions have cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeesPaid {
    pub transactions: u64,
    pub gas: u64,
    pub fee_wei: u128,
}

/// A settlement layer: [`EmbeddedLedger`], [`service::RemoteLedger`],
/// [`evm::EvmLedger`]. Calls block; async code goes through [`LazyLedger`].
/// Operations that move money act as the handle's own account (its key).
pub trait Ledger: Send + Sync {
    /// The domain receipts for this ledger carry.
    fn domain(&self) -> &str;
    /// What an account holds outside channels.
    fn balance(&self, account: [u8; 32]) -> Result<u64, LedgerError>;
    /// Opens channel `id` to `payee` with `deposit`; `payer` signs its receipts.
    fn open(&self, id: [u8; 32], payer: [u8; 32], payee: [u8; 32], deposit: u64) -> Result<ChannelState, LedgerError>;
    fn top_up(&self, id: [u8; 32], amount: u64) -> Result<ChannelState, LedgerError>;
    fn state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError>;
    /// Pays the payee what `receipt` adds to what was settled; returns the amount paid.
    fn settle(&self, receipt: &SignedReceipt, now: u64) -> Result<u64, LedgerError>;
    /// Starts closing: the payee has `challenge` seconds to settle.
    fn start_close(&self, id: [u8; 32], now: u64) -> Result<ChannelState, LedgerError>;
    /// Ends the channel after the challenge period; returns what goes back to the payer.
    fn finalize(&self, id: [u8; 32], now: u64) -> Result<u64, LedgerError>;
    /// What settling `receipt` would cost (a chain's transaction fee);
    /// shown to operators before they settle.
    fn settle_fee(&self, _receipt: &SignedReceipt) -> Result<Fee, LedgerError> {
        Ok(Fee::FREE)
    }
    /// What this handle's own transactions cost so far.
    fn fees_paid(&self) -> FeesPaid {
        FeesPaid::default()
    }
}

fn name(id: &[u8; 32]) -> String {
    hopwire_proto::record::short_id(id)
}

/// A ledger in a sled tree: one process, many channels, durable.
#[derive(Debug, Clone)]
pub struct EmbeddedLedger {
    domain: String,
    channels: sled::Tree,
    balances: sled::Tree,
    challenge: u64,
    /// One operation at a time: each reads, checks and writes two trees.
    lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl EmbeddedLedger {
    pub fn open_at(path: &Path, domain: &str, challenge: u64) -> Result<Self, LedgerError> {
        let db = crate::store::open_db(path).map_err(|e| LedgerError::Storage(format!("{}: {e}", path.display())))?;
        Self::with_db(&db, domain, challenge)
    }

    pub fn with_db(db: &sled::Db, domain: &str, challenge: u64) -> Result<Self, LedgerError> {
        let tree = |name: &str| db.open_tree(name).map_err(|e| LedgerError::Storage(e.to_string()));
        Ok(Self {
            domain: domain.to_owned(),
            channels: tree("channels")?,
            balances: tree("balances")?,
            challenge,
            lock: Default::default(),
        })
    }

    /// Credits an account from nowhere: how a testnet funds its clients.
    pub fn fund(&self, account: [u8; 32], amount: u64) -> Result<u64, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        self.credit(account, amount)
    }

    fn credit(&self, account: [u8; 32], amount: u64) -> Result<u64, LedgerError> {
        let balance = self
            .read_balance(account)?
            .checked_add(amount)
            .ok_or(LedgerError::Overflow)?;
        self.write_balance(account, balance)?;
        Ok(balance)
    }

    fn debit(&self, account: [u8; 32], amount: u64) -> Result<u64, LedgerError> {
        let balance = self.read_balance(account)?;
        let rest = balance.checked_sub(amount).ok_or(LedgerError::InsufficientFunds {
            balance,
            needed: amount,
        })?;
        self.write_balance(account, rest)?;
        Ok(rest)
    }

    fn read_balance(&self, account: [u8; 32]) -> Result<u64, LedgerError> {
        let bytes = self
            .balances
            .get(account)
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        Ok(bytes
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    fn write_balance(&self, account: [u8; 32], amount: u64) -> Result<(), LedgerError> {
        self.balances
            .insert(account, &amount.to_be_bytes())
            .and_then(|_| self.balances.flush())
            .map(drop)
            .map_err(|e| LedgerError::Storage(e.to_string()))
    }

    fn load(&self, id: &[u8; 32]) -> Result<ChannelState, LedgerError> {
        let bytes = self
            .channels
            .get(id)
            .map_err(|e| LedgerError::Storage(e.to_string()))?
            .ok_or_else(|| LedgerError::NoChannel(name(id)))?;
        postcard::from_bytes(&bytes).map_err(|e| LedgerError::Storage(e.to_string()))
    }

    /// Writes and flushes: a state is only reported once it is on disk.
    fn store(&self, state: &ChannelState) -> Result<(), LedgerError> {
        let bytes = postcard::to_stdvec(state).map_err(|e| LedgerError::Storage(e.to_string()))?;
        self.channels
            .insert(state.id, bytes)
            .map_err(|e| LedgerError::Storage(e.to_string()))?;
        self.channels.flush().map_err(|e| LedgerError::Storage(e.to_string()))?;
        Ok(())
    }
}

impl Ledger for EmbeddedLedger {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn balance(&self, account: [u8; 32]) -> Result<u64, LedgerError> {
        self.read_balance(account)
    }

    fn open(&self, id: [u8; 32], payer: [u8; 32], payee: [u8; 32], deposit: u64) -> Result<ChannelState, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        if self.load(&id).is_ok() {
            return Err(LedgerError::Exists(name(&id)));
        }
        self.debit(payer, deposit)?;
        let state = ChannelState {
            id,
            payer,
            payee,
            deposit,
            settled: 0,
            close_at: None,
            finalized: false,
        };
        self.store(&state)?;
        Ok(state)
    }

    fn top_up(&self, id: [u8; 32], amount: u64) -> Result<ChannelState, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        let mut state = self.load(&id)?;
        if state.finalized || state.close_at.is_some() {
            return Err(LedgerError::Closed(name(&id)));
        }
        state.deposit = state.deposit.checked_add(amount).ok_or(LedgerError::Overflow)?;
        self.debit(state.payer, amount)?;
        self.store(&state)?;
        Ok(state)
    }

    fn state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError> {
        self.load(&id)
    }

    fn settle(&self, receipt: &SignedReceipt, now: u64) -> Result<u64, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        let r = &receipt.receipt;
        let mut state = self.load(&r.channel)?;
        if state.finalized || state.close_at.is_some_and(|at| now >= at) {
            return Err(LedgerError::Closed(name(&r.channel)));
        }
        if r.domain != self.domain {
            return Err(PayError::WrongDomain {
                expected: self.domain.clone(),
                got: r.domain.clone(),
            }
            .into());
        }
        receipt.verify(&state.payer)?;
        let amount = r.cumulative_amount.min(state.deposit);
        let paid = amount.saturating_sub(state.settled);
        state.settled = state.settled.max(amount);
        self.store(&state)?;
        self.credit(state.payee, paid)?;
        Ok(paid)
    }

    fn start_close(&self, id: [u8; 32], now: u64) -> Result<ChannelState, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        let mut state = self.load(&id)?;
        if state.finalized {
            return Err(LedgerError::Closed(name(&id)));
        }
        if state.close_at.is_none() {
            state.close_at = Some(now.checked_add(self.challenge).ok_or(LedgerError::Overflow)?);
            self.store(&state)?;
        }
        Ok(state)
    }

    fn finalize(&self, id: [u8; 32], now: u64) -> Result<u64, LedgerError> {
        let _one = hopwire_proto::sync::lock(&self.lock);
        let mut state = self.load(&id)?;
        match state.close_at {
            Some(at) if now >= at && !state.finalized => {
                state.finalized = true;
                self.store(&state)?;
                let rest = state.deposit - state.settled;
                self.credit(state.payer, rest)?;
                Ok(rest)
            }
            Some(at) if !state.finalized => Err(LedgerError::ChallengePeriod(name(&id), at)),
            _ => Err(LedgerError::Closed(name(&id))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use hopwire_proto::pay::Receipt;

    fn ledger() -> (EmbeddedLedger, sled::Db) {
        let db = sled::Config::new().temporary(true).open().expect("temporary sled");
        (EmbeddedLedger::with_db(&db, "testnet", 600).expect("ledger"), db)
    }

    fn receipt(key: &SigningKey, seq: u64, amount: u64) -> SignedReceipt {
        let key = hopwire_proto::pay::PayerKey::from(key.clone());
        Receipt {
            domain: "testnet".into(),
            channel: [1; 32],
            session: [0; 16],
            seq,
            cumulative_bytes: amount * 1000,
            cumulative_amount: amount,
        }
        .sign(&key)
    }

    /// Channel [1; 32] from a payer funded with 1500 to payee [2; 32], with
    /// a deposit of 1000 (refused before the funding).
    fn open_funded(l: &EmbeddedLedger) -> (SigningKey, [u8; 32]) {
        let payer = SigningKey::from_bytes(&[5; 32]);
        let account = payer.verifying_key().to_bytes();
        assert!(matches!(
            l.open([1; 32], account, [2; 32], 1000),
            Err(LedgerError::InsufficientFunds {
                balance: 0,
                needed: 1000
            })
        ));
        l.fund(account, 1500).expect("fund");
        l.open([1; 32], account, [2; 32], 1000).expect("open");
        assert_eq!(l.balance(account).expect("balance"), 500);
        (payer, account)
    }

    #[test]
    fn settle_pays_the_difference_and_never_more_than_the_deposit() {
        let (l, _db) = ledger();
        let (payer, _) = open_funded(&l);
        assert!(matches!(
            l.open([1; 32], [0; 32], [0; 32], 1),
            Err(LedgerError::Exists(_))
        ));
        assert_eq!(l.settle(&receipt(&payer, 1, 300), 0).expect("settle"), 300);
        assert_eq!(l.settle(&receipt(&payer, 2, 700), 0).expect("settle"), 400);
        assert_eq!(
            l.settle(&receipt(&payer, 1, 300), 0).expect("old receipt"),
            0,
            "an old receipt pays nothing"
        );
        assert_eq!(
            l.settle(&receipt(&payer, 3, 5000), 0).expect("capped"),
            300,
            "capped at the deposit"
        );
        assert_eq!(l.state([1; 32]).expect("state").settled, 1000);
        assert_eq!(
            l.balance([2; 32]).expect("payee"),
            1000,
            "the payee got every unit settled"
        );
        let other = SigningKey::from_bytes(&[6; 32]);
        assert!(matches!(
            l.settle(&receipt(&other, 4, 10), 0),
            Err(LedgerError::Receipt(PayError::Forged))
        ));
    }

    #[test]
    fn close_waits_out_the_challenge_period() {
        let (l, _db) = ledger();
        let (payer, account) = open_funded(&l);
        l.top_up([1; 32], 500).expect("top up");
        assert_eq!(l.balance(account).expect("balance"), 0);
        l.start_close([1; 32], 100).expect("close");
        assert!(matches!(l.top_up([1; 32], 1), Err(LedgerError::Closed(_))));
        assert!(matches!(
            l.finalize([1; 32], 699),
            Err(LedgerError::ChallengePeriod(_, 700))
        ));
        // The payee can still settle during the challenge period.
        assert_eq!(l.settle(&receipt(&payer, 1, 400), 650).expect("in time"), 400);
        assert_eq!(
            l.finalize([1; 32], 700).expect("final"),
            1100,
            "the rest goes back to the payer"
        );
        assert_eq!(l.balance(account).expect("balance"), 1100);
        assert_eq!(l.balance([2; 32]).expect("payee"), 400);
        assert!(matches!(
            l.settle(&receipt(&payer, 2, 900), 701),
            Err(LedgerError::Closed(_))
        ));
    }
}
