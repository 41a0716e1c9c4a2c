//! Getting paid for what a node carries.
//!
//! A node that charges lets a new circuit carry its grace, unpaid. The
//! client's first receipt names a channel; the node checks it on the
//! ledger (payee is this node, payer is the signer, open, its deposit),
//! then keeps the newest valid receipt in sled — flushed before the payment
//! counts — and raises the circuit's allowance to what its session paid for
//! plus the grace. The client pays for what it carried and one chunk ahead
//! (on a fast circuit, what it carries in [`PAY_AHEAD`]); once half of
//! that is used, and at least every half chunk, the node reports what it
//! carried. A busy circuit is looked at once per quarter of that it
//! carries (at most every [`BUSY_TICK`]), so a report leaves the client
//! the time of at least half a chunk and the grace to pay, however fast
//! the circuit runs. A circuit that stays past its allowance
//! for [`CUT_OFF_AFTER`] is destroyed: meanwhile it forwards nothing, but
//! the control stream stays open so a late receipt still catches up.
//!
//! A client keeps one channel per hop and pays each new circuit through it
//! as a new session, on top of what the channel was paid before; after a
//! restart the newest receipt comes back from the store, so a session
//! resumes the channel where it stopped. One circuit pays through a channel
//! at a time: a newer one takes it over (the older is usually dead and not
//! yet noticed), and the older one's receipts are refused from then on.
//! The payer may top a channel up on the ledger while a circuit pays
//! through it: a receipt past the deposit the node knows makes it read the
//! deposit again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hopwire_net::ledger::{Fee, FeesPaid, LazyLedger, Ledger, LedgerError};
use hopwire_net::store::{ReceiptStore, StoreError};
use hopwire_proto::onion::cell::BackwardMessage;
use hopwire_proto::onion::circuit::SharedHop;
#[cfg(doc)]
use hopwire_proto::pay::PAY_AHEAD;
use hopwire_proto::pay::{PayError, PayeeChannel, Quote, SignedReceipt};
use hopwire_proto::record::short_id;
use hopwire_proto::sync::lock;
use tracing::{info, warn};

/// How long a circuit may stay past its allowance before it is destroyed.
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(3);
/// How often a charging node looks at a busy circuit's usage, at the
/// least: a fast circuit is looked at once per quarter chunk it carries.
pub const BUSY_TICK: Duration = Duration::from_millis(20);
/// ... but not more often than this (a gigabit circuit with 4 MiB chunks
/// is looked at every 8 ms).
const FASTEST_TICK: Duration = Duration::from_millis(2);
/// ... and at an idle one, so a thousand idle circuits cost little.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// How long a node waits before it reads a channel's deposit again after
/// a read found it not raised.
const DEPOSIT_RECHECK: Duration = Duration::from_secs(1);

/// A charging node's payment side, shared by its circuits.
pub struct Payee {
    /// What new circuits pay; replaced when the operator reloads the config.
    quote: Mutex<Quote>,
    /// The account channels must pay: the node's identity on the embedded
    /// ledger, its payout address on a chain.
    payout: [u8; 32],
    ledger: LazyLedger,
    policy: SettlePolicy,
    pub store: ReceiptStore,
    /// Channels circuits are paying through now.
    channels: Arc<Mutex<HashMap<[u8; 32], SharedSlot>>>,
    next_circuit: AtomicU64,
    /// Reports usage this many times too high: see [`dishonest_factor`].
    inflate: u64,
    /// Held while channels are settled: one round at a time, the node's
    /// own or one asked for by hand ([`crate::control`]).
    settling: tokio::sync::Mutex<()>,
}

