//! Governance actions and roles, their binary encoding, and the rule that
//! says who may perform which action.

use crate::base::{DecodeError, DeviceKeys, MAX_ROOM_NAME_BYTES};
pub use crate::base::{Denied, Role};
use crate::codec::{Reader, Writer};
use crate::ids::AuthorId;

use super::invite::{Invite, InviteId};
use super::state::GovState;

/// Longest room topic, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Longest setting key, in bytes of UTF-8.
pub const MAX_SETTING_KEY_BYTES: usize = 64;
/// Longest setting value, in bytes of UTF-8.
pub const MAX_SETTING_VALUE_BYTES: usize = 1024;
/// Most members a room can be created with (more join by invite).
pub const MAX_INITIAL_MEMBERS: usize = 128;

/// One change to a room's governance. Every governance change carries
/// exactly one action, and its automerge operations are exactly what
/// applying that action produces.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    /// Founds the governance document: the creator becomes admin, with the
    /// room's name and any initial members. Only the room's creator, and
    /// only as the document's first change.
    Init {
        /// The room's name.
        name: String,
        /// Initial members besides the creator, with their roles.
        members: Vec<(AuthorId, Role)>,
    },
    /// Renames the room (admins).
    SetName(String),
    /// Sets the room's topic (moderators and admins).
    SetTopic(String),
    /// Sets one room setting (admins).
    SetSetting {
        /// The setting's key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Adds a member with a role, or changes a member's role.
    SetRole {
        /// Who.
        member: AuthorId,
        /// Their new role.
        role: Role,
    },
    /// Removes a member: a kick, or leaving when the member is the author.
    Remove {
        /// Who.
        member: AuthorId,
    },
    /// Bans a key: removes it if a member, and keeps it out.
    Ban {
        /// Who.
        member: AuthorId,
    },
    /// Lifts a ban (admins). The key is not a member again until re-added.
    Unban {
        /// Who.
        member: AuthorId,
    },
    /// Registers an invite the author issued, so it can be redeemed.
    Invite(Invite),
    /// Withdraws an unredeemed invite (its issuer or an admin).
    Revoke {
        /// The invite.
        invite: InviteId,
    },
    /// Joins the room by redeeming an invite; the author is the invitee.
    Join(Invite),
    /// Publishes the author's device encryption keys, to which the room's
    /// members encrypt room keys (any reader, for their own keys only).
    PublishKeys(DeviceKeys),
}

const TAG_INIT: u8 = 0;
const TAG_SET_NAME: u8 = 1;
const TAG_SET_TOPIC: u8 = 2;
const TAG_SET_SETTING: u8 = 3;
const TAG_SET_ROLE: u8 = 4;
const TAG_REMOVE: u8 = 5;
const TAG_BAN: u8 = 6;
const TAG_UNBAN: u8 = 7;
const TAG_INVITE: u8 = 8;
const TAG_REVOKE: u8 = 9;
const TAG_JOIN: u8 = 10;
const TAG_PUBLISH_KEYS: u8 = 11;

/// The prefix of the automerge change message that carries an action.
pub(crate) const MESSAGE_PREFIX: &str = "concord-gov/1 ";

fn check_str(s: &str, max: usize, what: &'static str) -> Result<(), DecodeError> {
    if s.len() > max {
        return Err(DecodeError::TooLarge { what, len: s.len(), max });
    }
    Ok(())
}

impl Action {
    /// Checks the action's sizes, as its encoding will.
    pub(crate) fn check(&self) -> Result<(), DecodeError> {
        match self {
            Action::Init { name, members } => {
                check_str(name, MAX_ROOM_NAME_BYTES, "room name")?;
                if members.len() > MAX_INITIAL_MEMBERS {
                    return Err(DecodeError::TooLarge {
                        what: "initial members",
                        len: members.len(),
                        max: MAX_INITIAL_MEMBERS,
                    });
                }
                Ok(())
            }
            Action::SetName(name) => check_str(name, MAX_ROOM_NAME_BYTES, "room name"),
            Action::SetTopic(topic) => check_str(topic, MAX_TOPIC_BYTES, "topic"),
            Action::SetSetting { key, value } => {
                check_str(key, MAX_SETTING_KEY_BYTES, "setting key")?;
                check_str(value, MAX_SETTING_VALUE_BYTES, "setting value")
            }
            _ => Ok(()),
        }
    }

