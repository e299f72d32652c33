//! Room content end to end: vodozemac's Megolm group sessions (the audited
//! Matrix implementation), one per sender per room bucket and membership,
//! and the byte formats that carry them (`docs/protocol.md`, Encryption).
//!
//! A sender encrypts every body, attachment and reaction it writes in a
//! bucket with its outbound session of that bucket; the hash ratchet gives
//! each message its own key, and only indices from where a recipient's
//! copy starts can be decrypted. The sender shares the session (exported at
//! an index) with each reader's device through [`super::olm`], in a *room
//! key* bound to the room, the bucket, the sender and the recipient.
//!
//! Formats:
//! - encrypted blob: `"CNCX" ‖ 1 ‖ session id (32) ‖ Megolm message`, the
//!   plaintext `kind u8 ‖ message id (16) ‖ content`;
//! - room key: `"CNRK" ‖ 1 ‖ room (32) ‖ bucket u32 ‖ sender (32) ‖
//!   recipient (32) ‖ exported session key (length u16 ‖ bytes)`, sent as
//!   an Olm pre-key message.

use vodozemac::megolm::{
    ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession,
    InboundGroupSessionPickle, MegolmMessage, SessionConfig,
};

use crate::base::DecodeError;
use crate::codec::{check_header, Reader, Writer};
use crate::error::{Error, Result};
use crate::ids::{AuthorId, MessageId, RoomId};

/// The first bytes of an encrypted blob.
pub const ENCRYPTED_BLOB_MAGIC: &[u8; 4] = b"CNCX";
const ROOM_KEY_MAGIC: &[u8; 4] = b"CNRK";
const VERSION: u8 = 1;

/// Bytes an encrypted blob may add to its content: header, session id,
/// the Megolm framing (index, padding, MAC, signature) and the plaintext's
/// kind and message id. Sized with a margin; checked by a test.
pub const ENCRYPTED_BLOB_OVERHEAD: usize = 256;

/// A session id: the public half of the session's Ed25519 signing key.
pub type SessionId = [u8; 32];

/// Largest exported session key this crate reads (vodozemac's are 165).
const MAX_EXPORTED_KEY_BYTES: usize = 512;

/// What an encrypted blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentKind {
    /// A message body.
    Body,
    /// Attachment number `n` (1 to 15) of a message.
    Attachment(u8),
    /// A reaction's emoji.
    Reaction,
}

impl ContentKind {
    fn to_u8(self) -> u8 {
        match self {
            ContentKind::Body => 0,
            ContentKind::Attachment(n) => n,
            ContentKind::Reaction => 0xff,
        }
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(ContentKind::Body),
            n @ 1..=15 => Ok(ContentKind::Attachment(n)),
            0xff => Ok(ContentKind::Reaction),
            _ => Err(DecodeError::InvalidValue("content kind")),
        }
    }
}

fn session_id_of(base64: &str) -> Result<SessionId> {
    vodozemac::base64_decode(base64)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| Error::InvalidInput("a Megolm session id that is not 32 bytes".into()))
}

/// One sender's outbound session.
pub(crate) struct Outbound {
    session: GroupSession,
    id: SessionId,
}

impl Outbound {
    /// A new session with a random ratchet and signing key.
    pub(crate) fn generate() -> Result<Self> {
        let session = GroupSession::new(SessionConfig::version_1());
        let id = session_id_of(&session.session_id())?;
        Ok(Self { session, id })
    }

    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// The index the next message gets.
    pub(crate) fn index(&self) -> u32 {
        self.session.message_index()
    }

    /// The session's key as an inbound session from its current index.
    pub(crate) fn inbound(&self) -> Inbound {
        Inbound {
            session: InboundGroupSession::new(
                &self.session.session_key(),
                SessionConfig::version_1(),
            ),
            id: self.id,
        }
    }

