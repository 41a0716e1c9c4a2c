//! How receipts are signed: the ledger's domain decides.
//!
//! - The embedded ledger (any domain that is not `eip155:…`): ed25519 over
//!   `"hopwire receipt v1" ‖ postcard(receipt)`; the payer's account is its
//!   ed25519 public key.
//! - An EVM ledger (`eip155:<chain id>:<contract>`): EIP-712 typed data
//!   `Receipt(bytes32 channel,bytes16 session,uint64 seq,uint64
//!   cumulativeBytes,uint64 cumulativeAmount)` in the domain `{name:
//!   "Hopwire", version: "1", chainId, verifyingContract}`, signed with
//!   secp256k1 as 65 bytes `r ‖ s ‖ v` (v 27 or 28, s in the lower half).
//!   The payer's account is the signer's address as a 32-byte word (twelve
//!   zero bytes, then the address), as the ABI encodes it. This is what
//!   `contracts/src/HopwireChannels.sol` checks, so a node verifies each
//!   receipt off chain exactly as the chain will.

use alloy_primitives::{Address, FixedBytes, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};
use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};

use super::{PayError, Receipt, SignedReceipt};

/// The EIP-712 domain's name and version (the contract's constructor).
pub const EIP712_NAME: &str = "Hopwire";
pub const EIP712_VERSION: &str = "1";

mod typed {
    alloy_sol_types::sol! {
        /// A receipt as the contract hashes it.
        struct Receipt {
            bytes32 channel;
            bytes16 session;
            uint64 seq;
            uint64 cumulativeBytes;
            uint64 cumulativeAmount;
        }
    }
}

/// The ledger a domain names, as far as signatures go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Ed25519,
    Eip712 { chain_id: u64, contract: Address },
}

impl Scheme {
    /// Reads a ledger domain: `eip155:<chain id>:<0x contract>` is an EVM
    /// ledger, anything else the embedded one.
    pub fn of(domain: &str) -> Result<Self, PayError> {
        let Some(rest) = domain.strip_prefix("eip155:") else {
            return Ok(Scheme::Ed25519);
        };
        let bad = || PayError::BadDomain(domain.to_owned());
        let (chain, contract) = rest.split_once(':').ok_or_else(bad)?;
        Ok(Scheme::Eip712 {
            chain_id: chain.parse().map_err(|_| bad())?,
            contract: contract.parse().map_err(|_| bad())?,
        })
    }

    /// The domain string of an EVM ledger.
    pub fn evm_domain(chain_id: u64, contract: Address) -> String {
        format!("eip155:{chain_id}:{}", contract.to_checksum(None))
    }
}

/// The 32-byte account word of an EVM address.
pub fn address_word(address: Address) -> [u8; 32] {
    address.into_word().0
}

/// The EVM address in an account word, if it is one.
pub fn word_address(word: &[u8; 32]) -> Option<Address> {
    word[..12]
        .iter()
        .all(|b| *b == 0)
        .then(|| Address::from_slice(&word[12..]))
}

/// The EIP-712 digest the payer signs and the contract recovers from.
pub fn eip712_digest(receipt: &Receipt, chain_id: u64, contract: Address) -> B256 {
    let domain = Eip712Domain::new(
        Some(EIP712_NAME.into()),
        Some(EIP712_VERSION.into()),
        Some(U256::from(chain_id)),
        Some(contract),
        None,
    );
    typed::Receipt {
        channel: FixedBytes(receipt.channel),
        session: FixedBytes(receipt.session),
        seq: receipt.seq,
        cumulativeBytes: receipt.cumulative_bytes,
        cumulativeAmount: receipt.cumulative_amount,
    }
    .eip712_signing_hash(&domain)
}

/// A key that signs a payer's receipts.
#[derive(Clone)]
pub enum PayerKey {
    Ed25519(ed25519_dalek::SigningKey),
    Secp256k1(k256::ecdsa::SigningKey),
}

impl std::fmt::Debug for PayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayerKey({})", crate::record::short_id(&self.account()))
    }
}

impl From<ed25519_dalek::SigningKey> for PayerKey {
    fn from(key: ed25519_dalek::SigningKey) -> Self {
        PayerKey::Ed25519(key)
    }
}

impl From<k256::ecdsa::SigningKey> for PayerKey {
    fn from(key: k256::ecdsa::SigningKey) -> Self {
        PayerKey::Secp256k1(key)
    }
}

impl PayerKey {
    /// The account receipts are checked against.
    pub fn account(&self) -> [u8; 32] {
        match self {
            PayerKey::Ed25519(key) => key.verifying_key().to_bytes(),
            PayerKey::Secp256k1(key) => address_word(Address::from_private_key(key)),
        }
    }

    /// Signs `receipt` in this key's scheme. A key of the wrong scheme for
    /// the receipt's domain signs something the payee refuses as forged.
    pub fn sign(&self, receipt: &Receipt) -> Vec<u8> {
        match (self, Scheme::of(&receipt.domain)) {
            (PayerKey::Ed25519(key), _) => key.sign(&receipt.signed_bytes()).to_bytes().to_vec(),
            (PayerKey::Secp256k1(key), Ok(Scheme::Eip712 { chain_id, contract })) => {
                let digest = eip712_digest(receipt, chain_id, contract);
                match key.sign_prehash_recoverable(digest.as_slice()) {
                    Ok((sig, recovery)) => alloy_primitives::Signature::from((sig, recovery)).as_bytes().to_vec(),
                    Err(_) => Vec::new(),
                }
            }
            (PayerKey::Secp256k1(_), _) => Vec::new(),
        }
    }
}

