//! The ledger service's wire format and its client side, [`RemoteLedger`]
//! (blocking; async code goes through [`super::LazyLedger`]). The server
//! lives in the node runtime (`hopwire_node_runtime::ledger_service`).
//!
//! One JSON object per line each way. Operations that move an account's
//! money (open, top up, start a close) carry that account's ed25519
//! signature over the operation, so knowing a public key is not enough to
//! spend from it; a top-up also names the deposit it expects to find, so a
//! replayed one is refused. Settling needs no signature (the receipt is the
//! payer's) and finalizing none (it only returns the payer's own rest).
//! Nobody can credit an account over the wire: a testnet funds its
//! accounts when it starts the ledger ([`EmbeddedLedger::fund`]).
//!
//! [`RemoteLedger`] implements [`Ledger`] with blocking calls (a few per
//! channel, not per packet); with a key ([`RemoteLedger::with_key`]) it
//! signs the operations that move that account's money.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::{ChannelState, Ledger, LedgerError};
use crate::protect::Protect;
use hopwire_proto::pay::SignedReceipt;

/// Longest request or answer line.
pub const MAX_LINE: usize = 16 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An operation on a channel that the payer must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Signed {
    Open {
        id: [u8; 32],
        payee: [u8; 32],
        deposit: u64,
    },
    TopUp {
        id: [u8; 32],
        amount: u64,
        expected_deposit: u64,
    },
    StartClose {
        id: [u8; 32],
    },
}

impl Signed {
    /// The bytes the payer signs.
    pub fn message(&self, domain: &str) -> Vec<u8> {
        let mut m = format!("hopwire ledger v1 {domain} ").into_bytes();
        m.extend(postcard::to_stdvec(self).unwrap_or_else(|e| unreachable!("encodes: {e}")));
        m
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Request {
    Domain,
    Balance {
        account: [u8; 32],
    },
    State {
        id: [u8; 32],
    },
    /// `op` signed by `account`.
    Authorized {
        account: [u8; 32],
        op: Signed,
        signature: Vec<u8>,
    },
    Settle {
        receipt: SignedReceipt,
    },
    Finalize {
        id: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Domain { domain: String },
    Amount { amount: u64 },
    Channel { state: ChannelState },
    Error { message: String },
}

/// A ledger service reached over TCP.
#[derive(Clone)]
pub struct RemoteLedger {
    addr: SocketAddr,
    domain: String,
    protect: Option<Protect>,
    /// The account opens, top-ups and closes act as.
    key: Option<SigningKey>,
}

impl std::fmt::Debug for RemoteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLedger")
            .field("addr", &self.addr)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl RemoteLedger {
    /// Connects once to learn the ledger's domain.
    pub fn connect(addr: SocketAddr) -> Result<Self, LedgerError> {
        Self::connect_protected(addr, None)
    }

    /// Connects once to learn the ledger's domain; every connection passes
    /// through `protect` first.
    pub fn connect_protected(addr: SocketAddr, protect: Option<Protect>) -> Result<Self, LedgerError> {
        let mut ledger = Self {
            addr,
            domain: String::new(),
            protect,
            key: None,
        };
        match ledger.call(&Request::Domain)? {
            Response::Domain { domain } => ledger.domain = domain,
            other => return Err(unexpected(&other)),
        }
        Ok(ledger)
    }

    /// Acts as `key`'s account in opens, top-ups and closes.
    pub fn with_key(self, key: SigningKey) -> Self {
        Self { key: Some(key), ..self }
    }

    fn key(&self) -> Result<&SigningKey, LedgerError> {
        self.key
            .as_ref()
            .ok_or_else(|| LedgerError::Refused("this ledger handle has no account key".into()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and reads its answer.
    pub fn call(&self, request: &Request) -> Result<Response, LedgerError> {
        let unreachable = |e: std::io::Error| LedgerError::Unreachable(format!("{}: {e}", self.addr));
        let mut stream = self.dial().map_err(unreachable)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(unreachable)?;
        stream.set_write_timeout(Some(CALL_TIMEOUT)).map_err(unreachable)?;
        let mut line = serde_json::to_vec(request).map_err(|e| LedgerError::Refused(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(unreachable)?;
        let mut answer = String::new();
        BufReader::new(std::io::Read::take(stream, MAX_LINE as u64))
            .read_line(&mut answer)
            .map_err(unreachable)?;
        if answer.is_empty() {
            return Err(LedgerError::Unreachable(format!(
                "{}: closed without answering",
                self.addr
            )));
        }
        match serde_json::from_str(&answer) {
            Ok(Response::Error { message }) => Err(LedgerError::Refused(message)),
            Ok(r) => Ok(r),
            Err(e) => Err(LedgerError::Unreachable(format!(
                "{}: unreadable answer: {e}",
                self.addr
            ))),
        }
    }

    fn dial(&self) -> std::io::Result<TcpStream> {
        crate::protect::connect_blocking(self.addr, self.protect.as_ref(), CALL_TIMEOUT)
    }

    fn amount(&self, request: &Request) -> Result<u64, LedgerError> {
        match self.call(request)? {
            Response::Amount { amount } => Ok(amount),
            other => Err(unexpected(&other)),
        }
    }

    fn channel(&self, request: &Request) -> Result<ChannelState, LedgerError> {
        match self.call(request)? {
            Response::Channel { state } => Ok(state),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs `op` as `key`'s account.
    pub fn authorized(&self, key: &SigningKey, op: Signed) -> Result<ChannelState, LedgerError> {
        let signature = key.sign(&op.message(&self.domain)).to_bytes().to_vec();
        self.channel(&Request::Authorized {
            account: key.verifying_key().to_bytes(),
            op,
            signature,
        })
    }
}

fn unexpected(r: &Response) -> LedgerError {
    LedgerError::Refused(format!("unexpected answer {r:?}"))
}

/// Opens, top-ups and closes are signed with the handle's key
/// ([`RemoteLedger::with_key`]); without one they are refused.
impl Ledger for RemoteLedger {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn balance(&self, account: [u8; 32]) -> Result<u64, LedgerError> {
        self.amount(&Request::Balance { account })
    }

    /// On this ledger the account that funds a channel signs its receipts:
    /// `payer` must be the handle's own.
    fn open(&self, id: [u8; 32], payer: [u8; 32], payee: [u8; 32], deposit: u64) -> Result<ChannelState, LedgerError> {
        let key = self.key()?;
        if payer != key.verifying_key().to_bytes() {
            return Err(LedgerError::Refused(
                "on the embedded ledger a channel's receipts are signed by the account that funds it".into(),
            ));
        }
        self.authorized(key, Signed::Open { id, payee, deposit })
    }

    fn top_up(&self, id: [u8; 32], amount: u64) -> Result<ChannelState, LedgerError> {
        let expected_deposit = self.state(id)?.deposit;
        self.authorized(
            self.key()?,
            Signed::TopUp {
                id,
                amount,
                expected_deposit,
            },
        )
    }

    fn state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError> {
        self.channel(&Request::State { id })
    }

    fn settle(&self, receipt: &SignedReceipt, _now: u64) -> Result<u64, LedgerError> {
        self.amount(&Request::Settle {
            receipt: receipt.clone(),
        })
    }

    fn start_close(&self, id: [u8; 32], _: u64) -> Result<ChannelState, LedgerError> {
        self.authorized(self.key()?, Signed::StartClose { id })
    }

    fn finalize(&self, id: [u8; 32], _now: u64) -> Result<u64, LedgerError> {
        self.amount(&Request::Finalize { id })
    }
}
