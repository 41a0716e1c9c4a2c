//! Node records: `hopwire1.…` strings as users paste them and as the daemon
//! reads them from API requests (`str::parse::<VerifiedRecord>`), and the
//! signed bytes the DHT stores (`VerifiedRecord::from_bytes`); then what is
//! done with an accepted record (`check`, its exit policy).
//!
//! The input is tried as UTF-8, lossily converted, behind the `hopwire1.`
//! prefix, as the signed bytes inside the base64, as a record body signed
//! by a real key, and XORed onto a genuine record's signed bytes. Nothing
//! may panic; no altered record is accepted as anything but the original,
//! and a record is only accepted with the signer's identity.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use hopwire_fuzz::{write_seeds, xor};
use hopwire_proto::policy::ExitPolicy;
use hopwire_proto::record::{NodeRecord, Role, VerifiedRecord, RECORD_VERSION};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "hopwire1.";

struct Genuine {
    key: SigningKey,
    record: NodeRecord,
    /// The postcard bytes inside the base64 of the genuine record.
    signed: Vec<u8>,
}

fn genuine() -> &'static Genuine {
    static G: OnceLock<Genuine> = OnceLock::new();
    G.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7; 32]);
        let record = NodeRecord {
            roles: vec![Role::Relay, Role::Exit],
            onion_key: [5; 32],
            onion_key_expires: 1_790_700_000,
            wg_key: [6; 32],
            exit_rules: vec!["accept *:443".into(), "reject *:*".into()],
            family: vec![[8; 32]],
            ..hopwire_fuzz::record(&key, "198.18.2.2:4433", &[], "DE", 1_790_000_000)
        };
        let s = record.to_signed_string(&key);
        let signed = record.to_signed_bytes(&key);
        assert_eq!(s, encoded(&signed));
        Genuine { key, record, signed }
    })
}

/// Postcard's encoding of `SignedRecord { body, signature }` (private in
/// core): two length-prefixed byte strings.
fn signed_bytes(body: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_stdvec(body).expect("encodes");
    out.extend(postcard::to_stdvec(signature).expect("encodes"));
    out
}

fn parse(s: &str) -> Option<VerifiedRecord> {
    s.parse::<VerifiedRecord>().ok().map(used)
}

/// The signed bytes as the DHT stores them.
fn from_bytes(bytes: &[u8]) -> Option<VerifiedRecord> {
    VerifiedRecord::from_bytes(bytes).ok().map(used)
}

/// What callers do with a record must not panic either: show it, check its
/// times and key, and read its exit policy.
fn used(r: VerifiedRecord) -> VerifiedRecord {
    let _ = (r.to_string(), r.short_id(), r.record().has_role(Role::Exit));
    let rec = r.record();
    for now in [0, 1_790_000_000, rec.issued_at, rec.expires_at, u64::MAX / 2] {
        let _ = r.check(now, None);
        let _ = r.check(now, Some(&rec.identity)).map_err(|e| e.reason());
    }
    let _ = ExitPolicy::new(&rec.exit_rules, rec.exit_default_rejects);
    r
}

fn encoded(signed: &[u8]) -> String {
    format!("{PREFIX}{}", B64URL.encode(signed))
}

fuzz_target!(
    init: {
        let g = genuine();
        let body = postcard::to_stdvec(&g.record).expect("encodes");
        write_seeds([
            encoded(&g.signed).into_bytes(),
            g.signed.clone(),
            body,
            format!("{PREFIX}AAAA").into_bytes(),
            b"  hopwire1.\n".to_vec(),
        ]);
    },
    |data: &[u8]| {
        let g = genuine();
        if let Ok(s) = std::str::from_utf8(data) {
            parse(s);
        }
        let lossy = String::from_utf8_lossy(data);
        parse(&lossy);
        parse(&format!("{PREFIX}{lossy}"));
        // The input as the signed bytes inside the base64, and as the DHT
        // stores them.
        parse(&encoded(data));
        from_bytes(data);

        // The input as a record body, correctly signed by g.key.
        let signature = g.key.sign(data).to_bytes();
        let signed = signed_bytes(data, &signature);
        assert_eq!(from_bytes(&signed), parse(&encoded(&signed)));
        if let Some(r) = from_bytes(&signed) {
            assert_eq!(r.record().identity, g.key.verifying_key().to_bytes(), "accepted with another identity");
            assert_eq!(r.record().version, RECORD_VERSION);
        }

        // A genuine record altered by the input.
        let mut signed = g.signed.clone();
        let changed = xor(&mut signed, data);
        assert_eq!(from_bytes(&signed), parse(&encoded(&signed)));
        match from_bytes(&signed) {
            Some(r) => assert_eq!(r.record(), &g.record, "altered record accepted"),
            None => assert!(changed, "genuine record refused"),
        }
    }
);
