//! Pair-style tests: a client and up to three hops driven in memory, with a
//! fixed clock and seeded randomness, through the real hop and table code.

use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

use crate::testkit::{now, Net, Stop};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 10, i as u8], 4433))
}

/// The index of the node that dropped a cell (`hops` for the client).
fn stopped_at(net: &Net, stop: Stop) -> usize {
    match stop {
        Stop::Node(n) => n,
        Stop::Client => net.hops(),
    }
}

trait Shims {
    /// Sends a cell from the client; what the exit delivered, or the index
    /// of the node that dropped it.
    fn forward(&mut self, cell: Vec<u8>) -> Result<Vec<u8>, usize>;
    /// Sends a payload from the exit, with one bit flipped at byte
    /// `tamper` if asked; what the client opened, or where it died.
    fn backward(&mut self, payload: &[u8], tamper: Option<usize>) -> Result<Vec<u8>, usize>;
}

impl Shims for Net {
    fn forward(&mut self, cell: Vec<u8>) -> Result<Vec<u8>, usize> {
        self.forward_from(0, cell).map_err(|s| stopped_at(self, s))
    }

    fn backward(&mut self, payload: &[u8], tamper: Option<usize>) -> Result<Vec<u8>, usize> {
        let mut cell = self.exit_sealed(payload);
        if let Some(i) = tamper {
            let at = i % cell.len();
            cell[at] ^= 0x10;
        }
        let link = self.hops() - 1;
        self.backward_from(link, cell).map_err(|s| stopped_at(self, s))
    }
}

#[test]
fn each_hop_meters_exactly_the_cell_size_the_client_pays_for() {
    for hops in 1..=3 {
        let mut net = Net::build(40 + hops as u64, hops);
        let mut expected = vec![0u64; hops];
        for size in [0usize, 1, 100, 1300] {
            let payload = vec![9u8; size];
            let cell = net.sealed(&payload);
            assert_eq!(net.forward(cell), Ok(payload.clone()));
            assert_eq!(net.backward(&payload, None), Ok(payload));
            for (hop, e) in expected.iter_mut().enumerate() {
                *e += 2 * cell_size(size as u64, hops, hop);
            }
        }
        for (hop, e) in expected.iter().enumerate() {
            let (h, _) = net.nodes[hop].table.get(hop, net.ids[hop]).expect("known");
            assert_eq!(
                lock(&h).meter.carried,
                *e,
                "{hops}-hop circuit, hop {hop}: metered bytes and the payment code's cell size drifted apart"
            );
        }
    }
}

#[test]
fn cells_cross_one_two_and_three_hops_intact_both_ways() {
    for hops in 1..=3 {
        let mut net = Net::build(hops as u64, hops);
        for size in [0, 1, 100, 1300] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 + hops) as u8).collect();
            let cell = net.sealed(&payload);
            assert_eq!(cell.len(), payload.len() + cell_overhead(hops));
            assert_eq!(
                net.forward(cell),
                Ok(payload.clone()),
                "{hops} hops, {size} bytes forward"
            );
            assert_eq!(
                net.backward(&payload, None),
                Ok(payload),
                "{hops} hops, {size} bytes backward"
            );
        }
        assert!((0..hops).all(|n| net.drops(n) == 0));
    }
}

/// Each hop's data layer is AES-256-GCM where the client offers it and
/// the hop takes it, ChaCha20-Poly1305 elsewhere, in any mix.
#[test]
fn data_layers_mix_ciphers_hop_by_hop() {
    use DataCipher::{Aes256Gcm as Aes, ChaCha20Poly1305 as ChaCha};
    let cases: [(bool, &[bool], &[DataCipher]); 4] = [
        (true, &[true, false, true], &[Aes, ChaCha, Aes]),
        (true, &[false, true], &[ChaCha, Aes]),
        (false, &[true, true, true], &[ChaCha, ChaCha, ChaCha]),
        (true, &[true], &[Aes]),
    ];
    for (seed, (offers, takes, ciphers)) in cases.into_iter().enumerate() {
        let mut net = Net::build_with_ciphers(seed as u64, offers, takes);
        assert_eq!(net.client.data_ciphers(), ciphers);
        for size in [0, 1300] {
            let payload = vec![seed as u8; size];
            let cell = net.sealed(&payload);
            assert_eq!(net.forward(cell), Ok(payload.clone()), "{ciphers:?} forward");
            assert_eq!(net.backward(&payload, None), Ok(payload), "{ciphers:?} backward");
        }
    }
}

