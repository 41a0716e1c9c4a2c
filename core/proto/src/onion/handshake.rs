//! The circuit handshake: one-way-authenticated x25519 against a hop's
//! onion key, after Tor's ntor (tor-spec §5.1.4), with HKDF-SHA256 into the
//! hop's layer keys.
//!
//! The client knows the hop's identity `ID` and onion key `B` from its
//! record. It sends an ephemeral `X`; the hop answers with an ephemeral `Y`
//! and `AUTH`, a MAC only the holder of `b` can compute. Both sides derive
//! the same keys; the hop learns nothing about who the client is.
//!
//! ```text
//! secret_input = x25519(x,Y) | x25519(x,B) | ID | B | X | Y | PROTOID
//! KEY_SEED     = HMAC(PROTOID ":key_extract", secret_input)
//! verify       = HMAC(PROTOID ":verify", secret_input)
//! AUTH         = HMAC(PROTOID ":mac", verify | ID | B | Y | X | PROTOID | "Server" | C)
//! keys         = HKDF-SHA256(salt = PROTOID ":key_expand", ikm = KEY_SEED) → 4 × 32 bytes
//! ```
//!
//! The client also says whether it takes AES-256-GCM data layers, and the
//! hop answers with the data cipher `C` it chose ([`DataCipher`]). `AUTH`
//! covers `C`, so a relay that rewrites the choice in a CREATED it carries
//! back makes the handshake fail instead of the data.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use super::layer::{DataCipher, Opener, Sealer};

const PROTOID: &[u8] = b"hopwire-ntor-x25519-sha256-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake names onion key {0:02x?}, which this hop does not hold (rotated out?)")]
    UnknownOnionKey([u8; 8]),
    #[error("handshake key is degenerate (small-order point)")]
    Degenerate,
    #[error("the hop's answer does not prove it holds the onion key in its record")]
    BadAuth,
}

/// What the client sends in CREATE / EXTEND.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientOnionskin {
    /// First 8 bytes of the onion key the client used, so the hop can pick
    /// its current or its previous key.
    pub key_id: [u8; 8],
    pub x: [u8; 32],
    /// The client takes AES-256-GCM data layers (it has AES instructions).
    pub offers_aes: bool,
}

/// What the hop answers in CREATED / EXTENDED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerOnionskin {
    pub y: [u8; 32],
    pub auth: [u8; 32],
    /// The data layers' cipher the hop chose.
    pub data_cipher: DataCipher,
}

/// The client's half-done handshake with one hop.
pub struct ClientHandshake {
    x: StaticSecret,
    id: [u8; 32],
    b: [u8; 32],
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake").finish_non_exhaustive()
    }
}

/// Raw key material for one hop, before it is split by direction.
#[derive(Clone, PartialEq, Eq)]
pub struct HopSecrets {
    pub data_forward: [u8; 32],
    pub data_backward: [u8; 32],
    pub control_forward: [u8; 32],
    pub control_backward: [u8; 32],
    pub data_cipher: DataCipher,
}

impl std::fmt::Debug for HopSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopSecrets(..)")
    }
}

/// One hop's layer as the client holds it: seals forward, opens backward.
#[derive(Debug)]
pub struct ClientLayer {
    pub data_cipher: DataCipher,
    pub data_out: Sealer,
    pub data_in: Opener,
    pub control_out: Sealer,
    pub control_in: Opener,
}

impl HopSecrets {
    pub fn client_layer(&self) -> ClientLayer {
        let data = self.data_cipher.algorithm();
        ClientLayer {
            data_cipher: self.data_cipher,
            data_out: Sealer::with_algorithm(data, &self.data_forward),
            data_in: Opener::with_algorithm(data, &self.data_backward),
            control_out: Sealer::new(&self.control_forward),
            control_in: Opener::new(&self.control_backward),
        }
    }
}

/// The short id of an onion key that a handshake names.
pub fn key_id(onion_key: &[u8; 32]) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&onion_key[..8]);
    id
}

