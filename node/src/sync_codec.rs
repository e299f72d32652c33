//! Catch-up sync over libp2p request-response: a request carries one flight
//! of sync messages (the core's `SyncSession` bytes) and the response the
//! answering flight. Frames are length-prefixed and capped before reading.
//!
//! The first request of a session carries the room's signed genesis, so a
//! node that serves rooms on request (a relay) can take up a room it does
//! not hold yet. A node that does not hold the room answers "not served",
//! which ends the session without a strike on either side.
//!
//! Every request and every response carries the sender's device
//! certificate (`concord_core::DeviceCert`): the author key behind the
//! sender's peer id. Each side serves the room's messages only if that
//! author may read the room; a missing certificate gets governance only, a
//! forged one is the sender's fault.

use std::io;

use concord_core::{RoomId, MAX_CERT_BYTES, MAX_SYNC_MESSAGE_BYTES};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The protocol name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/concord/sync/2");
/// Most messages in one flight.
const MAX_FLIGHT_MESSAGES: usize = 4096;
/// Most bytes in one flight: a catch-up of tens of thousands of envelopes.
const MAX_FLIGHT_BYTES: usize = 64 << 20;
/// Most bytes of the genesis a request carries (a signed genesis is at most
/// about 400 bytes).
pub const MAX_GENESIS_BYTES: usize = 1024;
/// Response status: the flight is answered.
const ANSWERED: u8 = 0;
/// Response status: the responder does not hold the room and will not take
/// it up.
const NOT_SERVED: u8 = 1;

/// One flight from the initiator of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Names the session among the initiator's sessions with this peer.
    pub session: u64,
    /// The room.
    pub room: RoomId,
    /// Sync messages.
    pub messages: Vec<Vec<u8>>,
    /// The room's signed genesis, on a session's first request: lets a
    /// relay take up the room.
    pub genesis: Option<Vec<u8>>,
    /// The sender's device certificate (empty: none).
    pub cert: Vec<u8>,
    /// Set when reading the request stopped at a cap (too many or too large
    /// messages): why. The rest of the request is not read, and the
    /// receiver counts it against the sender; a request that could not be
    /// read at all never reaches the node, so the cap must surface here.
    pub refused: Option<String>,
}

/// The answering flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    /// Sync messages.
    pub messages: Vec<Vec<u8>>,
    /// The responder does not hold the room (and does not take up rooms on
    /// request): the session ends, nothing is delivered.
    pub not_served: bool,
    /// The responder's device certificate (empty: none).
    pub cert: Vec<u8>,
}

impl SyncResponse {
    /// An answering flight, with the responder's certificate.
    pub fn answer(cert: Vec<u8>, messages: Vec<Vec<u8>>) -> Self {
        Self { messages, not_served: false, cert }
    }

    /// The "room not served" answer, with the responder's certificate.
    pub fn not_served(cert: Vec<u8>) -> Self {
        Self { messages: Vec::new(), not_served: true, cert }
    }
}

/// Reads and writes [`SyncRequest`] and [`SyncResponse`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

async fn read_frames<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<Vec<u8>>> {
    let mut word = [0u8; 4];
    io.read_exact(&mut word).await?;
    let count = u32::from_be_bytes(word) as usize;
    if count > MAX_FLIGHT_MESSAGES {
        return Err(invalid("too many sync messages in a flight"));
    }
    let mut total = 0usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        io.read_exact(&mut word).await?;
        let len = u32::from_be_bytes(word) as usize;
        total = total.saturating_add(len);
        if len > MAX_SYNC_MESSAGE_BYTES || total > MAX_FLIGHT_BYTES {
            return Err(invalid("sync flight too large"));
        }
        let mut message = vec![0u8; len];
        io.read_exact(&mut message).await?;
        out.push(message);
    }
    Ok(out)
}

/// Reads a certificate: a length byte, then that many bytes.
async fn read_cert<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 1];
    io.read_exact(&mut len).await?;
    let len = usize::from(len[0]);
    if len > MAX_CERT_BYTES {
        return Err(invalid("device certificate too large"));
    }
    let mut cert = vec![0u8; len];
    io.read_exact(&mut cert).await?;
    Ok(cert)
}

async fn write_cert<T: AsyncWrite + Unpin + Send>(io: &mut T, cert: &[u8]) -> io::Result<()> {
    let len = u8::try_from(cert.len())
        .ok()
        .filter(|n| usize::from(*n) <= MAX_CERT_BYTES)
        .ok_or_else(|| invalid("device certificate too large"))?;
    io.write_all(&[len]).await?;
    io.write_all(cert).await
}

async fn write_frames<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    frames: &[Vec<u8>],
) -> io::Result<()> {
    io.write_all(&(frames.len() as u32).to_be_bytes()).await?;
    for f in frames {
        io.write_all(&(f.len() as u32).to_be_bytes()).await?;
        io.write_all(f).await?;
    }
    io.close().await
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut head = [0u8; 40];
        io.read_exact(&mut head).await?;
        let mut session = [0u8; 8];
        session.copy_from_slice(&head[..8]);
        let mut room = [0u8; 32];
        room.copy_from_slice(&head[8..]);
        let mut word = [0u8; 2];
        io.read_exact(&mut word).await?;
        let genesis_len = u16::from_be_bytes(word) as usize;
        let genesis = match genesis_len {
            0 => None,
            n if n > MAX_GENESIS_BYTES => {
                return Ok(SyncRequest {
                    session: u64::from_be_bytes(session),
                    room: RoomId::from_bytes(room),
                    messages: Vec::new(),
                    genesis: None,
                    cert: Vec::new(),
                    refused: Some("genesis too large".into()),
                })
            }
            n => {
                let mut genesis = vec![0u8; n];
                io.read_exact(&mut genesis).await?;
                Some(genesis)
            }
        };
        let read = match read_cert(io).await {
            Ok(cert) => read_frames(io).await.map(|messages| (cert, messages)),
            Err(e) => Err(e),
        };
        let (cert, messages, refused) = match read {
            Ok((cert, messages)) => (cert, messages, None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                (Vec::new(), Vec::new(), Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        Ok(SyncRequest {
            session: u64::from_be_bytes(session),
            room: RoomId::from_bytes(room),
            messages,
            genesis,
            cert,
            refused,
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut status = [0u8; 1];
        io.read_exact(&mut status).await?;
        let cert = read_cert(io).await?;
        let messages = read_frames(io).await?;
        match status[0] {
            ANSWERED => Ok(SyncResponse::answer(cert, messages)),
            NOT_SERVED => Ok(SyncResponse::not_served(cert)),
            _ => Err(invalid("unknown sync response status")),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.session.to_be_bytes()).await?;
        io.write_all(req.room.as_bytes()).await?;
        let genesis = req.genesis.as_deref().unwrap_or_default();
        if genesis.len() > MAX_GENESIS_BYTES {
            return Err(invalid("genesis too large"));
        }
        io.write_all(&(genesis.len() as u16).to_be_bytes()).await?;
        io.write_all(genesis).await?;
        write_cert(io, &req.cert).await?;
        write_frames(io, &req.messages).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[if res.not_served { NOT_SERVED } else { ANSWERED }]).await?;
        write_cert(io, &res.cert).await?;
        write_frames(io, &res.messages).await
    }
}
