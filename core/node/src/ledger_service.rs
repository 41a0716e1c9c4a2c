//! The embedded ledger served over TCP: one JSON object per line each way
//! (the wire format and the client are `hopwire_net::ledger::service`).
//!
//! Operations that move an account's money (open, top up, start a close)
//! must carry that account's ed25519 signature over the operation; a top-up
//! names the deposit it expects, so a replayed one is refused. Nobody can
//! credit an account over the wire: a testnet funds its accounts when it
//! starts the ledger ([`EmbeddedLedger::fund`]).

use std::net::SocketAddr;
use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use hopwire_net::ledger::service::{Request, Response, Signed, MAX_LINE};
use hopwire_net::ledger::{EmbeddedLedger, Ledger, LedgerError};
use hopwire_proto::time::unix_now;

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

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use hopwire_net::ledger::service::RemoteLedger;

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
