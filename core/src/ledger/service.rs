//! The embedded ledger served over TCP, and the client side of it.
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
//! channel, not per packet); async callers run it on a blocking thread.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use super::{ChannelState, EmbeddedLedger, Ledger, LedgerError};
use crate::pay::SignedReceipt;

/// Longest request line the service reads.
const MAX_LINE: usize = 16 * 1024;
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
    fn message(&self, domain: &str) -> Vec<u8> {
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

fn unix_now() -> u64 {
    crate::node::unix_now()
}

/// Answers one request.
fn answer(ledger: &EmbeddedLedger, request: Request) -> Response {
    let result = match request {
        Request::Domain => {
            return Response::Domain {
                domain: ledger.domain().to_owned(),
            }
        }
        Request::Balance { account } => ledger.balance(account).map(|amount| Response::Amount { amount }),
        Request::State { id } => ledger.state(id).map(|state| Response::Channel { state }),
        Request::Settle { receipt } => ledger
            .settle(&receipt, unix_now())
            .map(|amount| Response::Amount { amount }),
        Request::Finalize { id } => ledger
            .finalize(id, unix_now())
            .map(|amount| Response::Amount { amount }),
        Request::Authorized { account, op, signature } => authorized(ledger, account, &op, &signature),
    };
    result.unwrap_or_else(|e| Response::Error { message: e.to_string() })
}

fn authorized(
    ledger: &EmbeddedLedger,
    account: [u8; 32],
    op: &Signed,
    signature: &[u8],
) -> Result<Response, LedgerError> {
    let forged = || LedgerError::Refused("the operation is not signed by the account".into());
    let key = VerifyingKey::from_bytes(&account).map_err(|_| forged())?;
    let signature = Signature::from_slice(signature).map_err(|_| forged())?;
    key.verify(&op.message(ledger.domain()), &signature)
        .map_err(|_| forged())?;
    let payer_of = |id: [u8; 32]| -> Result<(), LedgerError> {
        (ledger.state(id)?.payer == account).then_some(()).ok_or_else(forged)
    };
    let state = match *op {
        Signed::Open { id, payee, deposit } => ledger.open(id, account, payee, deposit)?,
        Signed::TopUp {
            id,
            amount,
            expected_deposit,
        } => {
            payer_of(id)?;
            let now = ledger.state(id)?.deposit;
            if now != expected_deposit {
                return Err(LedgerError::Refused(format!(
                    "deposit is {now}, not the {expected_deposit} the top-up expects (replayed?)"
                )));
            }
            ledger.top_up(id, amount)?
        }
        Signed::StartClose { id } => {
            payer_of(id)?;
            ledger.start_close(id, unix_now())?
        }
    };
    Ok(Response::Channel { state })
}

/// Serves `ledger` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ledger: EmbeddedLedger) {
    let ledger = Arc::new(ledger);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            // A connection may send at most 64 requests' worth of bytes.
            let mut lines = tokio::io::BufReader::new(read.take(MAX_LINE as u64 * 64)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        debug!(%peer, ?request, "ledger request");
                        let ledger = ledger.clone();
                        tokio::task::spawn_blocking(move || answer(&ledger, request))
                            .await
                            .unwrap_or_else(|e| Response::Error { message: e.to_string() })
                    }
                    Err(e) => Response::Error {
                        message: format!("not a ledger request: {e}"),
                    },
                };
                let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| unreachable!("encodes: {e}"));
                out.push(b'\n');
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Starts serving on `addr`; logs where.
pub async fn listen(addr: SocketAddr, ledger: EmbeddedLedger) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    info!(%local, domain = ledger.domain(), "ledger serving");
    tokio::spawn(serve(listener, ledger));
    Ok(local)
}

/// A ledger service reached over TCP.
#[derive(Debug, Clone)]
pub struct RemoteLedger {
    addr: SocketAddr,
    domain: String,
}

