//! Messages that wait for a room key, room keys received, and key
//! requests with their answers: the receiving half of end-to-end
//! encryption (`e2ee.rs` holds the sending half and the device's keys).
//!
//! A message whose session is not held waits in `key-waits-1`, and this
//! device asks the session's owner in its own document of that bucket. The
//! owner answers from the asked index, or from where the requester's
//! history begins (its key publication less [`super::JOIN_GRACE_MILLIS`]),
//! whichever is later, unless the room shares history. A request that
//! arrived before the requester's keys or role is answered once they
//! arrive (`answer_new_readers`); a device that becomes a reader again, or
//! publishes new keys, asks again for everything that waits. Once an owner
//! has left the room it answers nobody, so every member holding its session
//! forwards the key instead, on the same terms, in a room key that names
//! the owner as its sender.

use std::collections::{BTreeMap, BTreeSet};

use super::e2ee::{decode_recipients, encode_recipients, HISTORY_SETTING, JOIN_GRACE_MILLIS};
use super::render::Wait;
use super::tx::Tx;
use super::{corrupt, Replica};
use crate::base::DeviceKeys;
use crate::crypto::megolm::{self, Inbound, RoomKeyContext, SessionId};
use crate::crypto::olm;
use crate::doc::{self, DocChange};
use crate::error::Result;
use crate::ids::{AuthorId, MessageId, RoomId};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree};

impl<S: Store> Replica<S> {
    /// Records that message `id` of `bucket` waits for `session` from
    /// `index` on, and asks the session's owner for it.
    pub(super) fn wait_for_key(&mut self, tx: &mut Tx, room: &RoomId, wait: Wait) -> Result<()> {
        let Wait { bucket, id, owner, session, index } = wait;
        let (id, owner, session) = (&id, &owner, &session);
        let k = tables::key_wait_key(room, session, bucket, id);
        let mut value = index.to_be_bytes().to_vec();
        value.extend_from_slice(owner.as_bytes());
        tx.batch.put(Tree::KeyWaits, k, value);
        if self.e2ee.blind || *owner == self.author() {
            return Ok(());
        }
        let me = self.author();
        let state = self.governance(room)?;
        if state.device_keys(&me).is_none() || state.role(&me).is_none() {
            // Nobody shares with a device whose keys are not published.
            return Ok(());
        }
        // One request per session, lowered only when an earlier message
        // waits; the owner answers from there.
        let dk = (*room, bucket, me);
        self.load_doc(tx, dk)?;
        let asked = self.docs.get(&dk).and_then(|d| d.request(&doc::pair_key(session, owner)));
        let queued = tx.own_changes.get(&(*room, bucket)).is_some_and(|c| {
            c.iter().any(|x| matches!(x, DocChange::Request { session: s, owner: o, index: i } if s == session && o == owner && *i <= index))
        });
        if !queued && asked.is_none_or(|a| index < a) {
            tx.own_changes.entry((*room, bucket)).or_default().push(DocChange::Request {
                session: *session,
                owner: *owner,
                index,
            });
        }
        Ok(())
    }

    /// Opens the room keys addressed to this device among `keys` (share
    /// entries of `sender`'s document in `bucket`) and keeps their
    /// sessions. Returns the sessions that became usable (new, or reaching
    /// back further than before).
    pub(super) fn receive_room_keys(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        sender: &AuthorId,
        keys: &BTreeSet<String>,
    ) -> Result<Vec<SessionId>> {
        if self.e2ee.blind || *sender == self.author() {
            return Ok(Vec::new());
        }
        let me = self.author();
        let dk = (*room, bucket, *sender);
        let mut found = Vec::new();
        for key in keys {
            let Some((session, recipient)) = doc::parse_pair_key(key) else { continue };
            if recipient != me {
                continue;
            }
            let Some(sealed) = self.docs.get(&dk).and_then(|d| d.share(key)) else { continue };
            let Some((owner, copy)) =
                self.open_room_key(room, bucket, sender, &session, &sealed)?
            else {
                continue;
            };
            let better = match self.inbound(Some(tx), room, &session)? {
                Some((held_owner, _, held)) => {
                    held_owner == owner && copy.first_index() < held.first_index()
                }
                None => true,
            };
            if better {
                self.stage_inbound(tx, room, &owner, bucket, &copy);
                found.push(session);
            }
        }
        Ok(found)
    }

