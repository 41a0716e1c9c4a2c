//! Getting paid for what a node carries.
//!
//! A node that charges lets a new circuit carry its grace, unpaid. The
//! client's first receipt names a channel; the node checks it on the
//! ledger (payee is this node, payer is the signer, open, its deposit),
//! then keeps the newest valid receipt in sled — flushed before the payment
//! counts — and raises the circuit's allowance to what its session paid for
//! plus the grace. Every chunk the node reports what it carried; the client
//! pays for it and one chunk ahead. A circuit that stays past its allowance
//! for [`CUT_OFF_AFTER`] is destroyed: meanwhile it forwards nothing, but
//! the control stream stays open so a late receipt still catches up.
//!
//! A client keeps one channel per hop and pays each new circuit through it
//! as a new session, on top of what the channel was paid before; after a
//! restart the newest receipt comes back from the store, so a session
//! resumes the channel where it stopped. One circuit pays through a channel
//! at a time: a newer one takes it over (the older is usually dead and not
//! yet noticed), and the older one's receipts are refused from then on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use hopwire_net::ledger::service::LazyLedger;
use hopwire_net::ledger::{Ledger, LedgerError};
use hopwire_net::store::{ReceiptStore, StoreError};
use hopwire_proto::onion::cell::BackwardMessage;
use hopwire_proto::onion::circuit::SharedHop;
use hopwire_proto::pay::{PayError, PayeeChannel, Quote, SignedReceipt};
use hopwire_proto::record::short_id;
use hopwire_proto::sync::lock;
use tracing::{info, warn};

/// How long a circuit may stay past its allowance before it is destroyed.
pub const CUT_OFF_AFTER: Duration = Duration::from_secs(3);
/// How often a charging node looks at a busy circuit's usage: often enough
/// that a fast circuit does not run through its grace between two looks.
pub const BUSY_TICK: Duration = Duration::from_millis(20);
/// ... and at an idle one, so a thousand idle circuits cost little.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// A charging node's payment side, shared by its circuits.
pub struct Payee {
    pub quote: Quote,
    identity: [u8; 32],
    ledger: LazyLedger,
    pub store: ReceiptStore,
    /// Channels circuits are paying through now.
    channels: Arc<Mutex<HashMap<[u8; 32], SharedSlot>>>,
    next_circuit: AtomicU64,
    /// Reports usage this many times too high: see [`dishonest_factor`].
    inflate: u64,
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
}

/// One circuit's payments at this node.
pub struct CircuitPay {
    /// Tells this circuit from others paying through the same channel.
    token: u64,
    slot: Option<SlotGuard>,
    last_report: u64,
    /// Refused bytes when the last payment came.
    refused_at_payment: u64,
    behind_since: Option<Instant>,
    /// Carried bytes at the last look, and whether they had moved.
    last_carried: u64,
    busy: bool,
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
    /// When to look again: soon while traffic flows or payment is behind.
    pub fn next_tick(&self) -> Duration {
        if self.busy || self.behind_since.is_some() {
            BUSY_TICK
        } else {
            IDLE_TICK
        }
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
    #[error("the payer is not an ed25519 key")]
    PayerKey,
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

/// What [`settle_due`] did for one channel.
#[derive(Debug)]
pub struct Settlement {
    pub channel: [u8; 32],
    /// What the ledger paid, or why it did not.
    pub paid: Result<u64, LedgerError>,
}

/// Settles on `ledger` every channel in `store` that owes more than the
/// ledger's fee and either owes at least `min` (0: none that way) or, with
/// `closing`, is being closed by its payer.
pub fn settle_due(
    store: &ReceiptStore,
    ledger: &dyn Ledger,
    min: u64,
    closing: bool,
    now: u64,
) -> Result<Vec<Settlement>, StoreError> {
    let fee = ledger.settle_fee();
    let mut done = Vec::new();
    for stored in store.all()? {
        let owed = stored.receipt.receipt.cumulative_amount.saturating_sub(stored.settled);
        let channel = stored.receipt.receipt.channel;
        if owed <= fee {
            continue;
        }
        let due = (min > 0 && owed >= min)
            || (closing
                && ledger
                    .state(channel)
                    .is_ok_and(|s| s.close_at.is_some() && !s.finalized));
        if !due {
            continue;
        }
        let paid = ledger.settle(&stored.receipt, now);
        if let Ok(paid) = paid {
            store.mark_settled(channel, stored.settled + paid)?;
        }
        done.push(Settlement { channel, paid });
    }
    Ok(done)
}

impl Payee {
    /// Opens the receipt store in `dir` (`receipts/`, sled).
    pub fn open(quote: Quote, ledger_addr: SocketAddr, identity: [u8; 32], dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            quote,
            identity,
            ledger: LazyLedger::new(ledger_addr),
            store: ReceiptStore::open_dir(&dir.join("receipts"))?,
            channels: Arc::default(),
            next_circuit: AtomicU64::new(1),
            inflate: dishonest_factor().max(1),
        })
    }

