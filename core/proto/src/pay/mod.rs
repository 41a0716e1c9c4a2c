//! Payment channels, sans-IO: signed cumulative receipts and the state each
//! side of a unidirectional channel keeps.
//!
//! A client (payer) pays a hop (payee) per GiB through one channel. A
//! [`Receipt`] says "on this ledger and channel, for this session, I owe you
//! this much in total for this many bytes"; amounts only grow, so a lost or
//! reordered receipt costs nothing and settlement takes the latest one.
//!
//! The loop: the payee quotes price, chunk and grace ([`Quote`]); the payer
//! prepays one chunk; the payee reports usage; the payer pays for what it
//! measured itself (the cells the hop sent that the payer saw lost
//! included, up to [`LOST_SHARE`]; plus a tolerance for the rest: 1 MiB,
//! or 1/64 of what it measured once that is more) and one chunk ahead — on a
//! fast circuit, what the hop carries in [`PAY_AHEAD`] when that is more —
//! never more than the payee reported and never more than the deposit. The
//! payee reports once half of what was paid ahead is used. It forwards
//! while what it carried stays within what it was paid for plus the grace.
//! So a payee can lose at most one chunk plus the grace (and what was lost
//! on the way past [`LOST_SHARE`] and the tolerance), and a payer can
//! overpay at most what it paid ahead (one chunk, or [`PAY_AHEAD`] of its
//! traffic) and the tolerance, and the exit of a 1-hop circuit that skips
//! counters up to [`LOST_SHARE`] of what it sent.
//!
//! What it does not do: send messages, store receipts, or talk to a ledger.
//! Amounts are integers in the ledger's smallest unit; overflow is an error.

use serde::{Deserialize, Serialize};

pub mod scheme;
pub use scheme::PayerKey;

pub const GIB: u64 = 1 << 30;

/// A payer pays for up to 1/`LOSS_SHARE` more than it measured on a hop
/// (1.6 %): what the hop sent that was lost on the way
/// ([`PayerChannel::tolerance`]).
pub const LOSS_SHARE: u64 = 64;

/// What a payer measures on a hop includes the cells the hop sent back
/// that never arrived, as the counters of its layer and of every layer
/// beyond it show ([`crate::onion::circuit::ClientCircuit::unseen_backward`]),
/// up to 1/`LOST_SHARE` (12.5 %) of what the payer counted itself. On a
/// lossy last mile every hop sends more than the client receives; without
/// this a hop paid only for what arrived would stop carrying the circuit
/// once the loss passed the tolerance, and at 5 % loss it did within
/// seconds. The cap bounds what the exit of a 1-hop circuit, whose
/// counters nothing checks, can claim by skipping them.
pub const LOST_SHARE: u64 = 8;

/// On a fast circuit a payer pays for what the hop carries in this long
/// ahead, rather than one chunk, so a hop reports and is paid a few times a
/// second however fast the circuit runs (one chunk ahead at 2 Gbit/s would
/// be a hundred payments a second, each a signature, a receipt on disk and
/// three messages through the circuit). What a payer can overpay grows to
/// as much, at the circuit's own speed.
pub const PAY_AHEAD: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayError {
    #[error("receipt signature does not match the channel's payer key")]
    Forged,
    #[error("receipt is for ledger `{got}`, this channel is on `{expected}`")]
    WrongDomain { expected: String, got: String },
    #[error("receipt is for another channel")]
    WrongChannel,
    #[error("receipt sequence {got} is not after {last} (replayed or reordered)")]
    Stale { last: u64, got: u64 },
    #[error("receipt amount {got} is less than the {last} already signed")]
    Decreasing { last: u64, got: u64 },
    #[error("receipt of {amount} exceeds the channel's deposit of {deposit}")]
    OverDeposit { amount: u64, deposit: u64 },
    #[error("amount overflows")]
    Overflow,
    #[error("the channel's deposit of {deposit} is spent; top it up to keep going")]
    OutOfDeposit { deposit: u64 },
    #[error("`{0}` is not a ledger domain (an EVM ledger is `eip155:<chain id>:<contract>`)")]
    BadDomain(String),
}

/// What a payee asks for, from its config and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// Price per GiB in the ledger's smallest unit.
    pub price_per_gib: u64,
    /// Bytes paid for at a time (prepaid, then one ahead).
    pub chunk_bytes: u64,
    /// Bytes the payee carries beyond what is paid before it stops.
    pub grace_bytes: u64,
}

