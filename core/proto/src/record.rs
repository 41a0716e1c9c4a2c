//! Node records: what a client needs to reach a node, signed by the node's
//! identity key, and the one-line string form users copy around.
//!
//! The string is `hopwire1.` followed by unpadded base64url of the encoded
//! [`SignedRecord`]; the same bytes without the prefix are what the DHT
//! stores. The encoding is postcard (canonical: one encoding per record),
//! led by the version byte. The signature covers the exact body bytes, so a
//! record that was altered in transit, or signed by another key, is
//! rejected; [`VerifiedRecord::check`] then rejects records that are
//! expired, from the future, stored under another node's key, or whose onion
//! key has expired.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The only record version this build understands.
pub const RECORD_VERSION: u8 = 2;
/// What every record string starts with.
pub const PREFIX: &str = "hopwire1.";
/// Records larger than this are refused before any parsing.
pub const MAX_RECORD_LEN: usize = 2048;
/// How long a record is valid after it is signed; nodes republish well
/// inside it.
pub const RECORD_TTL: u64 = 3 * 3600;
/// How far ahead of our clock a record's signing time may be.
pub const CLOCK_SKEW: u64 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("not a Hopwire node record: it must start with `{PREFIX}` (get one with `hopwire-node show-record`)")]
    Prefix,
    #[error("node record is longer than {MAX_RECORD_LEN} bytes")]
    TooLong,
    #[error("node record is not valid base64url (was it cut off when copied?)")]
    Base64,
    #[error("node record is malformed: {0}")]
    Decode(String),
    #[error("node record version {0} is not supported by this build (supported: {RECORD_VERSION}); upgrade Hopwire")]
    Version(u8),
    #[error("node record signature does not match its identity key")]
    Signature,
    #[error("node record expired at {expires_at} (unix time)")]
    Expired { expires_at: u64 },
    #[error("node record is signed {issued_at}, in the future (check this machine's clock)")]
    FromFuture { issued_at: u64 },
    #[error("node record's onion key expired at {0} (unix time)")]
    OnionKeyExpired(u64),
    #[error("node record is for another node than the one it was looked up as")]
    WrongKey,
}

impl RecordError {
    /// A short label for counting rejections by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Prefix | RecordError::Base64 | RecordError::Decode(_) => "malformed",
            RecordError::TooLong => "oversized",
            RecordError::Version(_) => "version",
            RecordError::Signature => "signature",
            RecordError::Expired { .. } => "expired",
            RecordError::FromFuture { .. } => "future",
            RecordError::OnionKeyExpired(_) => "onion_key_expired",
            RecordError::WrongKey => "wrong_key",
        }
    }
}

/// What a node does for others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Carries circuits onward (guard or middle).
    Relay,
    /// Ends circuits and sends traffic to the internet.
    Exit,
    /// A DHT server others join through first.
    Bootstrap,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Relay, Role::Exit, Role::Bootstrap];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Exit => "exit",
            Role::Bootstrap => "bootstrap",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role: relay, exit or bootstrap"))
    }
}

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub version: u8,
    /// ed25519 public key: the node's identity; its QUIC certificate carries it.
    pub identity: [u8; 32],
    /// Where the node accepts Hopwire (QUIC) connections.
    pub quic_addr: SocketAddr,
    pub roles: Vec<Role>,
    /// The x25519 key circuits are built against, and until when (unix
    /// seconds) the node accepts it.
    pub onion_key: [u8; 32],
    pub onion_key_expires: u64,
    /// The exit's WireGuard static public key.
    pub wg_key: [u8; 32],
    /// ISO 3166 country code the operator declares, e.g. `DE`.
    pub region: String,
    /// What the operator says the node can carry, Mbit/s.
    pub capacity_mbit: u32,
    /// What the node charges: price per GiB, chunk and grace.
    pub quote: crate::pay::Quote,
    /// The ledger its charges are paid on: the domain its receipts carry
    /// (empty if it charges nothing).
    pub ledger: String,
    /// The account it is paid to there: on the embedded ledger its
    /// identity, on a chain its payout address as a 32-byte word.
    pub payout: [u8; 32],
    /// The exit policy in summary: the operator's rules, then whether the
    /// built-in rejects follow.
    pub exit_rules: Vec<String>,
    pub exit_default_rejects: bool,
    /// Identities of other nodes the same operator runs: never two of them
    /// on one circuit.
    pub family: Vec<[u8; 32]>,
    /// Grows with every new record of the node: a newer record replaces an
    /// older one.
    pub seq: u64,
    /// Unix seconds when the record was signed and until when it is valid.
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SignedRecord {
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// A record whose signature was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord(NodeRecord);

impl NodeRecord {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Signs the record with the node's identity key: the bytes the DHT
    /// stores.
    pub fn to_signed_bytes(&self, key: &SigningKey) -> Vec<u8> {
        debug_assert_eq!(self.identity, key.verifying_key().to_bytes());
        let body = postcard::to_stdvec(self).unwrap_or_else(|e| unreachable!("record encodes: {e}"));
        let signature = key.sign(&body).to_bytes().to_vec();
        postcard::to_stdvec(&SignedRecord { body, signature }).unwrap_or_else(|e| unreachable!("record encodes: {e}"))
    }

    /// Signs the record and gives its one-line string form.
    pub fn to_signed_string(&self, key: &SigningKey) -> String {
        format!("{PREFIX}{}", B64URL.encode(self.to_signed_bytes(key)))
    }
}

impl VerifiedRecord {
    pub fn record(&self) -> &NodeRecord {
        &self.0
    }

    /// Short, human form of the identity, for logs and status.
    pub fn short_id(&self) -> String {
        short_id(&self.0.identity)
    }
}

impl FromStr for VerifiedRecord {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let b64 = s.strip_prefix(PREFIX).ok_or(RecordError::Prefix)?;
        if b64.len() > MAX_RECORD_LEN * 4 / 3 + 4 {
            return Err(RecordError::TooLong);
        }
        let bytes = B64URL.decode(b64).map_err(|_| RecordError::Base64)?;
        Self::from_bytes(&bytes)
    }
}

