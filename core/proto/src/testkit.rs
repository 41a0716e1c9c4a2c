//! Test fixtures shared by the unit tests, the fuzz targets and the
//! benchmarks (feature `testkit`): node records with sensible defaults, and
//! a real circuit through 1-3 hops built in memory with a fixed clock and
//! seeded randomness, through the real hop and table code.
//!
//! Not part of the protocol: nothing in a node or client uses it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::onion::cell::{split_cell, BackwardMessage, Create, ForwardMessage, LinkMessage, CIRCUIT_ID_LEN};
use crate::onion::circuit::{
    headroom, CircuitTable, ClientCircuit, ControlAction, HopCircuit, Routed, WRAP_HEADROOM, WRAP_TAILROOM,
};
use crate::onion::keys::OnionKeys;
use crate::onion::layer::TAG_LEN;
use crate::pay::Quote;
use crate::record::{NodeRecord, Role, VerifiedRecord, RECORD_TTL, RECORD_VERSION};
use crate::session::{ClientHello, PROTOCOL_VERSION};
use crate::sync::lock;

/// A record for the node whose identity is `key`, issued at `now`: free,
/// 100 Mbit/s, default exit policy, no family, onion and WireGuard keys
/// derived from the identity. Change fields with struct update syntax.
pub fn record(key: &SigningKey, addr: &str, roles: &[Role], region: &str, now: u64) -> NodeRecord {
    let identity = key.verifying_key().to_bytes();
    NodeRecord {
        version: RECORD_VERSION,
        identity,
        quic_addr: addr.parse().unwrap_or_else(|e| panic!("fixture address {addr}: {e}")),
        roles: roles.to_vec(),
        onion_key: [identity[0]; 32],
        onion_key_expires: now + 7 * 24 * 3600,
        wg_key: [identity[1]; 32],
        region: region.into(),
        capacity_mbit: 100,
        quote: Quote::FREE,
        ledger: String::new(),
        payout: [0; 32],
        exit_rules: vec![],
        exit_default_rejects: true,
        family: vec![],
        seq: 1,
        issued_at: now,
        expires_at: now + RECORD_TTL,
    }
}

/// `record` signed by `key` and verified at `now`, as a client holds it.
pub fn verified(key: &SigningKey, record: &NodeRecord) -> VerifiedRecord {
    VerifiedRecord::from_bytes(&record.to_signed_bytes(key)).unwrap_or_else(|e| panic!("fixture record: {e}"))
}

/// The onion keys' clock: fixed, the circuit never waits.
pub const NOW_UNIX: u64 = 1_800_000_000;

/// One instant for the rate limiters (none is set, but `route` wants one).
pub fn now() -> Instant {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub struct Node {
    pub identity: [u8; 32],
    pub onion: OnionKeys,
    pub table: CircuitTable<usize>,
    /// Takes AES-256-GCM data layers when offered.
    pub takes_aes: bool,
}

/// A client and its circuit through `nodes`. Link `i` joins the client
/// (`i = 0`) or node `i - 1` to node `i`; `ids[i]` is the circuit id on it.
pub struct Net {
    pub rng: StdRng,
    pub nodes: Vec<Node>,
    pub client: ClientCircuit,
    pub ids: Vec<u32>,
}

/// Why a cell or control message did not get through, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Node `n` dropped it.
    Node(usize),
    /// The client refused it.
    Client,
}

impl Net {
    /// Builds a circuit through `hops` nodes with the real handshake, CREATE
    /// and EXTEND messages, hop state and circuit tables; AES-256-GCM data
    /// layers where this CPU has AES instructions, as the shells choose.
    pub fn build(seed: u64, hops: usize) -> Self {
        let aes = crate::onion::layer::aes_hardware();
        Self::build_with_ciphers(seed, aes, &vec![aes; hops])
    }