    /// Encrypts `content` of message `id` into an encrypted blob.
    pub(crate) fn encrypt(&mut self, kind: ContentKind, id: &MessageId, content: &[u8]) -> Vec<u8> {
        let mut plaintext = Vec::with_capacity(17 + content.len());
        plaintext.put_u8(kind.to_u8());
        plaintext.extend_from_slice(id.as_bytes());
        plaintext.extend_from_slice(content);
        let message = self.session.encrypt(&plaintext).to_bytes();
        let mut out = Vec::with_capacity(37 + message.len());
        out.extend_from_slice(ENCRYPTED_BLOB_MAGIC);
        out.put_u8(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&message);
        out
    }

    /// The session as stored, encrypted by vodozemac under `pickle_key`.
    pub(crate) fn to_stored(&self, pickle_key: &[u8; 32]) -> Vec<u8> {
        self.session.pickle().encrypt(pickle_key).into_bytes()
    }

    pub(crate) fn from_stored(bytes: &[u8], pickle_key: &[u8; 32]) -> Result<Self, DecodeError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidValue("session pickle"))?;
        let pickle = GroupSessionPickle::from_encrypted(text, pickle_key)
            .map_err(|_| DecodeError::InvalidValue("session pickle"))?;
        let session = GroupSession::from_pickle(pickle);
        let id = session_id_of(&session.session_id())
            .map_err(|_| DecodeError::InvalidValue("session id"))?;
        Ok(Self { session, id })
    }
}

/// A session this device can decrypt with, from its first known index on.
pub(crate) struct Inbound {
    session: InboundGroupSession,
    id: SessionId,
}

/// What an encrypted blob decrypted to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decrypted {
    pub kind: ContentKind,
    pub id: MessageId,
    pub content: Vec<u8>,
}

impl Inbound {
    /// A session from an exported key (a room key's payload).
    pub(crate) fn import(exported: &[u8]) -> Result<Self, DecodeError> {
        let key = ExportedSessionKey::from_bytes(exported)
            .map_err(|_| DecodeError::InvalidValue("exported session key"))?;
        let session = InboundGroupSession::import(&key, SessionConfig::version_1());
        let id = session_id_of(&session.session_id())
            .map_err(|_| DecodeError::InvalidValue("session id"))?;
        Ok(Self { session, id })
    }

    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// The first index this copy can decrypt.
    pub(crate) fn first_index(&self) -> u32 {
        self.session.first_known_index()
    }

    /// The session exported at `index`, if this copy reaches back that far.
    pub(crate) fn export_at(&mut self, index: u32) -> Option<Vec<u8>> {
        self.session.export_at(index).map(|k| k.to_bytes())
    }

    /// Decrypts an encrypted blob of this session.
    pub(crate) fn decrypt(&mut self, blob: &[u8]) -> Result<Decrypted, DecodeError> {
        let (sid, message) = parse_blob(blob)?;
        if sid != self.id {
            return Err(DecodeError::InvalidValue("a blob of another session"));
        }
        let decrypted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.session.decrypt(&message)
        }))
        .map_err(|_| DecodeError::InvalidValue("encrypted blob"))?
        .map_err(|_| DecodeError::InvalidValue("encrypted blob does not decrypt"))?;
        let mut r = Reader::new(&decrypted.plaintext);
        let kind = ContentKind::from_u8(r.u8("content kind")?)?;
        let id = MessageId::from_bytes(r.array("content message id")?);
        let content = decrypted.plaintext[17..].to_vec();
        Ok(Decrypted { kind, id, content })
    }

    /// The copy as stored: first index u32, then the pickle.
    pub(crate) fn to_stored(&self, pickle_key: &[u8; 32]) -> Vec<u8> {
        let mut out = self.first_index().to_be_bytes().to_vec();
        out.extend_from_slice(self.session.pickle().encrypt(pickle_key).as_bytes());
        out
    }

    pub(crate) fn from_stored(bytes: &[u8], pickle_key: &[u8; 32]) -> Result<Self, DecodeError> {
        let text = bytes
            .get(4..)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or(DecodeError::InvalidValue("session pickle"))?;
        let pickle = InboundGroupSessionPickle::from_encrypted(text, pickle_key)
            .map_err(|_| DecodeError::InvalidValue("session pickle"))?;
        let session = InboundGroupSession::from_pickle(pickle);
        let id = session_id_of(&session.session_id())
            .map_err(|_| DecodeError::InvalidValue("session id"))?;
        Ok(Self { session, id })
    }
}