fn mac(key_suffix: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut key = PROTOID.to_vec();
    key.extend_from_slice(key_suffix);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Both sides' common derivation from the two shared secrets.
fn derive(
    xy: &[u8; 32],
    xb: &[u8; 32],
    id: &[u8; 32],
    b: &[u8; 32],
    x: &[u8; 32],
    y: &[u8; 32],
    data_cipher: DataCipher,
) -> (HopSecrets, [u8; 32]) {
    let secret_input: [&[u8]; 7] = [xy, xb, id, b, x, y, PROTOID];
    let key_seed = mac(b":key_extract", &secret_input);
    let verify = mac(b":verify", &secret_input);
    let cipher: &[u8] = match data_cipher {
        DataCipher::ChaCha20Poly1305 => b"chacha20-poly1305",
        DataCipher::Aes256Gcm => b"aes-256-gcm",
    };
    let auth = mac(b":mac", &[&verify, id, b, y, x, PROTOID, b"Server", cipher]);
    let mut salt = PROTOID.to_vec();
    salt.extend_from_slice(b":key_expand");
    let hk = Hkdf::<Sha256>::new(Some(&salt), &key_seed);
    let mut okm = [0u8; 128];
    hk.expand(b"hopwire layer keys", &mut okm)
        .unwrap_or_else(|_| unreachable!("128 bytes is within HKDF's limit"));
    let part = |i: usize| -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&okm[i * 32..(i + 1) * 32]);
        k
    };
    (
        HopSecrets {
            data_forward: part(0),
            data_backward: part(1),
            control_forward: part(2),
            control_backward: part(3),
            data_cipher,
        },
        auth,
    )
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], HandshakeError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::Degenerate);
    }
    Ok(shared.to_bytes())
}

fn random_secret<R: RngCore + CryptoRng>(rng: &mut R) -> StaticSecret {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    StaticSecret::from(b)
}

impl ClientHandshake {
    /// Starts a handshake with the hop whose identity is `id` and whose
    /// onion key is `onion_key`, offering AES-256-GCM data layers if
    /// `offers_aes`.
    pub fn start<R: RngCore + CryptoRng>(
        rng: &mut R,
        id: [u8; 32],
        onion_key: [u8; 32],
        offers_aes: bool,
    ) -> (Self, ClientOnionskin) {
        let x = random_secret(rng);
        let skin = ClientOnionskin {
            key_id: key_id(&onion_key),
            x: *PublicKey::from(&x).as_bytes(),
            offers_aes,
        };
        (Self { x, id, b: onion_key }, skin)
    }

    /// Checks the hop's answer and derives the layer keys.
    pub fn finish(self, reply: &ServerOnionskin) -> Result<HopSecrets, HandshakeError> {
        let xy = dh(&self.x, &reply.y)?;
        let xb = dh(&self.x, &self.b)?;
        let x_pub = *PublicKey::from(&self.x).as_bytes();
        let (secrets, auth) = derive(&xy, &xb, &self.id, &self.b, &x_pub, &reply.y, reply.data_cipher);
        // Constant-time comparison of the MAC.
        let diff = auth
            .iter()
            .zip(reply.auth.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(HandshakeError::BadAuth);
        }
        Ok(secrets)
    }
}

