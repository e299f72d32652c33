//! Typing and presence: signed, ephemeral signals on each room's signal
//! topic, verified here and kept in memory only (the last one per member),
//! never stored or synced.

use std::time::{Duration, Instant};

use concord_core::{AuthorId, RoomId, Signal, SignalKind, Store};
use libp2p::gossipsub::{self, MessageAcceptance};

use super::{Internal, State};
use crate::events::NodeEvent;
use crate::replica_actor::Request;

/// How long a typing signal shows without a newer one.
pub(super) const TYPING_SHOWS: Duration = Duration::from_secs(6);

/// What another member's device last said about itself in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presence {
    /// The member.
    pub author: AuthorId,
    /// An "online" signal arrived within three presence periods, and no
    /// "offline" after it.
    pub online: bool,
    /// A typing signal arrived within the last few seconds, and no "stopped"
    /// after it.
    pub typing: bool,
}

impl<S: Store + 'static> State<S> {
    pub(super) fn presence(&self, room: &RoomId) -> Vec<Presence> {
        let online_for = self.config.presence_interval * 3;
        let mut out: Vec<Presence> = self
            .signals
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, author), (kind, at))| {
                let age = at.elapsed();
                Presence {
                    author: *author,
                    online: *kind != SignalKind::Offline && age < online_for,
                    typing: *kind == SignalKind::Typing && age < TYPING_SHOWS,
                }
            })
            .collect();
        out.sort_by_key(|p| p.author);
        out
    }

    /// Verifies a signal gossiped on `room`'s signal topic (signature, and a
    /// send time within [`concord_core::SIGNAL_FRESH_MILLIS`] of our clock,
    /// which also bounds replays) and keeps it.
    pub(super) fn signal_received(
        &mut self,
        room: RoomId,
        source: libp2p::PeerId,
        id: gossipsub::MessageId,
        data: &[u8],
    ) {
        let acceptance = match Signal::verify(data, self.clock.now_millis()) {
            Ok(signal) if signal.room == room => {
                self.signals.insert((room, signal.author), (signal.kind, Instant::now()));
                self.emit(NodeEvent::Signal { room, author: signal.author, kind: signal.kind });
                MessageAcceptance::Accept
            }
            _ => MessageAcceptance::Reject,
        };
        self.internal(Internal::Validated(id, source, acceptance, None, false));
    }

    /// Signs and gossips `kind` in every joined room.
    pub(super) fn announce(&mut self, kind: SignalKind) {
        for room in self.rooms.clone() {
            self.submit(
                |reply| Request::Signal { room, kind, reply },
                move |signed| Some(Internal::PublishSignal(room, signed.ok()?)),
            );
        }
    }
}