/// The test suite's dishonest node: in debug builds only,
/// `HOPWIRE_TEST_INFLATE_USAGE=N` makes a node report N times what it
/// carried, so the end-to-end tests can show the client paying only for
/// what it counted. Release builds always report honestly.
fn dishonest_factor() -> u64 {
    if cfg!(debug_assertions) {
        std::env::var("HOPWIRE_TEST_INFLATE_USAGE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    } else {
        1
    }
}

type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

/// A channel in use: its state, and which circuit pays through it.
struct Slot {
    channel: Option<PayeeChannel>,
    owner: u64,
    /// When the deposit was last read again from the ledger and found
    /// not raised.
    deposit_checked: Option<Instant>,
}

/// One circuit's payments at this node.
pub struct CircuitPay {
    /// What this circuit pays, fixed when it starts.
    quote: Quote,
    /// Tells this circuit from others paying through the same channel.
    token: u64,
    slot: Option<SlotGuard>,
    last_report: u64,
    /// Refused bytes when the last payment came.
    refused_at_payment: u64,
    behind_since: Option<Instant>,
    /// Carried bytes at the last look, and when that was.
    last_carried: u64,
    last_look: Instant,
    /// Bytes per second between the last two looks; 0 when idle.
    rate: u64,
    /// Bytes between usage reports as of the last look
    /// ([`CircuitPay::report_step`]).
    report_every: u64,
}

/// A circuit's hold on its channel's slot; letting go frees the slot unless
/// a newer circuit took it over.
struct SlotGuard {
    id: [u8; 32],
    slot: SharedSlot,
    token: u64,
    channels: Arc<Mutex<HashMap<[u8; 32], SharedSlot>>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut channels = lock(&self.channels);
        // A slot being used right now belongs to another circuit.
        let ours = self.slot.try_lock().is_ok_and(|s| s.owner == self.token);
        if ours && channels.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
            channels.remove(&self.id);
        }
    }
}

impl CircuitPay {
    /// When to look again: soon while traffic flows or payment is behind,
    /// and in time for the next report however fast it flows.
    pub fn next_tick(&self) -> Duration {
        look_again_after(self.report_every, self.rate, self.behind_since.is_some())
    }

    /// Bytes between two usage reports, once the client has paid up to
    /// `paid_until` bytes of this circuit: half of what it paid ahead of
    /// the last report, and at least half a chunk. A client that pays one
    /// chunk ahead hears every half chunk; one that pays further ahead on
    /// a fast circuit hears less often, still with half its lead left.
    fn report_step(&self, paid_until: u64) -> u64 {
        (self.quote.chunk_bytes / 2).max(paid_until.saturating_sub(self.last_report) / 2)
    }
}

/// How long until a circuit carrying `rate` bytes per second (0: idle) is
/// looked at again: a quarter of `report_every` bytes at that rate, within
/// [`FASTEST_TICK`]..[`BUSY_TICK`]; [`BUSY_TICK`] when idle but behind on
/// payment, else [`IDLE_TICK`].
fn look_again_after(report_every: u64, rate: u64, behind: bool) -> Duration {
    if rate > 0 {
        let quarter = report_every / 4;
        Duration::from_secs_f64(quarter as f64 / rate as f64).clamp(FASTEST_TICK, BUSY_TICK)
    } else if behind {
        BUSY_TICK
    } else {
        IDLE_TICK
    }
}

/// Why a receipt was refused or a circuit cut off; the client hears it as
/// the reason of a FAILED.
#[derive(Debug, thiserror::Error)]
pub enum PayeeError {
    #[error("a circuit pays through one channel")]
    OtherChannel,
    #[error("a newer circuit pays through this channel")]
    TakenOver,
    #[error("the channel pays another node")]
    OtherPayee,
    #[error("the channel belongs to another payer")]
    OtherPayer,
    #[error("the channel is closing")]
    Closing,
    #[error(transparent)]
    Receipt(#[from] PayError),
    #[error("checking the channel on the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("receipt store: {0}")]
    Store(#[from] StoreError),
    #[error("receipt store task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("unpaid: carried {carried} bytes, paid for {paid}")]
    Unpaid { carried: u64, paid: u64 },
}

/// When a node settles a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettlePolicy {
    /// Settle a channel owing at least this much (0: not by amount).
    pub min: u64,
    /// ... or owing more than this many times the fee of settling it,
    /// when settling costs anything; and never one owing less than that,
    /// unless it is closing (then never one owing less than the fee: a
    /// closing channel not settled in time is lost).
    pub fee_multiple: u64,
}

impl SettlePolicy {
    /// The policy `[pay]` sets for the node's own rounds.
    pub fn of(pay: &crate::config::PaySection) -> Self {
        Self {
            min: pay.settle_min,
            fee_multiple: pay.settle_fee_multiple,
        }
    }
}

/// A channel that owes something, weighed for settling.
#[derive(Debug)]
pub struct Due {
    pub channel: [u8; 32],
    receipt: SignedReceipt,
    /// What the store says was settled before.
    settled: u64,
    /// What the newest receipt adds to what was settled.
    pub owed: u64,
    /// What settling costs, if the ledger could say.
    pub fee: Option<Fee>,
    /// Its payer started closing it.
    pub closing: bool,
    /// `Ok` to settle now; else why not (waiting for more, or the ledger
    /// failed to say).
    pub verdict: Result<(), Waiting>,
}

#[derive(Debug)]
pub enum Waiting {
    /// Worth settling later, and why not now.
    Later(String),
    /// The ledger refused or could not be reached.
    Failed(LedgerError),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Later(why) => f.write_str(why),
            Waiting::Failed(e) => e.fmt(f),
        }
    }
}

