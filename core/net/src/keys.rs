//! Long-term keys on disk: the node identity (ed25519) and the WireGuard
//! static key (x25519), each a base64 line in its own file.
//!
//! Files are created with mode 0600 and a key file that group or others can
//! read is refused: a key that leaked is not a key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use boringtun::x25519;
use ed25519_dalek::SigningKey;
use rand::{CryptoRng, RngCore};

use hopwire_proto::onion::keys::OnionKeys;

pub const IDENTITY_FILE: &str = "identity.key";
pub const WG_FILE: &str = "wireguard.key";
pub const ONION_FILE: &str = "onion.key";
/// The secp256k1 key a node or client sends chain transactions with.
pub const EVM_FILE: &str = "evm.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and rotate the key if it may have leaked")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("key file {path} is malformed (restore it from a backup, or run `hopwire-node init --force` for a new identity)")]
    Malformed { path: PathBuf },
    #[error("key file {path} exists; pass --force to replace it (the node gets a new identity)")]
    Exists { path: PathBuf },
}

/// The keys a node keeps across restarts.
#[derive(Clone)]
pub struct NodeKeys {
    pub identity: SigningKey,
    pub wg_secret: x25519::StaticSecret,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field(
                "identity",
                &hopwire_proto::record::short_id(&self.identity.verifying_key().to_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut wg = [0u8; 32];
        rng.fill_bytes(&mut wg);
        Self {
            identity: SigningKey::generate(rng),
            wg_secret: x25519::StaticSecret::from(wg),
        }
    }

    pub fn wg_public(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(&self.wg_secret)
    }

    /// Writes both keys into `dir`, refusing to replace existing ones unless
    /// `force`.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), KeyError> {
        write_key(&dir.join(IDENTITY_FILE), &self.identity.to_bytes(), force)?;
        write_key(&dir.join(WG_FILE), &self.wg_secret.to_bytes(), force)
    }

    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let identity = SigningKey::from_bytes(&read_key(&dir.join(IDENTITY_FILE))?);
        let wg_secret = x25519::StaticSecret::from(read_key(&dir.join(WG_FILE))?);
        Ok(Self { identity, wg_secret })
    }
}

pub fn write_key(path: &Path, key: &[u8; 32], force: bool) -> Result<(), KeyError> {
    if path.exists() && !force {
        return Err(KeyError::Exists { path: path.to_owned() });
    }
    write_secret(path, &format!("{}\n", B64.encode(key)))
}

/// Writes a secret file with mode 0600, beside and renamed, so a crash
/// never leaves half a key.
pub fn write_secret(path: &Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    fs::read_to_string(path).map_err(io)
}

pub fn read_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = read_secret(path)?;
    B64.decode(text.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| KeyError::Malformed { path: path.to_owned() })
}

/// The secp256k1 key at `path`, made on first use: what sends (and pays
/// the gas of) transactions on an EVM ledger.
pub fn load_or_create_evm_key(path: &Path) -> Result<alloy::signers::local::PrivateKeySigner, KeyError> {
    if !path.exists() {
        let key = k256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        write_key(path, &key.to_bytes().into(), false)?;
    }
    let secret = read_key(path)?;
    alloy::signers::local::PrivateKeySigner::from_slice(&secret)
        .map_err(|_| KeyError::Malformed { path: path.to_owned() })
}

/// Loads the node's onion keys from `dir`, making them on first use, and
/// rotates them if due; what changed is saved before it is returned.
pub fn load_onion_keys(dir: &Path, now: u64) -> Result<OnionKeys, KeyError> {
    let path = dir.join(ONION_FILE);
    let mut keys = if path.exists() {
        serde_json::from_str(&read_secret(&path)?).map_err(|_| KeyError::Malformed { path: path.clone() })?
    } else {
        let keys = OnionKeys::generate(&mut rand::rngs::OsRng, now);
        save_onion_keys(dir, &keys)?;
        keys
    };
    if keys.rotate_if_due(&mut rand::rngs::OsRng, now) {
        save_onion_keys(dir, &keys)?;
    }
    Ok(keys)
}

pub fn save_onion_keys(dir: &Path, keys: &OnionKeys) -> Result<(), KeyError> {
    let text = serde_json::to_string(keys).unwrap_or_else(|e| unreachable!("onion keys encode: {e}"));
    write_secret(&dir.join(ONION_FILE), &text)
}

/// Parses a WireGuard public key in the usual base64 form.
pub fn parse_wg_public(s: &str) -> Option<x25519::PublicKey> {
    let bytes: [u8; 32] = B64.decode(s.trim()).ok()?.try_into().ok()?;
    Some(x25519::PublicKey::from(bytes))
}

pub fn wg_public_to_string(key: &x25519::PublicKey) -> String {
    B64.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hopwire-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempdir("rt");
        let keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(1));
        keys.save(&dir, false).expect("save");
        let mode = fs::metadata(dir.join(IDENTITY_FILE))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = NodeKeys::load(&dir).expect("load");
        assert_eq!(back.identity.to_bytes(), keys.identity.to_bytes());
        assert_eq!(back.wg_public().as_bytes(), keys.wg_public().as_bytes());
        assert!(matches!(keys.save(&dir, false), Err(KeyError::Exists { .. })));
        keys.save(&dir, true).expect("forced");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_exposed_and_malformed_keys() {
        let dir = tempdir("bad");
        let keys = NodeKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(2));
        keys.save(&dir, false).expect("save");
        let p = dir.join(WG_FILE);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            NodeKeys::load(&dir),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&p, "not a key\n").expect("write");
        assert!(matches!(NodeKeys::load(&dir), Err(KeyError::Malformed { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn onion_keys_persist_and_rotate() {
        let dir = tempdir("onion");
        let t0 = 1_800_000_000;
        let first = load_onion_keys(&dir, t0).expect("created");
        let mode = fs::metadata(dir.join(ONION_FILE)).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_onion_keys(&dir, t0 + 10).expect("loaded").public(), first.public());
        let rotated = load_onion_keys(&dir, t0 + hopwire_proto::onion::keys::ROTATE_AFTER).expect("rotated");
        assert_ne!(rotated.public(), first.public());
        assert_eq!(
            load_onion_keys(&dir, t0 + hopwire_proto::onion::keys::ROTATE_AFTER + 1)
                .expect("again")
                .public(),
            rotated.public()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