    /// Like [`Net::build`], through one node per entry of `takes_aes`
    /// (whether it takes AES-256-GCM data layers), with a client that
    /// offers them if `offers_aes`.
    pub fn build_with_ciphers(seed: u64, offers_aes: bool, takes_aes: &[bool]) -> Self {
        let hops = takes_aes.len();
        assert!((1..=3).contains(&hops));
        let mut net = Self::new(seed, hops);
        net.client = ClientCircuit::offering_aes(offers_aes);
        for (node, &takes) in net.nodes.iter_mut().zip(takes_aes) {
            node.takes_aes = takes;
        }
        let create = net
            .client
            .create(&mut net.rng, 7, net.nodes[0].identity, net.nodes[0].onion.public(), 2);
        let LinkMessage::Create(create) = create else {
            panic!("expected CREATE, got {create:?}")
        };
        let LinkMessage::Created { onionskin } = net.create_at(0, &create) else {
            panic!("expected CREATED")
        };
        net.client.add_hop(&onionskin).expect("first hop");
        for n in 1..hops {
            let (id, key) = (net.nodes[n].identity, net.nodes[n].onion.public());
            let addr = SocketAddr::from(([198, 18, 10, n as u8], 4433));
            let LinkMessage::Relay { mut layered } = net.client.extend(&mut net.rng, addr, id, key).expect("extend")
            else {
                panic!("expected RELAY")
            };
            // Carry the EXTEND to the last hop, which adds node `n`.
            let mut answer = None;
            for m in 0..n {
                let hop = net.hop(m);
                let action = lock(&hop).forward_control(layered.clone()).expect("control opens");
                match action {
                    ControlAction::Relay(inner) => layered = inner,
                    ControlAction::Here(ForwardMessage::Extend { onionskin, .. }) => {
                        assert_eq!(m, n - 1);
                        let next_id = 1000 + m as u32;
                        let max_extends = lock(&hop).max_extends - 1;
                        let create = Create {
                            circuit_id: next_id,
                            onionskin,
                            max_extends,
                        };
                        let LinkMessage::Created { onionskin } = net.create_at(n, &create) else {
                            panic!("expected CREATED")
                        };
                        net.nodes[m].table.extend(&hop, (n, next_id));
                        let mut reply = lock(&hop)
                            .reply(&BackwardMessage::Extended { onionskin })
                            .expect("reply seals");
                        for k in (0..m).rev() {
                            let LinkMessage::Relay { layered } = reply else {
                                panic!("relay")
                            };
                            reply = lock(&net.hop(k)).backward_control(&layered).expect("wraps");
                        }
                        answer = Some(reply);
                        break;
                    }
                    ControlAction::Here(other) => panic!("unexpected {other:?}"),
                }
            }
            let Some(LinkMessage::Relay { layered }) = answer else {
                panic!("EXTEND got no answer")
            };
            let (from, message) = net.client.open_control(layered).expect("opens");
            assert_eq!(from, n - 1);
            let BackwardMessage::Extended { onionskin } = message else {
                panic!("{message:?}")
            };
            net.client.add_hop(&onionskin).expect("hop added");
        }
        assert_eq!(net.client.len(), hops);
        net
    }