/// The hop's side: answers `skin` with the onion key `secret` (whose public
/// half is `b`) and identity `id`; takes AES-256-GCM data layers if the
/// client offers them and `takes_aes`.
pub fn respond<R: RngCore + CryptoRng>(
    rng: &mut R,
    id: &[u8; 32],
    secret: &StaticSecret,
    skin: &ClientOnionskin,
    takes_aes: bool,
) -> Result<(ServerOnionskin, HopSecrets), HandshakeError> {
    let b = *PublicKey::from(secret).as_bytes();
    if skin.key_id != key_id(&b) {
        return Err(HandshakeError::UnknownOnionKey(skin.key_id));
    }
    let y = random_secret(rng);
    let y_pub = *PublicKey::from(&y).as_bytes();
    let xy = dh(&y, &skin.x)?;
    let xb = dh(secret, &skin.x)?;
    let data_cipher = if skin.offers_aes && takes_aes {
        DataCipher::Aes256Gcm
    } else {
        DataCipher::ChaCha20Poly1305
    };
    let (secrets, auth) = derive(&xy, &xb, id, &b, &skin.x, &y_pub, data_cipher);
    Ok((
        ServerOnionskin {
            y: y_pub,
            auth,
            data_cipher,
        },
        secrets,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn both_sides_derive_the_same_keys() {
        let mut r = rng(1);
        let onion = random_secret(&mut r);
        let b = *PublicKey::from(&onion).as_bytes();
        let id = [9u8; 32];
        let (client, skin) = ClientHandshake::start(&mut r, id, b, true);
        let (reply, hop) = respond(&mut r, &id, &onion, &skin, true).expect("hop answers");
        let client_keys = client.finish(&reply).expect("client accepts");
        assert_eq!(client_keys, hop);
        assert_ne!(hop.data_forward, hop.data_backward);
        assert_eq!(hop.data_cipher, DataCipher::Aes256Gcm);
    }

    #[test]
    fn aes_only_when_both_sides_take_it_and_the_choice_is_bound() {
        let mut r = rng(3);
        let onion = random_secret(&mut r);
        let b = *PublicKey::from(&onion).as_bytes();
        let id = [9u8; 32];
        for (offers, takes) in [(false, true), (true, false), (false, false)] {
            let (client, skin) = ClientHandshake::start(&mut r, id, b, offers);
            let (reply, hop) = respond(&mut r, &id, &onion, &skin, takes).expect("hop answers");
            assert_eq!(
                hop.data_cipher,
                DataCipher::ChaCha20Poly1305,
                "offers {offers}, takes {takes}"
            );
            assert_eq!(client.finish(&reply).expect("client accepts"), hop);
        }
        // A relay carrying the answer back cannot change the choice.
        let (client, skin) = ClientHandshake::start(&mut r, id, b, true);
        let (mut reply, _) = respond(&mut r, &id, &onion, &skin, true).expect("hop answers");
        reply.data_cipher = DataCipher::ChaCha20Poly1305;
        assert_eq!(client.finish(&reply), Err(HandshakeError::BadAuth));
    }

    #[test]
    fn impostor_and_tampering_are_caught() {
        let mut r = rng(2);
        let onion = random_secret(&mut r);
        let b = *PublicKey::from(&onion).as_bytes();
        let id = [9u8; 32];
        // A hop without the onion key (another key, same id) cannot answer.
        let other = random_secret(&mut r);
        let (client, mut skin) = ClientHandshake::start(&mut r, id, b, true);
        skin.key_id = key_id(PublicKey::from(&other).as_bytes());
        let (reply, _) = respond(&mut r, &id, &other, &skin, true).expect("impostor answers");
        assert_eq!(client.finish(&reply), Err(HandshakeError::BadAuth));
        // A changed reply is refused.
        let (client, skin) = ClientHandshake::start(&mut r, id, b, true);
        let (mut reply, _) = respond(&mut r, &id, &onion, &skin, true).expect("answers");
        reply.auth[0] ^= 1;
        assert_eq!(client.finish(&reply), Err(HandshakeError::BadAuth));
        // The identity is bound: a different id gives a different AUTH.
        let (client, skin) = ClientHandshake::start(&mut r, [8u8; 32], b, true);
        let (reply, _) = respond(&mut r, &id, &onion, &skin, true).expect("answers");
        assert_eq!(client.finish(&reply), Err(HandshakeError::BadAuth));
        // A key the hop does not hold is named as such; a zero point is refused.
        let (_, mut skin) = ClientHandshake::start(&mut r, id, b, true);
        skin.key_id = [0; 8];
        assert!(matches!(
            respond(&mut r, &id, &onion, &skin, true),
            Err(HandshakeError::UnknownOnionKey(_))
        ));
        let (_, mut skin) = ClientHandshake::start(&mut r, id, b, true);
        skin.x = [0; 32];
        assert_eq!(
            respond(&mut r, &id, &onion, &skin, true).map(|_| ()),
            Err(HandshakeError::Degenerate)
        );
    }
}
