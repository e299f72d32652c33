//! Device identity: the Ed25519 key pair a device signs with, the yrs client id
//! derived from it, and keyed derivations (message id entropy, blob nonces).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{EnvelopeError, Error};
use crate::ids::AuthorId;

/// Domain separation for every signature Concord makes, so a signature over an
/// envelope can never be replayed as a signature over anything else.
const SIGNING_CONTEXT: &[u8] = b"concord signed envelope v1\0";

/// The largest yrs client id that Yjs (JavaScript numbers) can represent exactly.
const CLIENT_ID_MASK: u64 = (1 << 53) - 1;

/// A device's secret signing key. Created on first open and kept in the store.
pub struct DeviceKey {
    signing: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secret material.
        write!(f, "DeviceKey({:?})", self.author())
    }
}

impl DeviceKey {
    /// A key from a 32-byte secret seed (tests and simulations pass seeded ones).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(&seed) }
    }

    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Randomness(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The secret seed, for storing the key.
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public key, which is the author id.
    pub fn author(&self) -> AuthorId {
        AuthorId(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` under Concord's signing context.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut buf = Vec::with_capacity(SIGNING_CONTEXT.len() + message.len());
        buf.extend_from_slice(SIGNING_CONTEXT);
        buf.extend_from_slice(message);
        self.signing.sign(&buf).to_bytes()
    }

    /// A 32-byte value derived from the secret key, `context` and `input`:
    /// unpredictable to anyone without the key, identical on every call.
    pub(crate) fn derive(&self, context: &str, input: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key(context, &self.signing.to_bytes());
        *blake3::keyed_hash(&key, input).as_bytes()
    }
}

/// Verifies `signature` by `author` over `message` under Concord's signing context.
pub(crate) fn verify(
    author: &AuthorId,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), EnvelopeError> {
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| EnvelopeError::BadAuthorKey)?;
    let mut buf = Vec::with_capacity(SIGNING_CONTEXT.len() + message.len());
    buf.extend_from_slice(SIGNING_CONTEXT);
    buf.extend_from_slice(message);
    key.verify_strict(&buf, &Signature::from_bytes(signature))
        .map_err(|_| EnvelopeError::BadSignature)
}

/// The yrs client id of `author`'s documents: 53 bits of the key's hash (Yjs
/// interop), never zero. Each author writes only documents of its own, so two
/// authors sharing a client id cannot corrupt each other.
pub fn client_id(author: &AuthorId) -> u64 {
    let hash = blake3::hash(&author.0);
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(raw) & CLIENT_ID_MASK).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_signature_verifies_only_for_its_author_and_message() {
        let alice = DeviceKey::from_seed([1; 32]);
        let bob = DeviceKey::from_seed([2; 32]);
        let sig = alice.sign(b"hello");
        assert_eq!(verify(&alice.author(), b"hello", &sig), Ok(()));
        assert_eq!(verify(&bob.author(), b"hello", &sig), Err(EnvelopeError::BadSignature));
        assert_eq!(verify(&alice.author(), b"hellp", &sig), Err(EnvelopeError::BadSignature));
    }

    #[test]
    fn test_client_id_fits_in_53_bits() {
        for seed in 0..64u8 {
            let id = client_id(&DeviceKey::from_seed([seed; 32]).author());
            assert!(id > 0 && id <= CLIENT_ID_MASK);
        }
    }
}
