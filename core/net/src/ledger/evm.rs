//! Settlement on an EVM chain: [`EvmLedger`] implements [`Ledger`] over the
//! payment-channel contract in `contracts/src/HopwireChannels.sol` with
//! alloy, talking JSON-RPC over HTTP to a node of the chain.
//!
//! What differs from the embedded ledger:
//! - Receipts are EIP-712 typed data signed with secp256k1
//!   ([`hopwire_proto::pay::scheme`]); a channel's `payer` (in
//!   [`ChannelState`]) is the address of the key that signs its receipts,
//!   named at open, and accounts are addresses as 32-byte words.
//! - Moving money takes a transaction signed by this handle's sender key
//!   (the client's funding key, the node's gas key), which pays its gas.
//!   Settling and finalizing can be sent by anyone.
//! - The chain's clock rules: the `now` the trait passes is ignored.
//! - Amounts are Hopwire units, `unit` base units of the token each; the
//!   contract converts.
//!
//! The trait is blocking: each call runs on the ledger's own small tokio
//! runtime, so async code calls it from a blocking thread
//! ([`super::LazyLedger`] does).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use alloy::contract::Error as ContractError;
use alloy::network::EthereumWallet;
use alloy::primitives::FixedBytes;
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::{Http, HyperClient};
use alloy::transports::{RpcError, TransportErrorKind};
use serde::{Deserialize, Serialize};

use super::{ChannelState, Fee, FeesPaid, Ledger, LedgerError};
use crate::protect::Protect;
use hopwire_proto::pay::scheme::{address_word, word_address, Scheme};
use hopwire_proto::pay::{PayError, SignedReceipt};

pub use alloy::primitives::{Address, U256};
pub use alloy::signers::local::PrivateKeySigner as Signer;

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    HopwireChannels,
    "../../contracts/out/HopwireChannels.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    HopwireTestToken,
    "../../contracts/out/HopwireTestToken.json"
);

alloy::sol! {
    /// The part of ERC-20 a payer needs.
    #[sol(rpc)]
    interface IERC20 {
        function balanceOf(address account) external view returns (uint256);
        function allowance(address owner, address spender) external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
    }
}

/// How long a transaction may take to be mined.
const TX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one RPC request may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a sent transaction's receipt is asked for while it is not
/// mined. alloy asks every 7 s of an RPC not on loopback: a circuit whose
/// top-up missed the first look then stalls past its grace and is cut
/// off. Asked only while a transaction is pending.
const RECEIPT_POLL: Duration = Duration::from_millis(250);

/// Where an EVM ledger lives: `eip155:<chain id>:<contract>@http://<ip>:<port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvmAddr {
    pub chain_id: u64,
    pub contract: Address,
    /// The JSON-RPC endpoint (plain HTTP; an IP, so the client can let it
    /// around its tunnel before any DNS works).
    pub rpc: SocketAddr,
}

impl EvmAddr {
    /// The domain receipts on this ledger carry.
    pub fn domain(&self) -> String {
        Scheme::evm_domain(self.chain_id, self.contract)
    }
}

impl std::fmt::Display for EvmAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@http://{}", self.domain(), self.rpc)
    }
}

impl std::str::FromStr for EvmAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{s}`: {why} (an EVM ledger is `eip155:<chain id>:<contract>@http://<ip>:<port>`)");
        let (domain, rpc) = s.split_once('@').ok_or_else(|| bad("no `@` before the RPC address"))?;
        let Ok(Scheme::Eip712 { chain_id, contract }) = Scheme::of(domain) else {
            return Err(bad("not an eip155 domain"));
        };
        let rpc = rpc.strip_prefix("http://").unwrap_or(rpc).trim_end_matches('/');
        let rpc = rpc.parse().map_err(|_| bad("the RPC address must be an IP and port"))?;
        Ok(Self {
            chain_id,
            contract,
            rpc,
        })
    }
}

/// A transaction this handle sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Approve,
    Open,
    TopUp,
    Settle,
    StartClose,
    Finalize,
}

/// Gas one transaction used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GasUse {
    pub op: Op,
    pub gas: u64,
    /// What it cost, in wei of the chain's coin.
    pub fee_wei: u128,
}

/// What an [`EvmLedger`] pays in, read from its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContractInfo {
    /// The ERC-20 paid in; zero: the chain's native coin.
    token: Address,
    /// Base units of the token per Hopwire unit.
    unit: U256,
}