    /// Opens one room key that `sender` wrote; `None` (and nothing changed)
    /// for one that is not a valid key of `session` for this device in
    /// `bucket`. Returns the session's owner with it: `sender`, or for a
    /// key `sender` forwards, the owner its plaintext names (a member no
    /// longer in the room, whose sessions only other members can pass on;
    /// `answer_key_requests`). A forwarded key is taken only from a current
    /// reader: it vouches for it by signing its document. It cannot make
    /// anyone's content say something else: a blob decrypts only with its
    /// session's true ratchet, and counts only in a message its owner
    /// signed.
    fn open_room_key(
        &mut self,
        room: &RoomId,
        bucket: u32,
        sender: &AuthorId,
        session: &SessionId,
        sealed: &[u8],
    ) -> Result<Option<(AuthorId, Inbound)>> {
        let me = self.author();
        // The cap before any parsing, as `open_from` applies it.
        if sealed.len() > olm::MAX_PRE_KEY_MESSAGE_BYTES {
            return Ok(None);
        }
        let Ok(message) = vodozemac::olm::PreKeyMessage::from_bytes(sealed) else {
            return Ok(None);
        };
        let identity = message.identity_key().to_bytes();
        let Some(device) = self.device_crypto_if_made()? else { return Ok(None) };
        let Ok(plaintext) = device.open_from(&identity, sealed) else { return Ok(None) };
        let Ok(owner) = megolm::room_key_sender(&plaintext) else { return Ok(None) };
        if owner != *sender && (owner == me || !self.may_read(room, sender)?) {
            return Ok(None);
        }
        let context = RoomKeyContext { room: *room, bucket, sender: owner, recipient: me };
        let Ok(exported) = megolm::open_room_key(&plaintext, &context) else { return Ok(None) };
        let Ok(copy) = Inbound::import(&exported) else { return Ok(None) };
        Ok((copy.id() == *session).then_some((owner, copy)))
    }

    /// The messages of `room` waiting for `session`: their bucket and id.
    pub(super) fn waiting_for(
        &self,
        tx: &Tx,
        room: &RoomId,
        session: &SessionId,
    ) -> Result<Vec<(u32, MessageId)>> {
        let prefix = tables::session_key(room, session);
        let mut out = Vec::new();
        for (k, _) in self.store.scan(
            Tree::KeyWaits,
            &KeyRange::prefix(&prefix),
            Order::Ascending,
            usize::MAX,
        )? {
            if tx.batch.get(Tree::KeyWaits, &k) == Some(None) {
                continue;
            }
            let bucket = k.get(64..68).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let id =
                k.get(68..84).and_then(|b| <[u8; 16]>::try_from(b).ok()).map(MessageId::from_bytes);
            if let (Some(b), Some(id)) = (bucket, id) {
                out.push((b, id));
            }
        }
        let staged: Vec<(u32, MessageId)> = tx
            .batch
            .iter()
            .filter(|(t, key, v)| *t == Tree::KeyWaits && v.is_some() && key.starts_with(&prefix))
            .filter_map(|(_, key, _)| {
                let bucket =
                    key.get(64..68).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes)?;
                let id = key
                    .get(68..84)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                    .map(MessageId::from_bytes)?;
                Some((bucket, id))
            })
            .collect();
        out.extend(staged);
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Asks again for every key this device waits for in `room`: after it
    /// became a reader (again) or published new keys, when owners that saw
    /// its earlier requests would not have answered them.
    pub(super) fn renew_key_requests(&mut self, room: &RoomId) -> Result<()> {
        let all = KeyRange::prefix(room.as_bytes());
        let mut wanted: BTreeMap<(u32, SessionId, AuthorId), u32> = BTreeMap::new();
        for (k, v) in self.store.scan(Tree::KeyWaits, &all, Order::Ascending, usize::MAX)? {
            let session: Option<SessionId> = k.get(32..64).and_then(|s| s.try_into().ok());
            let bucket = k.get(64..68).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let index = v.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let owner =
                v.get(4..36).and_then(|o| <[u8; 32]>::try_from(o).ok()).map(AuthorId::from_bytes);
            let (Some(session), Some(bucket), Some(index), Some(owner)) =
                (session, bucket, index, owner)
            else {
                return Err(corrupt(Tree::KeyWaits, "bad record"));
            };
            let least = wanted.entry((bucket, session, owner)).or_insert(index);
            *least = (*least).min(index);
        }
        let mut tx = Tx::default();
        let window = self.window_in(&tx, room);
        for ((bucket, session, owner), index) in wanted {
            if bucket >= window {
                tx.own_changes.entry((*room, bucket)).or_default().push(DocChange::Request {
                    session,
                    owner,
                    index,
                });
            }
        }
        // And requests others made for this device's sessions, which it
        // could not answer while it held no role.
        let me = BTreeSet::from([self.author()]);
        self.answer_open_requests(&mut tx, room, &me, None)?;
        self.finish(tx)
    }

