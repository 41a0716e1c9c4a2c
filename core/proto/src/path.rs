//! Path selection, sans-IO: which nodes a circuit goes through.
//!
//! The exit is chosen first (role, region), then the guard (the one the
//! client used before, if it still fits, so that a client does not show
//! itself to many first hops over time), then the middle. No node twice, no
//! two nodes of one declared family, no two in one IPv4 /16 or IPv6 /32:
//! nodes that are likely one operator or one network never share a circuit.

use std::net::IpAddr;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::onion::cell::MAX_HOPS;
use crate::record::{Role, VerifiedRecord};

/// What the client asks of a path.
#[derive(Debug, Clone, Default)]
pub struct PathRequest {
    /// Number of hops, 1 to [`MAX_HOPS`]; the last is the exit.
    pub hops: usize,
    /// Only exits in this region (ISO country code).
    pub country: Option<String>,
    /// Only this exit (its identity).
    pub exit: Option<[u8; 32]>,
    /// The guard used before, kept if it still fits.
    pub guard: Option<[u8; 32]>,
    /// Nodes not to use (e.g. one that just failed).
    pub avoid: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a circuit has 1 to {MAX_HOPS} hops, not {0}")]
    Hops(usize),
    #[error("no usable exit{}", .0.as_ref().map(|c| format!(" in {c}")).unwrap_or_default())]
    NoExit(Option<String>),
    #[error("no usable {0} relay: need nodes of other operators and other networks (/16) than the rest of the path")]
    NoRelay(&'static str),
}

/// The network a node's address belongs to for the "not two in one
/// network" rule: its IPv4 /16 or IPv6 /32.
fn network(addr: IpAddr) -> (bool, u32) {
    match addr {
        IpAddr::V4(a) => (true, u32::from(a) >> 16),
        IpAddr::V6(a) => (false, (u128::from(a) >> 96) as u32),
    }
}

/// True if `a` and `b` may share a circuit.
pub fn compatible(a: &VerifiedRecord, b: &VerifiedRecord) -> bool {
    let (a, b) = (a.record(), b.record());
    a.identity != b.identity
        && !a.family.contains(&b.identity)
        && !b.family.contains(&a.identity)
        && network(a.quic_addr.ip()) != network(b.quic_addr.ip())
}

/// Picks a path from `candidates`, first hop first. `now` (unix seconds)
/// rules out nodes whose onion key has expired.
pub fn select<R: Rng>(
    rng: &mut R,
    candidates: &[VerifiedRecord],
    request: &PathRequest,
    now: u64,
) -> Result<Vec<VerifiedRecord>, PathError> {
    if request.hops == 0 || request.hops > MAX_HOPS {
        return Err(PathError::Hops(request.hops));
    }
    let usable: Vec<&VerifiedRecord> = candidates
        .iter()
        .filter(|c| c.record().onion_key_expires > now && !request.avoid.contains(&c.record().identity))
        .collect();
    let exits: Vec<&VerifiedRecord> = usable
        .iter()
        .copied()
        .filter(|c| c.record().has_role(Role::Exit))
        .filter(|c| request.exit.is_none_or(|id| c.record().identity == id))
        .filter(|c| {
            request
                .country
                .as_ref()
                .is_none_or(|cc| c.record().region.eq_ignore_ascii_case(cc))
        })
        .collect();
    let relays: Vec<&VerifiedRecord> = usable
        .iter()
        .copied()
        .filter(|c| c.record().has_role(Role::Relay))
        .collect();

    // Try exits in random order: one exit may leave no room for relays.
    let mut exits = exits;
    exits.shuffle(rng);
    let mut last_error = PathError::NoExit(request.country.clone());
    for exit in exits {
        let mut path = vec![exit];
        if request.hops >= 2 {
            let fits = |r: &&VerifiedRecord| path.iter().all(|p| compatible(r, p));
            let kept = request
                .guard
                .and_then(|g| relays.iter().find(|r| r.record().identity == g))
                .filter(|g| fits(g));
            let guard = match kept {
                Some(g) => Some(*g),
                None => relays
                    .iter()
                    .filter(|r| fits(r))
                    .copied()
                    .collect::<Vec<_>>()
                    .choose(rng)
                    .copied(),
            };
            let Some(guard) = guard else {
                last_error = PathError::NoRelay("guard");
                continue;
            };
            path.push(guard);
        }
        if request.hops == 3 {
            let middle = relays
                .iter()
                .filter(|r| path.iter().all(|p| compatible(r, p)))
                .copied()
                .collect::<Vec<_>>()
                .choose(rng)
                .copied();
            let Some(middle) = middle else {
                last_error = PathError::NoRelay("middle");
                continue;
            };
            path.push(middle);
        }
        // Built exit-first; the circuit goes guard, middle, exit.
        let exit = path.remove(0);
        path.push(exit);
        return Ok(path.into_iter().cloned().collect());
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NodeRecord;
    use ed25519_dalek::SigningKey;
    use rand::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    fn node(seed: u8, addr: &str, roles: &[Role], region: &str) -> (SigningKey, NodeRecord) {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let record = NodeRecord {
            onion_key: [seed; 32],
            onion_key_expires: NOW + 1000,
            ..crate::testkit::record(&key, addr, roles, region, NOW)
        };
        (key, record)
    }

    fn verified(n: (SigningKey, NodeRecord)) -> VerifiedRecord {
        n.1.to_signed_string(&n.0).parse().expect("valid")
    }

    fn net() -> Vec<VerifiedRecord> {
        [
            node(1, "198.18.1.2:4433", &[Role::Exit], "DE"),
            node(2, "198.19.1.2:4433", &[Role::Exit], "NL"),
            node(3, "100.65.0.2:4433", &[Role::Relay], "FR"),
            node(4, "100.66.0.2:4433", &[Role::Relay], "FR"),
            node(5, "100.67.0.2:4433", &[Role::Relay], "SE"),
            node(6, "100.68.0.2:4433", &[Role::Relay], "SE"),
        ]
        .into_iter()
        .map(verified)
        .collect()
    }

    fn req(hops: usize) -> PathRequest {
        PathRequest {
            hops,
            ..PathRequest::default()
        }
    }

    #[test]
    fn paths_follow_the_rules() {
        let nodes = net();
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for hops in 1..=3 {
                let path = select(&mut rng, &nodes, &req(hops), NOW).expect("a path exists");
                assert_eq!(path.len(), hops);
                assert!(path[hops - 1].record().has_role(Role::Exit));
                assert!(path[..hops - 1].iter().all(|r| r.record().has_role(Role::Relay)));
                for (i, a) in path.iter().enumerate() {
                    for b in &path[i + 1..] {
                        assert!(compatible(a, b), "{a} and {b} share a circuit");
                    }
                }
            }
        }
    }

    #[test]
    fn country_guard_and_avoid_are_honoured() {
        let nodes = net();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let nl = PathRequest {
            country: Some("nl".into()),
            ..req(3)
        };
        for _ in 0..20 {
            assert_eq!(
                select(&mut rng, &nodes, &nl, NOW).expect("path")[2].record().region,
                "NL"
            );
        }
        let guard = nodes[4].record().identity;
        let keep = PathRequest {
            guard: Some(guard),
            ..req(3)
        };
        for _ in 0..20 {
            assert_eq!(
                select(&mut rng, &nodes, &keep, NOW).expect("path")[0].record().identity,
                guard
            );
        }
        let avoid = PathRequest {
            avoid: vec![guard],
            ..keep
        };
        for _ in 0..20 {
            let path = select(&mut rng, &nodes, &avoid, NOW).expect("path");
            assert!(path.iter().all(|r| r.record().identity != guard));
        }
        let nowhere = PathRequest {
            country: Some("US".into()),
            ..req(1)
        };
        assert_eq!(
            select(&mut rng, &nodes, &nowhere, NOW),
            Err(PathError::NoExit(Some("US".into())))
        );
        assert_eq!(select(&mut rng, &nodes, &req(4), NOW), Err(PathError::Hops(4)));
    }

    #[test]
    fn family_subnet_and_expired_keys_rule_nodes_out() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        // Two relays, both in the exit's /16: no 2-hop path.
        let same_net: Vec<_> = [
            node(1, "198.18.1.2:4433", &[Role::Exit], "DE"),
            node(3, "198.18.7.2:4433", &[Role::Relay], "FR"),
        ]
        .into_iter()
        .map(verified)
        .collect();
        assert_eq!(
            select(&mut rng, &same_net, &req(2), NOW),
            Err(PathError::NoRelay("guard"))
        );
        // A relay of the exit's declared family.
        let exit = node(1, "198.18.1.2:4433", &[Role::Exit], "DE");
        let mut sibling = node(3, "100.65.0.2:4433", &[Role::Relay], "FR");
        sibling.1.family = vec![exit.1.identity];
        let family = vec![verified(exit), verified(sibling)];
        assert_eq!(
            select(&mut rng, &family, &req(2), NOW),
            Err(PathError::NoRelay("guard"))
        );
        // An exit whose onion key expired.
        let mut old = node(1, "198.18.1.2:4433", &[Role::Exit], "DE");
        old.1.onion_key_expires = NOW;
        assert_eq!(
            select(&mut rng, &[verified(old)], &req(1), NOW),
            Err(PathError::NoExit(None))
        );
    }
}
