//! The governance document's schema: how an action is written into the
//! automerge document, and how the room's state is read back out of it.
//!
//! ```text
//! ROOT
//!   name: str                 topic: str
//!   settings: { key: str }
//!   members:  { author hex: { role: str, by: author hex, via: invite hex? } }
//!   bans:     { author hex: { by: author hex } }
//!   invites:  { invite hex: invite bytes }      registered, not revoked
//!   redeemed: { "invite hex/author hex": time } every redemption
//!   "keys/<author hex>": identity ‖ fallback ‖ time i64   device keys
//! ```
//!
//! Device keys sit in root keys of their own, one per author, rather than
//! in a map: two authors publishing at once would otherwise each create
//! the map, and one map with its entry would lose.
//!
//! Removing a member deletes its map, so a concurrent change of that
//! member's role (a write inside the deleted map) does not bring it back.
//! Membership read out of the document is then filtered deterministically:
//! banned keys are not members, and when concurrent redemptions used a
//! one-use invite twice, only the redeemer with the smallest key keeps the
//! membership it gave.

use std::collections::{BTreeMap, BTreeSet};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, AutomergeError, ChangeHash, ObjId, ObjType, ReadDoc, Value, ROOT};

use crate::base::DeviceKeys;
use crate::ids::{AuthorId, RoomId};

use super::action::{Action, Role};
use super::invite::{Invite, InviteId};

const NAME: &str = "name";
const TOPIC: &str = "topic";
const SETTINGS: &str = "settings";
const MEMBERS: &str = "members";
const BANS: &str = "bans";
const INVITES: &str = "invites";
const REDEEMED: &str = "redeemed";
const ROLE: &str = "role";
const BY: &str = "by";
const VIA: &str = "via";
const KEYS_PREFIX: &str = "keys/";

/// A member as the governance state has it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Member {
    /// Their role.
    pub role: Role,
    /// Who added them or last set their role (the inviter, for a join).
    pub by: AuthorId,
}

/// A room's governance at some point of its history: who is a member with
/// which role, who is banned, which invites are open, the name, topic and
/// settings.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GovState {
    room: RoomId,
    creator: AuthorId,
    open: bool,
    founded: bool,
    name: String,
    topic: String,
    settings: BTreeMap<String, String>,
    members: BTreeMap<AuthorId, Member>,
    bans: BTreeMap<AuthorId, AuthorId>,
    invites: BTreeMap<InviteId, Invite>,
    redeemed: BTreeSet<InviteId>,
    device_keys: BTreeMap<AuthorId, (DeviceKeys, i64)>,
}