impl VerifiedRecord {
    /// Checks the signed bytes of a record (as the DHT stores them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLong);
        }
        let signed: SignedRecord = decode_exact(bytes)?;
        // The version byte leads the body, so an unknown version is reported
        // as such even if the rest of its layout is new to us.
        match signed.body.first() {
            Some(&RECORD_VERSION) => {}
            Some(&v) => return Err(RecordError::Version(v)),
            None => return Err(RecordError::Decode("empty body".into())),
        }
        let record: NodeRecord = decode_exact(&signed.body)?;
        let key = VerifyingKey::from_bytes(&record.identity).map_err(|_| RecordError::Signature)?;
        let sig = Signature::from_slice(&signed.signature).map_err(|_| RecordError::Signature)?;
        key.verify(&signed.body, &sig).map_err(|_| RecordError::Signature)?;
        Ok(Self(record))
    }

    /// The checks that depend on time and on where the record was found:
    /// not expired, not from the future, onion key still valid, and (when
    /// looked up under a node's key) for that node.
    pub fn check(&self, now: u64, looked_up_as: Option<&[u8; 32]>) -> Result<(), RecordError> {
        let r = &self.0;
        if looked_up_as.is_some_and(|id| *id != r.identity) {
            return Err(RecordError::WrongKey);
        }
        if r.issued_at > now + CLOCK_SKEW {
            return Err(RecordError::FromFuture { issued_at: r.issued_at });
        }
        if r.expires_at <= now || r.expires_at > r.issued_at + RECORD_TTL + CLOCK_SKEW {
            return Err(RecordError::Expired {
                expires_at: r.expires_at,
            });
        }
        if r.onion_key_expires <= now {
            return Err(RecordError::OnionKeyExpired(r.onion_key_expires));
        }
        Ok(())
    }
}

/// Decodes postcard bytes that must hold exactly one value: trailing bytes
/// would let two byte strings stand for one record.
fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RecordError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(RecordError::Decode(format!("{} bytes after the end", rest.len()))),
        Err(e) => Err(RecordError::Decode(e.to_string())),
    }
}

