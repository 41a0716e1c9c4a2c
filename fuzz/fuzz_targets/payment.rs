//! Payment messages from a peer: receipts (postcard, inside a hop's layer)
//! and the ledger service's requests (JSON lines over TCP).
//!
//! - A fuzzed receipt never panics the payee, and is accepted only if it is
//!   the payer's, for this ledger and channel, newer, not decreasing and
//!   within the deposit; what it accepts only ever grows.
//! - Into a channel resumed from a stored receipt, only newer receipts are
//!   taken and a session's allowance is what it paid on top.
//! - A genuine receipt with the input XORed onto its encoding is accepted
//!   only unmodified.
//! - A fuzzed usage report, at a fuzzed speed, never makes the payer sign
//!   past its deposit, or for more than it counted plus the tolerance and
//!   what it pays ahead (one chunk, or the speed times `PAY_AHEAD`).
//! - Ledger requests decode or are refused; what decodes round-trips.
#![no_main]

use ed25519_dalek::SigningKey;
use hopwire_net::ledger::service::Request;
use hopwire_proto::pay::{PayeeChannel, PayerChannel, PayerKey, Quote, Receipt, SignedReceipt, LOSS_SHARE, PAY_AHEAD};
use libfuzzer_sys::fuzz_target;

const QUOTE: Quote = Quote {
    price_per_gib: 1_000_000,
    chunk_bytes: 1 << 20,
    grace_bytes: 1 << 20,
};
const DEPOSIT: u64 = 50_000;
const TOLERANCE: u64 = 1 << 16;

fn payer() -> PayerKey {
    SigningKey::from_bytes(&[3; 32]).into()
}

fn genuine(seq: u64, amount: u64) -> SignedReceipt {
    Receipt {
        domain: "fuzz".into(),
        channel: [9; 32],
        session: [1; 16],
        seq,
        cumulative_bytes: amount * 1000,
        cumulative_amount: amount,
    }
    .sign(&payer())
}

fn payee() -> PayeeChannel {
    PayeeChannel::new(payer().account(), "fuzz".into(), [9; 32], DEPOSIT, QUOTE)
}

fuzz_target!(|data: &[u8]| {
    // Fuzzed receipts, one after the other, into one payee.
    let mut channel = payee();
    let mut paid = 0;
    for chunk in data.chunks(160) {
        if let Ok(receipt) = postcard::from_bytes::<SignedReceipt>(chunk) {
            let before = channel.paid_amount();
            if channel.accept(receipt.clone()).is_ok() {
                assert!(receipt.verify(&payer().account()).is_ok(), "accepted a forgery");
                assert!(receipt.receipt.cumulative_amount <= DEPOSIT);
                assert!(channel.paid_amount() >= before);
            } else {
                assert_eq!(channel.paid_amount(), before, "a refused receipt changed the channel");
            }
            paid = channel.paid_amount();
        }
    }
    assert!(paid <= DEPOSIT);

    // The same receipts into a channel resumed after a restart: nothing at
    // or below the stored receipt is taken, and a session is never allowed
    // more than what was paid on top of it.
    let mut resumed = payee().resume(genuine(5, 300));
    for chunk in data.chunks(160) {
        if let Ok(receipt) = postcard::from_bytes::<SignedReceipt>(chunk) {
            if resumed.accept(receipt.clone()).is_ok() {
                assert!(receipt.receipt.seq > 5 && receipt.receipt.cumulative_amount >= 300);
            }
            let allowed = QUOTE.bytes_for(resumed.paid_amount() - 300) + QUOTE.grace_bytes;
            assert!(
                resumed.allowance() <= allowed,
                "a session allowed more than it paid for"
            );
        }
    }

    // A genuine receipt, tampered with.
    let mut bytes = postcard::to_stdvec(&genuine(1, 700)).expect("encodes");
    let mut changed = false;
    for (b, m) in bytes.iter_mut().zip(data) {
        changed |= *m != 0;
        *b ^= m;
    }
    if let Ok(receipt) = postcard::from_bytes::<SignedReceipt>(&bytes) {
        let accepted = payee().accept(receipt.clone()).is_ok();
        if changed && receipt != genuine(1, 700) {
            assert!(!accepted, "a tampered receipt was accepted: {receipt:?}");
        }
    }

    // Usage reports the payer answers.
    let mut payer = PayerChannel::new(payer(), "fuzz".into(), [9; 32], [1; 16], DEPOSIT, QUOTE, TOLERANCE);
    let _ = payer.prepay();
    let mut counted = 0u64;
    for w in data.chunks(8) {
        let mut n = [0u8; 8];
        n[..w.len()].copy_from_slice(w);
        let value = u64::from_le_bytes(n);
        if value & 3 == 0 {
            let step = value % (4 << 20);
            counted = counted.saturating_add(step);
            payer.measure(step);
        } else if value & 3 == 2 {
            // A speed of up to 10 GB/s.
            payer.pay_ahead((value >> 2) % 10_000_000_000);
        } else if let Ok(Some(r)) = payer.on_usage(value >> 2) {
            let r = r.receipt;
            assert!(r.cumulative_amount <= DEPOSIT, "signed past the deposit");
            // The tolerance: TOLERANCE, or 1/LOSS_SHARE of what was counted;
            // the lead: a chunk, or at most 10 GB/s for PAY_AHEAD.
            let tolerance = TOLERANCE.max(counted / LOSS_SHARE);
            let most_ahead = QUOTE.chunk_bytes.max((10_000_000_000f64 * PAY_AHEAD.as_secs_f64()) as u64);
            assert!(payer.ahead() <= most_ahead, "paid {} ahead", payer.ahead());
            let limit = counted.saturating_add(tolerance).saturating_add(payer.ahead());
            assert!(
                r.cumulative_amount
                    <= QUOTE
                        .price_of(limit)
                        .unwrap_or(u64::MAX)
                        .max(QUOTE.price_of(QUOTE.chunk_bytes).unwrap_or(0)),
                "paid for more than counted + tolerance + the lead"
            );
        }
    }

    // Ledger requests.
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_vec(&request).expect("encodes");
        let back: Request = serde_json::from_slice(&text).expect("decodes");
        assert_eq!(back, request);
    }
});
