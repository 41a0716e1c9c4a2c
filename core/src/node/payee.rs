//! Getting paid for what a node carries.
//!
//! A node that charges lets a new circuit carry its grace, unpaid. The
//! client's first receipt names a channel; the node checks it on the
//! ledger (payee is this node, payer is the signer, open, its deposit),
//! then keeps the newest valid receipt in sled — flushed before the payment
//! counts — and raises the circuit's allowance to what it paid for plus the
//! grace. Every chunk the node reports what it carried; the client pays for
//! it and one chunk ahead. A circuit that stays past its allowance for
//! [`CUT_OFF_AFTER`] is destroyed: meanwhile it forwards nothing, but the
//! control stream stays open so a late receipt still catches up.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::ledger::service::LazyLedger;
use crate::ledger::Ledger;
use crate::onion::cell::BackwardMessage;
use crate::onion::circuit::SharedHop;
use crate::pay::{PayeeChannel, Quote, SignedReceipt};
use crate::store::{ReceiptStore, StoreError};
use crate::sync::lock;

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
}

/// One circuit's payments at this node.
#[derive(Default)]
pub struct CircuitPay {
    channel: Option<PayeeChannel>,
    last_report: u64,
    /// Refused bytes when the last payment came.
    refused_at_payment: u64,
    behind_since: Option<Instant>,
    /// Carried bytes at the last look, and whether they had moved.
    last_carried: u64,
    busy: bool,
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

impl Payee {
    /// Opens the receipt store in `dir` (`receipts/`, sled).
    pub fn open(quote: Quote, ledger_addr: SocketAddr, identity: [u8; 32], dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            quote,
            identity,
            ledger: LazyLedger::new(ledger_addr),
            store: ReceiptStore::open_dir(&dir.join("receipts"))?,
        })
    }

    /// A new circuit: it may carry the grace before any receipt.
    pub fn start(&self, hop: &SharedHop<impl Copy>) -> CircuitPay {
        lock(hop).meter.allowance = Some(self.quote.grace_bytes);
        CircuitPay::default()
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
    ) -> Result<BackwardMessage, String> {
        if circuit.channel.is_none() {
            let id = receipt.receipt.channel;
            let (domain, state) = self
                .ledger
                .call(move |l| Ok((l.domain().to_owned(), l.state(id)?)))
                .await?;
            if state.payee != self.identity {
                return Err("the channel pays another node".into());
            }
            if state.payer != payer {
                return Err("the channel belongs to another payer".into());
            }
            if state.finalized || state.close_at.is_some() {
                return Err("the channel is closing".into());
            }
            let key = VerifyingKey::from_bytes(&payer).map_err(|_| "the payer is not an ed25519 key".to_owned())?;
            circuit.channel = Some(PayeeChannel::new(key, domain, id, state.deposit, self.quote));
        }
        let Some(channel) = circuit.channel.as_mut() else {
            unreachable!("set above")
        };
        channel.accept(receipt.clone()).map_err(|e| e.to_string())?;
        let store = self.store.clone();
        let seq = receipt.receipt.seq;
        tokio::task::spawn_blocking(move || store.save(&receipt))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // On disk: only now does it count.
        let paid = channel.paid_amount();
        let mut h = lock(hop);
        h.meter.allowance = Some(channel.allowance());
        circuit.refused_at_payment = h.meter.refused;
        circuit.behind_since = None;
        Ok(BackwardMessage::Paid { seq, amount: paid })
    }

    /// Called often: a usage report once a chunk has passed since the last,
    /// or `Err` once the circuit has been past its allowance too long.
    pub fn tick(
        &self,
        circuit: &mut CircuitPay,
        hop: &SharedHop<impl Copy>,
        now: Instant,
    ) -> Result<Option<BackwardMessage>, String> {
        let meter = lock(hop).meter;
        circuit.busy = meter.carried != circuit.last_carried;
        circuit.last_carried = meter.carried;
        if meter.refused > circuit.refused_at_payment {
            let since = *circuit.behind_since.get_or_insert(now);
            if now.duration_since(since) > CUT_OFF_AFTER {
                return Err(format!(
                    "unpaid: carried {} bytes, paid for {}",
                    meter.carried,
                    meter.allowance.unwrap_or(0).saturating_sub(self.quote.grace_bytes)
                ));
            }
        }
        if meter.carried >= circuit.last_report.saturating_add(self.quote.chunk_bytes) {
            circuit.last_report = meter.carried;
            return Ok(Some(BackwardMessage::Usage { carried: meter.carried }));
        }
        Ok(None)
    }
}
