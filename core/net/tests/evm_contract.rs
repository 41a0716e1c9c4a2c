//! The payment-channel contract, through [`EvmLedger`], against a real
//! `anvil` (installed by `scripts/setup.sh` under `contracts/`): every bad
//! settle reverts, good ones pay `cumulative − settled` and never more than
//! the deposit, closes wait out the challenge period, and every step emits
//! its event.

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;

use hopwire_net::ledger::evm::devnet::{Anvil, Deployed, UNIT};
use hopwire_net::ledger::evm::{self, EvmAddr, EvmLedger, HopwireChannels, Op};
use hopwire_net::ledger::{Ledger, LedgerError};
use hopwire_proto::pay::scheme::{address_word, Scheme};
use hopwire_proto::pay::{PayError, PayerKey, Receipt, SignedReceipt};

const CHALLENGE_S: u64 = 600;
const ETH: u128 = 1_000_000_000_000_000_000;

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

struct Chain {
    _anvil: Anvil,
    deployed: Deployed,
}

impl Chain {
    fn start() -> Self {
        let anvil = Anvil::start("127.0.0.1:0".parse().expect("addr"), &[]).expect("anvil (run scripts/setup.sh)");
        let deployed = block_on(Deployed::deploy(anvil.rpc, CHALLENGE_S)).expect("deploy");
        Self {
            _anvil: anvil,
            deployed,
        }
    }

    /// A new account with gas and `units` of the token, and a ledger
    /// handle sending as it.
    fn account(&self, units: u64) -> (PrivateKeySigner, EvmLedger) {
        let key = PrivateKeySigner::random();
        block_on(self.deployed.fund(key.address(), U256::from(ETH), units)).expect("fund");
        let ledger = EvmLedger::connect(self.deployed.addr, Some(key.clone()), None).expect("connect");
        (key, ledger)
    }

    fn token_balance(&self, ledger: &EvmLedger, who: Address) -> u64 {
        ledger.balance(address_word(who)).expect("balance")
    }

    fn advance(&self, s: u64) {
        block_on(self.deployed.advance(s)).expect("advance");
    }
}