impl GovState {
    /// The room.
    pub fn room(&self) -> RoomId {
        self.room
    }
    /// The room's creator, who founded the governance document.
    pub fn creator(&self) -> AuthorId {
        self.creator
    }
    /// Whether the creator's founding change is in.
    pub fn founded(&self) -> bool {
        self.founded
    }
    /// The room's join rule (from its genesis): in an open room every key
    /// that is not banned counts as a member.
    pub fn is_open(&self) -> bool {
        self.open
    }
    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The room's topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The room's settings.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }
    /// Listed members and their roles (banned keys are never members). In
    /// an open room everyone else who is not banned is a member too.
    pub fn members(&self) -> &BTreeMap<AuthorId, Member> {
        &self.members
    }
    /// A key's role, or `None` if it is not a member: its listed role; else,
    /// before the founding change, admin for the creator; else member in an
    /// open room unless banned.
    pub fn role(&self, author: &AuthorId) -> Option<Role> {
        if let Some(m) = self.members.get(author) {
            return Some(m.role);
        }
        if !self.founded && *author == self.creator {
            return Some(Role::Admin);
        }
        (self.open && !self.bans.contains_key(author)).then_some(Role::Member)
    }
    /// Whether a key is listed as a member (not merely admitted by an open room).
    pub fn is_listed(&self, author: &AuthorId) -> bool {
        self.members.contains_key(author)
    }
    /// Banned keys, each with who banned it.
    pub fn bans(&self) -> &BTreeMap<AuthorId, AuthorId> {
        &self.bans
    }
    /// Whether a key is banned.
    pub fn is_banned(&self, author: &AuthorId) -> bool {
        self.bans.contains_key(author)
    }
    /// Registered invites not yet revoked (redeemed one-use invites included
    /// until revoked; see [`GovState::is_redeemed`]).
    pub fn invites(&self) -> &BTreeMap<InviteId, Invite> {
        &self.invites
    }
    /// A registered, unrevoked invite.
    pub fn invite(&self, id: &InviteId) -> Option<&Invite> {
        self.invites.get(id)
    }
    /// Whether an invite has been redeemed.
    pub fn is_redeemed(&self, id: &InviteId) -> bool {
        self.redeemed.contains(id)
    }
    /// The device keys an author last published, if any (readers or not).
    pub fn device_keys(&self, author: &AuthorId) -> Option<DeviceKeys> {
        self.device_keys.get(author).map(|(k, _)| *k)
    }
    /// When an author last published its device keys (milliseconds).
    pub fn keys_published(&self, author: &AuthorId) -> Option<i64> {
        self.device_keys.get(author).map(|(_, t)| *t)
    }
    /// Every author that may read the room and has published device keys:
    /// the devices room keys are shared with.
    pub fn readers_with_keys(&self) -> Vec<(AuthorId, DeviceKeys)> {
        self.device_keys
            .iter()
            .filter(|(a, _)| self.role(a).is_some())
            .map(|(a, (k, _))| (*a, *k))
            .collect()
    }
    /// Invites registered and neither redeemed nor revoked.
    pub fn pending_invites(&self) -> impl Iterator<Item = &Invite> {
        self.invites.values().filter(|i| !self.redeemed.contains(&i.id()))
    }

    /// The state before the creator's founding change: the creator is admin,
    /// and in an open room everyone is a member; governance actions wait for
    /// the founding.
    pub(crate) fn unfounded(room: RoomId, creator: AuthorId, open: bool) -> Self {
        GovState {
            room,
            creator,
            open,
            founded: false,
            name: String::new(),
            topic: String::new(),
            settings: BTreeMap::new(),
            members: BTreeMap::new(),
            bans: BTreeMap::new(),
            invites: BTreeMap::new(),
            redeemed: BTreeSet::new(),
            device_keys: BTreeMap::new(),
        }
    }

    /// Reads the state out of `doc`, as of `heads` when given.
    pub(crate) fn read(
        base: &GovState,
        doc: &AutoCommit,
        heads: Option<&[ChangeHash]>,
    ) -> Result<Self, AutomergeError> {
        let at = At { doc, heads };
        let mut state = GovState::unfounded(base.room, base.creator, base.open);
        let Some(members) = at.object(&ROOT, MEMBERS)? else {
            return Ok(state);
        };
        state.founded = true;
        state.name = at.string(&ROOT, NAME)?.unwrap_or_default();
        state.topic = at.string(&ROOT, TOPIC)?.unwrap_or_default();
        if let Some(settings) = at.object(&ROOT, SETTINGS)? {
            for key in at.keys(&settings) {
                if let Some(value) = at.string(&settings, &key)? {
                    state.settings.insert(key, value);
                }
            }
        }
        if let Some(bans) = at.object(&ROOT, BANS)? {
            for key in at.keys(&bans) {
                let (Ok(author), Some(ban)) = (key.parse::<AuthorId>(), at.object(&bans, &key)?)
                else {
                    continue;
                };
                let by = at.string(&ban, BY)?.and_then(|s| s.parse().ok()).unwrap_or(author);
                state.bans.insert(author, by);
            }
        }
        if let Some(invites) = at.object(&ROOT, INVITES)? {
            for key in at.keys(&invites) {
                if let Some(Ok(invite)) = at.bytes(&invites, &key)?.map(|b| Invite::from_bytes(&b))
                {
                    state.invites.insert(invite.id(), invite);
                }
            }
        }
        // The redeemer who keeps each invite's membership: the smallest key.
        let mut winners: BTreeMap<InviteId, AuthorId> = BTreeMap::new();
        if let Some(redeemed) = at.object(&ROOT, REDEEMED)? {
            for key in at.keys(&redeemed) {
                let Some((invite, author)) = parse_redeemed_key(&key) else { continue };
                let winner = winners.entry(invite).or_insert(author);
                *winner = (*winner).min(author);
            }
        }
        state.redeemed = winners.keys().copied().collect();
        for key in at.keys(&ROOT) {
            let Some(author) = key.strip_prefix(KEYS_PREFIX).and_then(|a| a.parse().ok()) else {
                continue;
            };
            let Some(value) = at.bytes(&ROOT, &key)? else { continue };
            if value.len() != DeviceKeys::LEN + 8 {
                continue;
            }
            if let Ok(keys) = DeviceKeys::from_bytes(&value[..DeviceKeys::LEN]) {
                let mut time = [0u8; 8];
                time.copy_from_slice(&value[DeviceKeys::LEN..]);
                state.device_keys.insert(author, (keys, i64::from_be_bytes(time)));
            }
        }
        for key in at.keys(&members) {
            let (Ok(author), Some(member)) = (key.parse::<AuthorId>(), at.object(&members, &key)?)
            else {
                continue;
            };
            let Some(role) = at.string(&member, ROLE)?.and_then(|r| Role::parse(&r)) else {
                continue;
            };
            let by = at.string(&member, BY)?.and_then(|s| s.parse().ok()).unwrap_or(author);
            let lost_invite = at
                .string(&member, VIA)?
                .and_then(|v| parse_invite_id(&v))
                .is_some_and(|via| winners.get(&via).is_some_and(|w| *w != author));
            if !state.bans.contains_key(&author) && !lost_invite {
                state.members.insert(author, Member { role, by });
            }
        }
        Ok(state)
    }
}

