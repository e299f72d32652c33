//! The room view: what the merge of all author documents in a bucket renders
//! to, and the stored form of its rows.
//!
//! Rendering is a pure function of the documents' contents, so two replicas
//! holding the same envelopes render the same rows. The rules it applies are
//! the tombstone-aware merge of `docs/architecture.md`:
//! - a post counts only if its stamp lies in the document's bucket and its id
//!   carries the stamp's time;
//! - a post is hidden for good once a moderator's document holds a
//!   moderation tombstone for it;
//! - a post is hidden for good once its author's document holds a tombstone
//!   for it (delete wins over any edit, in any order);
//! - if two authors claim one message id, the smaller sort key keeps it;
//! - reactions count only on live messages, once per (reactor, emoji).

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{Reader, Writer};
use crate::doc::{AuthorDoc, PostRecord, MAX_ATTACHMENTS};
use crate::error::DecodeError;
use crate::ids::{AuthorId, BlobHash, Cursor, Hlc, MessageId, SortKey};

/// Span of one time bucket. A day keeps a busy room's hot bucket small enough
/// to render per change and a quiet room's history in few buckets.
pub const BUCKET_SPAN_MILLIS: u64 = 24 * 60 * 60 * 1000;

/// The bucket a stamp falls in.
pub fn bucket_of(hlc: Hlc) -> u32 {
    u32::try_from(hlc.millis() / BUCKET_SPAN_MILLIS).unwrap_or(u32::MAX)
}

/// The stamps `[lo, hi)` of a bucket.
pub(crate) fn bucket_bounds(bucket: u32) -> (Hlc, Hlc) {
    let lo = u64::from(bucket) * BUCKET_SPAN_MILLIS;
    (Hlc::new(lo, 0), Hlc::new(lo + BUCKET_SPAN_MILLIS, 0))
}

/// The authors who reacted to a message with one emoji.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Reaction {
    /// The emoji (or short code).
    pub emoji: String,
    /// Who reacted, in author order.
    pub authors: Vec<AuthorId>,
}

/// A live message as the timeline shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// The message id.
    pub id: MessageId,
    /// Who posted it.
    pub author: AuthorId,
    /// When it was posted.
    pub hlc: Hlc,
    /// Its place in the timeline.
    pub cursor: Cursor,
    /// The text, or `None` while its body blob has not arrived or (see
    /// `waiting_for_key`) cannot be decrypted yet.
    pub body: Option<String>,
    /// In an encrypted room: the body arrived, but this device holds no key
    /// for it yet (it has asked for one). The message shows once the key
    /// comes.
    pub waiting_for_key: bool,
    /// Hashes of its attachments (fetch bytes with `Replica::attachment`).
    pub attachments: Vec<BlobHash>,
    /// The message it replies to.
    pub reply_to: Option<MessageId>,
    /// When it was last edited.
    pub edited: Option<Hlc>,
    /// Reactions, by emoji.
    pub reactions: Vec<Reaction>,
}

/// What remains of a deleted message: ids, author, times. Never its content.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub struct Tombstone {
    /// When the message was posted.
    pub posted: Hlc,
    /// Who posted and deleted it.
    pub author: AuthorId,
    /// The message id.
    pub id: MessageId,
    /// When it was deleted.
    pub deleted: Hlc,
}

/// A change to a room's timeline, delivered to listeners in timeline order.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TimelineDiff {
    /// A message appeared.
    Insert(Message),
    /// A message changed (edit, reaction, body arrived).
    Update(Message),
    /// A message was deleted.
    Remove {
        /// Its id.
        id: MessageId,
        /// Where it was.
        cursor: Cursor,
    },
}

/// A timeline row as stored: everything but the body text, which lives in
/// its blob so that erasing the blob erases the text.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Row {
    pub body: BlobHash,
    pub attachments: Vec<BlobHash>,
    pub reply_to: Option<MessageId>,
    pub edited: Option<Hlc>,
    pub reactions: Vec<Reaction>,
}