impl Quote {
    /// A node that charges nothing.
    pub const FREE: Quote = Quote {
        price_per_gib: 0,
        chunk_bytes: 4 << 20,
        grace_bytes: 4 << 20,
    };

    /// Whether the node charges at all.
    pub fn is_free(&self) -> bool {
        self.price_per_gib == 0
    }

    /// The price of `bytes`, rounded up.
    pub fn price_of(&self, bytes: u64) -> Result<u64, PayError> {
        let product = u128::from(bytes) * u128::from(self.price_per_gib);
        u64::try_from(product.div_ceil(u128::from(GIB))).map_err(|_| PayError::Overflow)
    }

    /// Bytes `amount` pays for, rounded down.
    pub fn bytes_for(&self, amount: u64) -> u64 {
        if self.price_per_gib == 0 {
            return u64::MAX;
        }
        let bytes = u128::from(amount) * u128::from(GIB) / u128::from(self.price_per_gib);
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// What a hop carried for one circuit and how far it may go: counted on
/// the data path, raised by receipts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    pub carried: u64,
    /// Bytes the hop may carry in all (paid for plus grace); `None`: free.
    pub allowance: Option<u64>,
    /// Bytes refused for want of payment.
    pub refused: u64,
}

impl Meter {
    /// Counts a cell of `bytes` if the allowance has room for it.
    pub fn admit(&mut self, bytes: u64) -> bool {
        match self.allowance {
            Some(limit) if self.carried.saturating_add(bytes) > limit => {
                self.refused = self.refused.saturating_add(bytes);
                false
            }
            _ => {
                self.carried = self.carried.saturating_add(bytes);
                true
            }
        }
    }
}

/// A payer's promise: cumulative, so only the latest matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Which ledger the channel lives on (so a receipt can't be replayed on
    /// another one).
    pub domain: String,
    pub channel: [u8; 32],
    pub session: [u8; 16],
    pub seq: u64,
    pub cumulative_bytes: u64,
    pub cumulative_amount: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub signature: Vec<u8>,
}

impl Receipt {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = b"hopwire receipt v1".to_vec();
        b.extend(postcard::to_stdvec(self).unwrap_or_else(|e| unreachable!("receipt encodes: {e}")));
        b
    }

    /// Signs in the key's scheme (see [`scheme`]).
    pub fn sign(self, key: &PayerKey) -> SignedReceipt {
        SignedReceipt {
            signature: key.sign(&self),
            receipt: self,
        }
    }
}

impl SignedReceipt {
    /// Checks that the account `payer` signed it, in the scheme its domain
    /// names.
    pub fn verify(&self, payer: &[u8; 32]) -> Result<(), PayError> {
        scheme::verify(self, payer)
    }
}

/// The payer's side of one channel to one hop.
#[derive(Debug)]
pub struct PayerChannel {
    key: PayerKey,
    domain: String,
    channel: [u8; 32],
    session: [u8; 16],
    deposit: u64,
    quote: Quote,
    /// Bytes the payer may pay for beyond what it measured (the two ends
    /// never count exactly alike), at the least: see
    /// [`PayerChannel::tolerance`].
    tolerance_bytes: u64,
    seq: u64,
    signed_amount: u64,
    /// Bytes the newest receipt names.
    receipt_bytes: u64,
    /// What earlier sessions on this channel signed: this session's
    /// receipts pay on top of it.
    base_amount: u64,
    base_bytes: u64,
    /// Bytes the payer counted itself on this hop in this session.
    measured: u64,
    /// Bytes it pays for ahead of what both sides agree on: one chunk, or
    /// more on a fast circuit ([`PayerChannel::pay_ahead`]).
    ahead: u64,
    /// What the newest receipt paid for ahead of what was agreed.
    paid_ahead: u64,
}

impl PayerChannel {
    pub fn new(
        key: PayerKey,
        domain: String,
        channel: [u8; 32],
        session: [u8; 16],
        deposit: u64,
        quote: Quote,
        tolerance_bytes: u64,
    ) -> Self {
        Self {
            key,
            domain,
            channel,
            session,
            deposit,
            quote,
            tolerance_bytes,
            seq: 0,
            signed_amount: 0,
            receipt_bytes: 0,
            base_amount: 0,
            base_bytes: 0,
            measured: 0,
            ahead: quote.chunk_bytes,
            paid_ahead: 0,
        }
    }