    /// Answers the key requests for the sessions of `owners` (this device,
    /// or members who left, whose keys it forwards) in the windowed buckets
    /// of `room` that it has not answered: those of `only`'s documents
    /// (devices whose keys or role just arrived, whose earlier requests
    /// could not be answered then), or of every document.
    pub(super) fn answer_open_requests(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        owners: &BTreeSet<AuthorId>,
        only: Option<&BTreeSet<AuthorId>>,
    ) -> Result<()> {
        let all = KeyRange::prefix(room.as_bytes());
        let window = self.window_in(tx, room);
        let mut buckets = BTreeSet::new();
        for (_, v) in self.store.scan(Tree::Inbound, &all, Order::Ascending, usize::MAX)? {
            let owner =
                v.get(..32).and_then(|o| <[u8; 32]>::try_from(o).ok()).map(AuthorId::from_bytes);
            let bucket = v.get(32..36).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            if let (Some(owner), Some(bucket)) = (owner, bucket) {
                if owners.contains(&owner) && bucket >= window {
                    buckets.insert(bucket);
                }
            }
        }
        for bucket in buckets {
            for author in self.bucket_authors(tx, room, bucket)? {
                if only.is_some_and(|o| !o.contains(&author)) {
                    continue;
                }
                self.load_doc(tx, (*room, bucket, author))?;
                let keys: BTreeSet<String> = self
                    .docs
                    .get(&(*room, bucket, author))
                    .map(|d| d.request_keys().into_iter().collect())
                    .unwrap_or_default();
                if !keys.is_empty() {
                    self.answer_key_requests(tx, room, bucket, &author, &keys)?;
                }
            }
        }
        Ok(())
    }

