//! Sealing content at rest: XChaCha20-Poly1305 (RustCrypto's audited
//! `chacha20poly1305`) under keys that never touch the log-structured
//! store in the clear.
//!
//! A sealed value is `nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)`. The
//! nonce is random: with 192 bits, random nonces do not repeat in any
//! realistic number of seals under one key. Every seal binds associated
//! data naming the record it belongs to (tree, key), so a sealed value
//! cannot be moved to another record and opened there.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::base::DecodeError;
use crate::error::{Error, Result, StoreError};
use crate::store::tables::META_KEK_SEQ;
use crate::store::{SecretSlot, Store, Tree, WriteBatch};

/// Bytes a seal adds to its plaintext.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + 16;
const NONCE_LEN: usize = 24;

/// A 32-byte key from the operating system's randomness.
pub(crate) fn random_key() -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Error::Randomness(e.to_string()))?;
    Ok(key)
}

/// Seals `plaintext` under `key`, bound to `aad`.
pub(crate) fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| Error::Randomness(e.to_string()))?;
    let cipher = XChaCha20Poly1305::new(key.into());
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| Error::InvalidInput("content too large to seal".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a value sealed by [`seal`] under `key` and `aad`. Fails for a
/// wrong key, other associated data, or any change to the sealed bytes.
pub(crate) fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(DecodeError::Truncated { what: "sealed value" });
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    XChaCha20Poly1305::new(key.into())
        .decrypt(&XNonce::from(n), Payload { msg: body, aad })
        .map_err(|_| DecodeError::InvalidValue("sealed value does not open"))
}

/// Opens a 32-byte key sealed by [`seal`].
pub(crate) fn open_key(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<[u8; 32], DecodeError> {
    open(key, aad, sealed)?
        .as_slice()
        .try_into()
        .map_err(|_| DecodeError::InvalidValue("sealed key length"))
}

/// Bytes of a sealed 32-byte key.
pub(crate) const SEALED_KEY_BYTES: usize = 32 + SEAL_OVERHEAD;

/// A `bodies-2` value's first byte when the text follows.
pub(crate) const BODY_TEXT: u8 = 0;
/// A `bodies-2` value, whole, for a body that waits for its room key.
pub(crate) const BODY_WAITING: u8 = 1;

/// Associated data that binds a sealed value to its tree and key.
pub(crate) fn aad(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut out = tree.name().as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(key);
    out
}

fn corrupt(tree: Tree, reason: impl std::fmt::Display) -> Error {
    Error::Store(StoreError::Corrupt { tree: tree.name(), reason: reason.to_string() })
}

/// The store's active key-encryption key and the secret slot holding it.
/// Made in a store that has none (a new store, or one from before
/// sealing); the other slot is cleared, which finishes a rotation that a
/// crash interrupted either way.
pub(crate) fn open_kek(store: &dyn Store) -> Result<(usize, SecretSlot)> {
    let slots = store.secret_slots()?;
    let active = match store.get(Tree::Meta, META_KEK_SEQ)? {
        Some(raw) => Some(u64::from_be_bytes(
            raw.as_slice().try_into().map_err(|_| corrupt(Tree::Meta, "kek-seq length"))?,
        )),
        None => None,
    };
    let (slot, kek) = match active {
        Some(seq) => {
            let index =
                slots.iter().position(|s| s.is_some_and(|s| s.seq == seq)).ok_or_else(|| {
                    Error::Store(StoreError::Open(format!(
                        "the secret file holds no key {seq}, which this store is sealed under"
                    )))
                })?;
            (index, slots[index].ok_or_else(|| corrupt(Tree::Meta, "secret slot"))?)
        }
        None => {
            let kek = SecretSlot { seq: 1, key: random_key()? };
            store.write_secret_slot(0, Some(kek))?;
            let mut batch = WriteBatch::new();
            batch.put(Tree::Meta, META_KEK_SEQ, kek.seq.to_be_bytes());
            store.commit(batch)?;
            (0, kek)
        }
    };
    if slots[1 - slot].is_some() {
        store.write_secret_slot(1 - slot, None)?;
    }
    Ok((slot, kek))
}

/// A `bucket-keys-1` value: `bucket_key` sealed under `kek`.
pub(crate) fn bucket_key_value(
    k: &[u8],
    bucket_key: &[u8; 32],
    kek: &SecretSlot,
) -> Result<Vec<u8>> {
    let mut v = kek.seq.to_be_bytes().to_vec();
    v.extend(seal(&kek.key, &aad(Tree::BucketKeys, k), bucket_key)?);
    Ok(v)
}

/// Opens a `bucket-keys-1` value.
pub(crate) fn open_bucket_key_value(k: &[u8], v: &[u8], kek: &SecretSlot) -> Result<[u8; 32]> {
    let seq = v.get(..8).ok_or_else(|| corrupt(Tree::BucketKeys, "short value"))?;
    if seq != kek.seq.to_be_bytes() {
        return Err(corrupt(Tree::BucketKeys, "sealed under another key"));
    }
    open_key(&kek.key, &aad(Tree::BucketKeys, k), &v[8..]).map_err(|e| corrupt(Tree::BucketKeys, e))
}

/// A `content-keys-1` value: `content_key` sealed under `bucket_key`.
pub(crate) fn content_key_value(
    k: &[u8],
    bucket_key: &[u8; 32],
    content_key: &[u8; 32],
) -> Result<Vec<u8>> {
    seal(bucket_key, &aad(Tree::ContentKeys, k), content_key)
}

/// Opens a `content-keys-1` value.
pub(crate) fn open_content_key_value(
    k: &[u8],
    bucket_key: &[u8; 32],
    v: &[u8],
) -> Result<[u8; 32]> {
    open_key(bucket_key, &aad(Tree::ContentKeys, k), v).map_err(|e| corrupt(Tree::ContentKeys, e))
}

/// A `blobs-2` value: the bucket, and `blob` sealed under `content_key`.
pub(crate) fn blob_value(
    k: &[u8],
    bucket: u32,
    content_key: &[u8; 32],
    blob: &[u8],
) -> Result<Vec<u8>> {
    let mut v = bucket.to_be_bytes().to_vec();
    v.extend(seal(content_key, &aad(Tree::Blobs, k), blob)?);
    Ok(v)
}

/// The bucket a `blobs-2` value names.
pub(crate) fn blob_value_bucket(v: &[u8]) -> Result<u32> {
    v.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| corrupt(Tree::Blobs, "short value"))
}