fn receipt_key() -> PayerKey {
    PayerKey::from(k256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
}

fn receipt(domain: &str, channel: [u8; 32], seq: u64, amount: u64) -> Receipt {
    Receipt {
        domain: domain.into(),
        channel,
        session: [3; 16],
        seq,
        cumulative_bytes: amount * 1000,
        cumulative_amount: amount,
    }
}

fn is_forged(r: Result<u64, LedgerError>) -> bool {
    matches!(r, Err(LedgerError::Receipt(PayError::Forged)))
}

#[test]
fn bad_settles_revert_good_ones_pay_and_a_close_waits_out_its_challenge() {
    let chain = Chain::start();
    let domain = chain.deployed.addr.domain();
    let (payer, client) = chain.account(5000);
    let (payee, node) = chain.account(0);
    let signer = receipt_key();
    let (id, other_id) = ([1; 32], [2; 32]);

    let opened = client
        .open(id, signer.account(), address_word(payee.address()), 1000)
        .expect("open");
    assert_eq!((opened.deposit, opened.settled, opened.close_at), (1000, 0, None));
    assert_eq!(
        opened.payer,
        signer.account(),
        "the channel's payer is its receipt signer"
    );
    assert!(matches!(
        client.open(id, signer.account(), address_word(payee.address()), 1),
        Err(LedgerError::Exists(_))
    ));
    assert!(matches!(
        client.open([9; 32], signer.account(), address_word(payee.address()), 1_000_000),
        Err(LedgerError::InsufficientFunds {
            balance: 4000,
            needed: 1_000_000
        })
    ));
    let other_signer = receipt_key();
    client
        .open(other_id, other_signer.account(), address_word(payee.address()), 500)
        .expect("open another");
    assert_eq!(chain.token_balance(&client, payer.address()), 3500);

    let sign = |key: &PayerKey, r: Receipt| r.sign(key);
    // Good: pays the difference; the payee needs no gas of its own for it
    // (here the payer's handle sends it: anyone may).
    let first = sign(&signer, receipt(&domain, id, 1, 300));
    assert_eq!(client.settle(&first, 0).expect("settle"), 300);
    assert_eq!(chain.token_balance(&node, payee.address()), 300);

    // Forged: the amount changed after signing; signed by another key;
    // signed for the other channel; signed for another chain or contract.
    let mut changed = sign(&signer, receipt(&domain, id, 2, 400));
    changed.receipt.cumulative_amount = 900;
    assert!(is_forged(node.settle(&changed, 0)), "a changed amount");
    assert!(
        is_forged(node.settle(&sign(&other_signer, receipt(&domain, id, 2, 400)), 0)),
        "another signer"
    );
    let for_other = sign(&signer, receipt(&domain, other_id, 2, 400));
    let moved = SignedReceipt {
        receipt: receipt(&domain, id, 2, 400),
        signature: for_other.signature,
    };
    assert!(is_forged(node.settle(&moved, 0)), "signed for another channel");
    let contract = chain.deployed.addr.contract;
    for elsewhere in [
        Scheme::evm_domain(1, contract),
        Scheme::evm_domain(31337, Address::repeat_byte(7)),
    ] {
        let signed = sign(&signer, receipt(&elsewhere, id, 2, 400));
        // The ledger refuses the wrong domain before sending anything...
        assert!(matches!(
            node.settle(&signed, 0),
            Err(LedgerError::Receipt(PayError::WrongDomain { .. }))
        ));
        // ... and the contract refuses the signature under its own domain.
        let replayed = SignedReceipt {
            receipt: receipt(&domain, id, 2, 400),
            signature: signed.signature,
        };
        assert!(is_forged(node.settle(&replayed, 0)), "signed for {elsewhere}");
    }
    assert!(is_forged(node.settle(
        &SignedReceipt {
            receipt: receipt(&domain, id, 2, 400),
            signature: vec![0; 65],
        },
        0
    )));

    // Newer pays the rest; the older one replayed, or a lower amount, pays nothing.
    let second = sign(&signer, receipt(&domain, id, 5, 700));
    assert_eq!(node.settle(&second, 0).expect("newer"), 400);
    for stale in [first.clone(), sign(&signer, receipt(&domain, id, 6, 650))] {
        assert!(
            matches!(node.settle(&stale, 0), Err(LedgerError::Refused(ref m)) if m.contains("nothing to settle")),
            "seq {} amount {}",
            stale.receipt.seq,
            stale.receipt.cumulative_amount
        );
    }
    // Never more than the deposit.
    let too_much = sign(&signer, receipt(&domain, id, 7, 5000));
    assert_eq!(node.settle(&too_much, 0).expect("capped"), 300);
    assert!(node.settle(&sign(&signer, receipt(&domain, id, 8, 6000)), 0).is_err());
    assert_eq!(node.state(id).expect("state").settled, 1000);

    // The other channel: close; settle in the challenge period; no
    // finalize before it ends; then the rest goes back.
    assert!(
        matches!(node.start_close(other_id, 0), Err(LedgerError::Refused(_))),
        "only the payer closes"
    );
    let closing = client.start_close(other_id, 0).expect("close");
    let close_at = closing.close_at.expect("close_at");
    assert!(matches!(client.top_up(other_id, 1), Err(LedgerError::Closed(_))));
    assert!(matches!(
        client.finalize(other_id, 0),
        Err(LedgerError::ChallengePeriod(_, at)) if at == close_at
    ));
    chain.advance(CHALLENGE_S / 2);
    let in_time = sign(&other_signer, receipt(&domain, other_id, 1, 200));
    assert_eq!(node.settle(&in_time, 0).expect("settled in the challenge period"), 200);
    chain.advance(CHALLENGE_S);
    assert!(
        matches!(
            node.settle(&sign(&other_signer, receipt(&domain, other_id, 2, 300)), 0),
            Err(LedgerError::Closed(_))
        ),
        "too late"
    );
    assert_eq!(node.finalize(other_id, 0).expect("anyone finalizes"), 300);
    assert!(matches!(client.finalize(other_id, 0), Err(LedgerError::Closed(_))));
    assert!(matches!(
        node.settle(&sign(&other_signer, receipt(&domain, other_id, 3, 400)), 0),
        Err(LedgerError::Closed(_))
    ));
    assert_eq!(
        chain.token_balance(&client, payer.address()),
        3800,
        "the rest came back"
    );
    assert_eq!(chain.token_balance(&node, payee.address()), 1200, "every settled unit");

    // Events, in order.
    let provider = evm::provider(chain.deployed.addr.rpc, None, None);
    let logs = block_on(provider.get_logs(&Filter::new().address(contract).from_block(0))).expect("logs");
    let topics: Vec<_> = logs.iter().filter_map(|l| l.topic0().copied()).collect();
    use HopwireChannels::{CloseStarted, Finalized, Opened, Settled};
    assert_eq!(
        topics,
        vec![
            Opened::SIGNATURE_HASH,
            Opened::SIGNATURE_HASH,
            Settled::SIGNATURE_HASH,
            Settled::SIGNATURE_HASH,
            Settled::SIGNATURE_HASH,
            CloseStarted::SIGNATURE_HASH,
            Settled::SIGNATURE_HASH,
            Finalized::SIGNATURE_HASH,
        ]
    );
    let opened = logs[0].log_decode::<Opened>().expect("Opened").inner.data;
    assert_eq!(
        (opened.payer, opened.payee, opened.signer, opened.deposit),
        (
            payer.address(),
            payee.address(),
            hopwire_proto::pay::scheme::word_address(&signer.account()).expect("address"),
            1000
        )
    );

    // Gas is recorded per transaction: one approval ever, then an open each.
    let ops: Vec<Op> = client.gas_log().iter().map(|g| g.op).collect();
    assert_eq!(ops, vec![Op::Approve, Op::Open, Op::Open, Op::Settle, Op::StartClose]);
    assert!(client.gas_log().iter().all(|g| g.gas > 21_000 && g.fee_wei > 0));
}

#[test]
fn a_settle_fee_is_estimated_before_paying_and_a_native_coin_channel_works() {
    let chain = Chain::start();
    // A native-coin deployment beside the token one.
    let native = {
        let provider = evm::provider(chain.deployed.addr.rpc, Some(chain.deployed.deployer.clone()), None);
        let contract = block_on(evm::deploy::channels(
            &provider,
            Address::ZERO,
            U256::from(UNIT),
            CHALLENGE_S,
        ))
        .expect("deploy");
        EvmAddr {
            contract,
            ..chain.deployed.addr
        }
    };
    let (payer, _) = chain.account(0);
    let (payee, _) = chain.account(0);
    let client = EvmLedger::connect(native, Some(payer.clone()), None).expect("connect");
    let node = EvmLedger::connect(native, Some(payee.clone()), None).expect("connect");
    let before = client.coin_balance().expect("coin");
    let signer = receipt_key();
    client
        .open([4; 32], signer.account(), address_word(payee.address()), 2000)
        .expect("open with the coin");
    let spent = before - client.coin_balance().expect("coin");
    let gas: u128 = client.gas_log().iter().map(|g| g.fee_wei).sum();
    assert_eq!(
        spent,
        U256::from(2000 * u128::from(UNIT) + gas),
        "the deposit and the gas, nothing else"
    );

    let r = receipt(&native.domain(), [4; 32], 1, 1500).sign(&signer);
    let fee = node.settle_fee(&r).expect("estimate");
    assert!(fee.gas > 21_000 && fee.price_wei > 0, "{fee:?}");
    let units = fee.units.expect("a native-coin ledger prices its gas");
    assert_eq!(
        u128::from(units),
        (u128::from(fee.gas) * fee.price_wei).div_ceil(u128::from(UNIT))
    );
    let coin = node.coin_balance().expect("coin");
    assert_eq!(node.settle(&r, 0).expect("settle"), 1500);
    let settle_gas = node.gas_log()[0];
    assert_eq!(settle_gas.op, Op::Settle);
    assert!(
        settle_gas.gas <= fee.gas,
        "estimated {} used {}",
        fee.gas,
        settle_gas.gas
    );
    assert_eq!(
        node.coin_balance().expect("coin"),
        coin + U256::from(1500 * u128::from(UNIT)) - U256::from(settle_gas.fee_wei)
    );
    // A settle the contract would refuse fails at the estimate, costing nothing.
    assert!(node.settle_fee(&r).is_err());
    assert_eq!(node.gas_log().len(), 1);
}

#[test]
fn a_chain_that_is_not_there_or_not_ours_is_a_clear_error() {
    let chain = Chain::start();
    let closed: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gone = EvmAddr {
        rpc: closed,
        ..chain.deployed.addr
    };
    assert!(matches!(
        EvmLedger::connect(gone, None, None),
        Err(LedgerError::Unreachable(_))
    ));
    let other_chain = EvmAddr {
        chain_id: 1,
        ..chain.deployed.addr
    };
    assert!(
        matches!(EvmLedger::connect(other_chain, None, None), Err(LedgerError::Refused(ref m)) if m.contains("serves chain 31337, not 1"))
    );
    let no_contract = EvmAddr {
        contract: Address::repeat_byte(9),
        ..chain.deployed.addr
    };
    assert!(
        matches!(EvmLedger::connect(no_contract, None, None), Err(LedgerError::Refused(ref m)) if m.contains("no contract"))
    );
    let reader = EvmLedger::connect(chain.deployed.addr, None, None).expect("read-only");
    assert!(matches!(
        reader.open([1; 32], [0; 32], [0; 32], 1),
        Err(LedgerError::Refused(_))
    ));
}