    /// Answers what devices that just became readers with keys asked for
    /// before this device could answer them (their request arrived before
    /// their keys or their role did), and forwards the keys others asked of
    /// readers who just left.
    pub(super) fn answer_new_readers(
        &mut self,
        room: &RoomId,
        before: &[(AuthorId, DeviceKeys)],
    ) -> Result<()> {
        let me = self.author();
        let after = self.governance(room)?.readers_with_keys();
        let new: BTreeSet<AuthorId> = after
            .iter()
            .filter(|(a, k)| *a != me && !before.contains(&(*a, *k)))
            .map(|(a, _)| *a)
            .collect();
        // Readers who left: their sessions' open requests are forwarded now.
        let left: BTreeSet<AuthorId> = before
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a != me && !after.iter().any(|(b, _)| b == a))
            .collect();
        if (new.is_empty() && left.is_empty()) || self.e2ee.blind {
            return Ok(());
        }
        let mut tx = Tx::default();
        if !new.is_empty() {
            self.answer_open_requests(&mut tx, room, &BTreeSet::from([me]), Some(&new))?;
        }
        if !left.is_empty() {
            self.answer_open_requests(&mut tx, room, &left, None)?;
        }
        self.finish(tx)
    }

    /// How many messages (bodies and reactions) of `room` wait for a room
    /// key on this device.
    pub fn waiting_for_keys(&self, room: &RoomId) -> Result<usize> {
        let all = KeyRange::prefix(room.as_bytes());
        Ok(self.store.scan(Tree::KeyWaits, &all, Order::Ascending, usize::MAX)?.len())
    }

    /// The message stops waiting for `session`.
    pub(super) fn clear_wait(
        &self,
        tx: &mut Tx,
        room: &RoomId,
        session: &SessionId,
        bucket: u32,
        id: &MessageId,
    ) {
        tx.batch.delete(Tree::KeyWaits, tables::key_wait_key(room, session, bucket, id));
    }

    /// Answers requests for this device's sessions among `keys` (request
    /// entries of `requester`'s document in `bucket`) with room keys.
    pub(super) fn answer_key_requests(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        requester: &AuthorId,
        keys: &BTreeSet<String>,
    ) -> Result<()> {
        let me = self.author();
        // A device that holds no role now writes nothing peers would take;
        // it answers once it is a reader again (`renew_key_requests`).
        if self.e2ee.blind || *requester == me || !self.may_read(room, &me)? {
            return Ok(());
        }
        let state = self.governance(room)?;
        let (Some(recipient_keys), Some(_)) = (state.device_keys(requester), state.role(requester))
        else {
            return Ok(());
        };
        let shared_history = state.settings().get(HISTORY_SETTING).is_some_and(|v| v == "shared");
        let since = state
            .keys_published(requester)
            .map_or(i64::MAX, |published| published.saturating_sub(JOIN_GRACE_MILLIS));
        let dk = (*room, bucket, *requester);
        for key in keys {
            let Some((session, owner)) = doc::parse_pair_key(key) else { continue };
            // Another owner's session is forwarded only once that owner
            // left the room: it answers for itself while it is a reader,
            // and never again after (a member removed before a newcomer's
            // keys reached it leaves its earlier messages to the others).
            let forward = owner != me;
            if forward && self.may_read(room, &owner)? {
                continue;
            }
            let Some(asked) = self.docs.get(&dk).and_then(|d| d.request(key)) else { continue };
            let Some((held_owner, session_bucket, mut copy)) =
                self.inbound(Some(tx), room, &session)?
            else {
                continue;
            };
            if session_bucket != bucket || held_owner != owner {
                continue;
            }
            let entitled = if shared_history {
                copy.first_index()
            } else {
                self.first_index_since(room, bucket, &owner, &session, since)?
            };
            let mut index = asked.max(entitled);
            if forward {
                // What this copy holds, and once per recipient.
                index = index.max(copy.first_index());
                let pair = doc::pair_key(&session, requester);
                let mine = (*room, bucket, me);
                self.load_doc(tx, mine)?;
                let queued = tx.own_changes.get(&(*room, bucket)).is_some_and(|c| {
                    c.iter().any(|x| matches!(x, DocChange::Share { session: s, recipient: r, .. } if *s == session && r == requester))
                });
                if queued || self.docs.get(&mine).is_some_and(|d| d.share(&pair).is_some()) {
                    continue;
                }
            } else {
                // Already shared from there or earlier: catch-up brings it.
                let shared = self.shared_index(room, bucket, &session, requester)?;
                if shared.is_some_and(|s| s <= index) {
                    continue;
                }
            }
            if let Some(change) = self.share_change(
                room,
                bucket,
                &owner,
                &mut copy,
                requester,
                &recipient_keys,
                index,
            )? {
                tx.own_changes.entry((*room, bucket)).or_default().push(change);
                self.record_recipient(
                    tx,
                    room,
                    bucket,
                    &session,
                    requester,
                    (recipient_keys, index),
                )?;
            }
        }
        Ok(())
    }

    /// The index a session was shared with `author` from, if it was.
    fn shared_index(
        &self,
        room: &RoomId,
        bucket: u32,
        session: &SessionId,
        author: &AuthorId,
    ) -> Result<Option<u32>> {
        if let Some(state) = self.e2ee.outbound.get(&(*room, bucket)) {
            if state.session.id() == *session {
                return Ok(state.recipients.get(author).map(|(_, i)| *i));
            }
        }
        let k = tables::bucket_prefix(room, bucket);
        Ok(self
            .store
            .get(Tree::Recipients, &k)?
            .and_then(|v| decode_recipients(&v))
            .filter(|(id, _)| id == session)
            .and_then(|(_, r)| r.get(author).map(|(_, i)| *i)))
    }

    fn record_recipient(
        &mut self,
        tx: &mut Tx,
        room: &RoomId,
        bucket: u32,
        session: &SessionId,
        author: &AuthorId,
        shared: (DeviceKeys, u32),
    ) -> Result<()> {
        if let Some(state) = self.e2ee.outbound.get_mut(&(*room, bucket)) {
            if state.session.id() == *session {
                state.recipients.insert(*author, shared);
                tx.batch.put(
                    Tree::Recipients,
                    tables::bucket_prefix(room, bucket),
                    encode_recipients(session, &state.recipients),
                );
            }
        }
        Ok(())
    }

    /// The index of `owner`'s first message of `session` in `bucket`
    /// stamped at or after `since` (milliseconds): where a new reader's
    /// history begins. Past the last message if there is none.
    fn first_index_since(
        &mut self,
        room: &RoomId,
        bucket: u32,
        owner: &AuthorId,
        session: &SessionId,
        since: i64,
    ) -> Result<u32> {
        let mut tx = Tx::default();
        self.load_doc(&mut tx, (*room, bucket, *owner))?;
        let mut first = u32::MAX;
        let mut last = 0u32;
        let posts = self.docs.get(&(*room, bucket, *owner)).map(|d| d.posts()).unwrap_or_default();
        for (_, post) in posts {
            let Some(blob) = self.read_blob(None, room, &post.body)? else { continue };
            let Ok((sid, index)) = megolm::blob_session(&blob) else { continue };
            if sid != *session {
                continue;
            }
            last = last.max(index + 1);
            if post.hlc.millis() as i64 >= since {
                first = first.min(index);
            }
        }
        Ok(if first == u32::MAX { last } else { first })
    }
}