/// Opens a `blobs-2` value.
pub(crate) fn open_blob_value(k: &[u8], content_key: &[u8; 32], v: &[u8]) -> Result<Vec<u8>> {
    open(content_key, &aad(Tree::Blobs, k), v.get(4..).unwrap_or_default())
        .map_err(|e| corrupt(Tree::Blobs, e))
}

/// A `pending-2` value: the delivery sealed under the bucket key.
pub(crate) fn pending_value(k: &[u8], bucket_key: &[u8; 32], delivery: &[u8]) -> Result<Vec<u8>> {
    seal(bucket_key, &aad(Tree::Pending, k), delivery)
}

/// Opens a `pending-2` value.
pub(crate) fn open_pending_value(k: &[u8], bucket_key: &[u8; 32], v: &[u8]) -> Result<Vec<u8>> {
    open(bucket_key, &aad(Tree::Pending, k), v).map_err(|e| corrupt(Tree::Pending, e))
}

/// What a stored `pending-2` value of `len` bytes counts towards a room's
/// pending limit: the delivery's own size.
pub(crate) fn pending_len(len: usize) -> usize {
    len.saturating_sub(SEAL_OVERHEAD)
}

/// A `bodies-2` value: the body blob's content key sealed under the bucket
/// key (so a page needs no other read), then `text` sealed under it.
pub(crate) fn body_value(
    tk: &[u8],
    bucket_key: &[u8; 32],
    content_key: &[u8; 32],
    text: &[u8],
) -> Result<Vec<u8>> {
    let mut v = vec![BODY_TEXT];
    v.extend(seal(bucket_key, &aad(Tree::ContentKeys, tk), content_key)?);
    v.extend(seal(content_key, &aad(Tree::Bodies, tk), text)?);
    Ok(v)
}

/// The sealed content key and sealed text of a `bodies-2` text value.
pub(crate) fn body_value_parts(v: &[u8]) -> Result<(&[u8], &[u8])> {
    match v.split_first() {
        Some((&BODY_TEXT, rest)) if rest.len() >= SEALED_KEY_BYTES => {
            Ok(rest.split_at(SEALED_KEY_BYTES))
        }
        _ => Err(corrupt(Tree::Bodies, "unknown body record")),
    }
}

/// Opens a `bodies-2` text value.
pub(crate) fn open_body_value(tk: &[u8], bucket_key: &[u8; 32], v: &[u8]) -> Result<Vec<u8>> {
    let (sealed_key, sealed_text) = body_value_parts(v)?;
    let content_key = open_key(bucket_key, &aad(Tree::ContentKeys, tk), sealed_key)
        .map_err(|e| corrupt(Tree::Bodies, e))?;
    open(&content_key, &aad(Tree::Bodies, tk), sealed_text).map_err(|e| corrupt(Tree::Bodies, e))
}

/// A `bodies-2` text value with its content key re-sealed under a new
/// bucket key (the text stays as it is).
pub(crate) fn rekey_body_value(
    tk: &[u8],
    old: &[u8; 32],
    new: &[u8; 32],
    v: &[u8],
) -> Result<Vec<u8>> {
    let (sealed_key, sealed_text) = body_value_parts(v)?;
    let content_key = open_key(old, &aad(Tree::ContentKeys, tk), sealed_key)
        .map_err(|e| corrupt(Tree::Bodies, e))?;
    let mut out = vec![BODY_TEXT];
    out.extend(seal(new, &aad(Tree::ContentKeys, tk), &content_key)?);
    out.extend_from_slice(sealed_text);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_seal_opens_only_with_its_key_and_record() {
        let key = random_key().unwrap();
        let sealed = seal(&key, b"blob|room|hash", b"canary").unwrap();
        assert_eq!(sealed.len(), b"canary".len() + SEAL_OVERHEAD);
        assert_eq!(open(&key, b"blob|room|hash", &sealed).unwrap(), b"canary");
        assert!(open(&key, b"blob|room|other", &sealed).is_err());
        assert!(open(&random_key().unwrap(), b"blob|room|hash", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, b"blob|room|hash", &bad).is_err(), "bit flip at {i}");
        }
        for len in 0..sealed.len() {
            assert!(open(&key, b"blob|room|hash", &sealed[..len]).is_err());
        }
    }

    #[test]
    fn test_seals_of_one_plaintext_differ() {
        let key = random_key().unwrap();
        assert_ne!(seal(&key, b"", b"same").unwrap(), seal(&key, b"", b"same").unwrap());
    }
}
