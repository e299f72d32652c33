//! Ephemeral signals: typing and presence. A signal is signed by its author's
//! device key like an envelope, but it is never stored and never synced: a
//! node gossips it, peers verify it and show it for a short while, and it is
//! gone. Format (big-endian): `"CNSG"` ‖ version u8 ‖ room (32) ‖ author
//! (32) ‖ kind u8 ‖ sent-at millis u64 ‖ Ed25519 signature (64) over every
//! byte before it. The magic differs from every envelope's, so a signature
//! over a signal can never pass as one over an envelope.

use crate::base::FORMAT_VERSION;
use crate::codec::{check_header, Reader};
use crate::error::DecodeError;
use crate::error::EnvelopeError;
use crate::ids::{AuthorId, RoomId};
use crate::keys::{self, DeviceKey};

const SIGNAL_MAGIC: &[u8; 4] = b"CNSG";

/// Size of every encoded signal.
pub const SIGNAL_BYTES: usize = 4 + 1 + 32 + 32 + 1 + 8 + 64;

/// How far a signal's send time may be from the receiver's clock, either
/// way. An older signal is stale (or replayed) and is refused.
pub const SIGNAL_FRESH_MILLIS: u64 = 30_000;

/// What a signal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignalKind {
    /// The author is typing in the room.
    Typing,
    /// The author stopped typing.
    StoppedTyping,
    /// The author's device is online (sent periodically).
    Online,
    /// The author's device is going offline.
    Offline,
}

impl SignalKind {
    fn code(self) -> u8 {
        match self {
            SignalKind::Typing => 1,
            SignalKind::StoppedTyping => 2,
            SignalKind::Online => 3,
            SignalKind::Offline => 4,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => SignalKind::Typing,
            2 => SignalKind::StoppedTyping,
            3 => SignalKind::Online,
            4 => SignalKind::Offline,
            _ => return Err(DecodeError::InvalidValue("signal kind")),
        })
    }
}

/// A verified ephemeral signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The room it is about.
    pub room: RoomId,
    /// Who sent it.
    pub author: AuthorId,
    /// What it says.
    pub kind: SignalKind,
    /// When it was sent, by the author's clock.
    pub sent_millis: u64,
}

impl Signal {
    pub(crate) fn sign(key: &DeviceKey, room: RoomId, kind: SignalKind, now: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SIGNAL_BYTES);
        bytes.extend_from_slice(SIGNAL_MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(room.as_bytes());
        bytes.extend_from_slice(key.author().as_bytes());
        bytes.push(kind.code());
        bytes.extend_from_slice(&now.to_be_bytes());
        let signature = key.sign(&bytes);
        bytes.extend_from_slice(&signature);
        bytes
    }

    /// Decodes and verifies a signal received at `now` (milliseconds).
    /// Refuses malformed, forged and stale signals.
    pub fn verify(bytes: &[u8], now: u64) -> Result<Self, EnvelopeError> {
        if bytes.len() != SIGNAL_BYTES {
            return Err(if bytes.len() > SIGNAL_BYTES {
                DecodeError::TooLarge { what: "signal", len: bytes.len(), max: SIGNAL_BYTES }
            } else {
                DecodeError::Truncated { what: "signal" }
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        check_header(&mut r, SIGNAL_MAGIC, "signal")?;
        let room = RoomId::from_bytes(r.array::<32>("room")?);
        let author = AuthorId::from_bytes(r.array::<32>("author")?);
        let kind = SignalKind::from_code(r.u8("kind")?)?;
        let sent_millis = r.u64("sent at")?;
        let signed_len = r.position();
        let signature = r.array::<64>("signature")?;
        r.finish()?;
        if sent_millis.abs_diff(now) > SIGNAL_FRESH_MILLIS {
            return Err(DecodeError::InvalidValue("signal time (stale or from the future)").into());
        }
        keys::verify(&author, &bytes[..signed_len], &signature)?;
        Ok(Self { room, author, kind, sent_millis })
    }
}