    /// Continues a channel used before: the newest receipt signed on it had
    /// `seq`, `amount` and `bytes`. The session's receipts pay on top of
    /// that; whatever an earlier session prepaid and did not use is the
    /// payee's (at most one chunk).
    pub fn resume(mut self, seq: u64, amount: u64, bytes: u64) -> Self {
        self.seq = seq;
        self.signed_amount = amount;
        self.receipt_bytes = bytes;
        self.base_amount = amount;
        self.base_bytes = bytes;
        self
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The account its receipts are signed by.
    pub fn payer(&self) -> [u8; 32] {
        self.key.account()
    }

    /// Bytes the newest receipt names, over every session.
    pub fn receipt_bytes(&self) -> u64 {
        self.receipt_bytes
    }

    /// What earlier sessions on this channel signed.
    pub fn base_amount(&self) -> u64 {
        self.base_amount
    }

    pub fn signed_amount(&self) -> u64 {
        self.signed_amount
    }

    pub fn channel(&self) -> [u8; 32] {
        self.channel
    }

    pub fn deposit(&self) -> u64 {
        self.deposit
    }

    /// What the deposit still has room for.
    pub fn left(&self) -> u64 {
        self.deposit.saturating_sub(self.signed_amount)
    }

    /// The channel was topped up on the ledger to `deposit` in all: the
    /// session goes on paying into it. A deposit never shrinks.
    pub fn raise_deposit(&mut self, deposit: u64) {
        self.deposit = self.deposit.max(deposit);
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn quote(&self) -> Quote {
        self.quote
    }

    pub fn measured(&self) -> u64 {
        self.measured
    }

    /// Bytes the payer pays for beyond what it measured: `tolerance_bytes`,
    /// or 1/[`LOSS_SHARE`] of what it measured once that is more. Cells a
    /// hop sent that were lost before they reached the payer are counted by
    /// the hop alone, and over a long fast session they add up past any
    /// fixed tolerance; a hop that reports more than it carried gains at
    /// most this share.
    pub fn tolerance(&self) -> u64 {
        self.tolerance_bytes.max(self.measured / LOSS_SHARE)
    }

    /// Counts bytes the payer itself sent or received over this hop.
    pub fn measure(&mut self, bytes: u64) {
        self.measured = self.measured.saturating_add(bytes);
    }

    /// The receipt that prepays the first chunk, before data flows.
    pub fn prepay(&mut self) -> Result<SignedReceipt, PayError> {
        let receipt = self.pay_for(self.quote.chunk_bytes)?;
        self.paid_ahead = self.quote.chunk_bytes;
        Ok(receipt)
    }

    /// The hop carries `bytes_per_s` now: from the next receipt on, pay for
    /// what it carries in [`PAY_AHEAD`] ahead, or one chunk if that is more.
    pub fn pay_ahead(&mut self, bytes_per_s: u64) {
        let at_speed = (bytes_per_s as f64 * PAY_AHEAD.as_secs_f64()) as u64;
        self.ahead = self.quote.chunk_bytes.max(at_speed);
    }

    /// Bytes the next receipts pay for ahead of what both sides agree on.
    pub fn ahead(&self) -> u64 {
        self.ahead
    }

    /// Bytes the newest receipt of this session paid for ahead of what both
    /// sides agreed on when it was signed: what the payee keeps if the
    /// circuit ends now (besides the tolerance).
    pub fn paid_ahead(&self) -> u64 {
        self.paid_ahead
    }

    /// Answers the payee's usage report: pays for what both sides agree on
    /// (the report, capped at what the payer measured plus the tolerance)
    /// and [`PayerChannel::ahead`], at least one chunk ahead. `None` if
    /// nothing more is owed. When the deposit cannot cover one chunk ahead,
    /// what is left of it is signed, so the circuit carries on while a
    /// top-up lands; once all of it is signed, `OutOfDeposit`.
    pub fn on_usage(&mut self, reported_bytes: u64) -> Result<Option<SignedReceipt>, PayError> {
        let agreed = reported_bytes.min(self.measured.saturating_add(self.tolerance()));
        let least = agreed.checked_add(self.quote.chunk_bytes).ok_or(PayError::Overflow)?;
        let affordable = self.quote.bytes_for(self.deposit.saturating_sub(self.base_amount));
        let target = agreed.saturating_add(self.ahead).max(least).min(affordable);
        if self.amount_for(target)? <= self.signed_amount {
            return if least > affordable {
                Err(PayError::OutOfDeposit { deposit: self.deposit })
            } else {
                Ok(None)
            };
        }
        let receipt = self.pay_for(target)?;
        self.paid_ahead = target.saturating_sub(agreed);
        Ok(Some(receipt))
    }

    /// The cumulative amount that pays for `bytes` of this session.
    fn amount_for(&self, bytes: u64) -> Result<u64, PayError> {
        self.base_amount
            .checked_add(self.quote.price_of(bytes)?)
            .ok_or(PayError::Overflow)
    }

    fn pay_for(&mut self, bytes: u64) -> Result<SignedReceipt, PayError> {
        let amount = self.amount_for(bytes)?.max(self.signed_amount);
        let cumulative_bytes = self.base_bytes.checked_add(bytes).ok_or(PayError::Overflow)?;
        if amount > self.deposit {
            return Err(PayError::OutOfDeposit { deposit: self.deposit });
        }
        self.seq += 1;
        self.signed_amount = amount;
        self.receipt_bytes = cumulative_bytes;
        Ok(Receipt {
            domain: self.domain.clone(),
            channel: self.channel,
            session: self.session,
            seq: self.seq,
            cumulative_bytes,
            cumulative_amount: amount,
        }
        .sign(&self.key))
    }
}

/// The payee's side of one channel from one payer.
#[derive(Debug)]
pub struct PayeeChannel {
    /// The account receipts must be signed by.
    payer: [u8; 32],
    domain: String,
    channel: [u8; 32],
    deposit: u64,
    quote: Quote,
    latest: Option<SignedReceipt>,
    /// The session the newest receipt belongs to, and what the channel had
    /// been paid when it began: a circuit's allowance counts from there.
    session: Option<[u8; 16]>,
    base_amount: u64,
}

impl PayeeChannel {
    pub fn new(payer: [u8; 32], domain: String, channel: [u8; 32], deposit: u64, quote: Quote) -> Self {
        Self {
            payer,
            domain,
            channel,
            deposit,
            quote,
            latest: None,
            session: None,
            base_amount: 0,
        }
    }

    /// Continues a channel whose newest receipt so far is `latest` (kept in
    /// the receipt store): its next receipt starts a new session.
    pub fn resume(mut self, latest: SignedReceipt) -> Self {
        self.base_amount = latest.receipt.cumulative_amount;
        self.latest = Some(latest);
        self
    }

    pub fn id(&self) -> [u8; 32] {
        self.channel
    }

    pub fn deposit(&self) -> u64 {
        self.deposit
    }

    /// The ledger shows the channel topped up to `deposit` in all. A
    /// deposit never shrinks.
    pub fn raise_deposit(&mut self, deposit: u64) {
        self.deposit = self.deposit.max(deposit);
    }

    /// The newest valid receipt: what settlement pays.
    pub fn latest(&self) -> Option<&SignedReceipt> {
        self.latest.as_ref()
    }

    pub fn paid_amount(&self) -> u64 {
        self.latest.as_ref().map_or(0, |r| r.receipt.cumulative_amount)
    }

    /// Checks a receipt and keeps it if it is the newest; returns how much
    /// more it pays than the previous one.
    pub fn accept(&mut self, signed: SignedReceipt) -> Result<u64, PayError> {
        signed.verify(&self.payer)?;
        let r = &signed.receipt;
        if r.domain != self.domain {
            return Err(PayError::WrongDomain {
                expected: self.domain.clone(),
                got: r.domain.clone(),
            });
        }
        if r.channel != self.channel {
            return Err(PayError::WrongChannel);
        }
        if let Some(last) = &self.latest {
            if r.seq <= last.receipt.seq {
                return Err(PayError::Stale {
                    last: last.receipt.seq,
                    got: r.seq,
                });
            }
            if r.cumulative_amount < last.receipt.cumulative_amount {
                return Err(PayError::Decreasing {
                    last: last.receipt.cumulative_amount,
                    got: r.cumulative_amount,
                });
            }
        }
        if r.cumulative_amount > self.deposit {
            return Err(PayError::OverDeposit {
                amount: r.cumulative_amount,
                deposit: self.deposit,
            });
        }
        let more = r.cumulative_amount - self.paid_amount();
        if self.session != Some(r.session) {
            // A new session (a new circuit) pays on top of everything
            // before it, so no amount is credited to two sessions.
            self.session = Some(r.session);
            self.base_amount = self.paid_amount();
        }
        self.latest = Some(signed);
        Ok(more)
    }

    /// Bytes the payee may carry in the current session: what the session
    /// paid for plus the grace (its circuit's [`Meter`] allowance).
    pub fn allowance(&self) -> u64 {
        self.quote
            .bytes_for(self.paid_amount() - self.base_amount)
            .saturating_add(self.quote.grace_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use rand::{Rng, SeedableRng};

    fn key(seed: u8) -> PayerKey {
        SigningKey::from_bytes(&[seed; 32]).into()
    }

    const QUOTE: Quote = Quote {
        price_per_gib: 1_000_000,
        chunk_bytes: 8 << 20,
        grace_bytes: 1 << 20,
    };

    fn pair(deposit: u64) -> (PayerChannel, PayeeChannel) {
        let key = key(3);
        let payee = PayeeChannel::new(key.account(), "testnet".into(), [1; 32], deposit, QUOTE);
        let payer = PayerChannel::new(key, "testnet".into(), [1; 32], [2; 16], deposit, QUOTE, 64 << 10);
        (payer, payee)
    }

    #[test]
    fn prices_round_and_never_overflow_silently() {
        assert_eq!(QUOTE.price_of(GIB).expect("fits"), 1_000_000);
        assert_eq!(
            QUOTE.price_of(1).expect("fits"),
            1,
            "a byte costs at least the smallest unit"
        );
        assert_eq!(QUOTE.bytes_for(1_000_000), GIB);
        let dear = Quote {
            price_per_gib: u64::MAX,
            ..QUOTE
        };
        assert_eq!(dear.price_of(u64::MAX), Err(PayError::Overflow));
    }

    #[test]
    fn bad_receipts_are_refused_and_change_nothing() {
        let (mut payer, mut payee) = pair(100_000_000);
        let first = payer.prepay().expect("prepay");
        assert_eq!(
            payee.accept(first.clone()).expect("valid"),
            first.receipt.cumulative_amount
        );
        assert!(
            matches!(payee.accept(first.clone()), Err(PayError::Stale { .. })),
            "replayed"
        );
        payer.measure(20 << 20);
        let second = payer.on_usage(20 << 20).expect("pays").expect("owed");
        let mut forged = second.clone();
        forged.receipt.cumulative_amount += 1;
        assert_eq!(payee.accept(forged), Err(PayError::Forged));
        let other = key(9);
        assert_eq!(payee.accept(second.receipt.clone().sign(&other)), Err(PayError::Forged));
        let key = key(3);
        let wrong_domain = Receipt {
            domain: "mainnet".into(),
            ..second.receipt.clone()
        };
        assert!(matches!(
            payee.accept(wrong_domain.sign(&key)),
            Err(PayError::WrongDomain { .. })
        ));
        let wrong_channel = Receipt {
            channel: [7; 32],
            ..second.receipt.clone()
        };
        assert_eq!(payee.accept(wrong_channel.sign(&key)), Err(PayError::WrongChannel));
        let decreasing = Receipt {
            seq: 99,
            cumulative_amount: 0,
            ..second.receipt.clone()
        };
        assert!(matches!(
            payee.accept(decreasing.sign(&key)),
            Err(PayError::Decreasing { .. })
        ));
        let too_much = Receipt {
            seq: 99,
            cumulative_amount: 100_000_001,
            ..second.receipt.clone()
        };
        assert!(matches!(
            payee.accept(too_much.sign(&key)),
            Err(PayError::OverDeposit { .. })
        ));
        assert_eq!(payee.latest(), Some(&first), "nothing bad replaced the good receipt");
        // Reordered: the newer one first, then the older one is stale.
        let third = {
            payer.measure(20 << 20);
            payer.on_usage(40 << 20).expect("pays").expect("owed")
        };
        payee.accept(third).expect("newest");
        assert!(matches!(payee.accept(second), Err(PayError::Stale { .. })));
    }

    /// The payer side of a new session on `payer`'s channel.
    fn next_session(payer: &PayerChannel, session: u8) -> PayerChannel {
        let key = key(3);
        PayerChannel::new(
            key,
            "testnet".into(),
            [1; 32],
            [session; 16],
            payer.deposit(),
            QUOTE,
            64 << 10,
        )
        .resume(payer.seq(), payer.signed_amount(), payer.receipt_bytes())
    }

    #[test]
    fn a_channel_carries_sessions_on_top_of_each_other_across_a_restart() {
        let (mut first, mut payee) = pair(1 << 40);
        payee.accept(first.prepay().unwrap()).unwrap();
        first.measure(20 << 20);
        payee.accept(first.on_usage(20 << 20).unwrap().unwrap()).unwrap();
        let paid_first = payee.paid_amount();
        assert_eq!(paid_first, QUOTE.price_of((20 << 20) + QUOTE.chunk_bytes).unwrap());

        // The node restarts: its newest receipt comes back from the store.
        let mut payee = PayeeChannel::new(key(3).account(), "testnet".into(), [1; 32], 1 << 40, QUOTE)
            .resume(payee.latest().unwrap().clone());
        assert_eq!(
            payee.allowance(),
            QUOTE.grace_bytes,
            "nothing of the last session carries over"
        );
        let mut second = next_session(&first, 9);
        let more = payee.accept(second.prepay().unwrap()).unwrap();
        assert_eq!(more, QUOTE.price_of(QUOTE.chunk_bytes).unwrap());
        // Amounts round up to the unit: bytes paid for are what the amount buys.
        let paid_for = |bytes: u64| QUOTE.bytes_for(QUOTE.price_of(bytes).unwrap());
        assert_eq!(payee.allowance(), paid_for(QUOTE.chunk_bytes) + QUOTE.grace_bytes);
        second.measure(12 << 20);
        payee.accept(second.on_usage(12 << 20).unwrap().unwrap()).unwrap();
        assert_eq!(
            payee.allowance(),
            paid_for((12 << 20) + QUOTE.chunk_bytes) + QUOTE.grace_bytes,
            "the session's allowance counts from what the channel had been paid"
        );
        assert_eq!(
            payee.paid_amount(),
            paid_first + second.signed_amount() - second.base_amount()
        );
        assert_eq!(
            payee.latest().unwrap().receipt.cumulative_bytes,
            (20 << 20) + QUOTE.chunk_bytes + (12 << 20) + QUOTE.chunk_bytes
        );

        // A receipt of the first session, replayed, is refused.
        let mut stale = first;
        stale.measure(100 << 20);
        let old = stale.on_usage(120 << 20).unwrap().unwrap();
        assert!(matches!(payee.accept(old), Err(PayError::Stale { .. })));
    }

    #[test]
    fn a_receipt_the_payee_never_stored_is_credited_to_the_next_session() {
        let (mut first, mut payee) = pair(1 << 40);
        payee.accept(first.prepay().unwrap()).unwrap();
        first.measure(8 << 20);
        // Signed and sent, but the node died before storing it.
        first.on_usage(8 << 20).unwrap().unwrap();
        let mut second = next_session(&first, 9);
        let before = payee.paid_amount();
        payee.accept(second.prepay().unwrap()).unwrap();
        assert_eq!(payee.paid_amount(), second.signed_amount());
        assert!(payee.allowance() >= QUOTE.chunk_bytes + QUOTE.grace_bytes);
        assert_eq!(
            QUOTE.bytes_for(payee.paid_amount() - before),
            payee.allowance() - QUOTE.grace_bytes,
            "what the lost receipt paid is carried in this session, not lost to the client"
        );
    }

    #[test]
    fn a_payer_that_forgot_its_newest_receipt_is_refused_not_credited_twice() {
        let (mut first, mut payee) = pair(1 << 40);
        payee.accept(first.prepay().unwrap()).unwrap();
        let forgotten = next_session(&first, 8);
        first.measure(8 << 20);
        payee.accept(first.on_usage(8 << 20).unwrap().unwrap()).unwrap();
        // The payer resumes from an older state than the payee holds.
        let mut behind = next_session(&forgotten, 9);
        assert!(matches!(
            payee.accept(behind.prepay().unwrap()),
            Err(PayError::Stale { .. })
        ));
    }

    #[test]
    fn a_client_never_signs_more_than_its_deposit() {
        let deposit = QUOTE.price_of(30 << 20).expect("fits");
        let (mut payer, _) = pair(deposit);
        payer.prepay().expect("one chunk fits");
        payer.measure(64 << 20);
        // What is left of the deposit is signed, then nothing more.
        let rest = payer.on_usage(64 << 20).expect("pays").expect("owed");
        assert_eq!(rest.receipt.cumulative_amount, deposit);
        assert_eq!(payer.on_usage(64 << 20), Err(PayError::OutOfDeposit { deposit }));
        assert_eq!(payer.signed_amount(), deposit);
    }

    /// Near the end of its deposit, where one chunk ahead no longer fits,
    /// a payer signs what is left rather than nothing: the hop carries on
    /// while the top-up lands instead of stopping one grace later.
    #[test]
    fn the_end_of_a_deposit_is_signed_before_it_runs_out() {
        let deposit = QUOTE.price_of(QUOTE.chunk_bytes * 3).expect("fits");
        let (mut payer, mut payee) = pair(deposit);
        payee.accept(payer.prepay().expect("prepay")).expect("valid");
        // Two chunks carried: a chunk ahead still fits, exactly.
        payer.measure(QUOTE.chunk_bytes * 2);
        let full = payer.on_usage(QUOTE.chunk_bytes * 2).expect("pays").expect("owed");
        assert_eq!(full.receipt.cumulative_amount, deposit);
        assert_eq!(payer.paid_ahead(), QUOTE.chunk_bytes);
        // A smaller deposit: half a chunk ahead is all that is left.
        let deposit = QUOTE.price_of(QUOTE.chunk_bytes * 5 / 2).expect("fits");
        let (mut payer, mut payee) = pair(deposit);
        payee.accept(payer.prepay().expect("prepay")).expect("valid");
        payer.measure(QUOTE.chunk_bytes * 2);
        let rest = payer.on_usage(QUOTE.chunk_bytes * 2).expect("pays").expect("owed");
        assert_eq!(rest.receipt.cumulative_amount, deposit);
        // Half a chunk, and the few bytes the deposit's rounding buys.
        assert!((QUOTE.chunk_bytes / 2..QUOTE.chunk_bytes / 2 + 1024).contains(&payer.paid_ahead()));
        payee.accept(rest).expect("within the deposit");
        assert_eq!(
            payer.on_usage(QUOTE.chunk_bytes * 2),
            Err(PayError::OutOfDeposit { deposit })
        );
    }

    #[test]
    fn a_fast_circuit_pays_further_ahead_within_its_deposit() {
        let (mut payer, mut payee) = pair(QUOTE.price_of(GIB).expect("fits"));
        payee.accept(payer.prepay().expect("prepay")).expect("valid");
        let paid_bytes = |r: &SignedReceipt| r.receipt.cumulative_bytes;
        // Slow: one chunk ahead.
        payer.measure(8 << 20);
        let slow = payer.on_usage(8 << 20).expect("pays").expect("owed");
        assert_eq!(paid_bytes(&slow), 16 << 20);
        // 200 MB/s: PAY_AHEAD of that (100 MB) ahead.
        payer.pay_ahead(200_000_000);
        assert_eq!(payer.ahead(), 100_000_000);
        payer.measure(8 << 20);
        let fast = payer.on_usage(16 << 20).expect("pays").expect("owed");
        assert_eq!(paid_bytes(&fast), (16 << 20) + 100_000_000);
        assert_eq!(payer.paid_ahead(), 100_000_000);
        payee.accept(slow).expect("valid");
        payee.accept(fast).expect("valid");
        // Idle again: back to one chunk ahead (nothing owed until the
        // prepaid part is used).
        payer.pay_ahead(0);
        assert_eq!(payer.ahead(), QUOTE.chunk_bytes);
        payer.measure(8 << 20);
        assert_eq!(payer.on_usage(24 << 20), Ok(None));
        assert_eq!(payer.paid_ahead(), 100_000_000, "the newest receipt's lead");
        // A deposit that cannot cover the full lead pays what it can.
        let deposit = QUOTE.price_of(64 << 20).expect("fits");
        let (mut small, _) = pair(deposit);
        small.prepay().expect("prepay");
        small.pay_ahead(200_000_000);
        small.measure(32 << 20);
        let capped = small.on_usage(32 << 20).expect("pays").expect("owed");
        assert_eq!(capped.receipt.cumulative_amount, deposit);
        small.measure(32 << 20);
        assert_eq!(small.on_usage(64 << 20), Err(PayError::OutOfDeposit { deposit }));
    }

    #[test]
    fn a_topped_up_channel_goes_on_in_the_same_session() {
        let deposit = QUOTE.price_of(30 << 20).expect("fits");
        let (mut payer, mut payee) = pair(deposit);
        payee.accept(payer.prepay().expect("one chunk fits")).expect("valid");
        payer.measure(64 << 20);
        payee
            .accept(payer.on_usage(64 << 20).expect("pays").expect("the rest"))
            .expect("valid");
        assert_eq!(payer.on_usage(64 << 20), Err(PayError::OutOfDeposit { deposit }));
        // Topped up on the ledger: the payer signs past the old deposit, and
        // the payee takes it only once it has seen the new deposit too.
        payer.raise_deposit(deposit * 4);
        payer.raise_deposit(deposit);
        assert_eq!(payer.deposit(), deposit * 4, "a deposit never shrinks");
        assert_eq!(payer.left(), deposit * 4 - payer.signed_amount());
        let receipt = payer.on_usage(64 << 20).expect("pays").expect("owed");
        assert!(matches!(
            payee.accept(receipt.clone()),
            Err(PayError::OverDeposit { .. })
        ));
        payee.raise_deposit(deposit * 4);
        payee.accept(receipt).expect("within the new deposit");
        assert_eq!(
            payee.allowance(),
            QUOTE.bytes_for(payee.paid_amount()) + QUOTE.grace_bytes,
            "one session, paid on through the top-up"
        );
    }

    /// A long fast session losing 1 % of what a hop sends before it
    /// reaches the payer: the losses add up far past the fixed tolerance,
    /// and the payer still pays the hop enough to keep it carrying.
    #[test]
    fn a_long_session_with_losses_stays_paid() {
        let (mut payer, mut payee) = pair(u64::MAX / 2);
        let mut meter = Meter::default();
        payee.accept(payer.prepay().expect("prepay")).expect("valid");
        for _ in 0..5000 {
            meter.allowance = Some(payee.allowance());
            assert!(
                meter.admit(2 << 20),
                "carried {} with {} paid for: the hop stopped",
                meter.carried,
                QUOTE.bytes_for(payee.paid_amount())
            );
            payer.measure((2 << 20) * 99 / 100);
            if let Some(r) = payer.on_usage(meter.carried).expect("deposit is large") {
                payee.accept(r).expect("valid");
            }
        }
        assert!(meter.carried > 9 * GIB);
        let overpaid = QUOTE.bytes_for(payer.signed_amount()).saturating_sub(payer.measured());
        assert!(overpaid <= payer.tolerance() + QUOTE.chunk_bytes + QUOTE.bytes_for(1));
    }

    /// Any interleaving of traffic, usage reports and receipts: the payee
    /// never carries more than one chunk plus the grace unpaid, and the
    /// payer never pays for more than one chunk (plus the tolerance) beyond
    /// what it measured.
    #[test]
    fn losses_are_bounded_by_one_chunk_for_any_interleaving() {
        for seed in 0..300 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut payer, mut payee) = pair(u64::MAX / 2);
            // The payee's side as a node runs it: the channel sets the
            // circuit's allowance, the meter counts and refuses.
            let mut meter = Meter::default();
            payee.accept(payer.prepay().expect("prepay")).expect("valid");
            let mut in_flight: Vec<SignedReceipt> = Vec::new();
            for _ in 0..400 {
                match rng.gen_range(0..4) {
                    // Traffic: the payee forwards only while allowed; the
                    // payer measures what arrives (maybe a little less).
                    0 | 1 => {
                        let bytes = rng.gen_range(1..(2 << 20));
                        meter.allowance = Some(payee.allowance());
                        if meter.admit(bytes) {
                            payer.measure(bytes - bytes / rng.gen_range(50..1000));
                        }
                    }
                    // A usage report: sometimes honest, sometimes inflated.
                    2 => {
                        let inflate = if rng.gen_bool(0.2) {
                            rng.gen_range(0..(100 << 20))
                        } else {
                            0
                        };
                        if let Some(r) = payer.on_usage(meter.carried + inflate).expect("deposit is large") {
                            in_flight.push(r);
                        }
                    }
                    // Receipts arrive late, out of order, or get lost.
                    _ => {
                        if !in_flight.is_empty() {
                            let r = in_flight.remove(rng.gen_range(0..in_flight.len()));
                            if rng.gen_bool(0.9) {
                                let _ = payee.accept(r);
                            }
                        }
                    }
                }
                let paid_bytes = QUOTE.bytes_for(payee.paid_amount());
                let unpaid = meter.carried.saturating_sub(paid_bytes);
                // At most the grace.
                assert!(unpaid <= QUOTE.grace_bytes, "seed {seed}: {unpaid} bytes unpaid");
                assert!(unpaid <= QUOTE.chunk_bytes);
                // One chunk ahead, the tolerance, and one unit of rounding.
                let overpaid = QUOTE.bytes_for(payer.signed_amount()).saturating_sub(payer.measured);
                assert!(
                    overpaid <= QUOTE.chunk_bytes + payer.tolerance() + QUOTE.bytes_for(1),
                    "seed {seed}: payer paid for {overpaid} bytes it did not measure"
                );
            }
        }
    }
}