impl RemoteLedger {
    /// Connects once to learn the ledger's domain.
    pub fn connect(addr: SocketAddr) -> Result<Self, LedgerError> {
        let mut ledger = Self {
            addr,
            domain: String::new(),
        };
        match ledger.call(&Request::Domain)? {
            Response::Domain { domain } => ledger.domain = domain,
            other => return Err(unexpected(&other)),
        }
        Ok(ledger)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn call(&self, request: &Request) -> Result<Response, LedgerError> {
        let unreachable = |e: std::io::Error| LedgerError::Unreachable(format!("{}: {e}", self.addr));
        let mut stream = TcpStream::connect_timeout(&self.addr, CALL_TIMEOUT).map_err(unreachable)?;
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

/// A [`RemoteLedger`] for async code: connected on first use, each call
/// run on a blocking thread. What nodes and the client daemon hold.
#[derive(Debug)]
pub struct LazyLedger {
    addr: SocketAddr,
    connected: tokio::sync::OnceCell<RemoteLedger>,
}

impl LazyLedger {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            connected: tokio::sync::OnceCell::new(),
        }
    }

    /// Runs `f` on the ledger (connecting first if need be).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RemoteLedger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, String> {
        let addr = self.addr;
        let ledger = self
            .connected
            .get_or_try_init(|| blocking(move || RemoteLedger::connect(addr)))
            .await?
            .clone();
        blocking(move || f(&ledger)).await
    }
}

/// Runs a blocking call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn unexpected(r: &Response) -> LedgerError {
    LedgerError::Refused(format!("unexpected answer {r:?}"))
}

/// The read side and settlement; channel-opening operations need the
/// payer's key and go through [`RemoteLedger::authorized`].
impl Ledger for RemoteLedger {
    fn domain(&self) -> &str {
        &self.domain
    }

    fn balance(&self, account: [u8; 32]) -> Result<u64, LedgerError> {
        self.amount(&Request::Balance { account })
    }

    fn open(&self, _: [u8; 32], _: [u8; 32], _: [u8; 32], _: u64) -> Result<ChannelState, LedgerError> {
        Err(LedgerError::Refused(
            "a remote ledger opens channels only when signed: use `authorized`".into(),
        ))
    }

    fn top_up(&self, _: [u8; 32], _: u64) -> Result<ChannelState, LedgerError> {
        Err(LedgerError::Refused(
            "a remote ledger tops up only when signed: use `authorized`".into(),
        ))
    }

    fn state(&self, id: [u8; 32]) -> Result<ChannelState, LedgerError> {
        self.channel(&Request::State { id })
    }

    fn settle(&self, receipt: &SignedReceipt, _now: u64) -> Result<u64, LedgerError> {
        self.amount(&Request::Settle {
            receipt: receipt.clone(),
        })
    }

    fn start_close(&self, _: [u8; 32], _: u64) -> Result<ChannelState, LedgerError> {
        Err(LedgerError::Refused(
            "a remote ledger closes only when signed: use `authorized`".into(),
        ))
    }

    fn finalize(&self, id: [u8; 32], _now: u64) -> Result<u64, LedgerError> {
        self.amount(&Request::Finalize { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn channels_over_tcp_need_the_payers_signature() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let ledger = EmbeddedLedger::with_db(&db, "test", 60).expect("ledger");
        let payer = SigningKey::from_bytes(&[1; 32]);
        ledger.fund(payer.verifying_key().to_bytes(), 1000).expect("fund");
        let addr = listen("127.0.0.1:0".parse().expect("addr"), ledger)
            .await
            .expect("listen");
        tokio::task::spawn_blocking(move || {
            let remote = RemoteLedger::connect(addr).expect("connect");
            assert_eq!(remote.domain(), "test");
            let thief = SigningKey::from_bytes(&[2; 32]);
            let account = payer.verifying_key().to_bytes();
            let open = Signed::Open {
                id: [9; 32],
                payee: [3; 32],
                deposit: 600,
            };
            // Someone else's signature does not spend the payer's balance.
            let forged = thief.sign(&open.message("test")).to_bytes().to_vec();
            assert!(matches!(
                remote.call(&Request::Authorized {
                    account,
                    op: open.clone(),
                    signature: forged
                }),
                Err(LedgerError::Refused(_))
            ));
            let state = remote.authorized(&payer, open).expect("open");
            assert_eq!((state.deposit, remote.balance(account).expect("balance")), (600, 400));
            let top_up = Signed::TopUp {
                id: [9; 32],
                amount: 100,
                expected_deposit: 600,
            };
            remote.authorized(&payer, top_up.clone()).expect("top up");
            assert!(
                remote.authorized(&payer, top_up).is_err(),
                "a replayed top-up is refused"
            );
            assert_eq!(remote.state([9; 32]).expect("state").deposit, 700);
            assert!(matches!(
                remote.open([8; 32], account, [3; 32], 1),
                Err(LedgerError::Refused(_))
            ));
        })
        .await
        .expect("client");
    }
}