pub struct EvmLedger {
    /// Runs the calls; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    provider: DynProvider,
    addr: EvmAddr,
    domain: String,
    info: ContractInfo,
    sender: Option<Address>,
    /// What one unit of the ledger is worth in wei of the chain's coin, to
    /// express gas in units (see [`EvmLedger::settle_fee`]).
    unit_value_wei: U256,
    spent: Mutex<Vec<GasUse>>,
    /// One money-moving transaction at a time, so nonces never race.
    sending: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for EvmLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvmLedger")
            .field("addr", &self.addr.to_string())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// A provider for `rpc`, signing with `sender` if given, whose every
/// connection passes through `protect` first.
pub fn provider(rpc: SocketAddr, sender: Option<PrivateKeySigner>, protect: Option<Protect>) -> DynProvider {
    let connector = tower::service_fn(move |_: hyper::Uri| {
        let protect = protect.clone();
        Box::pin(async move {
            let stream = tokio::time::timeout(RPC_TIMEOUT, crate::protect::connect(rpc, protect.as_ref()))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        })
    });
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Full<hyper::body::Bytes>>(connector);
    let url: url::Url = format!("http://{rpc}/")
        .parse()
        .unwrap_or_else(|e| unreachable!("a socket address makes a URL: {e}"));
    let http = Http::with_client(HyperClient::with_service(hyper), url);
    let client = RpcClient::new(http, rpc.ip().is_loopback()).with_poll_interval(RECEIPT_POLL);
    // The nonce is asked of the chain for every transaction (not cached):
    // a transaction refused at its gas estimate must not leave a gap that
    // stalls every later one, and a node's daemon and its `settle` command
    // may share a key.
    let builder = ProviderBuilder::default()
        .with_gas_estimation()
        .with_simple_nonce_management()
        .fetch_chain_id();
    match sender {
        Some(key) => builder
            .wallet(EthereumWallet::from(key))
            .connect_client(client)
            .erased(),
        None => builder.connect_client(client).erased(),
    }
}

fn unreachable_err(what: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unreachable(what.to_string())
}

/// What a failed contract call means.
fn contract_error(e: ContractError) -> LedgerError {
    use HopwireChannels::HopwireChannelsErrors as E;
    if let Some(decoded) = e.as_decoded_interface_error::<E>() {
        let id = |id: &FixedBytes<32>| hopwire_proto::record::short_id(&id.0);
        return match decoded {
            E::ChannelExists(x) => LedgerError::Exists(id(&x.id)),
            E::NoChannel(x) => LedgerError::NoChannel(id(&x.id)),
            E::ChannelClosed(x) => LedgerError::Closed(id(&x.id)),
            E::ChallengePeriod(x) => LedgerError::ChallengePeriod(id(&x.id), x.closeAt),
            E::BadSignature(_) => LedgerError::Receipt(PayError::Forged),
            E::NothingToSettle(x) => LedgerError::Refused(format!(
                "channel {}: nothing to settle (the receipt's {} is not above the {} settled)",
                id(&x.id),
                x.amount,
                x.settled
            )),
            other => LedgerError::Refused(format!("the contract refused: {other:?}")),
        };
    }
    match e {
        ContractError::TransportError(RpcError::Transport(kind)) => unreachable_err(kind),
        ContractError::TransportError(RpcError::ErrorResp(payload)) => {
            LedgerError::Refused(format!("the chain refused: {}", payload.message))
        }
        other => LedgerError::Refused(other.to_string()),
    }
}

fn rpc_error(e: RpcError<TransportErrorKind>) -> LedgerError {
    match e {
        RpcError::Transport(kind) => unreachable_err(kind),
        other => LedgerError::Refused(other.to_string()),
    }
}

/// What `who` holds of `token` (zero: the chain's coin), in base units.
async fn holding(provider: &DynProvider, token: Address, who: Address) -> Result<U256, LedgerError> {
    if token.is_zero() {
        provider.get_balance(who).await.map_err(rpc_error)
    } else {
        IERC20::new(token, provider)
            .balanceOf(who)
            .call()
            .await
            .map_err(contract_error)
    }
}

/// Units in a token amount, rounded down and capped at `u64::MAX`.
fn units(amount: U256, unit: U256) -> u64 {
    u64::try_from(amount / unit).unwrap_or(u64::MAX)
}

fn b32(id: [u8; 32]) -> FixedBytes<32> {
    FixedBytes(id)
}

fn address_of(word: &[u8; 32], what: &str) -> Result<Address, LedgerError> {
    word_address(word).ok_or_else(|| LedgerError::Refused(format!("the {what} is not an EVM address")))
}

impl EvmLedger {
    /// Connects to the chain at `addr.rpc` and checks that it is the chain
    /// and contract `addr` names. Transactions are signed by `sender`;
    /// without one, only reads and nothing that moves money.
    pub fn connect(
        addr: EvmAddr,
        sender: Option<PrivateKeySigner>,
        protect: Option<Protect>,
    ) -> Result<Self, LedgerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hopwire-evm")
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Storage(format!("starting the EVM ledger's runtime: {e}")))?;
        let sender_address = sender.as_ref().map(PrivateKeySigner::address);
        let provider = {
            let _in = runtime.enter();
            provider(addr.rpc, sender, protect)
        };
        let info = runtime.block_on(async {
            let chain = tokio::time::timeout(RPC_TIMEOUT, provider.get_chain_id())
                .await
                .map_err(|_| unreachable_err(format!("{}: no answer", addr.rpc)))?
                .map_err(|e| match rpc_error(e) {
                    LedgerError::Unreachable(why) => unreachable_err(format!("{}: {why}", addr.rpc)),
                    other => other,
                })?;
            if chain != addr.chain_id {
                return Err(LedgerError::Refused(format!(
                    "the RPC at {} serves chain {chain}, not {}",
                    addr.rpc, addr.chain_id
                )));
            }
            let code = provider.get_code_at(addr.contract).await.map_err(rpc_error)?;
            if code.is_empty() {
                return Err(LedgerError::Refused(format!(
                    "no contract at {} on chain {chain}",
                    addr.contract
                )));
            }
            let c = HopwireChannels::new(addr.contract, &provider);
            Ok(ContractInfo {
                token: c.token().call().await.map_err(contract_error)?,
                unit: c.unit().call().await.map_err(contract_error)?,
            })
        })?;
        Ok(Self {
            runtime: Some(runtime),
            provider,
            domain: addr.domain(),
            addr,
            unit_value_wei: if info.token.is_zero() { info.unit } else { U256::ZERO },
            info,
            sender: sender_address,
            spent: Mutex::default(),
            sending: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets what one unit is worth in wei of the chain's coin (needed to
    /// price gas in units when the ledger pays in an ERC-20; a native-coin
    /// ledger knows it).
    pub fn with_unit_value_wei(mut self, wei: U256) -> Self {
        if !self.info.token.is_zero() {
            self.unit_value_wei = wei;
        }
        self
    }

    /// The address transactions are sent from.
    pub fn sender(&self) -> Option<Address> {
        self.sender
    }

    /// Every transaction this handle sent, oldest first.
    pub fn gas_log(&self) -> Vec<GasUse> {
        hopwire_proto::sync::lock(&self.spent).clone()
    }

    /// What the sender holds of the chain's coin, in wei.
    pub fn coin_balance(&self) -> Result<U256, LedgerError> {
        let sender = self.need_sender()?;
        self.block_on(async { self.provider.get_balance(sender).await })
            .map_err(rpc_error)
    }

    /// Runs `f` to completion on the ledger's runtime.
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        match &self.runtime {
            Some(runtime) => runtime.block_on(f),
            None => unreachable!("the runtime is only taken when dropping"),
        }
    }

    fn contract(&self) -> HopwireChannels::HopwireChannelsInstance<&DynProvider> {
        HopwireChannels::new(self.addr.contract, &self.provider)
    }

    fn need_sender(&self) -> Result<Address, LedgerError> {
        self.sender
            .ok_or_else(|| LedgerError::Refused("this EVM ledger handle has no key to send transactions".into()))
    }

    /// Sends a transaction and waits for it to be mined; records its gas.
    async fn send<P: Provider, C: alloy::sol_types::SolCall>(
        &self,
        op: Op,
        call: alloy::contract::SolCallBuilder<P, C>,
    ) -> Result<TransactionReceipt, LedgerError> {
        self.need_sender()?;
        let pending = call.send().await.map_err(contract_error)?;
        let hash = *pending.tx_hash();
        let receipt = pending
            .with_timeout(Some(TX_TIMEOUT))
            .get_receipt()
            .await
            .map_err(|e| unreachable_err(format!("waiting for transaction {hash}: {e}")))?;
        hopwire_proto::sync::lock(&self.spent).push(GasUse {
            op,
            gas: receipt.gas_used,
            fee_wei: u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price),
        });
        if !receipt.status() {
            return Err(LedgerError::Refused(format!("transaction {hash} reverted")));
        }
        Ok(receipt)
    }

