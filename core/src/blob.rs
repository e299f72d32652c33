//! Content blobs: message bodies and attachments, stored apart from the CRDT
//! metadata and addressed by their blake3 hash.
//!
//! A blob is `nonce (16 bytes) ‖ content`. The nonce is derived from the
//! author's secret key and the message, so it is unpredictable to everyone
//! else. Envelopes keep the hash after a delete; because the nonce is erased
//! with the blob, the hash that remains cannot be used to confirm a guess of
//! the deleted text (a bare hash of "yes" could).

use crate::base::DecodeError;
use crate::ids::BlobHash;

/// Length of the per-blob nonce.
pub const BLOB_NONCE_LEN: usize = 16;

/// Largest message body, in bytes of UTF-8. Chat messages are short; larger
/// text belongs in an attachment.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Largest blob carried inline with an envelope. Larger attachments will go
/// by request (blob fetch) once the node exists.
pub const MAX_BLOB_BYTES: usize = 1024 * 1024;

/// Largest blob as it travels: its content of at most [`MAX_BLOB_BYTES`]
/// and what wraps it (a nonce, or in an encrypted room the encrypted
/// blob's framing, `crypto::megolm::ENCRYPTED_BLOB_OVERHEAD`).
pub const MAX_WIRE_BLOB_BYTES: usize =
    MAX_BLOB_BYTES + crate::crypto::megolm::ENCRYPTED_BLOB_OVERHEAD;

/// Seals `content` under `nonce` into blob bytes.
pub(crate) fn seal(nonce: &[u8; BLOB_NONCE_LEN], content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOB_NONCE_LEN + content.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(content);
    out
}

/// The address of blob bytes.
pub(crate) fn hash(blob: &[u8]) -> BlobHash {
    BlobHash(*blake3::hash(blob).as_bytes())
}

/// The content inside blob bytes.
pub(crate) fn content(blob: &[u8]) -> Result<&[u8], DecodeError> {
    if blob.len() < BLOB_NONCE_LEN {
        return Err(DecodeError::Truncated { what: "blob nonce" });
    }
    if blob.len() > BLOB_NONCE_LEN + MAX_BLOB_BYTES {
        return Err(DecodeError::TooLarge {
            what: "blob",
            len: blob.len(),
            max: BLOB_NONCE_LEN + MAX_BLOB_BYTES,
        });
    }
    Ok(&blob[BLOB_NONCE_LEN..])
}

/// The text of a body blob, if it is one a message may show: UTF-8 of at
/// most [`MAX_BODY_BYTES`].
pub(crate) fn body_text(blob: &[u8]) -> Option<&str> {
    content(blob)
        .ok()
        .filter(|c| c.len() <= MAX_BODY_BYTES)
        .and_then(|c| std::str::from_utf8(c).ok())
}