#[test]
fn a_flipped_bit_dies_at_the_next_hop_and_is_counted() {
    let mut net = Net::build(10, 3);
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..300 {
        let cell = net.sealed(b"some wireguard datagram");
        let mut bad = cell.clone();
        let i = rng.gen_range(0..bad.len());
        bad[i] ^= 1 << rng.gen_range(0..8);
        let before = net.drops(0);
        assert_eq!(
            net.forward(bad),
            Err(0),
            "flip at byte {i} was not dropped by the guard"
        );
        assert_eq!(net.drops(0), before + 1);
    }
    // Nothing was forwarded: the middle and exit never saw a cell.
    assert_eq!(net.drops(1) + net.drops(2), 0);
    // Backward, relays cannot check the exit's layer (only the client holds
    // its key): a flipped circuit id dies at the middle, any other flip at
    // the client. Never is a tampered reply accepted.
    let reply_cell_len = CIRCUIT_ID_LEN + HOP_OVERHEAD + b"reply".len();
    for i in 0..reply_cell_len {
        let dropped_at = net.backward(b"reply", Some(i)).expect_err("tampered reply accepted");
        let expected = if i < CIRCUIT_ID_LEN { 1 } else { 3 };
        assert_eq!(dropped_at, expected, "flip at byte {i}");
    }
    let ok = net.sealed(b"still works");
    assert_eq!(net.forward(ok), Ok(b"still works".to_vec()));
}

#[test]
fn replayed_unknown_and_truncated_cells_are_dropped_and_counted() {
    let mut net = Net::build(11, 3);
    let cell = net.sealed(b"once");
    assert!(net.forward(cell.clone()).is_ok());
    assert_eq!(net.forward(cell.clone()), Err(0));
    assert_eq!(net.nodes[0].table.drops.replayed.load(Ordering::Relaxed), 1);

    let mut unknown = net.sealed(b"x");
    unknown[..4].copy_from_slice(&999u32.to_be_bytes());
    assert_eq!(net.forward(unknown), Err(0));
    assert_eq!(net.nodes[0].table.drops.unknown_circuit.load(Ordering::Relaxed), 1);

    for len in [0, 3, 4, 10, CIRCUIT_ID_LEN + LAYER_OVERHEAD - 1] {
        let mut short = cell[..len].to_vec();
        assert!(matches!(
            net.nodes[0].table.route(0, &mut short, 0..len, now()),
            Routed::Dropped
        ));
    }
    assert_eq!(net.nodes[0].table.drops.truncated.load(Ordering::Relaxed), 5);
    // A cell that arrives on the wrong link is an unknown circuit there.
    let mut wrong_link = net.sealed(b"y");
    let all = 0..wrong_link.len();
    assert!(matches!(
        net.nodes[0].table.route(5, &mut wrong_link, all, now()),
        Routed::Dropped
    ));
}

#[test]
fn a_backward_cell_is_wrapped_in_its_room_and_without_room_is_dropped() {
    let mut net = Net::build(13, 2);
    // The exit (node 1) seals a cell; the guard (node 0) receives it on link 1.
    let cell = net.exit_sealed(b"down");
    let table = &net.nodes[0].table;
    let mut tight = vec![0u8; WRAP_HEADROOM + cell.len() + WRAP_TAILROOM];
    let at = WRAP_HEADROOM..WRAP_HEADROOM + cell.len();
    for (room_before, room_after) in [(WRAP_HEADROOM - 1, WRAP_TAILROOM), (WRAP_HEADROOM, WRAP_TAILROOM - 1)] {
        let mut buf = vec![0u8; room_before + cell.len() + room_after];
        buf[room_before..room_before + cell.len()].copy_from_slice(&cell);
        let cell_at = room_before..room_before + cell.len();
        assert!(matches!(table.route(1, &mut buf, cell_at, now()), Routed::Dropped));
    }
    assert_eq!(table.drops.truncated.load(Ordering::Relaxed), 2);
    tight[at.clone()].copy_from_slice(&cell);
    match table.route(1, &mut tight, at, now()) {
        Routed::Relay { link, range } => {
            assert_eq!(link, 0, "towards the client");
            assert_eq!(range, 0..tight.len(), "the room used, no more");
            let wrapped = tight[range].to_vec();
            assert_eq!(net.backward_from(0, wrapped), Ok(b"down".to_vec()));
        }
        other => panic!("routed as {other:?}"),
    }
}

#[test]
fn reordered_cells_within_the_window_still_arrive() {
    let mut net = Net::build(12, 2);
    let cells: Vec<Vec<u8>> = (0..50u8).map(|i| net.sealed(&[i; 40])).collect();
    for (i, cell) in cells.into_iter().enumerate().rev() {
        assert_eq!(net.forward(cell), Ok(vec![i as u8; 40]));
    }
}