    /// The binary encoding.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let put_str = |out: &mut Vec<u8>, s: &str| out.put_bytes_u32(s.as_bytes());
        match self {
            Action::Init { name, members } => {
                out.put_u8(TAG_INIT);
                put_str(&mut out, name);
                out.put_u16(members.len() as u16);
                for (member, role) in members {
                    out.extend_from_slice(member.as_bytes());
                    out.put_u8(role.to_u8());
                }
            }
            Action::SetName(name) => {
                out.put_u8(TAG_SET_NAME);
                put_str(&mut out, name);
            }
            Action::SetTopic(topic) => {
                out.put_u8(TAG_SET_TOPIC);
                put_str(&mut out, topic);
            }
            Action::SetSetting { key, value } => {
                out.put_u8(TAG_SET_SETTING);
                put_str(&mut out, key);
                put_str(&mut out, value);
            }
            Action::SetRole { member, role } => {
                out.put_u8(TAG_SET_ROLE);
                out.extend_from_slice(member.as_bytes());
                out.put_u8(role.to_u8());
            }
            Action::Remove { member } | Action::Ban { member } | Action::Unban { member } => {
                out.put_u8(match self {
                    Action::Remove { .. } => TAG_REMOVE,
                    Action::Ban { .. } => TAG_BAN,
                    _ => TAG_UNBAN,
                });
                out.extend_from_slice(member.as_bytes());
            }
            Action::Invite(invite) | Action::Join(invite) => {
                out.put_u8(if matches!(self, Action::Invite(_)) { TAG_INVITE } else { TAG_JOIN });
                out.put_bytes_u32(invite.as_bytes());
            }
            Action::Revoke { invite } => {
                out.put_u8(TAG_REVOKE);
                out.extend_from_slice(invite.as_bytes());
            }
            Action::PublishKeys(keys) => {
                out.put_u8(TAG_PUBLISH_KEYS);
                out.extend_from_slice(&keys.to_bytes());
            }
        }
        out
    }

    /// Decodes and checks an action from untrusted bytes (an invite inside
    /// is verified too).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let str_field = |r: &mut Reader<'_>, max: usize, what: &'static str| {
            let raw = r.bytes_u32(max, what)?;
            std::str::from_utf8(raw).map(str::to_owned).map_err(|_| DecodeError::InvalidValue(what))
        };
        let action = match r.u8("action")? {
            TAG_INIT => {
                let name = str_field(&mut r, MAX_ROOM_NAME_BYTES, "room name")?;
                let n = r.count_u16(MAX_INITIAL_MEMBERS, 33, "initial members")?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    let member = AuthorId(r.array("member")?);
                    members.push((member, Role::from_u8(r.u8("role")?)?));
                }
                Action::Init { name, members }
            }
            TAG_SET_NAME => Action::SetName(str_field(&mut r, MAX_ROOM_NAME_BYTES, "room name")?),
            TAG_SET_TOPIC => Action::SetTopic(str_field(&mut r, MAX_TOPIC_BYTES, "topic")?),
            TAG_SET_SETTING => Action::SetSetting {
                key: str_field(&mut r, MAX_SETTING_KEY_BYTES, "setting key")?,
                value: str_field(&mut r, MAX_SETTING_VALUE_BYTES, "setting value")?,
            },
            TAG_SET_ROLE => Action::SetRole {
                member: AuthorId(r.array("member")?),
                role: Role::from_u8(r.u8("role")?)?,
            },
            TAG_REMOVE => Action::Remove { member: AuthorId(r.array("member")?) },
            TAG_BAN => Action::Ban { member: AuthorId(r.array("member")?) },
            TAG_UNBAN => Action::Unban { member: AuthorId(r.array("member")?) },
            tag @ (TAG_INVITE | TAG_JOIN) => {
                let invite =
                    Invite::from_bytes(r.bytes_u32(super::invite::INVITE_BYTES, "invite")?)
                        .map_err(|_| DecodeError::InvalidValue("invite"))?;
                if tag == TAG_INVITE {
                    Action::Invite(invite)
                } else {
                    Action::Join(invite)
                }
            }
            TAG_REVOKE => Action::Revoke { invite: InviteId(r.array("invite id")?) },
            TAG_PUBLISH_KEYS => {
                let keys: [u8; DeviceKeys::LEN] = r.array("device keys")?;
                Action::PublishKeys(DeviceKeys::from_bytes(&keys)?)
            }
            _ => return Err(DecodeError::InvalidValue("action")),
        };
        r.finish()?;
        Ok(action)
    }

    /// The automerge change message that carries this action.
    pub(crate) fn to_message(&self) -> String {
        format!("{MESSAGE_PREFIX}{}", hex::encode(self.encode()))
    }

    /// Parses a change message written by [`Action::to_message`].
    pub(crate) fn from_message(message: Option<&str>) -> Result<Self, DecodeError> {
        let hex_part = message
            .and_then(|m| m.strip_prefix(MESSAGE_PREFIX))
            .ok_or(DecodeError::InvalidValue("governance change message"))?;
        let bytes = hex::decode(hex_part)
            .map_err(|_| DecodeError::InvalidValue("governance change message"))?;
        Self::decode(&bytes)
    }

    /// A one-line description for the audit trail.
    pub fn describe(&self) -> String {
        let short = |a: &AuthorId| hex::encode(&a.as_bytes()[..4]);
        match self {
            Action::Init { name, members } => {
                format!("created the room {name:?} with {} other members", members.len())
            }
            Action::SetName(name) => format!("renamed the room to {name:?}"),
            Action::SetTopic(topic) => format!("set the topic to {topic:?}"),
            Action::SetSetting { key, value } => format!("set {key} to {value:?}"),
            Action::SetRole { member, role } => format!("made {} {role}", short(member)),
            Action::Remove { member } => format!("removed {}", short(member)),
            Action::Ban { member } => format!("banned {}", short(member)),
            Action::Unban { member } => format!("lifted the ban on {}", short(member)),
            Action::Invite(invite) => {
                format!("invited {} as {}", invite.describe_invitee(), invite.role())
            }
            Action::Revoke { invite } => format!("revoked invite {invite}"),
            Action::Join(invite) => {
                format!("joined as {} by invite {}", invite.role(), invite.id())
            }
            Action::PublishKeys(keys) => {
                format!("published device keys {}", keys.fingerprint())
            }
        }
    }
}