/// Half the secp256k1 group order: a larger `s` is refused, as the
/// contract (OpenZeppelin's ECDSA) refuses it.
const HALF_ORDER: U256 = U256::from_be_slice(&[
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5d, 0x57, 0x6e,
    0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

/// Checks that `payer` signed `signed` in the scheme its domain names.
pub fn verify(signed: &SignedReceipt, payer: &[u8; 32]) -> Result<(), PayError> {
    let receipt = &signed.receipt;
    match Scheme::of(&receipt.domain)? {
        Scheme::Ed25519 => {
            let key = VerifyingKey::from_bytes(payer).map_err(|_| PayError::Forged)?;
            let sig = Signature::from_slice(&signed.signature).map_err(|_| PayError::Forged)?;
            key.verify(&receipt.signed_bytes(), &sig).map_err(|_| PayError::Forged)
        }
        Scheme::Eip712 { chain_id, contract } => {
            let bytes: &[u8; 65] = signed.signature.as_slice().try_into().map_err(|_| PayError::Forged)?;
            if !matches!(bytes[64], 27 | 28) {
                return Err(PayError::Forged);
            }
            let sig = alloy_primitives::Signature::from_raw_array(bytes).map_err(|_| PayError::Forged)?;
            if sig.s() > HALF_ORDER {
                return Err(PayError::Forged);
            }
            let signer = sig
                .recover_address_from_prehash(&eip712_digest(receipt, chain_id, contract))
                .map_err(|_| PayError::Forged)?;
            match word_address(payer) {
                Some(expected) if expected == signer => Ok(()),
                _ => Err(PayError::Forged),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(domain: &str) -> Receipt {
        Receipt {
            domain: domain.into(),
            channel: [1; 32],
            session: [2; 16],
            seq: 3,
            cumulative_bytes: 4,
            cumulative_amount: 5,
        }
    }

    #[test]
    fn domains_name_their_scheme() {
        assert_eq!(Scheme::of("testnet"), Ok(Scheme::Ed25519));
        let contract: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse().expect("address");
        let domain = Scheme::evm_domain(31337, contract);
        assert_eq!(domain, "eip155:31337:0x5FbDB2315678afecb367f032d93F642f64180aa3");
        assert_eq!(
            Scheme::of(&domain),
            Ok(Scheme::Eip712 {
                chain_id: 31337,
                contract
            })
        );
        for bad in [
            "eip155:",
            "eip155:1",
            "eip155:x:0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "eip155:1:0x12",
        ] {
            assert!(matches!(Scheme::of(bad), Err(PayError::BadDomain(_))), "{bad}");
        }
    }

    #[test]
    fn an_eip712_receipt_verifies_only_for_its_signer_chain_and_contract() {
        let key = PayerKey::from(k256::ecdsa::SigningKey::from_slice(&[7; 32]).expect("key"));
        let other = PayerKey::from(k256::ecdsa::SigningKey::from_slice(&[8; 32]).expect("key"));
        let domain = "eip155:31337:0x5FbDB2315678afecb367f032d93F642f64180aa3";
        let r = receipt(domain);
        let signed = SignedReceipt {
            signature: key.sign(&r),
            receipt: r.clone(),
        };
        assert_eq!(signed.signature.len(), 65);
        assert_eq!(verify(&signed, &key.account()), Ok(()));
        assert_eq!(verify(&signed, &other.account()), Err(PayError::Forged));
        for moved in [
            "eip155:1:0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "eip155:31337:0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        ] {
            let replayed = SignedReceipt {
                receipt: receipt(moved),
                signature: signed.signature.clone(),
            };
            assert_eq!(verify(&replayed, &key.account()), Err(PayError::Forged), "{moved}");
        }
        let mut changed = signed.clone();
        changed.receipt.cumulative_amount += 1;
        assert_eq!(verify(&changed, &key.account()), Err(PayError::Forged));
        // The same signature with s flipped to the upper half (and v
        // flipped) recovers the same key, but the contract refuses it.
        let sig = alloy_primitives::Signature::from_raw(&signed.signature).expect("sig");
        let order =
            U256::from_str_radix("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141", 16).expect("n");
        let high = alloy_primitives::Signature::new(sig.r(), order - sig.s(), !sig.v());
        let malleable = SignedReceipt {
            signature: high.as_bytes().to_vec(),
            ..signed.clone()
        };
        assert_eq!(verify(&malleable, &key.account()), Err(PayError::Forged));
        // An ed25519 signature on an EVM receipt, and the reverse, are forged.
        let ed = PayerKey::from(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
        let wrong = SignedReceipt {
            signature: ed.sign(&r),
            receipt: r,
        };
        assert_eq!(verify(&wrong, &ed.account()), Err(PayError::Forged));
    }
}