/// Bytes in lower-case hex (keys, accounts, digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a node identity written as 64 hex digits.
pub fn parse_identity(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// First 8 bytes of a key in hex: enough to tell nodes apart in a UI.
pub fn short_id(key: &[u8; 32]) -> String {
    hex(&key[..8])
}

impl fmt::Display for VerifiedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} at {}", self.short_id(), self.0.quic_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_back_as_they_are_written() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!("Exit".parse::<Role>().is_err());
    }
    use rand::SeedableRng;

    fn key(seed: u64) -> SigningKey {
        SigningKey::generate(&mut rand::rngs::StdRng::seed_from_u64(seed))
    }

    fn record(k: &SigningKey) -> NodeRecord {
        NodeRecord {
            roles: vec![Role::Relay, Role::Exit],
            onion_key: [5; 32],
            onion_key_expires: 1_790_700_000,
            wg_key: [7; 32],
            ..crate::testkit::record(k, "198.18.2.2:4433", &[], "DE", 1_790_000_000)
        }
    }

    #[test]
    fn round_trip() {
        let k = key(1);
        let s = record(&k).to_signed_string(&k);
        assert!(s.starts_with(PREFIX));
        let back: VerifiedRecord = s.parse().expect("valid record");
        assert_eq!(back.record(), &record(&k));
        assert_eq!(format!("  {s}\n").parse::<VerifiedRecord>().expect("trimmed"), back);
    }

    #[test]
    fn rejects_garbage_tampering_and_wrong_signer() {
        let k = key(1);
        let s = record(&k).to_signed_string(&k);
        assert_eq!("hello".parse::<VerifiedRecord>(), Err(RecordError::Prefix));
        assert_eq!(
            format!("{PREFIX}***").parse::<VerifiedRecord>(),
            Err(RecordError::Base64)
        );
        assert!(matches!(
            format!("{PREFIX}AAAA").parse::<VerifiedRecord>(),
            Err(RecordError::Decode(_))
        ));
        // A record naming key 2 but signed by key 1.
        let mut forged = record(&key(2));
        forged.identity = key(2).verifying_key().to_bytes();
        let body = postcard::to_stdvec(&forged).expect("enc");
        let signature = k.sign(&body).to_bytes().to_vec();
        let bad = format!(
            "{PREFIX}{}",
            B64URL.encode(postcard::to_stdvec(&SignedRecord { body, signature }).expect("enc"))
        );
        assert_eq!(bad.parse::<VerifiedRecord>(), Err(RecordError::Signature));
        // Every single-character change is caught (or at least never accepted as different).
        let original: VerifiedRecord = s.parse().expect("valid");
        for i in PREFIX.len()..s.len() {
            let mut t = s.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            if let Ok(r) = String::from_utf8(t).expect("ascii").parse::<VerifiedRecord>() {
                assert_eq!(r, original, "altered record accepted at {i}");
            }
        }
        assert_eq!(
            format!("{PREFIX}{}", "A".repeat(4000)).parse::<VerifiedRecord>(),
            Err(RecordError::TooLong)
        );
        assert_eq!(
            VerifiedRecord::from_bytes(&[0; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLong)
        );
    }

    #[test]
    fn unknown_version_is_named() {
        let k = key(3);
        let mut r = record(&k);
        r.version = 9;
        let body = postcard::to_stdvec(&r).expect("enc");
        let signature = k.sign(&body).to_bytes().to_vec();
        let s = format!(
            "{PREFIX}{}",
            B64URL.encode(postcard::to_stdvec(&SignedRecord { body, signature }).expect("enc"))
        );
        assert_eq!(s.parse::<VerifiedRecord>(), Err(RecordError::Version(9)));
    }

    #[test]
    fn time_and_key_checks_name_the_reason() {
        let k = key(4);
        let base = record(&k);
        let now = base.issued_at + 10;
        let verified = |r: &NodeRecord| r.to_signed_string(&k).parse::<VerifiedRecord>().expect("signature ok");
        assert_eq!(verified(&base).check(now, Some(&base.identity)), Ok(()));
        assert_eq!(verified(&base).check(now, Some(&[1; 32])), Err(RecordError::WrongKey));
        assert!(matches!(
            verified(&base).check(base.expires_at, None),
            Err(RecordError::Expired { .. })
        ));
        let future = NodeRecord {
            issued_at: now + CLOCK_SKEW + 1,
            expires_at: now + CLOCK_SKEW + 1 + RECORD_TTL,
            ..base.clone()
        };
        assert!(matches!(
            verified(&future).check(now, None),
            Err(RecordError::FromFuture { .. })
        ));
        let forever = NodeRecord {
            expires_at: base.issued_at + 10 * RECORD_TTL,
            ..base.clone()
        };
        assert!(
            matches!(verified(&forever).check(now, None), Err(RecordError::Expired { .. })),
            "a record may not outlive its TTL"
        );
        let stale_onion = NodeRecord {
            onion_key_expires: now,
            ..base.clone()
        };
        assert_eq!(
            verified(&stale_onion).check(now, None),
            Err(RecordError::OnionKeyExpired(now))
        );
        // Round trip through the DHT form, and the canonical encoding.
        let bytes = base.to_signed_bytes(&k);
        assert_eq!(VerifiedRecord::from_bytes(&bytes).expect("valid").record(), &base);
        assert_eq!(base.to_signed_bytes(&k), bytes, "one encoding per record");
        let mut longer = bytes.clone();
        longer.push(0xb3);
        assert!(
            matches!(VerifiedRecord::from_bytes(&longer), Err(RecordError::Decode(_))),
            "trailing bytes are refused"
        );
    }
}