    /// Makes sure the contract may take `value` of the sender's tokens:
    /// approves it for every later deposit at once (one transaction ever).
    async fn approve(&self, value: U256) -> Result<(), LedgerError> {
        let sender = self.need_sender()?;
        let token = IERC20::new(self.info.token, &self.provider);
        let allowance = token
            .allowance(sender, self.addr.contract)
            .call()
            .await
            .map_err(contract_error)?;
        if allowance < value {
            self.send(Op::Approve, token.approve(self.addr.contract, U256::MAX))
                .await?;
        }
        Ok(())
    }

    /// Makes `amount` units of the sender's ready to deposit (checks it
    /// holds them; approves an ERC-20); returns the coin to send with the
    /// transaction (the deposit on a native-coin ledger, else nothing).
    async fn fund(&self, amount: u64) -> Result<U256, LedgerError> {
        let sender = self.need_sender()?;
        let value = U256::from(amount) * self.info.unit;
        let held = holding(&self.provider, self.info.token, sender).await?;
        if held < value {
            return Err(LedgerError::InsufficientFunds {
                balance: units(held, self.info.unit),
                needed: amount,
            });
        }
        if self.info.token.is_zero() {
            return Ok(value);
        }
        self.approve(value).await?;
        Ok(U256::ZERO)
    }