impl Due {
    /// What settling would net, in units: owed minus the fee (`None` if the
    /// fee cannot be priced in units).
    pub fn net(&self) -> Option<i128> {
        let fee = self.fee.map_or(Some(0), |f| f.units)?;
        Some(i128::from(self.owed) - i128::from(fee))
    }
}

/// What [`settle`] did about one channel.
#[derive(Debug)]
pub struct Settlement {
    pub due: Due,
    /// What the ledger paid, or why it did not.
    pub paid: Result<u64, LedgerError>,
}

/// Whether settling `owed` is due under `policy`, given its fee in units
/// and whether the channel is closing: `Ok` to settle, `Err` why not.
fn worth_settling(owed: u64, fee: Option<u64>, closing: bool, policy: &SettlePolicy) -> Result<(), String> {
    let by_amount = policy.min > 0 && owed >= policy.min;
    let Some(fee) = fee else {
        return if closing || by_amount {
            Ok(())
        } else {
            Err("the fee cannot be priced in units (set pay.unit_value_wei): settling when the channel closes or owes settle_min".into())
        };
    };
    if owed <= fee {
        return Err(format!(
            "settling would cost {fee}, not less than the {owed} it collects"
        ));
    }
    let threshold = fee.saturating_mul(policy.fee_multiple);
    if closing || (fee > 0 && owed > threshold) {
        return Ok(());
    }
    if fee > 0 {
        return Err(format!(
            "it collects {owed} and settling costs {fee}: it waits until it collects more than {threshold} ({}× the fee) or the channel closes",
            policy.fee_multiple
        ));
    }
    if by_amount {
        return Ok(());
    }
    Err(format!("below settle_min ({}) and not closing", policy.min))
}