fn parse_invite_id(s: &str) -> Option<InviteId> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(s, &mut id).ok()?;
    Some(InviteId(id))
}

fn parse_redeemed_key(key: &str) -> Option<(InviteId, AuthorId)> {
    let (invite, author) = key.split_once('/')?;
    Some((parse_invite_id(invite)?, author.parse().ok()?))
}

/// Reads of the document, at its current heads or at given ones.
struct At<'a> {
    doc: &'a AutoCommit,
    heads: Option<&'a [ChangeHash]>,
}

impl At<'_> {
    fn get(&self, obj: &ObjId, key: &str) -> Result<Option<(Value<'_>, ObjId)>, AutomergeError> {
        match self.heads {
            Some(heads) => self.doc.get_at(obj, key, heads),
            None => self.doc.get(obj, key),
        }
    }

    fn keys(&self, obj: &ObjId) -> Vec<String> {
        match self.heads {
            Some(heads) => self.doc.keys_at(obj, heads).collect(),
            None => self.doc.keys(obj).collect(),
        }
    }

    fn object(&self, obj: &ObjId, key: &str) -> Result<Option<ObjId>, AutomergeError> {
        Ok(match self.get(obj, key)? {
            Some((Value::Object(ObjType::Map), id)) => Some(id),
            _ => None,
        })
    }

    fn string(&self, obj: &ObjId, key: &str) -> Result<Option<String>, AutomergeError> {
        Ok(self.get(obj, key)?.and_then(|(v, _)| v.as_str().map(str::to_owned)))
    }

    fn bytes(&self, obj: &ObjId, key: &str) -> Result<Option<Vec<u8>>, AutomergeError> {
        Ok(self.get(obj, key)?.and_then(|(v, _)| v.as_bytes().map(<[u8]>::to_vec)))
    }
}

fn put_member(
    doc: &mut AutoCommit,
    members: &ObjId,
    member: &AuthorId,
    role: Role,
    by: &AuthorId,
    via: Option<&Invite>,
) -> Result<(), AutomergeError> {
    let entry = doc.put_object(members, member.to_string(), ObjType::Map)?;
    doc.put(&entry, ROLE, role.as_str())?;
    doc.put(&entry, BY, by.to_string())?;
    if let Some(invite) = via {
        doc.put(&entry, VIA, invite.id().to_string())?;
    }
    Ok(())
}

