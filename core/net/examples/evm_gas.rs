//! Gas of every operation of the payment-channel contract, measured on a
//! local anvil through [`EvmLedger`] (what `bench/settlement.sh` prints):
//! the one-time approval, a first and a later open, a top-up, a first and a
//! later settle, a close and a finalize. Prints JSON. Needs anvil
//! (`scripts/setup.sh` installs it under `contracts/`).

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;

use hopwire_net::ledger::evm::devnet::{Anvil, Deployed};
use hopwire_net::ledger::evm::{EvmLedger, GasUse};
use hopwire_net::ledger::{Ledger, LedgerError};
use hopwire_proto::pay::scheme::address_word;
use hopwire_proto::pay::{PayerKey, Receipt};

const CHALLENGE_S: u64 = 60;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let anvil = Anvil::start("127.0.0.1:0".parse()?, &["--disable-min-priority-fee"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let deployed = runtime.block_on(Deployed::deploy(anvil.rpc, CHALLENGE_S))?;
    let account = |units| -> Result<EvmLedger, LedgerError> {
        let key = PrivateKeySigner::random();
        runtime.block_on(deployed.fund(key.address(), U256::from(10u128.pow(20)), units))?;
        EvmLedger::connect(deployed.addr, Some(key), None)
    };
    let (client, node) = (account(10_000_000)?, account(0)?);
    let payee = address_word(node.sender().ok_or("no sender")?);
    let signer = |n: u8| PayerKey::from(k256::ecdsa::SigningKey::from_slice(&[n; 32]).expect("key"));
    let domain = deployed.addr.domain();
    let receipt = |key: &PayerKey, channel, seq, amount| {
        Receipt {
            domain: domain.clone(),
            channel,
            session: [1; 16],
            seq,
            cumulative_bytes: amount * 1000,
            cumulative_amount: amount,
        }
        .sign(key)
    };

    let (a, b) = (signer(1), signer(2));
    client.open([1; 32], a.account(), payee, 1_000_000)?;
    client.open([2; 32], b.account(), payee, 1_000_000)?;
    client.top_up([1; 32], 500_000)?;
    node.settle(&receipt(&a, [1; 32], 1, 200_000), 0)?;
    node.settle(&receipt(&a, [1; 32], 2, 400_000), 0)?;
    node.settle(&receipt(&b, [2; 32], 1, 100_000), 0)?;
    client.start_close([1; 32], 0)?;
    runtime.block_on(deployed.advance(CHALLENGE_S))?;
    node.finalize([1; 32], 0)?;

    let (c, n) = (client.gas_log(), node.gas_log());
    let gas = |log: &[GasUse], i: usize| log.get(i).map_or(0, |g| g.gas);
    let out = serde_json::json!({
        "approve_once": gas(&c, 0),
        "open_first": gas(&c, 1),
        "open": gas(&c, 2),
        "top_up": gas(&c, 3),
        "settle_first_to_payee": gas(&n, 0),
        "settle": gas(&n, 1),
        "settle_first_of_channel": gas(&n, 2),
        "start_close": gas(&c, 4),
        "finalize": gas(&n, 3),
        "client_log": c,
        "node_log": n,
    });
    println!("{out}");
    Ok(())
}
