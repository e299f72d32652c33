//! Pairwise encryption of room keys to one device: vodozemac's Olm (the
//! audited Matrix implementation), used as one-shot pre-key messages.
//!
//! Each device has one Olm account. Its identity key and its fallback key
//! are its published [`DeviceKeys`]. A room key goes to a device as an Olm
//! pre-key message of a fresh outbound session to those two keys: a triple
//! Diffie-Hellman with a new base key each time, then the Double Ratchet's
//! first message. The recipient makes the matching inbound session from the
//! message alone, with its fallback key, which stays (unlike a one-time
//! key); the session is used once and forgotten. So a share decrypts the
//! same way however often, in whatever order and by whichever path it
//! arrives, which is what a store-and-forward CRDT needs, and nothing here
//! keeps state per peer.
//!
//! What this gives up, compared with Matrix's use of Olm: forward secrecy
//! of the shares against a later theft of the device's long-term keys,
//! which one-time keys from a key server would give. Rotating the fallback
//! key is how a device bounds that (`docs/architecture.md`, Encryption).

use vodozemac::olm::{Account, AccountPickle, PreKeyMessage, SessionConfig};
use vodozemac::Curve25519PublicKey;

use crate::base::{DecodeError, DeviceKeys};
use crate::error::{Error, Result};

/// The Olm message type of a pre-key message (vodozemac's `to_parts`).
const PRE_KEY: usize = 0;

/// Most bytes of one pre-key message this crate accepts: a room key is
/// about 230 bytes, and the pre-key framing adds about 150.
pub(crate) const MAX_PRE_KEY_MESSAGE_BYTES: usize = 1024;

/// One device's Olm account.
pub(crate) struct DeviceCrypto {
    account: Account,
    keys: DeviceKeys,
}