/// Splits an encrypted blob into its session id and Megolm message,
/// checking its shape (not its keys).
pub(crate) fn parse_blob(blob: &[u8]) -> Result<(SessionId, MegolmMessage), DecodeError> {
    let mut r = Reader::new(blob);
    check_header(&mut r, ENCRYPTED_BLOB_MAGIC, "encrypted blob")?;
    let sid: SessionId = r.array("session id")?;
    let rest = &blob[r.position()..];
    let message = std::panic::catch_unwind(|| MegolmMessage::from_bytes(rest))
        .map_err(|_| DecodeError::InvalidValue("megolm message"))?
        .map_err(|_| DecodeError::InvalidValue("megolm message"))?;
    Ok((sid, message))
}

/// The session id and message index of an encrypted blob.
pub(crate) fn blob_session(blob: &[u8]) -> Result<(SessionId, u32), DecodeError> {
    let (sid, message) = parse_blob(blob)?;
    Ok((sid, message.message_index()))
}

/// What a room key says, besides the session itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoomKeyContext {
    pub room: RoomId,
    pub bucket: u32,
    pub sender: AuthorId,
    pub recipient: AuthorId,
}

/// A room key's plaintext: its context and the exported session.
pub(crate) fn room_key(context: &RoomKeyContext, exported: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(110 + exported.len());
    out.extend_from_slice(ROOM_KEY_MAGIC);
    out.put_u8(VERSION);
    out.extend_from_slice(context.room.as_bytes());
    out.put_u32(context.bucket);
    out.extend_from_slice(context.sender.as_bytes());
    out.extend_from_slice(context.recipient.as_bytes());
    out.put_u16(exported.len() as u16);
    out.extend_from_slice(exported);
    out
}

/// The sender a room key's plaintext names: the owner of its session.
pub(crate) fn room_key_sender(bytes: &[u8]) -> Result<AuthorId, DecodeError> {
    let mut r = Reader::new(bytes);
    check_header(&mut r, ROOM_KEY_MAGIC, "room key")?;
    let _room: [u8; 32] = r.array("room key room")?;
    r.u32("room key bucket")?;
    Ok(AuthorId::from_bytes(r.array("room key sender")?))
}