/// Cap on distinct emoji per message and reactors per emoji in a stored row,
/// far above what honest use produces; decoding refuses larger counts.
const MAX_ROW_REACTIONS: usize = 1024;
const MAX_ROW_REACTORS: usize = 65_535;

impl Row {
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &BlobHash> {
        std::iter::once(&self.body).chain(self.attachments.iter())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(self.body.as_bytes());
        out.put_u8(self.attachments.len() as u8);
        for a in &self.attachments {
            out.extend_from_slice(a.as_bytes());
        }
        match &self.reply_to {
            Some(id) => {
                out.put_u8(1);
                out.extend_from_slice(id.as_bytes());
            }
            None => out.put_u8(0),
        }
        match self.edited {
            Some(h) => {
                out.put_u8(1);
                out.put_u64(h.as_u64());
            }
            None => out.put_u8(0),
        }
        out.put_u16(self.reactions.len() as u16);
        for r in &self.reactions {
            out.put_str_u8(&r.emoji);
            out.put_u16(r.authors.len() as u16);
            for a in &r.authors {
                out.extend_from_slice(a.as_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let body = BlobHash(r.array("row body")?);
        let count = r.u8("row attachments")? as usize;
        if count > MAX_ATTACHMENTS {
            return Err(DecodeError::InvalidValue("row attachments"));
        }
        let attachments = (0..count)
            .map(|_| r.array("row attachment").map(BlobHash))
            .collect::<Result<_, _>>()?;
        let reply_to = match r.u8("row reply flag")? {
            0 => None,
            1 => Some(MessageId::from_bytes(r.array("row reply")?)),
            _ => return Err(DecodeError::InvalidValue("row reply flag")),
        };
        let edited = match r.u8("row edited flag")? {
            0 => None,
            1 => Some(Hlc(r.u64("row edited")?)),
            _ => return Err(DecodeError::InvalidValue("row edited flag")),
        };
        let n = r.count_u16(MAX_ROW_REACTIONS, 3, "row reactions")?;
        let mut reactions = Vec::with_capacity(n);
        for _ in 0..n {
            let emoji = r.str_u8("row emoji")?.to_owned();
            let k = r.count_u16(MAX_ROW_REACTORS, 32, "row reactors")?;
            let authors =
                (0..k).map(|_| r.array("row reactor").map(AuthorId)).collect::<Result<_, _>>()?;
            reactions.push(Reaction { emoji, authors });
        }
        r.finish()?;
        Ok(Self { body, attachments, reply_to, edited, reactions })
    }
}

/// Turns a reaction entry (author, key suffix, value) into the emoji it
/// shows, or `None` (see [`render_message`]).
pub(crate) type Reveal<'a> = dyn FnMut(&AuthorId, &str, Option<&[u8]>) -> Option<String> + 'a;

/// What one message id renders to within its bucket.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct MessageRender {
    /// The live row, if any author holds a live post with this id.
    pub row: Option<(SortKey, Row)>,
    /// Tombstones for this id, one per author who deleted a post with it.
    pub tombstones: BTreeSet<Tombstone>,
}

/// Whether a post's id carries the post's own time, as every honest id does
/// (UUIDv7 time = the stamp's milliseconds). This ties each id to exactly
/// one bucket, so an id can be rendered, looked up and erased there alone.
fn id_matches_stamp(id: &MessageId, hlc: Hlc) -> bool {
    id.as_uuid()
        .get_timestamp()
        .map(|t| t.to_unix())
        .is_some_and(|(s, n)| s * 1000 + u64::from(n) / 1_000_000 == hlc.millis())
}

/// Renders one message id of a bucket from the documents of every author
/// who wrote in that bucket. Rendering a bucket is this function over every
/// id its documents mention; the replica calls it only for the ids a
/// transaction changed.
///
/// `reveal` turns an author's reaction entry (its key's suffix after the
/// message id, and its value) into the emoji it shows: the suffix itself in
/// an unencrypted room; in an encrypted room the decrypted value, or `None`
/// while its key is not held (that reaction waits).
pub(crate) fn render_message(
    bucket: u32,
    id: &MessageId,
    docs: &[(AuthorId, &AuthorDoc)],
    reveal: &mut Reveal<'_>,
) -> MessageRender {
    let (lo, hi) = bucket_bounds(bucket);
    let in_bucket = |h: Hlc| lo <= h && h < hi;
    let mut out = MessageRender::default();
    for (author, doc) in docs {
        if let Some(t) = doc.tombstone(id).filter(|t| in_bucket(t.posted)) {
            out.tombstones.insert(Tombstone {
                posted: t.posted,
                author: *author,
                id: *id,
                deleted: t.deleted,
            });
        }
    }
    // A moderator's delete hides the message whoever posted it. Only an
    // envelope whose author was a moderator or admin at the governance heads
    // it cites can write one (the replica refuses the rest).
    let mut moderated = false;
    for (author, doc) in docs {
        if let Some(t) = doc.moderation(id).filter(|t| in_bucket(t.posted)) {
            moderated = true;
            out.tombstones.insert(Tombstone {
                posted: t.posted,
                author: *author,
                id: *id,
                deleted: t.deleted,
            });
        }
    }
    if moderated {
        return out;
    }
    // Live posts; an id claimed by several authors goes to the smallest sort key.
    let mut winner: Option<(SortKey, PostRecord)> = None;
    for (author, doc) in docs {
        let Some(post) = doc.post(id) else { continue };
        if !in_bucket(post.hlc) || !id_matches_stamp(id, post.hlc) || doc.is_deleted(id) {
            continue;
        }
        let key = SortKey { hlc: post.hlc, author: *author, id: *id };
        if winner.as_ref().is_none_or(|(k, _)| key < *k) {
            winner = Some((key, post));
        }
    }
    let Some((key, post)) = winner else { return out };
    let mut by_emoji: BTreeMap<String, BTreeSet<AuthorId>> = BTreeMap::new();
    for (author, doc) in docs {
        for suffix in doc.reactions(id).into_iter().flatten() {
            let value = doc.reaction_value(id, suffix);
            if let Some(emoji) = reveal(author, suffix, value.as_deref()) {
                by_emoji.entry(emoji).or_default().insert(*author);
            }
        }
    }
    // Caps keep every row decodable; which reactions survive a cap depends
    // only on the documents (smallest emoji and authors first).
    let reactions = by_emoji
        .into_iter()
        .take(MAX_ROW_REACTIONS)
        .map(|(emoji, authors)| Reaction {
            emoji,
            authors: authors.into_iter().take(MAX_ROW_REACTORS).collect(),
        })
        .collect();
    out.row = Some((
        key,
        Row {
            body: post.body,
            attachments: post.attachments,
            reply_to: post.reply_to,
            edited: post.edited,
            reactions,
        },
    ));
    out
}

/// An author's read marker as it counts in a bucket: only a marker stamped
/// within the bucket.
pub(crate) fn render_read(bucket: u32, doc: &AuthorDoc) -> Option<SortKey> {
    let (lo, hi) = bucket_bounds(bucket);
    doc.read().filter(|k| lo <= k.hlc && k.hlc < hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_row_round_trips() {
        let row = Row {
            body: BlobHash([1; 32]),
            attachments: vec![BlobHash([2; 32])],
            reply_to: Some(MessageId::from_bytes([3; 16])),
            edited: Some(Hlc::new(9, 9)),
            reactions: vec![Reaction { emoji: "👍".into(), authors: vec![AuthorId([4; 32])] }],
        };
        assert_eq!(Row::decode(&row.encode()), Ok(row));
    }

    #[test]
    fn test_bucket_of_matches_bounds() {
        let b = bucket_of(Hlc::new(3 * BUCKET_SPAN_MILLIS + 5, 0));
        assert_eq!(b, 3);
        let (lo, hi) = bucket_bounds(b);
        assert_eq!(bucket_of(lo), 3);
        assert_eq!(bucket_of(hi), 4);
    }
}
