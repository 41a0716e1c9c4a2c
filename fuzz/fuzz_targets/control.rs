//! Control messages from a peer: the postcard bodies of the circuit stream
//! (`LinkMessage`) and of the layered messages inside it (`ForwardMessage`,
//! `BackwardMessage`), the handshakes a CREATE or CREATED starts, and the
//! layered bytes every hop and the client open.
//!
//! - Decoding never panics, and what decodes encodes back to the same value.
//! - A CREATE with a fuzzed onionskin is answered or refused without a
//!   panic; a fuzzed CREATED/EXTENDED never completes the client's handshake.
//! - The input as layered bytes is refused by every hop and by the client.
//! - A genuinely sealed control message, each way, with the input XORed onto
//!   it: only the unmodified one is accepted, forward ones at the first hop.
//! - Whatever decodes as a `ForwardMessage`/`BackwardMessage` travels the
//!   circuit sealed and arrives intact.
#![no_main]

use std::sync::{Mutex, OnceLock};

use hopwire_fuzz::{client_hello, lock, write_seeds, xor, Net, Stop, NOW_UNIX};
use hopwire_proto::onion::cell::{BackwardMessage, Create, ForwardMessage, LinkMessage};
use hopwire_proto::onion::circuit::{ClientCircuit, HopCircuit};
use hopwire_proto::onion::handshake::{ClientOnionskin, ServerOnionskin};
use hopwire_proto::onion::layer::DataCipher;
use hopwire_proto::session::{ExitHello, SessionParams};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn net() -> &'static Mutex<Net> {
    static NET: OnceLock<Mutex<Net>> = OnceLock::new();
    NET.get_or_init(|| Mutex::new(Net::build(3, 3)))
}

/// Decodes `data` as a `T`; if it decodes, it must encode and decode back
/// to the same value.
fn decode<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(data).ok()?;
    let bytes = postcard::to_stdvec(&value).expect("a decoded message encodes");
    let back: T = postcard::from_bytes(&bytes).expect("an encoded message decodes");
    assert_eq!(back, value, "postcard round trip");
    Some(value)
}

/// Where a genuine forward message goes: hop `which % hops`.
fn forward_message(net: &mut Net, which: u8, message: &ForwardMessage, mask: &[u8]) {
    let hop = usize::from(which) % net.hops();
    let LinkMessage::Relay { mut layered } = net.client.seal_control(hop, message).expect("seals") else {
        panic!("seal_control gives a RELAY")
    };
    let changed = xor(&mut layered, mask);
    let r = net.control_forward(layered);
    if changed {
        assert_eq!(
            r,
            Err(Stop::Node(0)),
            "tampered control message for hop {hop} got past the first hop"
        );
    } else {
        assert_eq!(r, Ok((hop, message.clone())), "genuine control message for hop {hop}");
    }
}

