//! A node's onion keys: the medium-term x25519 keys circuits are built
//! against. The current key is rotated every [`ROTATE_AFTER`]; the previous
//! one is still accepted for [`GRACE`], so clients holding a slightly old
//! record can still build circuits. Sans-IO: the caller passes the time.

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::handshake::key_id;

/// How long an onion key is the current one.
pub const ROTATE_AFTER: u64 = 7 * 24 * 3600;
/// How long a retired key is still accepted.
pub const GRACE: u64 = 24 * 3600;

/// The onion keys as stored on disk.
#[derive(Clone, Serialize, Deserialize)]
pub struct OnionKeys {
    current: [u8; 32],
    /// Unix seconds when the current key was made.
    current_since: u64,
    /// The previous key and when it was retired.
    previous: Option<([u8; 32], u64)>,
}

impl std::fmt::Debug for OnionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnionKeys")
            .field("current_since", &self.current_since)
            .finish_non_exhaustive()
    }
}

impl OnionKeys {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R, now: u64) -> Self {
        let mut current = [0u8; 32];
        rng.fill_bytes(&mut current);
        Self {
            current,
            current_since: now,
            previous: None,
        }
    }

    /// The public half of the current key, for the node record.
    pub fn public(&self) -> [u8; 32] {
        *PublicKey::from(&StaticSecret::from(self.current)).as_bytes()
    }

    /// Until when clients may build circuits against the current key: its
    /// rotation time plus the grace period.
    pub fn expires_at(&self) -> u64 {
        self.current_since + ROTATE_AFTER + GRACE
    }

    /// Makes a new current key if the old one is due; true if it did.
    pub fn rotate_if_due<R: RngCore + CryptoRng>(&mut self, rng: &mut R, now: u64) -> bool {
        if now < self.current_since + ROTATE_AFTER {
            return false;
        }
        let mut next = [0u8; 32];
        rng.fill_bytes(&mut next);
        self.previous = Some((self.current, now));
        self.current = next;
        self.current_since = now;
        true
    }

    /// The secret a handshake naming `id` was made against, if this node
    /// still accepts it at `now`.
    pub fn find(&self, id: &[u8; 8], now: u64) -> Option<StaticSecret> {
        let current = StaticSecret::from(self.current);
        if key_id(PublicKey::from(&current).as_bytes()) == *id {
            return Some(current);
        }
        let (previous, retired) = self.previous?;
        let previous = StaticSecret::from(previous);
        (now < retired + GRACE && key_id(PublicKey::from(&previous).as_bytes()) == *id).then_some(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn previous_key_works_for_the_grace_period_only() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t0 = 1_800_000_000;
        let mut keys = OnionKeys::generate(&mut rng, t0);
        let old = key_id(&keys.public());
        assert!(!keys.rotate_if_due(&mut rng, t0 + ROTATE_AFTER - 1));
        assert!(keys.rotate_if_due(&mut rng, t0 + ROTATE_AFTER));
        let new = key_id(&keys.public());
        assert_ne!(old, new);
        let t1 = t0 + ROTATE_AFTER;
        assert!(keys.find(&new, t1).is_some());
        assert!(
            keys.find(&old, t1 + GRACE - 1).is_some(),
            "old key inside the grace period"
        );
        assert!(keys.find(&old, t1 + GRACE).is_none(), "old key after the grace period");
        assert!(keys.find(&[0; 8], t1).is_none());
        assert_eq!(keys.expires_at(), t1 + ROTATE_AFTER + GRACE);
    }
}