impl std::fmt::Debug for DeviceCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCrypto").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl DeviceCrypto {
    /// A new account with its fallback key.
    pub(crate) fn generate() -> Result<Self> {
        let mut account = Account::new();
        account.generate_fallback_key();
        let fallback =
            account.fallback_key().into_values().next().ok_or_else(|| {
                Error::InvalidInput("the Olm account made no fallback key".into())
            })?;
        let keys = DeviceKeys {
            identity: account.curve25519_key().to_bytes(),
            fallback: fallback.to_bytes(),
        };
        Ok(Self { account, keys })
    }

    /// The account as stored: its published keys, then its pickle,
    /// encrypted by vodozemac under `pickle_key`.
    pub(crate) fn to_stored(&self, pickle_key: &[u8; 32]) -> Vec<u8> {
        let mut out = self.keys.to_bytes().to_vec();
        out.extend_from_slice(self.account.pickle().encrypt(pickle_key).as_bytes());
        out
    }

    /// Reads [`DeviceCrypto::to_stored`].
    pub(crate) fn from_stored(bytes: &[u8], pickle_key: &[u8; 32]) -> Result<Self, DecodeError> {
        if bytes.len() < DeviceKeys::LEN {
            return Err(DecodeError::Truncated { what: "olm account" });
        }
        let keys = DeviceKeys::from_bytes(&bytes[..DeviceKeys::LEN])?;
        let pickle = std::str::from_utf8(&bytes[DeviceKeys::LEN..])
            .map_err(|_| DecodeError::InvalidValue("olm account pickle"))?;
        let pickle = AccountPickle::from_encrypted(pickle, pickle_key)
            .map_err(|_| DecodeError::InvalidValue("olm account pickle"))?;
        Ok(Self { account: Account::from_pickle(pickle), keys })
    }

    /// This device's published keys.
    pub(crate) fn keys(&self) -> DeviceKeys {
        self.keys
    }

    /// Encrypts `plaintext` to the device with `to`'s keys, as one pre-key
    /// message.
    pub(crate) fn seal_to(&self, to: &DeviceKeys, plaintext: &[u8]) -> Result<Vec<u8>> {
        let identity = Curve25519PublicKey::from_bytes(to.identity);
        let fallback = Curve25519PublicKey::from_bytes(to.fallback);
        let mut session = self
            .account
            .create_outbound_session(SessionConfig::version_1(), identity, fallback)
            .map_err(|e| Error::InvalidInput(format!("cannot encrypt to that device: {e}")))?;
        let message = session
            .encrypt(plaintext)
            .map_err(|e| Error::InvalidInput(format!("cannot encrypt to that device: {e}")))?;
        match message.to_parts() {
            (PRE_KEY, bytes) => Ok(bytes),
            _ => Err(Error::InvalidInput("a first Olm message that is no pre-key message".into())),
        }
    }

    /// Decrypts a pre-key message that `sender` (its identity key) made to
    /// this device. Fails, without changing anything, for a message to
    /// another device or from another sender, and for any tampered byte.
    pub(crate) fn open_from(
        &mut self,
        sender: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Vec<u8>, DecodeError> {
        if bytes.len() > MAX_PRE_KEY_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge {
                what: "pre-key message",
                len: bytes.len(),
                max: MAX_PRE_KEY_MESSAGE_BYTES,
            });
        }
        // vodozemac is audited and returns errors for bad input; the unwind
        // guard is defence in depth, as for yrs: a hostile peer must never
        // take the replica down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let message = PreKeyMessage::from_bytes(bytes)
                .map_err(|_| DecodeError::InvalidValue("pre-key message"))?;
            // Only a message to our own fallback key; nothing else is ours.
            if message.one_time_key().to_bytes() != self.keys.fallback {
                return Err(DecodeError::InvalidValue("pre-key message for another device"));
            }
            let sender = Curve25519PublicKey::from_bytes(*sender);
            self.account
                .create_inbound_session(SessionConfig::version_1(), sender, &message)
                .map(|created| created.plaintext)
                .map_err(|_| DecodeError::InvalidValue("pre-key message does not decrypt"))
        }))
        .map_err(|_| DecodeError::InvalidValue("pre-key message"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_share_opens_only_for_its_device_and_from_its_sender() {
        let alice = DeviceCrypto::generate().unwrap();
        let mut bob = DeviceCrypto::generate().unwrap();
        let mut carol = DeviceCrypto::generate().unwrap();
        let sealed = alice.seal_to(&bob.keys(), b"room key").unwrap();
        // Any number of times, in any order: no state is kept.
        assert_eq!(bob.open_from(&alice.keys().identity, &sealed).unwrap(), b"room key");
        assert_eq!(bob.open_from(&alice.keys().identity, &sealed).unwrap(), b"room key");
        assert!(carol.open_from(&alice.keys().identity, &sealed).is_err());
        assert!(bob.open_from(&carol.keys().identity, &sealed).is_err());
        // A changed byte fails, or (protobuf framing lets a few bytes be
        // spelled two ways) still yields exactly what was sent, never other
        // plaintext. The share also travels inside its sender's signed
        // envelope, so nobody else can change it unnoticed anyway.
        let mut failed = 0;
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            match bob.open_from(&alice.keys().identity, &bad) {
                Ok(plain) => assert_eq!(plain, b"room key", "byte {i}"),
                Err(_) => failed += 1,
            }
        }
        assert!(failed >= sealed.len() - 4, "only {failed} of {} changes failed", sealed.len());
        for len in 0..sealed.len() {
            assert!(bob.open_from(&alice.keys().identity, &sealed[..len]).is_err());
        }
    }

    #[test]
    fn test_the_account_survives_storing() {
        let key = [7u8; 32];
        let alice = DeviceCrypto::generate().unwrap();
        let bob = DeviceCrypto::generate().unwrap();
        let mut again = DeviceCrypto::from_stored(&bob.to_stored(&key), &key).unwrap();
        assert_eq!(again.keys(), bob.keys());
        let sealed = alice.seal_to(&bob.keys(), b"after reopen").unwrap();
        assert_eq!(again.open_from(&alice.keys().identity, &sealed).unwrap(), b"after reopen");
        assert!(DeviceCrypto::from_stored(&bob.to_stored(&key), &[8u8; 32]).is_err());
    }
}