/// Decides whether `author` may perform `action` in `state` at `time`
/// (the change's own timestamp, in milliseconds).
pub(crate) fn authorize(
    state: &GovState,
    author: &AuthorId,
    action: &Action,
    time: i64,
) -> Result<(), Denied> {
    if let Action::Init { .. } = action {
        if *author != state.creator() {
            return Err(Denied::NotFounder);
        }
        if state.founded() {
            return Err(Denied::Founding("founded already"));
        }
        return Ok(());
    }
    if !state.founded() {
        return Err(Denied::Founding("not founded yet"));
    }
    if let Action::Join(invite) = action {
        return authorize_join(state, author, invite, time);
    }
    let role = state.role(author).ok_or(Denied::NotMember)?;
    let deny = |what| Err(Denied::Role { role, what });
    // What a moderator may do to a target: only members and read-only
    // members (and keys that are not members at all).
    let below_moderator =
        |target: &AuthorId| state.role(target).is_none_or(|r| r < Role::Moderator);
    match action {
        Action::Init { .. } | Action::Join(_) => Ok(()),
        Action::SetName(_) | Action::SetSetting { .. } if role < Role::Admin => {
            deny("rename the room or change its settings")
        }
        Action::SetName(_) | Action::SetSetting { .. } => Ok(()),
        Action::SetTopic(_) if role < Role::Moderator => deny("set the topic"),
        Action::SetTopic(_) => Ok(()),
        Action::SetRole { member, role: new } => {
            if state.is_banned(member) {
                return Err(Denied::Target("the key is banned"));
            }
            if member == author {
                // Stepping down is always allowed; nobody promotes themselves.
                return if *new < role { Ok(()) } else { deny("raise their own role") };
            }
            match role {
                Role::Admin => Ok(()),
                Role::Moderator if *new < Role::Moderator && below_moderator(member) => Ok(()),
                Role::Moderator => deny("grant or change the roles of moderators and admins"),
                _ => deny("set roles"),
            }
        }
        Action::Remove { member } => {
            if !state.is_listed(member) {
                return Err(Denied::Target("the key is not a listed member"));
            }
            match role {
                _ if member == author => Ok(()),
                Role::Admin => Ok(()),
                Role::Moderator if below_moderator(member) => Ok(()),
                Role::Moderator => deny("remove moderators or admins"),
                _ => deny("remove other members"),
            }
        }
        Action::Ban { member } => {
            if member == author {
                return Err(Denied::Target("nobody bans themselves"));
            }
            if state.is_banned(member) {
                return Err(Denied::Target("the key is banned already"));
            }
            match role {
                Role::Admin => Ok(()),
                Role::Moderator if below_moderator(member) => Ok(()),
                Role::Moderator => deny("ban moderators or admins"),
                _ => deny("ban"),
            }
        }
        Action::Unban { member } => {
            if !state.is_banned(member) {
                return Err(Denied::Target("the key is not banned"));
            }
            if role < Role::Admin {
                return deny("lift bans");
            }
            Ok(())
        }
        Action::Invite(invite) => {
            if invite.room() != state.room() {
                return Err(Denied::Invite("issued for another room"));
            }
            if invite.issuer() != *author {
                return Err(Denied::Invite("registered by someone other than its issuer"));
            }
            if state.invite(&invite.id()).is_some() || state.is_redeemed(&invite.id()) {
                return Err(Denied::Invite("its id is in use"));
            }
            if !may_invite(role, invite.role()) {
                return deny("invite with this role");
            }
            Ok(())
        }
        Action::Revoke { invite } => {
            let registered = state.invite(invite).ok_or(Denied::Invite("not registered"))?;
            if registered.issuer() != *author && role < Role::Admin {
                return deny("revoke others' invites");
            }
            Ok(())
        }
        // A reader publishes its own keys; the change's signature binds them
        // to its author key.
        Action::PublishKeys(_) => Ok(()),
    }
}

