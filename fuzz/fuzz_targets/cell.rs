//! Data cells from a peer, through real circuits of 1, 2 and 3 hops.
//!
//! 1. The input as a cell arriving at every node on every side (as is, and
//!    with the circuit id of that link put in front), and as the layers the
//!    client opens: nothing may panic, no hop may relay or deliver it
//!    forward, and the client never accepts it (an AEAD forgery is
//!    practically impossible). A hop does wrap an unauthenticated backward
//!    cell (only the client holds the exit's key), so backward cells are
//!    followed all the way to the client.
//! 2. A genuinely sealed cell, each way, with the input XORed onto it: only
//!    the unmodified cell gets through, and a forward one is dropped by the
//!    first hop.
#![no_main]

use std::sync::{Mutex, OnceLock};

use hopwire_fuzz::{lock, write_seeds, xor, Net, Stop};
use hopwire_proto::onion::cell::CIRCUIT_ID_LEN;
use libfuzzer_sys::fuzz_target;

const PAYLOAD: &[u8] = b"a wireguard datagram, or something like one";

fn nets() -> &'static Mutex<Vec<Net>> {
    static NETS: OnceLock<Mutex<Vec<Net>>> = OnceLock::new();
    NETS.get_or_init(|| Mutex::new((1..=3).map(|hops| Net::build(hops as u64, hops)).collect()))
}

fn with_id(id: u32, data: &[u8]) -> Vec<u8> {
    let mut cell = id.to_be_bytes().to_vec();
    cell.extend_from_slice(data);
    cell
}

fn random_cell(net: &mut Net, data: &[u8]) {
    let hops = net.hops();
    for n in 0..hops {
        // Forward side: link n, where the circuit id is ids[n].
        for cell in [data.to_vec(), with_id(net.ids[n], data)] {
            let r = net.forward_from(n, cell);
            assert_eq!(
                r,
                Err(Stop::Node(n)),
                "node {n} of {hops} let a forged forward cell through"
            );
        }
        // Backward side: link n + 1, from the next node (or, for the exit,
        // from nowhere: it has no next side).
        let next_id = net.ids.get(n + 1).copied().unwrap_or(0);
        for cell in [data.to_vec(), with_id(next_id, data)] {
            let r = net.backward_from(n + 1, cell);
            assert!(
                r.is_err(),
                "client of {hops} hops accepted a forged backward cell via node {n}: {r:?}"
            );
        }
    }
    let mut layer = data.to_vec();
    let r = net.client.open_data(&mut layer);
    assert!(r.is_err(), "client of {hops} hops opened forged layers: {r:?}");
}

fn tampered_cells(net: &mut Net, mask: &[u8]) {
    let hops = net.hops();
    let mut cell = net.sealed(PAYLOAD);
    let changed = xor(&mut cell, mask);
    let r = net.forward_from(0, cell);
    if changed {
        assert_eq!(
            r,
            Err(Stop::Node(0)),
            "tampered forward cell on {hops} hops got past the first hop"
        );
    } else {
        assert_eq!(r.as_deref(), Ok(PAYLOAD), "genuine forward cell on {hops} hops");
    }

    let mut cell = net.exit_sealed(PAYLOAD);
    let changed = xor(&mut cell, mask);
    let r = net.backward_from(hops - 1, cell);
    if changed {
        assert!(r.is_err(), "tampered backward cell on {hops} hops accepted: {r:?}");
    } else {
        assert_eq!(r.as_deref(), Ok(PAYLOAD), "genuine backward cell on {hops} hops");
    }
}

fuzz_target!(
    init: {
        // Seeds come from circuits with other keys: well-formed, but they
        // must not authenticate on the circuits under test.
        let mut seeds = Vec::new();
        for hops in 1..=3 {
            let mut net = Net::build(100 + hops as u64, hops);
            let net = &mut net;
            seeds.push(net.sealed(PAYLOAD));
            seeds.push(net.sealed(b""));
            seeds.push(net.exit_sealed(PAYLOAD));
            seeds.push(net.sealed(PAYLOAD)[CIRCUIT_ID_LEN..].to_vec());
        }
        seeds.push(vec![0; 8]);
        write_seeds(seeds);
        drop(lock(nets()));
    },
    |data: &[u8]| {
        let mut nets = lock(nets());
        for net in nets.iter_mut() {
            random_cell(net, data);
        }
        // Which circuit the genuine cells take: the first byte; the rest is the mask.
        if let Some((&which, mask)) = data.split_first() {
            tampered_cells(&mut nets[usize::from(which) % 3], mask);
        }
    }
);