fn required(doc: &AutoCommit, key: &str) -> Result<ObjId, AutomergeError> {
    match doc.get(ROOT, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => Err(AutomergeError::InvalidOp(ObjType::Map)),
    }
}

/// Writes `action` by `author` at `time` into `doc`. Authorized actions only:
/// the caller checked [`super::action::authorize`] against the same state.
/// Replaying it on the same state writes the same operations, which is how
/// a received change is checked to be exactly its action.
pub(crate) fn write(
    doc: &mut AutoCommit,
    author: &AuthorId,
    action: &Action,
    time: i64,
) -> Result<(), AutomergeError> {
    match action {
        Action::Init { name, members } => {
            doc.put(ROOT, NAME, name.as_str())?;
            doc.put(ROOT, TOPIC, "")?;
            doc.put_object(ROOT, SETTINGS, ObjType::Map)?;
            doc.put_object(ROOT, BANS, ObjType::Map)?;
            doc.put_object(ROOT, INVITES, ObjType::Map)?;
            doc.put_object(ROOT, REDEEMED, ObjType::Map)?;
            let list = doc.put_object(ROOT, MEMBERS, ObjType::Map)?;
            put_member(doc, &list, author, Role::Admin, author, None)?;
            for (member, role) in members.iter().filter(|(m, _)| m != author) {
                put_member(doc, &list, member, *role, author, None)?;
            }
        }
        Action::SetName(name) => doc.put(ROOT, NAME, name.as_str())?,
        Action::SetTopic(topic) => doc.put(ROOT, TOPIC, topic.as_str())?,
        Action::SetSetting { key, value } => {
            let settings = required(doc, SETTINGS)?;
            doc.put(&settings, key.as_str(), value.as_str())?;
        }
        Action::SetRole { member, role } => {
            let members = required(doc, MEMBERS)?;
            match doc.get(&members, member.to_string())? {
                // A member keeps their map: a concurrent removal deletes it.
                Some((Value::Object(ObjType::Map), entry)) => {
                    doc.put(&entry, ROLE, role.as_str())?;
                    doc.put(&entry, BY, author.to_string())?;
                    if doc.get(&entry, VIA)?.is_some() {
                        doc.delete(&entry, VIA)?;
                    }
                }
                _ => put_member(doc, &members, member, *role, author, None)?,
            }
        }
        Action::Remove { member } => {
            let members = required(doc, MEMBERS)?;
            doc.delete(&members, member.to_string())?;
        }
        Action::Ban { member } => {
            let bans = required(doc, BANS)?;
            let ban = doc.put_object(&bans, member.to_string(), ObjType::Map)?;
            doc.put(&ban, BY, author.to_string())?;
            let members = required(doc, MEMBERS)?;
            if doc.get(&members, member.to_string())?.is_some() {
                doc.delete(&members, member.to_string())?;
            }
        }
        Action::Unban { member } => {
            let bans = required(doc, BANS)?;
            doc.delete(&bans, member.to_string())?;
        }
        Action::Invite(invite) => {
            let invites = required(doc, INVITES)?;
            doc.put(&invites, invite.id().to_string(), invite.as_bytes().to_vec())?;
        }
        Action::Revoke { invite } => {
            let invites = required(doc, INVITES)?;
            doc.delete(&invites, invite.to_string())?;
        }
        Action::Join(invite) => {
            let members = required(doc, MEMBERS)?;
            put_member(doc, &members, author, invite.role(), &invite.issuer(), Some(invite))?;
            let redeemed = required(doc, REDEEMED)?;
            doc.put(&redeemed, format!("{}/{author}", invite.id()), time)?;
        }
        Action::PublishKeys(keys) => {
            let mut value = keys.to_bytes().to_vec();
            value.extend_from_slice(&time.to_be_bytes());
            doc.put(ROOT, format!("{KEYS_PREFIX}{author}"), value)?;
        }
    }
    Ok(())
}
