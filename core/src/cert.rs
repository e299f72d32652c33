//! Device certificates: an author key vouching for a transport identity.
//!
//! A node's network identity (its libp2p peer id) is derived from the device
//! key but is not the author key, so a peer cannot tell by the connection
//! alone which author sits behind it. A certificate says so: the author
//! signs the transport identity it uses. The transport authenticates the
//! identity (libp2p's Noise handshake proves the peer holds the identity's
//! secret), so a certificate copied by another peer names an identity that
//! peer cannot use: it needs no nonce and no expiry, and one certificate per
//! device serves every connection and every room. Peers decide by it whether
//! the device behind a connection is a member of a room before they serve
//! the room's messages to it.
//!
//! Format (big-endian): `"CNCD"` ‖ version u8 ‖ author (32) ‖ identity
//! length u8 ‖ identity (1 to [`MAX_TRANSPORT_ID_BYTES`]) ‖ Ed25519
//! signature (64) over every byte before it. The magic differs from every
//! other signed format's, so the signature cannot pass as one over an
//! envelope, a governance change, an invite or a signal.

use crate::base::FORMAT_VERSION;
use crate::codec::{check_header, Reader};
use crate::error::{DecodeError, EnvelopeError};
use crate::ids::AuthorId;
use crate::keys::{self, DeviceKey};

const CERT_MAGIC: &[u8; 4] = b"CNCD";

/// Longest transport identity a certificate names (a libp2p peer id is 38
/// bytes for an Ed25519 key).
pub const MAX_TRANSPORT_ID_BYTES: usize = 64;

/// Longest encoded certificate.
pub const MAX_CERT_BYTES: usize = 4 + 1 + 32 + 1 + MAX_TRANSPORT_ID_BYTES + 64;

/// A verified device certificate: `author` vouches for the transport
/// identity it was verified against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCert {
    /// The author behind the identity.
    pub author: AuthorId,
}

impl DeviceCert {
    /// Signs a certificate for `transport_id` with `key`.
    pub(crate) fn sign(key: &DeviceKey, transport_id: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if transport_id.is_empty() || transport_id.len() > MAX_TRANSPORT_ID_BYTES {
            return Err(DecodeError::InvalidValue("transport identity length"));
        }
        let mut bytes = Vec::with_capacity(MAX_CERT_BYTES);
        bytes.extend_from_slice(CERT_MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(key.author().as_bytes());
        // Checked above: the length fits in a byte.
        bytes.push(transport_id.len() as u8);
        bytes.extend_from_slice(transport_id);
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        Ok(bytes)
    }

    /// Decodes `bytes` and verifies that they are a certificate for
    /// `transport_id` (the identity the transport authenticated), signed by
    /// the author they name. Refuses malformed and forged certificates and
    /// certificates for any other identity.
    pub fn verify(bytes: &[u8], transport_id: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_CERT_BYTES {
            return Err(DecodeError::TooLarge {
                what: "device certificate",
                len: bytes.len(),
                max: MAX_CERT_BYTES,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        check_header(&mut r, CERT_MAGIC, "device certificate")?;
        let author = AuthorId::from_bytes(r.array::<32>("author")?);
        let len = usize::from(r.u8("transport identity length")?);
        if len == 0 || len > MAX_TRANSPORT_ID_BYTES {
            return Err(DecodeError::InvalidValue("transport identity length").into());
        }
        let named = r.bytes(len, "transport identity")?;
        let signed_len = r.position();
        let signature = r.array::<64>("signature")?;
        r.finish()?;
        if named != transport_id {
            return Err(DecodeError::InvalidValue("certificate for another identity").into());
        }
        keys::verify(&author, &bytes[..signed_len], &signature)?;
        Ok(Self { author })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &[u8] = b"\x00\x24\x08\x01\x12\x20 a thirty-eight byte peer id..";

    #[test]
    fn test_certificate_verifies_for_its_identity_only() {
        let key = DeviceKey::from_seed([7; 32]);
        let cert = DeviceCert::sign(&key, PEER).unwrap();
        assert_eq!(DeviceCert::verify(&cert, PEER), Ok(DeviceCert { author: key.author() }));
        let mut other = PEER.to_vec();
        other[10] ^= 1;
        assert!(DeviceCert::verify(&cert, &other).is_err());
        assert!(DeviceCert::sign(&key, &[]).is_err());
        assert!(DeviceCert::sign(&key, &[1; MAX_TRANSPORT_ID_BYTES + 1]).is_err());
    }

    #[test]
    fn test_every_bit_flip_truncation_and_extension_is_refused() {
        let key = DeviceKey::from_seed([8; 32]);
        let cert = DeviceCert::sign(&key, PEER).unwrap();
        for i in 0..cert.len() {
            for bit in 0..8 {
                let mut bad = cert.clone();
                bad[i] ^= 1 << bit;
                assert!(DeviceCert::verify(&bad, PEER).is_err(), "flip of bit {bit} of byte {i}");
            }
        }
        for len in 0..cert.len() {
            assert!(DeviceCert::verify(&cert[..len], PEER).is_err(), "truncated to {len}");
        }
        let mut long = cert.clone();
        long.push(0);
        assert!(DeviceCert::verify(&long, PEER).is_err());
        assert!(DeviceCert::verify(&[0; MAX_CERT_BYTES + 1], PEER).is_err());
    }

    #[test]
    fn test_another_authors_signature_is_refused() {
        let (alice, mallory) = (DeviceKey::from_seed([1; 32]), DeviceKey::from_seed([2; 32]));
        let mut cert = DeviceCert::sign(&mallory, PEER).unwrap();
        // Claim Alice's key over Mallory's signature.
        cert[5..37].copy_from_slice(alice.author().as_bytes());
        assert!(DeviceCert::verify(&cert, PEER).is_err());
    }
}