#[test]
fn the_client_sees_which_hops_sent_the_backward_cells_lost_on_the_way() {
    let mut net = Net::build(14, 3);
    // From the exit (node 2, leaving on link 2) towards the client; lost as
    // it would cross link `lost_on`.
    fn down(net: &mut Net, lost_on: Option<usize>) {
        let mut cell = net.exit_sealed(b"down");
        for link in [2, 1] {
            if lost_on == Some(link) {
                return;
            }
            cell = net.wrap_backward(link, cell).expect("wrapped");
        }
        if lost_on != Some(0) {
            assert_eq!(net.backward_from(0, cell), Ok(b"down".to_vec()));
        }
    }
    down(&mut net, None);
    down(&mut net, Some(2)); // sealed by the exit only
    down(&mut net, Some(1)); // by the exit and the middle
    down(&mut net, Some(0)); // by all three, lost on the last mile
    down(&mut net, Some(0));
    down(&mut net, None);
    let unseen: Vec<u64> = (0..3).map(|hop| net.client.unseen_backward(hop)).collect();
    assert_eq!(
        unseen,
        [2, 3, 3],
        "guard, middle, and the exit held to the middle (the one lost between them is not its claim alone)"
    );
    // A guard that seals cells of its own and drops them (or skips
    // counters) claims loss no hop beyond it saw: it is held to theirs.
    for _ in 0..10 {
        let mut buf = vec![0u8; WRAP_HEADROOM + 40 + WRAP_TAILROOM];
        let at = WRAP_HEADROOM..WRAP_HEADROOM + 40;
        assert!(lock(&net.hop(0)).backward_cell(&mut buf, at).is_ok());
    }
    down(&mut net, None);
    assert_eq!(
        net.client.unseen_backward(0),
        3,
        "the guard's own 12, held to the middle's 3"
    );
    assert_eq!(net.client.unseen_backward(3), 0, "no such hop");
    // On one hop the exit's counters are all there is.
    let mut one = Net::build(15, 1);
    for i in 0..5u8 {
        let cell = one.exit_sealed(&[i; 10]);
        if i != 2 {
            assert_eq!(one.backward_from(0, cell), Ok(vec![i; 10]));
        }
    }
    assert_eq!(one.client.unseen_backward(0), 1);
}

#[test]
fn circuits_stop_at_three_hops() {
    let mut net = Net::build(13, 3);
    let extra = [42u8; 32];
    assert_eq!(
        net.client.extend(&mut net.rng, addr(9), extra, extra).map(|_| ()),
        Err(CircuitError::TooManyHops)
    );
    let (exit, _) = net.nodes[2].table.get(2, net.ids[2]).expect("known");
    assert_eq!(lock(&exit).max_extends, 0);
    assert!(!lock(&exit).may_extend(), "the exit has no extend budget left");
    let (guard, _) = net.nodes[0].table.get(0, net.ids[0]).expect("known");
    assert!(!lock(&guard).may_extend(), "a hop extends once");
}

#[test]
fn relays_cap_the_extend_budget_a_client_asks_for() {
    let mut net = Net::new(16, 1);
    let create = net
        .client
        .create(&mut net.rng, 7, net.nodes[0].identity, net.nodes[0].onion.public(), 200);
    let LinkMessage::Create(create) = create else {
        panic!("expected CREATE")
    };
    net.create_at(0, &create);
    let (guard, _) = net.nodes[0].table.get(0, net.ids[0]).expect("known");
    assert_eq!(lock(&guard).max_extends, (MAX_HOPS - 1) as u8);
}

#[test]
fn a_relaying_hop_never_delivers_data() {
    let mut net = Net::build(17, 2);
    // The client seals only the guard's layer, as if the guard were the exit.
    net.client.hops.truncate(1);
    let cell = net.sealed(b"data for the wrong hop");
    assert_eq!(net.forward(cell), Err(0));
    assert_eq!(net.nodes[0].table.drops.misplaced.load(Ordering::Relaxed), 1);
}

#[test]
fn a_circuit_over_its_rate_is_cut_back() {
    let mut net = Net::build(19, 1);
    let (hop, _) = net.nodes[0].table.get(0, net.ids[0]).expect("known");
    lock(&hop).limit = Some(crate::ratelimit::TokenBucket::new(10_000, 3_000, now()));
    let mut delivered = 0;
    for _ in 0..10 {
        let cell = net.sealed(&[0u8; 900]);
        if net.forward(cell).is_ok() {
            delivered += 1;
        }
    }
    assert_eq!(delivered, 3, "only the burst passes at one instant");
    assert_eq!(net.nodes[0].table.drops.rate_limited.load(Ordering::Relaxed), 7);
}