    async fn channel_state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError> {
        let c = self.contract().channel(b32(id)).call().await.map_err(contract_error)?;
        if c.payer.is_zero() {
            return Err(LedgerError::NoChannel(hopwire_proto::record::short_id(&id)));
        }
        Ok(ChannelState {
            id,
            payer: address_word(c.signer),
            payee: address_word(c.payee),
            deposit: c.deposit,
            settled: c.settled,
            close_at: (c.closeAt != 0).then_some(c.closeAt),
            finalized: c.finalized,
        })
    }

    fn settle_call(&self, receipt: &SignedReceipt) -> Result<HopwireChannels::settleCall, LedgerError> {
        let r = &receipt.receipt;
        if r.domain != self.domain {
            return Err(PayError::WrongDomain {
                expected: self.domain.clone(),
                got: r.domain.clone(),
            }
            .into());
        }
        Ok(HopwireChannels::settleCall {
            id: b32(r.channel),
            session: FixedBytes(r.session),
            seq: r.seq,
            cumulativeBytes: r.cumulative_bytes,
            cumulativeAmount: r.cumulative_amount,
            signature: receipt.signature.clone().into(),
        })
    }

    /// Gas in units: `gas × price`, in units of the ledger, rounded up;
    /// `None` if the ledger does not know what a unit is worth.
    fn gas_in_units(&self, gas: u64, price_wei: u128) -> Option<u64> {
        if self.unit_value_wei.is_zero() {
            return None;
        }
        let wei = U256::from(gas) * U256::from(price_wei);
        u64::try_from(wei.div_ceil(self.unit_value_wei)).ok()
    }
}

/// Its runtime may be dropped anywhere, async code included: it is shut
/// down without waiting.
impl Drop for EvmLedger {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Ledger for EvmLedger {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn balance(&self, account: [u8; 32]) -> Result<u64, LedgerError> {
        let who = address_of(&account, "account")?;
        let held = self.block_on(holding(&self.provider, self.info.token, who))?;
        Ok(units(held, self.info.unit))
    }

    /// Opens from the sender's funds; `payer` is the address (word) that
    /// will sign the channel's receipts.
    fn open(&self, id: [u8; 32], payer: [u8; 32], payee: [u8; 32], deposit: u64) -> Result<ChannelState, LedgerError> {
        let signer = address_of(&payer, "receipt signer")?;
        let payee = address_of(&payee, "payee")?;
        self.block_on(async {
            let _one = self.sending.lock().await;
            let native = self.fund(deposit).await?;
            self.send(
                Op::Open,
                self.contract().open(b32(id), payee, signer, deposit).value(native),
            )
            .await?;
            self.channel_state(id).await
        })
    }