    /// `nodes` nodes and a client with no circuit yet.
    pub fn new(seed: u64, nodes: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..nodes)
            .map(|i| Node {
                identity: [i as u8 + 1; 32],
                onion: OnionKeys::generate(&mut rng, NOW_UNIX),
                table: CircuitTable::default(),
                takes_aes: crate::onion::layer::aes_hardware(),
            })
            .collect();
        Self {
            rng,
            nodes,
            client: ClientCircuit::new(),
            ids: Vec::new(),
        }
    }

    /// Node `n` answers a CREATE that arrived on link `n`.
    pub fn create_at(&mut self, n: usize, create: &Create) -> LinkMessage {
        let node = &mut self.nodes[n];
        let (hop, created) = HopCircuit::create(
            &mut self.rng,
            &node.identity,
            &node.onion,
            NOW_UNIX,
            n,
            create,
            node.takes_aes,
        )
        .expect("hop answers CREATE");
        assert!(node.table.insert(Arc::new(Mutex::new(hop))), "fresh circuit id");
        self.ids.push(create.circuit_id);
        created
    }

    /// Node `n`'s hop of the circuit.
    pub fn hop(&self, n: usize) -> Arc<Mutex<HopCircuit<usize>>> {
        self.nodes[n].table.get(n, self.ids[n]).expect("circuit known").0
    }

    pub fn hops(&self) -> usize {
        self.nodes.len()
    }

    /// Cells node `n` dropped, for any reason.
    pub fn drops(&self, n: usize) -> u64 {
        self.nodes[n].table.drops.total()
    }

    /// A data cell from the client carrying `payload`.
    pub fn sealed(&mut self, payload: &[u8]) -> Vec<u8> {
        let hops = self.client.len();
        let mut buf = vec![0u8; headroom(hops) + payload.len() + hops * TAG_LEN];
        buf[headroom(hops)..headroom(hops) + payload.len()].copy_from_slice(payload);
        let range = self
            .client
            .seal_data(&mut buf, payload.len(), self.ids[0])
            .expect("seals");
        buf[range].to_vec()
    }

    /// Sends a forward cell into node `from` (as if from link `from`) and on
    /// along the circuit; returns what the exit delivered.
    pub fn forward_from(&mut self, from: usize, mut cell: Vec<u8>) -> Result<Vec<u8>, Stop> {
        for n in from..self.hops() {
            let all = 0..cell.len();
            match self.nodes[n].table.route(n, &mut cell, all, now()) {
                Routed::Relay { link, range } => {
                    assert_eq!(link, n + 1, "relayed to the next node");
                    cell = cell[range].to_vec();
                }
                Routed::Deliver { circuit, payload } => {
                    assert_eq!(circuit, (n, self.ids[n]));
                    assert_eq!(n, self.hops() - 1, "only the last hop delivers");
                    return Ok(cell[payload].to_vec());
                }
                Routed::Dropped => return Err(Stop::Node(n)),
            }
        }
        panic!("cell went past the last hop")
    }

    /// A backward cell sealed by the exit for the client, as it leaves the
    /// exit (`circuit id | layer`).
    pub fn exit_sealed(&mut self, payload: &[u8]) -> Vec<u8> {
        let last = self.hops() - 1;
        let mut out = vec![0u8; payload.len() + 64];
        let (link, len) = lock(&self.hop(last)).seal_payload(payload, &mut out).expect("seals");
        assert_eq!(link, last);
        out.truncate(len);
        out
    }

    /// Sends a backward cell that arrived on link `link` (from node `link`,
    /// or from beyond the exit if `link == hops`) towards the client;
    /// returns what the client opened.
    pub fn backward_from(&mut self, link: usize, mut cell: Vec<u8>) -> Result<Vec<u8>, Stop> {
        for link in (1..=link).rev() {
            cell = self.wrap_backward(link, cell)?;
        }
        let (id, _) = split_cell(&cell).ok_or(Stop::Client)?;
        if id != self.ids[0] {
            return Err(Stop::Client);
        }
        let range = self
            .client
            .open_data(&mut cell[CIRCUIT_ID_LEN..])
            .map_err(|_| Stop::Client)?;
        Ok(cell[CIRCUIT_ID_LEN..][range].to_vec())
    }

    /// A backward cell that arrived on link `link` (`link > 0`), wrapped by
    /// node `link - 1` as it leaves on link `link - 1`.
    pub fn wrap_backward(&mut self, link: usize, cell: Vec<u8>) -> Result<Vec<u8>, Stop> {
        let n = link - 1;
        // The cell with the room a hop wraps it in.
        let mut buf = vec![0u8; WRAP_HEADROOM + cell.len() + WRAP_TAILROOM];
        let at = WRAP_HEADROOM..WRAP_HEADROOM + cell.len();
        buf[at.clone()].copy_from_slice(&cell);
        match self.nodes[n].table.route(link, &mut buf, at, now()) {
            Routed::Relay { link: l, range } => {
                assert_eq!(l, n, "wrapped for the previous link");
                Ok(buf[range].to_vec())
            }
            Routed::Dropped => Err(Stop::Node(n)),
            other => panic!("backward cell routed as {other:?}"),
        }
    }

    /// Passes a forward control message (layered bytes) from the client
    /// along the circuit; returns which hop it was for and what it says.
    pub fn control_forward(&mut self, mut layered: Vec<u8>) -> Result<(usize, ForwardMessage), Stop> {
        for n in 0..self.hops() {
            let action = lock(&self.hop(n)).forward_control(layered);
            match action {
                Ok(ControlAction::Relay(inner)) => layered = inner,
                Ok(ControlAction::Here(message)) => return Ok((n, message)),
                Err(_) => return Err(Stop::Node(n)),
            }
        }
        panic!("control message went past the last hop")
    }

    /// A backward control message from hop `n`, wrapped by the hops before
    /// it, as it reaches the client.
    pub fn control_reply(&mut self, n: usize, message: &BackwardMessage) -> Vec<u8> {
        let mut reply = lock(&self.hop(n)).reply(message).expect("reply seals");
        for k in (0..n).rev() {
            let LinkMessage::Relay { layered } = reply else {
                panic!("relay")
            };
            reply = lock(&self.hop(k)).backward_control(&layered).expect("wraps");
        }
        let LinkMessage::Relay { layered } = reply else {
            panic!("relay")
        };
        layered
    }
}

/// A client hello as a peer would send it.
pub fn client_hello() -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        wg_key: [3; 32],
        previous_addr: Some(Ipv4Addr::new(100, 87, 0, 9)),
    }
}