/// Admins invite with any role; moderators as member or read-only.
fn may_invite(issuer: Role, invited: Role) -> bool {
    issuer == Role::Admin || (issuer == Role::Moderator && invited < Role::Moderator)
}

fn authorize_join(
    state: &GovState,
    author: &AuthorId,
    invite: &Invite,
    time: i64,
) -> Result<(), Denied> {
    if invite.room() != state.room() {
        return Err(Denied::Invite("issued for another room"));
    }
    if state.is_banned(author) {
        return Err(Denied::Target("the key is banned"));
    }
    if state.is_listed(author) {
        return Err(Denied::Target("the key is a member already"));
    }
    if invite.invitee().is_some_and(|k| k != *author) {
        return Err(Denied::Invite("issued for another key"));
    }
    let registered =
        state.invite(&invite.id()).ok_or(Denied::Invite("not registered or revoked"))?;
    if registered != invite {
        return Err(Denied::Invite("differs from the registered invite"));
    }
    if state.is_redeemed(&invite.id()) {
        return Err(Denied::Invite("already used"));
    }
    if invite.expires_millis().is_some_and(|e| time < 0 || time as u64 >= e) {
        return Err(Denied::Invite("expired"));
    }
    let issuer_role = state.role(&invite.issuer());
    if !issuer_role.is_some_and(|r| may_invite(r, invite.role())) {
        return Err(Denied::Invite("its issuer may no longer invite with this role"));
    }
    Ok(())
}
