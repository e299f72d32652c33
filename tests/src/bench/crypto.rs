//! The raw baselines' cryptographic work for encrypted rooms: what any end
//! to end encrypted chat store must do per message, with the crates Concord
//! uses, so that an encrypted benchmark's ratio is Concord's own overhead
//! and not the price of the cryptography.
//!
//! Per message sent: encrypt the body with a Megolm group session
//! (vodozemac, one hash-ratchet step and AES-256-CBC with HMAC-SHA-256 and
//! the session's Ed25519 signature), sign the ciphertext with the device's
//! Ed25519 key, and seal the body at rest once with XChaCha20-Poly1305, so
//! that a delete can destroy its key. Per message received: verify the
//! device signature and Megolm-decrypt. Per message read from the store:
//! open the seal.
//!
//! What Concord does besides (a fresh content key per message, sealed under
//! its bucket key, a blob sealed beside the body, session rotation every
//! 100 messages and room keys shared by Olm) is design, and counts as its
//! overhead.

use anyhow::{anyhow, ensure, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vodozemac::megolm::{GroupSession, InboundGroupSession, MegolmMessage, SessionConfig};

/// Bytes of the travelling form's signature.
const SIGNATURE: usize = 64;
/// Bytes of an at-rest nonce.
const NONCE: usize = 24;

/// One sending device: its Megolm session, signing key and at-rest key.
pub struct Sender {
    session: GroupSession,
    signing: SigningKey,
    rest: XChaCha20Poly1305,
    /// Nonces and keys drawn from the benchmark's seed.
    rng: ChaCha8Rng,
}

impl Sender {
    /// A sender whose keys come from `seed` (vodozemac draws the Megolm
    /// ratchet from the system's randomness; its cost does not depend on it).
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let signing = SigningKey::from_bytes(&key);
        rng.fill_bytes(&mut key);
        let rest = XChaCha20Poly1305::new(&key.into());
        Self { session: GroupSession::new(SessionConfig::version_1()), signing, rest, rng }
    }

    /// A receiver holding this sender's session from its next message on.
    pub fn receiver(&self) -> Receiver {
        Receiver {
            inbound: InboundGroupSession::new(
                &self.session.session_key(),
                SessionConfig::version_1(),
            ),
            verifying: self.signing.verifying_key(),
        }
    }

    /// `body` as it travels: signature ‖ Megolm message.
    pub fn encrypt(&mut self, body: &[u8]) -> Vec<u8> {
        let message = self.session.encrypt(body).to_bytes();
        let signature = self.signing.sign(&message);
        [signature.to_bytes().as_slice(), &message].concat()
    }

    /// `body` sealed at rest under the sender's key, bound to `key`:
    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&mut self, key: &[u8], body: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        self.rng.fill_bytes(&mut nonce);
        let sealed = self
            .rest
            .encrypt(&XNonce::from(nonce), Payload { msg: body, aad: key })
            .map_err(|_| anyhow!("seal failed"))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// The stored value of a message posted under `key`: the travelling
    /// form (length u32 ‖ bytes), kept for sending, then the sealed body.
    pub fn post(&mut self, key: &[u8], body: &[u8]) -> Result<Vec<u8>> {
        let travel = self.encrypt(body);
        let sealed = self.seal(key, body)?;
        let len = u32::try_from(travel.len())?.to_be_bytes();
        Ok([len.as_slice(), &travel, &sealed].concat())
    }

    /// Opens the body of a value [`Sender::post`] stored under `key`.
    pub fn open(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let len = value.get(..4).ok_or_else(|| anyhow!("short value"))?;
        let len = u32::from_be_bytes(len.try_into()?) as usize;
        let sealed = value.get(4 + len..).ok_or_else(|| anyhow!("short value"))?;
        ensure!(sealed.len() > NONCE, "short seal");
        let (nonce, body) = sealed.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into()?;
        self.rest
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad: key })
            .map_err(|_| anyhow!("a seal that does not open"))
    }
}

/// One receiving device's copy of a sender's session and its key.
pub struct Receiver {
    inbound: InboundGroupSession,
    verifying: VerifyingKey,
}

impl Receiver {
    /// Verifies and decrypts what [`Sender::encrypt`] made.
    pub fn decrypt(&mut self, travel: &[u8]) -> Result<Vec<u8>> {
        ensure!(travel.len() > SIGNATURE, "short message");
        let (signature, message) = travel.split_at(SIGNATURE);
        let signature = Signature::from_slice(signature)?;
        self.verifying.verify(message, &signature)?;
        let message = MegolmMessage::from_bytes(message)?;
        Ok(self.inbound.decrypt(&message)?.plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_baseline_work_round_trips_and_refuses_changes() {
        let mut sender = Sender::new(7);
        let mut receiver = sender.receiver();
        let travel = sender.encrypt(b"hello");
        assert_eq!(receiver.decrypt(&travel).unwrap(), b"hello");
        let mut forged = sender.encrypt(b"again");
        forged[SIGNATURE + 10] ^= 1;
        assert!(receiver.decrypt(&forged).is_err());
        let value = sender.post(b"k1", b"at rest").unwrap();
        assert_eq!(sender.open(b"k1", &value).unwrap(), b"at rest");
        assert!(sender.open(b"k2", &value).is_err(), "bound to its key");
    }
}
