//! What a charging node earned, and settling by hand: the reports behind
//! `hopwire-node earnings` and `hopwire-node settle`, as JSON. They are made
//! where the receipt store is open: in the command's own process while the
//! node is stopped, in the running node otherwise (asked over its control
//! socket, [`crate::control`]), so both print the same thing.

use hopwire_net::ledger::{FeesPaid, Ledger};
use hopwire_net::store::{ReceiptStore, StoreError};
use hopwire_proto::record::short_id;
use serde_json::{json, Value};

use crate::payee::{self, Due, SettlePolicy, Waiting};

/// Every channel in `store` (its newest receipt, what was settled, what
/// settling it would cost now and whether `policy` would), the totals, and
/// the balance of `payout` on the ledger; `ledger` is the error instead when
/// it cannot be reached. Channels a circuit pays through now (`in_use`)
/// say so.
pub fn earnings(
    store: &ReceiptStore,
    ledger: Result<(&dyn Ledger, [u8; 32]), String>,
    policy: &SettlePolicy,
    in_use: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<Value, StoreError> {
    let (weighed, balance) = match ledger {
        Ok((l, payout)) => (
            payee::weigh(store, l, policy, in_use)?,
            l.balance(payout).map_err(|e| e.to_string()),
        ),
        Err(e) => (Vec::new(), Err(e)),
    };
    let rows: Vec<Value> = store
        .all()?
        .iter()
        .map(|s| {
            let r = &s.receipt.receipt;
            let due = weighed.iter().find(|d| d.channel == r.channel);
            json!({
                "channel": short_id(&r.channel),
                "bytes": r.cumulative_bytes,
                "amount": r.cumulative_amount,
                "settled": s.settled,
                "unsettled": r.cumulative_amount.saturating_sub(s.settled),
                "fee": due.and_then(|d| d.fee).and_then(|f| f.units),
                "fee_gas": due.and_then(|d| d.fee).map(|f| f.gas),
                "net": due.and_then(Due::net).map(|n| n as f64),
                "settle": due.map(|d| match &d.verdict { Ok(()) => "due".to_owned(), Err(why) => why.to_string() }),
            })
        })
        .collect();
    let total = |field: &str| rows.iter().filter_map(|r| r[field].as_u64()).sum::<u64>();
    let (earned, settled, unsettled) = (total("amount"), total("settled"), total("unsettled"));
    Ok(json!({
        "channels": rows, "earned": earned, "settled": settled, "unsettled": unsettled,
        "ledger_balance": balance.as_ref().ok(),
        "ledger_error": balance.as_ref().err(),
    }))
}

/// Settles every channel owing at least `min` (and more than its fee) now,
/// except those a circuit pays through (`in_use`) unless they are closing:
/// each channel weighed, what was paid, and the fees this call paid.
pub fn settle(
    store: &ReceiptStore,
    ledger: &dyn Ledger,
    min: u64,
    in_use: &dyn Fn(&[u8; 32]) -> bool,
    now: u64,
) -> Result<Value, StoreError> {
    let policy = SettlePolicy {
        min: min.max(1),
        fee_multiple: 1,
    };
    let mut weighed = payee::weigh(store, ledger, &policy, in_use)?;
    for d in &mut weighed {
        if d.owed < policy.min && d.verdict.is_ok() {
            d.verdict = Err(Waiting::Later(format!("owes less than --min {}", policy.min)));
        }
    }
    let channels: Vec<Value> = weighed
        .iter()
        .map(|d| {
            json!({
                "channel": short_id(&d.channel),
                "owed": d.owed,
                "fee": d.fee.and_then(|f| f.units),
                "fee_gas": d.fee.map(|f| f.gas),
                "net": d.net().map(|n| n as f64),
                "skip": d.verdict.as_ref().err().map(ToString::to_string),
            })
        })
        .collect();
    let before = ledger.fees_paid();
    let mut settled = Vec::new();
    let (mut paid_total, mut fees) = (0u64, 0u64);
    for s in payee::settle(store, ledger, weighed, now)? {
        let channel = short_id(&s.due.channel);
        match s.paid {
            Ok(paid) => {
                paid_total += paid;
                fees += s.due.fee.and_then(|f| f.units).unwrap_or(0);
                settled.push(json!({ "channel": channel, "paid": paid }));
            }
            Err(e) => settled.push(json!({ "channel": channel, "error": e.to_string() })),
        }
    }
    let after = ledger.fees_paid();
    let spent = FeesPaid {
        transactions: after.transactions.saturating_sub(before.transactions),
        gas: after.gas.saturating_sub(before.gas),
        fee_wei: after.fee_wei.saturating_sub(before.fee_wei),
    };
    Ok(json!({
        "channels": channels,
        "settled": settled,
        "paid": paid_total,
        "fees": fees,
        "transactions": spent.transactions,
        "gas": spent.gas,
        // As a string: wei overflow a JSON number's safe range.
        "fee_wei": spent.fee_wei.to_string(),
    }))
}