    fn top_up(&self, id: [u8; 32], amount: u64) -> Result<ChannelState, LedgerError> {
        self.block_on(async {
            let _one = self.sending.lock().await;
            let native = self.fund(amount).await?;
            self.send(Op::TopUp, self.contract().topUp(b32(id), amount).value(native))
                .await?;
            self.channel_state(id).await
        })
    }

    fn state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError> {
        self.block_on(self.channel_state(id))
    }

    fn settle(&self, receipt: &SignedReceipt, _now: u64) -> Result<u64, LedgerError> {
        let call = self.settle_call(receipt)?;
        self.block_on(async {
            let _one = self.sending.lock().await;
            let mined = self.send(Op::Settle, self.contract().call_builder(&call)).await?;
            mined
                .decoded_log::<HopwireChannels::Settled>()
                .map(|log| log.data.paid)
                .ok_or_else(|| LedgerError::Refused("the settle emitted no Settled event".into()))
        })
    }

    fn start_close(&self, id: [u8; 32], _now: u64) -> Result<ChannelState, LedgerError> {
        self.block_on(async {
            let _one = self.sending.lock().await;
            self.send(Op::StartClose, self.contract().startClose(b32(id))).await?;
            self.channel_state(id).await
        })
    }

    fn finalize(&self, id: [u8; 32], _now: u64) -> Result<u64, LedgerError> {
        self.block_on(async {
            let _one = self.sending.lock().await;
            let mined = self.send(Op::Finalize, self.contract().finalize(b32(id))).await?;
            mined
                .decoded_log::<HopwireChannels::Finalized>()
                .map(|log| log.data.refund)
                .ok_or_else(|| LedgerError::Refused("the finalize emitted no Finalized event".into()))
        })
    }

    /// The gas this settle would use at the chain's current gas price, in
    /// units. A settle the contract would refuse is an error here, before
    /// any gas is spent.
    fn settle_fee(&self, receipt: &SignedReceipt) -> Result<Fee, LedgerError> {
        let call = self.settle_call(receipt)?;
        self.block_on(async {
            let contract = self.contract();
            let call = contract.call_builder(&call);
            let call = match self.sender {
                Some(from) => call.from(from),
                None => call,
            };
            let gas = call.estimate_gas().await.map_err(contract_error)?;
            let price = self.provider.get_gas_price().await.map_err(rpc_error)?;
            Ok(Fee {
                gas,
                price_wei: price,
                units: self.gas_in_units(gas, price),
            })
        })
    }

    fn fees_paid(&self) -> FeesPaid {
        let log = self.gas_log();
        FeesPaid {
            transactions: log.len() as u64,
            gas: log.iter().map(|g| g.gas).sum(),
            fee_wei: log.iter().map(|g| g.fee_wei).sum(),
        }
    }
}

/// Deploying the contracts: what a testnet and the tests do.
pub mod deploy {
    use super::*;

    /// Deploys the test token; the deployer may mint.
    pub async fn test_token(provider: &DynProvider) -> Result<Address, LedgerError> {
        HopwireTestToken::deploy(provider)
            .await
            .map(|c| *c.address())
            .map_err(contract_error)
    }

    /// Mints `amount` base units of the test token to `to`.
    pub async fn mint(provider: &DynProvider, token: Address, to: Address, amount: U256) -> Result<(), LedgerError> {
        HopwireTestToken::new(token, provider)
            .mint(to, amount)
            .send()
            .await
            .map_err(contract_error)?
            .get_receipt()
            .await
            .map_err(unreachable_err)
            .map(drop)
    }

    /// Deploys the channel contract for `token` (zero: the native coin).
    pub async fn channels(
        provider: &DynProvider,
        token: Address,
        unit: U256,
        challenge_s: u64,
    ) -> Result<Address, LedgerError> {
        HopwireChannels::deploy(provider, token, unit, challenge_s)
            .await
            .map(|c| *c.address())
            .map_err(contract_error)
    }
}

/// A local chain for testnets and tests: an `anvil` process with the
/// channel contract and the test token deployed.
pub mod devnet {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// anvil's first development key: funded at genesis on every anvil.
    pub const DEPLOYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    pub const CHAIN_ID: u64 = 31337;
    /// Base units of the test token (18 decimals) per Hopwire unit: a unit
    /// is a millionth of a token, so a node's price per GiB reads in µHWT.
    pub const UNIT: u64 = 1_000_000_000_000;