fn backward_message(net: &mut Net, which: u8, message: &BackwardMessage, mask: &[u8]) {
    let hop = usize::from(which) % net.hops();
    let mut layered = net.control_reply(hop, message);
    let changed = xor(&mut layered, mask);
    let r = net.client.open_control(layered);
    if changed {
        assert!(r.is_err(), "tampered reply from hop {hop} accepted: {r:?}");
    } else {
        assert_eq!(r, Ok((hop, message.clone())), "genuine reply from hop {hop}");
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let enc = |m: &dyn erased::Encode| m.encode();
    let skin = ClientOnionskin {
        key_id: [1; 8],
        x: [9; 32],
        offers_aes: true,
    };
    let server = ServerOnionskin {
        y: [9; 32],
        auth: [2; 32],
        data_cipher: DataCipher::Aes256Gcm,
    };
    let params = SessionParams {
        inner_addr: [100, 87, 0, 2].into(),
        inner_v6: Some("fd68:7769:7200::6457:2".parse().expect("seed address")),
        gateway: [100, 87, 0, 1].into(),
        dns: vec![[100, 87, 0, 1].into()],
    };
    let mut seeds = vec![
        enc(&LinkMessage::Create(Create {
            circuit_id: 7,
            onionskin: skin.clone(),
            max_extends: 2,
        })),
        enc(&LinkMessage::Created {
            onionskin: server.clone(),
        }),
        enc(&LinkMessage::Relay { layered: vec![0; 40] }),
        enc(&LinkMessage::Destroy { reason: "bye".into() }),
        enc(&ForwardMessage::Extend {
            addr: "198.18.10.2:4433".parse().expect("addr"),
            identity: [2; 32],
            onionskin: skin,
        }),
        enc(&ForwardMessage::Extend {
            addr: "[2001:db8::1]:4433".parse().expect("addr"),
            identity: [2; 32],
            onionskin: ClientOnionskin {
                key_id: [0; 8],
                x: [0; 32],
                offers_aes: false,
            },
        }),
        enc(&ForwardMessage::Begin { hello: client_hello() }),
        enc(&BackwardMessage::Extended { onionskin: server }),
        enc(&BackwardMessage::Began {
            hello: ExitHello::Accepted(params),
        }),
        enc(&BackwardMessage::Began {
            hello: ExitHello::Refused { reason: "full".into() },
        }),
        enc(&BackwardMessage::Failed { reason: "no".into() }),
        enc(&BackwardMessage::Unpaid { reason: "late".into() }),
    ];
    // Layered messages sealed on a circuit with other keys.
    let mut other = Net::build(103, 3);
    for hop in 0..3 {
        if let LinkMessage::Relay { layered } = other
            .client
            .seal_control(hop, &ForwardMessage::Begin { hello: client_hello() })
            .expect("seals")
        {
            seeds.push(layered);
        }
        seeds.push(other.control_reply(hop, &BackwardMessage::Failed { reason: "x".into() }));
    }
    seeds
}

/// Lets `seeds` encode messages of different types in one list.
mod erased {
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("seed encodes")
        }
    }
}

fuzz_target!(
    init: {
        write_seeds(seeds());
        drop(lock(net()));
    },
    |data: &[u8]| {
        let link = decode::<LinkMessage>(data);
        let forward = decode::<ForwardMessage>(data);
        let backward = decode::<BackwardMessage>(data);

        let mut net = lock(net());
        let net = &mut *net;

        // Handshakes a peer starts or answers.
        if let Some(LinkMessage::Create(mut create)) = link.clone() {
            // Half the time, name the node's real onion key so the
            // handshake itself runs on the fuzzed public value.
            let node = &net.nodes[usize::from(create.max_extends) % net.hops()];
            if create.circuit_id & 1 == 0 {
                create.onionskin.key_id = hopwire_proto::onion::handshake::key_id(&node.onion.public());
            }
            let answer = HopCircuit::create(&mut net.rng, &node.identity, &node.onion, NOW_UNIX, 9usize, &create, node.takes_aes);
            if let Ok((hop, created)) = answer {
                assert!(matches!(created, LinkMessage::Created { .. }));
                assert!(hop.max_extends <= 2, "extend budget is capped");
            }
        }
        let reply = match (&link, &backward) {
            (Some(LinkMessage::Created { onionskin }), _) | (_, Some(BackwardMessage::Extended { onionskin })) => {
                Some(onionskin.clone())
            }
            _ => None,
        };
        if let Some(onionskin) = reply {
            let node = &net.nodes[0];
            let mut client = ClientCircuit::new();
            client.create(&mut net.rng, 1, node.identity, node.onion.public(), 2);
            assert!(client.add_hop(&onionskin).is_err(), "a forged CREATED completed the handshake");
        }

        // The input as layered bytes, at every hop and at the client.
        for n in 0..net.hops() {
            let r = lock(&net.hop(n)).forward_control(data.to_vec());
            assert!(r.is_err(), "hop {n} opened forged control bytes: {r:?}");
        }
        let r = net.client.open_control(data.to_vec());
        assert!(r.is_err(), "client opened forged control bytes: {r:?}");

        // Genuine messages, tampered with by the input.
        let (which, mask) = data.split_first().map_or((0, data), |(&w, m)| (w, m));
        forward_message(net, which, &ForwardMessage::Begin { hello: client_hello() }, mask);
        backward_message(net, which, &BackwardMessage::Failed { reason: "full".into() }, mask);

        // Whatever decoded travels sealed and arrives intact.
        if let Some(message) = forward {
            forward_message(net, which, &message, &[]);
        }
        if let Some(message) = backward {
            backward_message(net, which, &message, &[]);
        }
    }
);
