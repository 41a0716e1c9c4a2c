//! Framed setup messages on a QUIC stream (`framing::read_message`: 2-byte
//! length, postcard body) as an exit, a client and a relay read them: a
//! `ClientHello`, an `ExitHello`, and the `LinkMessage`s of a circuit stream,
//! read one after another from the input until it runs out or is refused.
//!
//! Nothing may panic; a message that is read writes back (`write_message`)
//! to a frame that reads as the same message.
#![no_main]

use std::sync::OnceLock;

use hopwire_fuzz::{client_hello, write_seeds};
use hopwire_net::framing::{read_message, write_message, MAX_MESSAGE};
use hopwire_proto::onion::cell::LinkMessage;
use hopwire_proto::session::{ClientHello, ExitHello, SessionParams};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// Reads one message of type `T` from `input`; checks it writes back to a
/// frame that reads as the same message.
async fn read_one<T>(input: &mut &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let before = input.len();
    let message = read_message::<T>(input).await;
    assert!(input.len() <= before);
    let message = message.ok()?;
    let mut frame = Vec::new();
    write_message(&mut frame, &message)
        .await
        .expect("a message that was read writes back");
    assert!(frame.len() <= 2 + MAX_MESSAGE);
    let back: T = read_message(&mut frame.as_slice())
        .await
        .expect("a written frame reads");
    assert_eq!(back, message, "frame round trip");
    Some(message)
}

fn frame<T: Serialize>(message: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(message).expect("encodes");
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let accepted = ExitHello::Accepted(SessionParams {
        inner_addr: [100, 87, 0, 2].into(),
        inner_v6: Some("fd68:7769:7200::6457:2".parse().expect("seed address")),
        gateway: [100, 87, 0, 1].into(),
        dns: vec![[100, 87, 0, 1].into()],
    });
    let mut stream = frame(&client_hello());
    stream.extend(frame(&accepted));
    stream.extend(frame(&LinkMessage::Relay { layered: vec![1; 30] }));
    stream.extend(frame(&LinkMessage::Destroy { reason: "done".into() }));
    vec![
        frame(&client_hello()),
        frame(&accepted),
        frame(&ExitHello::Refused { reason: "full".into() }),
        stream,
        vec![0xff, 0xff],
        vec![0, 3, 0xff, 0xff, 0xff],
    ]
}

fuzz_target!(
    init: {
        write_seeds(seeds());
    },
    |data: &[u8]| {
        runtime().block_on(async {
            // Each reader on its own, from the start of the input.
            read_one::<ClientHello>(&mut &data[..]).await;
            read_one::<ExitHello>(&mut &data[..]).await;
            // A stream: hello, answer, then circuit messages.
            let mut input = data;
            if read_one::<ClientHello>(&mut input).await.is_none() {
                return;
            }
            if read_one::<ExitHello>(&mut input).await.is_none() {
                return;
            }
            while !input.is_empty() && read_one::<LinkMessage>(&mut input).await.is_some() {}
        });
        // The bodies alone, decoded directly.
        let _ = postcard::from_bytes::<ClientHello>(data);
        let _ = postcard::from_bytes::<ExitHello>(data);
    }
);