/// Reads a room key's plaintext; its context must be `expected`, so a key
/// meant for another room, bucket, sender or device is refused.
pub(crate) fn open_room_key(
    bytes: &[u8],
    expected: &RoomKeyContext,
) -> Result<Vec<u8>, DecodeError> {
    let mut r = Reader::new(bytes);
    check_header(&mut r, ROOM_KEY_MAGIC, "room key")?;
    let context = RoomKeyContext {
        room: RoomId::from_bytes(r.array("room key room")?),
        bucket: r.u32("room key bucket")?,
        sender: AuthorId::from_bytes(r.array("room key sender")?),
        recipient: AuthorId::from_bytes(r.array("room key recipient")?),
    };
    if context != *expected {
        return Err(DecodeError::InvalidValue("a room key for another room, bucket or device"));
    }
    let len = r.u16("exported key length")? as usize;
    if len > MAX_EXPORTED_KEY_BYTES {
        return Err(DecodeError::TooLarge {
            what: "exported key",
            len,
            max: MAX_EXPORTED_KEY_BYTES,
        });
    }
    let exported = r.bytes(len, "exported key")?.to_vec();
    r.finish()?;
    Ok(exported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MessageId {
        MessageId::from_bytes([n; 16])
    }

    #[test]
    fn test_content_decrypts_from_the_shared_index_on() {
        let mut out = Outbound::generate().unwrap();
        let early = out.encrypt(ContentKind::Body, &id(1), b"before the share");
        let mut copy = out.inbound();
        assert_eq!(copy.first_index(), 1);
        let late = out.encrypt(ContentKind::Attachment(2), &id(2), b"after the share");
        let d = copy.decrypt(&late).unwrap();
        assert_eq!(
            (d.kind, d.id, d.content.as_slice()),
            (ContentKind::Attachment(2), id(2), &b"after the share"[..])
        );
        assert!(copy.decrypt(&early).is_err(), "an index before the share");
        assert_eq!(blob_session(&late).unwrap(), (out.id(), 1));
        assert!(late.len() - b"after the share".len() <= ENCRYPTED_BLOB_OVERHEAD);
        let big = out.encrypt(ContentKind::Body, &id(3), &vec![7u8; 1 << 20]);
        assert!(big.len() - (1 << 20) <= ENCRYPTED_BLOB_OVERHEAD);
    }

    #[test]
    fn test_a_tampered_or_foreign_blob_does_not_decrypt() {
        let mut out = Outbound::generate().unwrap();
        let mut copy = out.inbound();
        let blob = out.encrypt(ContentKind::Body, &id(1), b"hello");
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            if let Ok(d) = copy.decrypt(&bad) {
                // Only a respelling of the same protobuf framing survives.
                assert_eq!(d.content, b"hello", "byte {i}");
            }
        }
        let mut other = Outbound::generate().unwrap();
        assert!(copy.decrypt(&other.encrypt(ContentKind::Body, &id(1), b"x")).is_err());
        assert_eq!(copy.decrypt(&blob).unwrap().content, b"hello");
    }

    #[test]
    fn test_export_and_storing_keep_the_session() {
        let pickle_key = [3u8; 32];
        let mut out = Outbound::generate().unwrap();
        let mut full = out.inbound();
        let blobs: Vec<Vec<u8>> =
            (0..3).map(|n| out.encrypt(ContentKind::Body, &id(n), &[n])).collect();
        let mut from_two = Inbound::import(&full.export_at(2).unwrap()).unwrap();
        assert_eq!(from_two.first_index(), 2);
        assert!(from_two.decrypt(&blobs[1]).is_err());
        assert_eq!(from_two.decrypt(&blobs[2]).unwrap().content, [2]);
        let stored = full.to_stored(&pickle_key);
        let mut again = Inbound::from_stored(&stored, &pickle_key).unwrap();
        assert_eq!(again.decrypt(&blobs[0]).unwrap().content, [0]);
        let mut out_again =
            Outbound::from_stored(&out.to_stored(&pickle_key), &pickle_key).unwrap();
        assert_eq!(out_again.index(), 3);
        assert_eq!(
            full.decrypt(&out_again.encrypt(ContentKind::Body, &id(9), b"on")).unwrap().content,
            b"on"
        );
    }

    #[test]
    fn test_a_room_key_opens_only_in_its_context() {
        let context = crate::crypto::hostile::sample_context();
        let key = room_key(&context, b"exported");
        assert_eq!(open_room_key(&key, &context).unwrap(), b"exported");
        let others = [
            RoomKeyContext { room: RoomId::from_bytes([9; 32]), ..context },
            RoomKeyContext { bucket: 8, ..context },
            RoomKeyContext { sender: AuthorId::from_bytes([9; 32]), ..context },
            RoomKeyContext { recipient: AuthorId::from_bytes([9; 32]), ..context },
        ];
        for other in others {
            assert!(open_room_key(&key, &other).is_err());
        }
        for len in 0..key.len() {
            assert!(open_room_key(&key[..len], &context).is_err());
        }
    }
}