    /// Where `anvil` is: `$HOPWIRE_ANVIL`, the one `contracts/` installs
    /// (looked for above the current directory and the running program),
    /// or `anvil` on the PATH.
    pub fn anvil_path() -> PathBuf {
        if let Some(path) = std::env::var_os("HOPWIRE_ANVIL") {
            return path.into();
        }
        let installed = Path::new("contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
        let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
        for start in starts.iter().flatten() {
            for dir in start.ancestors() {
                let candidate = dir.join(installed);
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
        PathBuf::from("anvil")
    }

    /// A running anvil; killed when dropped.
    pub struct Anvil {
        child: Child,
        pub rpc: SocketAddr,
    }

    impl Anvil {
        /// Starts anvil on `host` (port 0: any) with `extra` arguments
        /// (e.g. `--state`); returns once it listens.
        pub fn start(host: SocketAddr, extra: &[&str]) -> std::io::Result<Self> {
            let anvil = anvil_path();
            let mut child = Command::new(&anvil)
                .args(["--host", &host.ip().to_string(), "--port", &host.port().to_string()])
                .args(["--chain-id", &CHAIN_ID.to_string()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("starting {}: {e} (run scripts/setup.sh)", anvil.display()),
                    )
                })?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("anvil has no stdout"))?;
            let mut lines = BufReader::new(stdout).lines();
            let rpc = loop {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(addr) = line.strip_prefix("Listening on ") {
                            break addr.trim().parse().map_err(std::io::Error::other)?;
                        }
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(std::io::Error::other("anvil exited before it listened"));
                    }
                }
            };
            // Keep reading, so anvil never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            Ok(Self { child, rpc })
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Stops it politely (an anvil with `--state` writes its state).
        pub fn stop(mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }

    impl Drop for Anvil {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct SavedDeployment {
        ledger: String,
        token: Address,
    }

    /// The contracts on a chain, and the key that deployed them (it mints
    /// the test token).
    #[derive(Debug, Clone)]
    pub struct Deployed {
        pub addr: EvmAddr,
        pub token: Address,
        pub deployer: PrivateKeySigner,
    }

    pub fn deployer() -> PrivateKeySigner {
        DEPLOYER_KEY
            .parse()
            .unwrap_or_else(|e| unreachable!("anvil's key parses: {e}"))
    }

    impl Deployed {
        /// Deploys the test token and a channel contract paying in it.
        pub async fn deploy(rpc: SocketAddr, challenge_s: u64) -> Result<Self, LedgerError> {
            let deployer = deployer();
            let provider = provider(rpc, Some(deployer.clone()), None);
            let token = deploy::test_token(&provider).await?;
            let contract = deploy::channels(&provider, token, U256::from(UNIT), challenge_s).await?;
            Ok(Self {
                addr: EvmAddr {
                    chain_id: CHAIN_ID,
                    contract,
                    rpc,
                },
                token,
                deployer,
            })
        }

        /// Gives `to` `coin_wei` of the chain's coin (for gas) and `units`
        /// of the test token.
        pub async fn fund(&self, to: Address, coin_wei: U256, units: u64) -> Result<(), LedgerError> {
            let provider = provider(self.addr.rpc, Some(self.deployer.clone()), None);
            provider
                .raw_request::<_, ()>("anvil_setBalance".into(), (to, coin_wei))
                .await
                .map_err(rpc_error)?;
            if units == 0 {
                return Ok(());
            }
            deploy::mint(&provider, self.token, to, U256::from(units) * U256::from(UNIT)).await
        }

        /// The deployment kept at `path` (JSON), or a fresh one written
        /// there: a chain restarted from its saved state keeps its contracts.
        /// `true` if it was deployed now.
        pub async fn load_or_deploy(
            path: &Path,
            rpc: SocketAddr,
            challenge_s: u64,
        ) -> Result<(Self, bool), LedgerError> {
            let storage = |e: &dyn std::fmt::Display| LedgerError::Storage(format!("{}: {e}", path.display()));
            if let Ok(text) = std::fs::read_to_string(path) {
                let saved: SavedDeployment = serde_json::from_str(&text).map_err(|e| storage(&e))?;
                let addr: EvmAddr = saved.ledger.parse().map_err(|e: String| storage(&e))?;
                return Ok((
                    Self {
                        addr: EvmAddr { rpc, ..addr },
                        token: saved.token,
                        deployer: deployer(),
                    },
                    false,
                ));
            }
            let deployed = Self::deploy(rpc, challenge_s).await?;
            let saved = SavedDeployment {
                ledger: deployed.addr.to_string(),
                token: deployed.token,
            };
            let text = serde_json::to_string_pretty(&saved).map_err(|e| storage(&e))?;
            std::fs::write(path, text).map_err(|e| storage(&e))?;
            Ok((deployed, true))
        }

        /// Moves the chain's clock on by `s` seconds and mines a block.
        pub async fn advance(&self, s: u64) -> Result<(), LedgerError> {
            let provider = provider(self.addr.rpc, None, None);
            provider
                .raw_request::<_, i64>("evm_increaseTime".into(), (s,))
                .await
                .map_err(rpc_error)?;
            provider
                .raw_request::<_, String>("evm_mine".into(), ())
                .await
                .map_err(rpc_error)
                .map(drop)
        }
    }
}

/// What a chain shows about a ledger: token balances, and the gas of every
/// transaction by what it did (read from the events it emitted).
pub mod stats {
    use std::collections::BTreeMap;

    use alloy::sol_types::SolEvent;

    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ChainStats {
        /// Units of the ledger's token each account holds.
        pub balances: BTreeMap<Address, u64>,
        /// Gas of each transaction, by kind (`open`, `settle`, …), oldest first.
        pub gas: BTreeMap<String, Vec<u64>>,
        /// Effective gas price of the last transaction, in wei.
        pub last_gas_price_wei: u128,
    }

    fn kind(receipt: &TransactionReceipt, contract: Address, token: Address) -> &'static str {
        use HopwireChannels::{CloseStarted, Finalized, Opened, Settled, ToppedUp};
        if receipt.contract_address.is_some() {
            return "deploy";
        }
        // The contract's own event says what a transaction did; the token's
        // (a transfer inside an open or a settle) only when there is none.
        let topics = |from: Address| {
            receipt
                .logs()
                .iter()
                .filter(move |l| l.address() == from)
                .filter_map(|l| l.topic0().copied())
        };
        for topic in topics(contract) {
            match topic {
                t if t == Opened::SIGNATURE_HASH => return "open",
                t if t == ToppedUp::SIGNATURE_HASH => return "top_up",
                t if t == Settled::SIGNATURE_HASH => return "settle",
                t if t == CloseStarted::SIGNATURE_HASH => return "start_close",
                t if t == Finalized::SIGNATURE_HASH => return "finalize",
                _ => {}
            }
        }
        for topic in topics(token) {
            match topic {
                t if t == HopwireTestToken::Approval::SIGNATURE_HASH => return "approve",
                t if t == HopwireTestToken::Transfer::SIGNATURE_HASH => return "mint_or_transfer",
                _ => {}
            }
        }
        "other"
    }

    /// Reads every block of the chain at `addr.rpc`.
    pub async fn read(addr: EvmAddr, accounts: &[Address]) -> Result<ChainStats, LedgerError> {
        let provider = provider(addr.rpc, None, None);
        let contract = HopwireChannels::new(addr.contract, &provider);
        let token = contract.token().call().await.map_err(contract_error)?;
        let unit = contract.unit().call().await.map_err(contract_error)?;
        let mut balances = BTreeMap::new();
        for who in accounts {
            let held = holding(&provider, token, *who).await?;
            balances.insert(*who, units(held, unit));
        }
        let mut gas: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut last_gas_price_wei = 0;
        let latest = provider.get_block_number().await.map_err(rpc_error)?;
        for n in 0..=latest {
            let receipts = provider
                .get_block_receipts(n.into())
                .await
                .map_err(rpc_error)?
                .unwrap_or_default();
            for r in receipts {
                last_gas_price_wei = r.effective_gas_price;
                gas.entry(kind(&r, addr.contract, token).to_owned())
                    .or_default()
                    .push(r.gas_used);
            }
        }
        Ok(ChainStats {
            balances,
            gas,
            last_gas_price_wei,
        })
    }
}