/// Every channel in `store` that owes something, with its fee and whether
/// `policy` says to settle it now. A channel a circuit pays through now
/// (`in_use`) waits for its session to end unless it is closing, so a
/// channel is settled at most once per session. Channels the ledger shows
/// settled (by anyone) or finalized are marked so in the store and left out.
pub fn weigh(
    store: &ReceiptStore,
    ledger: &dyn Ledger,
    policy: &SettlePolicy,
    in_use: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<Vec<Due>, StoreError> {
    let mut all = Vec::new();
    for stored in store.all()? {
        let receipt = stored.receipt;
        let channel = receipt.receipt.channel;
        let owed = receipt.receipt.cumulative_amount.saturating_sub(stored.settled);
        if owed == 0 {
            continue;
        }
        let mut due = Due {
            channel,
            receipt,
            settled: stored.settled,
            owed,
            fee: None,
            closing: false,
            verdict: Ok(()),
        };
        match ledger.state(channel) {
            Ok(state) if state.finalized || state.settled >= due.receipt.receipt.cumulative_amount => {
                store.mark_settled(channel, state.settled.max(stored.settled))?;
                continue;
            }
            Ok(state) => due.closing = state.close_at.is_some(),
            Err(e) => {
                due.verdict = Err(Waiting::Failed(e));
                all.push(due);
                continue;
            }
        }
        if in_use(&channel) && !due.closing {
            due.verdict = Err(Waiting::Later(
                "a circuit is paying through it: it is settled once the session ends".into(),
            ));
            all.push(due);
            continue;
        }
        due.verdict = match ledger.settle_fee(&due.receipt) {
            Ok(fee) => {
                due.fee = Some(fee);
                worth_settling(owed, fee.units, due.closing, policy).map_err(Waiting::Later)
            }
            Err(e) => Err(Waiting::Failed(e)),
        };
        all.push(due);
    }
    Ok(all)
}

/// Settles each of `due` whose verdict is to settle; keeps what was paid.
pub fn settle(
    store: &ReceiptStore,
    ledger: &dyn Ledger,
    due: Vec<Due>,
    now: u64,
) -> Result<Vec<Settlement>, StoreError> {
    let mut done = Vec::new();
    for due in due.into_iter().filter(|d| d.verdict.is_ok()) {
        let paid = ledger.settle(&due.receipt, now);
        if let Ok(paid) = paid {
            store.mark_settled(due.channel, due.settled + paid)?;
        }
        done.push(Settlement { due, paid });
    }
    Ok(done)
}

impl Payee {
    /// Opens the receipt store in `dir` (`receipts/`, sled); channels
    /// must pay `payout` on `ledger`.
    pub fn open(
        quote: Quote,
        ledger: LazyLedger,
        payout: [u8; 32],
        policy: SettlePolicy,
        dir: &Path,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            quote: Mutex::new(quote),
            payout,
            ledger,
            policy,
            store: ReceiptStore::open_dir(&dir.join("receipts"))?,
            channels: Arc::default(),
            next_circuit: AtomicU64::new(1),
            inflate: dishonest_factor().max(1),
            settling: tokio::sync::Mutex::new(()),
        })
    }

    /// The domain of the ledger the node is paid on (what its record
    /// publishes).
    pub async fn domain(&self) -> Result<String, LedgerError> {
        self.ledger.domain().await
    }

    /// The account channels must pay.
    pub fn payout(&self) -> [u8; 32] {
        self.payout
    }

    /// The ledger the node is paid on.
    pub fn ledger(&self) -> &LazyLedger {
        &self.ledger
    }

    /// When the node settles a channel by itself.
    pub fn policy(&self) -> SettlePolicy {
        self.policy
    }

    /// The channels circuits pay through now.
    pub fn channels_in_use(&self) -> HashSet<[u8; 32]> {
        lock(&self.channels).keys().copied().collect()
    }

    /// Waits for a settling round to end, and holds off the next one until
    /// the guard is dropped.
    pub async fn settling(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.settling.lock().await
    }

    /// What the node's own ledger transactions cost so far.
    pub fn fees_paid(&self) -> FeesPaid {
        self.ledger.connected().map(|l| l.fees_paid()).unwrap_or_default()
    }

    /// Settles what is due (see [`settle_due`]) every `every`, for ever.
    /// A channel that waits is said once per reason, not every round.
    pub async fn settle_periodically(&self, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut said: HashMap<[u8; 32], String> = HashMap::new();
        loop {
            tick.tick().await;
            let _round = self.settling().await;
            let store = self.store.clone();
            let policy = self.policy;
            let now = hopwire_proto::time::unix_now();
            let in_use = self.channels_in_use();
            let round = self
                .ledger
                .call(move |l| {
                    let weighed = weigh(&store, l, &policy, &|id| in_use.contains(id));
                    Ok(weighed.map(|all| {
                        let (now_due, waiting): (Vec<Due>, Vec<Due>) = all.into_iter().partition(|d| d.verdict.is_ok());
                        (settle(&store, l, now_due, now), waiting)
                    }))
                })
                .await;
            match round {
                Ok(Err(e)) | Ok(Ok((Err(e), _))) => warn!("settling: {e}"),
                Ok(Ok((Ok(done), waiting))) => {
                    for s in done {
                        let channel = short_id(&s.due.channel);
                        let fee = s.due.fee.and_then(|f| f.units);
                        said.remove(&s.due.channel);
                        match s.paid {
                            Ok(paid) => info!(%channel, paid, fee, net = s.due.net(), "settled on the ledger"),
                            Err(e) => warn!(%channel, owed = s.due.owed, "settling: {e}"),
                        }
                    }
                    for d in waiting {
                        let why = d.verdict.as_ref().err().map(ToString::to_string).unwrap_or_default();
                        if said.get(&d.channel) != Some(&why) {
                            info!(channel = %short_id(&d.channel), owed = d.owed, "not settling yet: {why}");
                            said.insert(d.channel, why);
                        }
                    }
                }
                Err(e) => warn!("settling on the ledger: {e}"),
            }
        }
    }

    /// What circuits started from now on pay.
    pub fn set_quote(&self, quote: Quote) {
        *lock(&self.quote) = quote;
    }

    /// A new circuit: it pays the quote in force now for its whole life,
    /// and may carry the grace before any receipt.
    pub fn start(&self, hop: &SharedHop<impl Copy>) -> CircuitPay {
        let quote = *lock(&self.quote);
        lock(hop).meter.allowance = Some(quote.grace_bytes);
        CircuitPay {
            quote,
            token: self.next_circuit.fetch_add(1, Ordering::Relaxed),
            slot: None,
            last_report: 0,
            refused_at_payment: 0,
            behind_since: None,
            last_carried: 0,
            last_look: Instant::now(),
            rate: 0,
            report_every: quote.chunk_bytes / 2,
        }
    }

    /// Takes a receipt; answers with what the client should hear.
    pub async fn on_pay(
        &self,
        circuit: &mut CircuitPay,
        hop: &SharedHop<impl Copy>,
        payer: [u8; 32],
        receipt: SignedReceipt,
    ) -> BackwardMessage {
        match self.accept(circuit, hop, payer, receipt).await {
            Ok(m) => m,
            Err(reason) => BackwardMessage::Unpaid {
                reason: format!("payment refused: {reason}"),
            },
        }
    }

    async fn accept(
        &self,
        circuit: &mut CircuitPay,
        hop: &SharedHop<impl Copy>,
        payer: [u8; 32],
        receipt: SignedReceipt,
    ) -> Result<BackwardMessage, PayeeError> {
        let id = receipt.receipt.channel;
        let fresh = match &circuit.slot {
            Some(g) if g.id != id => return Err(PayeeError::OtherChannel),
            Some(_) => None,
            None => {
                let channel = self.check_channel(&receipt, payer, circuit.quote).await?;
                Some(self.take_over(channel, circuit.token).await?)
            }
        };
        let Some(guard) = fresh.as_ref().or(circuit.slot.as_ref()) else {
            unreachable!("either the circuit's slot or a fresh one")
        };
        // Held until the receipt is on disk, so a circuit taking the channel
        // over reads it from the store.
        let mut slot = guard.slot.lock().await;
        if slot.owner != circuit.token {
            return Err(PayeeError::TakenOver);
        }
        if slot
            .channel
            .as_ref()
            .is_some_and(|c| receipt.receipt.cumulative_amount > c.deposit())
        {
            self.recheck_deposit(&mut slot, id).await?;
        }
        let Some(channel) = slot.channel.as_mut() else {
            unreachable!("a slot's channel is set when it is taken over")
        };
        channel.accept(receipt.clone())?;
        let store = self.store.clone();
        let seq = receipt.receipt.seq;
        tokio::task::spawn_blocking(move || store.save(&receipt)).await??;
        // On disk: only now does it count.
        let paid = channel.paid_amount();
        let allowance = channel.allowance();
        drop(slot);
        let mut h = lock(hop);
        h.meter.allowance = Some(allowance);
        circuit.refused_at_payment = h.meter.refused;
        circuit.behind_since = None;
        drop(h);
        // A refused first receipt leaves the circuit free to pay through
        // another channel.
        if fresh.is_some() {
            circuit.slot = fresh;
        }
        Ok(BackwardMessage::Paid { seq, amount: paid })
    }

    /// Checks on the ledger that the receipt's channel pays this node from
    /// `payer` and is open, and that `payer` signed it (only the payer may
    /// move its channel to a new circuit); the channel as it starts.
    async fn check_channel(
        &self,
        receipt: &SignedReceipt,
        payer: [u8; 32],
        quote: Quote,
    ) -> Result<PayeeChannel, PayeeError> {
        let id = receipt.receipt.channel;
        let (domain, state) = self
            .ledger
            .call(move |l| Ok((l.domain().to_owned(), l.state(id)?)))
            .await?;
        if state.payee != self.payout {
            return Err(PayeeError::OtherPayee);
        }
        if state.payer != payer {
            return Err(PayeeError::OtherPayer);
        }
        if state.finalized || state.close_at.is_some() {
            return Err(PayeeError::Closing);
        }
        receipt.verify(&payer)?;
        Ok(PayeeChannel::new(payer, domain, id, state.deposit, quote))
    }

    /// A receipt goes past the deposit the node knows: the payer may have
    /// topped the channel up on the ledger, so the node reads the deposit
    /// again. A payer signs past its deposit only once its top-up is on
    /// the ledger, so a read that finds no more makes the node wait
    /// [`DEPOSIT_RECHECK`] before it asks again: a payer cannot make it ask
    /// the ledger for every receipt. A closing channel takes no more.
    async fn recheck_deposit(&self, slot: &mut Slot, id: [u8; 32]) -> Result<(), PayeeError> {
        if slot.deposit_checked.is_some_and(|at| at.elapsed() < DEPOSIT_RECHECK) {
            return Ok(());
        }
        let state = self.ledger.call(move |l| l.state(id)).await?;
        if state.finalized || state.close_at.is_some() {
            return Err(PayeeError::Closing);
        }
        let Some(channel) = slot.channel.as_mut() else {
            return Ok(());
        };
        let raised = state.deposit > channel.deposit();
        channel.raise_deposit(state.deposit);
        slot.deposit_checked = (!raised).then(Instant::now);
        Ok(())
    }

    /// Makes circuit `token` the one paying through `channel`, resumed
    /// from the receipt store (everything accepted is there).
    async fn take_over(&self, mut channel: PayeeChannel, token: u64) -> Result<SlotGuard, PayeeError> {
        let id = channel.id();
        let slot = lock(&self.channels)
            .entry(id)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Slot {
                    channel: None,
                    owner: 0,
                    deposit_checked: None,
                }))
            })
            .clone();
        let mut held = slot.lock().await;
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.get(id)).await??;
        if let Some(stored) = stored {
            channel = channel.resume(stored.receipt);
        }
        held.channel = Some(channel);
        held.owner = token;
        drop(held);
        Ok(SlotGuard {
            id,
            slot,
            token,
            channels: self.channels.clone(),
        })
    }

    /// Called often: a usage report once the circuit carried
    /// [`CircuitPay::report_step`] since the last, or `Err` once it has been
    /// past its allowance too long.
    pub fn tick(
        &self,
        circuit: &mut CircuitPay,
        hop: &SharedHop<impl Copy>,
        now: Instant,
    ) -> Result<Option<BackwardMessage>, PayeeError> {
        let meter = lock(hop).meter;
        let moved = meter.carried.saturating_sub(circuit.last_carried);
        // At least a millisecond: two looks at the same instant would divide by zero.
        let elapsed = now
            .saturating_duration_since(circuit.last_look)
            .max(Duration::from_millis(1));
        circuit.rate = (moved as f64 / elapsed.as_secs_f64()) as u64;
        circuit.last_carried = meter.carried;
        circuit.last_look = now;
        if meter.refused > circuit.refused_at_payment {
            let since = *circuit.behind_since.get_or_insert(now);
            if now.duration_since(since) > CUT_OFF_AFTER {
                return Err(PayeeError::Unpaid {
                    carried: meter.carried,
                    paid: meter.allowance.unwrap_or(0).saturating_sub(circuit.quote.grace_bytes),
                });
            }
        }
        let paid_until = meter.allowance.unwrap_or(0).saturating_sub(circuit.quote.grace_bytes);
        circuit.report_every = circuit.report_step(paid_until);
        if meter.carried >= circuit.last_report.saturating_add(circuit.report_every) {
            circuit.last_report = meter.carried;
            let carried = meter.carried.saturating_mul(self.inflate);
            return Ok(Some(BackwardMessage::Usage { carried }));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use hopwire_net::ledger::{EmbeddedLedger, LedgerAccess, LedgerAddr};
    use hopwire_proto::pay::PayerChannel;

    const QUOTE: Quote = Quote {
        price_per_gib: 1 << 20,
        chunk_bytes: 4 << 20,
        grace_bytes: 4 << 20,
    };

    /// A charging node's payee on an embedded ledger served over TCP, as a
    /// node reaches it, and a client's channel of `deposit` to it.
    struct Bench {
        payee: Payee,
        ledger: EmbeddedLedger,
        payer: PayerChannel,
        dir: std::path::PathBuf,
        _db: sled::Db,
    }

    impl Drop for Bench {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn bench(deposit: u64) -> Bench {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let ledger = EmbeddedLedger::with_db(&db, "test", 60).expect("ledger");
        let key = SigningKey::from_bytes(&[4; 32]);
        let account = key.verifying_key().to_bytes();
        let payout = [6; 32];
        ledger.fund(account, 1 << 40).expect("fund");
        ledger.open([1; 32], account, payout, deposit).expect("open");
        let addr = crate::ledger_service::listen("127.0.0.1:0".parse().expect("addr"), ledger.clone())
            .await
            .expect("listen");
        let dir = std::env::temp_dir().join(format!("hopwire-payee-{}", rand::random::<u64>()));
        let node_ledger = LazyLedger::new(LedgerAddr::Service(addr), LedgerAccess::default(), None);
        let policy = SettlePolicy {
            min: 0,
            fee_multiple: 1,
        };
        let payee = Payee::open(QUOTE, node_ledger, payout, policy, &dir).expect("payee");
        let payer = PayerChannel::new(key.into(), "test".into(), [1; 32], [2; 16], deposit, QUOTE, 1 << 20);
        Bench {
            payee,
            ledger,
            payer,
            dir,
            _db: db,
        }
    }

    fn paid(answer: &BackwardMessage) -> Option<u64> {
        match answer {
            BackwardMessage::Paid { amount, .. } => Some(*amount),
            _ => None,
        }
    }

    /// A client tops its channel up on the ledger while its circuit pays
    /// through it: the node takes receipts past the old deposit once the
    /// ledger shows the new one, never before, and none from a closing
    /// channel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_topped_up_on_the_ledger_pays_on_for_the_same_circuit() {
        let deposit = QUOTE.price_of(12 << 20).expect("price");
        let mut b = bench(deposit).await;
        let net = hopwire_proto::testkit::Net::build(1, 1);
        let hop = net.hop(0);
        let mut circuit = b.payee.start(&hop);
        let payer = b.payer.payer();
        let prepay = b.payer.prepay().expect("prepay");
        let answer = b.payee.on_pay(&mut circuit, &hop, payer, prepay).await;
        assert!(paid(&answer).is_some(), "{answer:?}");
        // 16 MiB carried: the client signs what is left of the 12 MiB
        // deposit, then no more.
        lock(&hop).meter.carried = 16 << 20;
        b.payer.measure(16 << 20);
        let rest = b.payer.on_usage(16 << 20).expect("signs").expect("the rest");
        let answer = b.payee.on_pay(&mut circuit, &hop, payer, rest).await;
        assert_eq!(paid(&answer), Some(deposit), "{answer:?}");
        assert!(matches!(b.payer.on_usage(16 << 20), Err(PayError::OutOfDeposit { .. })));
        // A receipt past the deposit the ledger shows is refused, whoever
        // signed it; what was paid stands.
        let mut past = PayerChannel::new(
            SigningKey::from_bytes(&[4; 32]).into(),
            "test".into(),
            [1; 32],
            [2; 16],
            deposit * 4,
            QUOTE,
            1 << 20,
        )
        .resume(b.payer.seq(), b.payer.signed_amount(), b.payer.receipt_bytes());
        past.measure(16 << 20);
        let early = past.on_usage(16 << 20).expect("signs").expect("owed");
        let answer = b.payee.on_pay(&mut circuit, &hop, payer, early).await;
        assert!(
            matches!(&answer, BackwardMessage::Unpaid { reason } if reason.contains("deposit")),
            "{answer:?}"
        );
        let before = lock(&hop).meter.allowance;
        // Topped up on the ledger: the same circuit goes on.
        let state = b.ledger.top_up([1; 32], deposit * 3).expect("top up");
        b.payer.raise_deposit(state.deposit);
        // The node reads the deposit again at most once a second.
        tokio::time::sleep(DEPOSIT_RECHECK).await;
        let receipt = b.payer.on_usage(16 << 20).expect("signs").expect("owed");
        let amount = receipt.receipt.cumulative_amount;
        let answer = b.payee.on_pay(&mut circuit, &hop, payer, receipt).await;
        assert_eq!(paid(&answer), Some(amount), "{answer:?}");
        assert!(lock(&hop).meter.allowance > before);
        assert_eq!(
            b.payee
                .store
                .get([1; 32])
                .expect("store")
                .map(|s| s.receipt.receipt.cumulative_amount),
            Some(amount),
            "the receipt past the old deposit is on disk"
        );
        // Closing: nothing past what the node knows is taken any more.
        b.ledger
            .start_close([1; 32], hopwire_proto::time::unix_now())
            .expect("close");
        b.payer.raise_deposit(deposit * 8);
        b.ledger
            .top_up([1; 32], 1)
            .expect_err("a closing channel takes no top-up");
        b.payer.measure(34 << 20);
        tokio::time::sleep(DEPOSIT_RECHECK).await;
        let late = b.payer.on_usage(50 << 20).expect("signs").expect("owed");
        assert!(late.receipt.cumulative_amount > state.deposit);
        let answer = b.payee.on_pay(&mut circuit, &hop, payer, late).await;
        assert!(
            matches!(&answer, BackwardMessage::Unpaid { reason } if reason.contains("closing")),
            "{answer:?}"
        );
    }

    /// A client paying one chunk ahead hears a report every half chunk;
    /// one paying further ahead on a fast circuit hears once half of its
    /// lead is used, and never later than its allowance runs out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_paying_further_ahead_hears_fewer_reports() {
        let mut b = bench(QUOTE.price_of(1 << 30).expect("price")).await;
        let net = hopwire_proto::testkit::Net::build(1, 1);
        let hop = net.hop(0);
        let mut circuit = b.payee.start(&hop);
        let payer = b.payer.payer();
        let prepay = b.payer.prepay().expect("prepay");
        b.payee.on_pay(&mut circuit, &hop, payer, prepay).await;
        let report = |b: &Bench, circuit: &mut CircuitPay, carried: u64| {
            lock(&hop).meter.carried = carried;
            match b.payee.tick(circuit, &hop, Instant::now()) {
                Ok(Some(BackwardMessage::Usage { carried })) => Some(carried),
                Ok(_) => None,
                Err(e) => panic!("{e}"),
            }
        };
        // One chunk (4 MiB) ahead: every half chunk.
        assert_eq!(report(&b, &mut circuit, (2 << 20) - 1), None);
        assert_eq!(report(&b, &mut circuit, 2 << 20), Some(2 << 20));
        // 100 MB/s: the client pays 50 MB ahead (PAY_AHEAD), and hears
        // again once 25 MB of that is used.
        b.payer.pay_ahead(100_000_000);
        b.payer.measure(2 << 20);
        let receipt = b.payer.on_usage(2 << 20).expect("signs").expect("owed");
        assert!(paid(&b.payee.on_pay(&mut circuit, &hop, payer, receipt).await).is_some());
        let lead = b.payer.ahead();
        assert_eq!(lead, 50_000_000);
        assert_eq!(
            report(&b, &mut circuit, (2 << 20) + (4 << 20)),
            None,
            "not every half chunk"
        );
        assert_eq!(report(&b, &mut circuit, (2 << 20) + lead / 2 - (1 << 20)), None);
        // (Amounts are whole units, here a KiB.)
        let at = (2 << 20) + lead / 2 + 1024;
        assert_eq!(report(&b, &mut circuit, at), Some(at));
        // Its next receipt is slow to come: the node reports again with
        // a quarter of the lead left, an eighth, … and at least every half
        // chunk.
        let at = at + lead / 4;
        assert_eq!(report(&b, &mut circuit, at), Some(at));
        let at = at + lead / 8;
        assert_eq!(report(&b, &mut circuit, at), Some(at));
        let at = at + lead / 16;
        assert_eq!(report(&b, &mut circuit, at), Some(at));
        assert_eq!(report(&b, &mut circuit, at + (2 << 20) - 1), None);
        assert_eq!(report(&b, &mut circuit, at + (2 << 20)), Some(at + (2 << 20)));
    }

    #[test]
    fn a_fast_circuit_is_looked_at_once_per_quarter_report() {
        const CHUNK: u64 = 4 << 20;
        // 1 Gbit/s, a report every 4 MiB: a quarter of that (1 MiB) passes
        // in about 8.4 ms.
        let gigabit = look_again_after(CHUNK, 125_000_000, false);
        assert!(
            gigabit > Duration::from_millis(8) && gigabit < Duration::from_millis(9),
            "{gigabit:?}"
        );
        // Faster: never more often than FASTEST_TICK.
        assert_eq!(look_again_after(CHUNK, 10_000_000_000, false), FASTEST_TICK);
        // Slow, idle but behind, idle.
        assert_eq!(look_again_after(CHUNK, 1_000_000, false), BUSY_TICK);
        assert_eq!(look_again_after(CHUNK, 0, true), BUSY_TICK);
        assert_eq!(look_again_after(CHUNK, 0, false), IDLE_TICK);
    }
}