    /// Settles what is due (see [`settle_due`]) every `every`, for ever.
    pub async fn settle_periodically(&self, min: u64, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = self.store.clone();
            let now = hopwire_proto::time::unix_now();
            match self
                .ledger
                .call(move |l| Ok(settle_due(&store, l, min, true, now)))
                .await
            {
                Ok(Err(e)) => warn!("settling: {e}"),
                Ok(Ok(done)) => {
                    for s in done {
                        match s.paid {
                            Ok(paid) => info!(channel = %short_id(&s.channel), paid, "settled on the ledger"),
                            Err(e) => warn!(channel = %short_id(&s.channel), "settling: {e}"),
                        }
                    }
                }
                Err(e) => warn!("settling on the ledger: {e}"),
            }
        }
    }

    /// A new circuit: it may carry the grace before any receipt.
    pub fn start(&self, hop: &SharedHop<impl Copy>) -> CircuitPay {
        lock(hop).meter.allowance = Some(self.quote.grace_bytes);
        CircuitPay {
            token: self.next_circuit.fetch_add(1, Ordering::Relaxed),
            slot: None,
            last_report: 0,
            refused_at_payment: 0,
            behind_since: None,
            last_carried: 0,
            busy: false,
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
            Err(reason) => BackwardMessage::Failed {
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
                let channel = self.check_channel(&receipt, payer).await?;
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
    async fn check_channel(&self, receipt: &SignedReceipt, payer: [u8; 32]) -> Result<PayeeChannel, PayeeError> {
        let id = receipt.receipt.channel;
        let (domain, state) = self
            .ledger
            .call(move |l| Ok((l.domain().to_owned(), l.state(id)?)))
            .await?;
        if state.payee != self.identity {
            return Err(PayeeError::OtherPayee);
        }
        if state.payer != payer {
            return Err(PayeeError::OtherPayer);
        }
        if state.finalized || state.close_at.is_some() {
            return Err(PayeeError::Closing);
        }
        let key = VerifyingKey::from_bytes(&payer).map_err(|_| PayeeError::PayerKey)?;
        receipt.verify(&key)?;
        Ok(PayeeChannel::new(key, domain, id, state.deposit, self.quote))
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

    /// Called often: a usage report once a chunk has passed since the last,
    /// or `Err` once the circuit has been past its allowance too long.
    pub fn tick(
        &self,
        circuit: &mut CircuitPay,
        hop: &SharedHop<impl Copy>,
        now: Instant,
    ) -> Result<Option<BackwardMessage>, PayeeError> {
        let meter = lock(hop).meter;
        circuit.busy = meter.carried != circuit.last_carried;
        circuit.last_carried = meter.carried;
        if meter.refused > circuit.refused_at_payment {
            let since = *circuit.behind_since.get_or_insert(now);
            if now.duration_since(since) > CUT_OFF_AFTER {
                return Err(PayeeError::Unpaid {
                    carried: meter.carried,
                    paid: meter.allowance.unwrap_or(0).saturating_sub(self.quote.grace_bytes),
                });
            }
        }
        if meter.carried >= circuit.last_report.saturating_add(self.quote.chunk_bytes) {
            circuit.last_report = meter.carried;
            let carried = meter.carried.saturating_mul(self.inflate);
            return Ok(Some(BackwardMessage::Usage { carried }));
        }
        Ok(None)
    }
}
