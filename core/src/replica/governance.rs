//! Room governance in the replica: each room's [`Governance`], founded when
//! the room is created, kept in the `governance-1` tree (every accepted
//! signed change) and rebuilt from it on open.

use std::collections::HashMap;

use crate::base::DeviceKeys;
use crate::envelope::Genesis;
use crate::error::{Error, Result, StoreError};
use crate::governance::{
    Action, AuditEntry, GovApplied, GovChange, GovError, GovHead, GovState, Governance, Invite,
    InviteId, Role,
};
use crate::ids::{AuthorId, RoomId};
use crate::store::tables;
use crate::store::{KeyRange, Order, Store, Tree, WriteBatch};

use super::{Replica, RoomOptions, HISTORY_SETTING};

const CONTEXT_INVITE_ID: &str = "concord 2026 invite id v1";

/// Where redeeming an invite stands, as the room's governance says now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InviteReadiness {
    /// The invite's registration has not arrived yet.
    Wait,
    /// This device is a listed member already: nothing to redeem.
    Member,
    /// The invite is registered: redeem it.
    Redeem,
    /// The invite can never admit this device.
    Refused(&'static str),
}

/// Loads every room's governance from the store.
pub(super) fn load<S: Store>(
    store: &S,
    rooms: &HashMap<RoomId, Genesis>,
) -> Result<HashMap<RoomId, Governance>> {
    let corrupt = |reason: String| {
        Error::Store(StoreError::Corrupt { tree: Tree::Governance.name(), reason })
    };
    let mut govs = HashMap::new();
    for (room, genesis) in rooms {
        let records = store.scan(
            Tree::Governance,
            &KeyRange::prefix(room.as_bytes()),
            Order::Ascending,
            usize::MAX,
        )?;
        let mut changes = Vec::with_capacity(records.len());
        for (_, value) in records {
            changes.push(GovChange::from_bytes(&value).map_err(|e| corrupt(e.to_string()))?);
        }
        let gov = Governance::restore(*room, genesis.creator(), genesis.is_open(), changes)
            .map_err(|e| corrupt(e.to_string()))?;
        govs.insert(*room, gov);
    }
    Ok(govs)
}

/// The changes with their positions, each after those it depends on within
/// the list (otherwise in the order given).
fn causal_order(changes: Vec<GovChange>) -> Vec<(usize, GovChange)> {
    let heads: HashMap<GovHead, usize> =
        changes.iter().enumerate().map(|(i, c)| (c.head(), i)).collect();
    let deps: Vec<Vec<usize>> = changes
        .iter()
        .map(|c| c.deps().iter().filter_map(|d| heads.get(d).copied()).collect())
        .collect();
    let mut slots: Vec<Option<GovChange>> = changes.into_iter().map(Some).collect();
    // Depth first from each change in turn, dependencies first. A change is
    // entered once (`entered`), so even a cycle (which only colliding hashes
    // could make) ends.
    let mut entered = vec![false; slots.len()];
    let mut out = Vec::with_capacity(slots.len());
    for start in 0..slots.len() {
        let mut stack = vec![(start, false)];
        while let Some((i, ready)) = stack.pop() {
            if ready {
                if let Some(change) = slots[i].take() {
                    out.push((i, change));
                }
            } else if !entered[i] {
                entered[i] = true;
                stack.push((i, true));
                stack.extend(deps[i].iter().rev().map(|&j| (j, false)));
            }
        }
    }
    out
}

fn stage(batch: &mut WriteBatch, change: &GovChange) {
    batch.put(
        Tree::Governance,
        tables::governance_key(&change.room(), &change.head()),
        change.as_bytes().to_vec(),
    );
}

impl<S: Store> Replica<S> {
    /// Creates a room of members only: this device is its admin, `members`
    /// have their roles, and everyone else joins by invite. Returns its id.
    pub fn create_room_with(&mut self, name: &str, members: &[(AuthorId, Role)]) -> Result<RoomId> {
        self.create_room_opts(name, &RoomOptions::default().members_only(members.to_vec()))
    }

    /// Creates a room as `options` say and returns its id.
    pub fn create_room_opts(&mut self, name: &str, options: &RoomOptions) -> Result<RoomId> {
        let members = options.members.clone().unwrap_or_default();
        self.found_room(name, &members, options)
    }

    /// Signs a genesis and the governance's founding change, and stores both
    /// in one commit.
    pub(super) fn found_room(
        &mut self,
        name: &str,
        members: &[(AuthorId, Role)],
        options: &RoomOptions,
    ) -> Result<RoomId> {
        let open = options.is_open();
        let genesis = self.sign_genesis(name, open, options.is_encrypted())?;
        let room = genesis.room_id();
        let mut gov = Governance::new(room, self.key.author(), open);
        let mut actions = vec![Action::Init { name: name.to_owned(), members: members.to_vec() }];
        if options.is_encrypted() {
            if options.share_history {
                actions.push(Action::SetSetting {
                    key: HISTORY_SETTING.into(),
                    value: "shared".into(),
                });
            }
            if let Some(keys) = self.device_keys()? {
                actions.push(Action::PublishKeys(keys));
            }
        }
        let mut batch = WriteBatch::new();
        for action in actions {
            let time = self.gov_time();
            let change = gov.act(&self.key, action, time).map_err(Error::Governance)?;
            stage(&mut batch, &change);
        }
        self.add_room_with(genesis, batch)?;
        self.govs.insert(room, gov);
        Ok(room)
    }

    fn gov_time(&mut self) -> i64 {
        let hlc = self.hlc.tick(self.clock.now_millis());
        i64::try_from(hlc.millis()).unwrap_or(i64::MAX)
    }

    fn gov(&self, room: &RoomId) -> Result<&Governance> {
        self.govs.get(room).ok_or(Error::UnknownRoom(*room))
    }

    fn gov_mut(&mut self, room: &RoomId) -> Result<&mut Governance> {
        self.govs.get_mut(room).ok_or(Error::UnknownRoom(*room))
    }

    /// The room's governance now: members, roles, bans, invites, name, topic
    /// and settings. A room joined by its genesis alone has an unfounded one
    /// until the founding change arrives.
    pub fn governance(&self, room: &RoomId) -> Result<&GovState> {
        Ok(self.gov(room)?.state())
    }

    /// Whether `author` may read the room: whether it holds a role there
    /// now (in an open room, whether it is not banned). Peers and relays
    /// serve a room's messages only to readers.
    pub fn may_read(&self, room: &RoomId, author: &AuthorId) -> Result<bool> {
        Ok(self.gov(room)?.state().role(author).is_some())
    }

    /// Whether `author` may read every one of `rooms` (an unknown author
    /// reads none; no rooms asks nothing). A gossip peer may have this
    /// device's gossip only if it may read every room of ours it subscribes
    /// to: gossipsub can leave a peer out of all topics, not of one. A room
    /// this replica does not hold counts as not readable.
    pub fn reads_all(&self, author: Option<&AuthorId>, rooms: &[RoomId]) -> bool {
        rooms.is_empty()
            || author.is_some_and(|a| rooms.iter().all(|r| self.may_read(r, a).unwrap_or(false)))
    }

    /// Where redeeming `invite` in `room` stands by the governance held now.
    /// Whether the invite is still valid (not used, not expired, its issuer
    /// still allowed) is left to the Join itself, which every peer judges
    /// alike.
    pub fn invite_readiness(&self, room: &RoomId, invite: &Invite) -> Result<InviteReadiness> {
        let me = self.author();
        let state = self.governance(room)?;
        if state.is_listed(&me) {
            return Ok(InviteReadiness::Member);
        }
        if invite.invitee().is_some_and(|k| k != me) {
            return Ok(InviteReadiness::Refused("the invite is for another key"));
        }
        if state.invite(&invite.id()).is_some() {
            return Ok(InviteReadiness::Redeem);
        }
        // Not registered here: not arrived yet, or revoked (a revoked invite
        // leaves the state; its revocation stays in the history).
        let revoked = self
            .governance_history(room)?
            .iter()
            .any(|e| matches!(e.action, Action::Revoke { invite: id } if id == invite.id()));
        Ok(if revoked {
            InviteReadiness::Refused("the invite was revoked")
        } else {
            InviteReadiness::Wait
        })
    }

    /// This device's certificate for its transport identity
    /// `transport_id` (the libp2p peer id's bytes): how peers learn which
    /// author is behind a connection.
    pub fn device_cert(&self, transport_id: &[u8]) -> Result<Vec<u8>> {
        Ok(crate::cert::DeviceCert::sign(&self.key, transport_id)?)
    }

    /// The room's governance as of `heads`.
    pub fn governance_at(&self, room: &RoomId, heads: &[GovHead]) -> Result<GovState> {
        self.gov(room)?.state_at(heads).map_err(Error::Governance)
    }

    /// The heads of the room's governance, which this device's messages cite.
    pub fn governance_heads(&self, room: &RoomId) -> Result<Vec<GovHead>> {
        Ok(self.gov(room)?.heads())
    }

    /// Whether every one of `heads` is an accepted governance change here.
    pub fn knows_governance(&self, room: &RoomId, heads: &[GovHead]) -> Result<bool> {
        Ok(self.gov(room)?.knows(heads))
    }

    /// The room's audit trail: every governance change, who made it and
    /// when, in causal order.
    pub fn governance_history(&self, room: &RoomId) -> Result<Vec<AuditEntry>> {
        Ok(self.gov(room)?.history())
    }

    /// Governance changes a peer holding `have` lacks, dependencies first.
    pub fn governance_since(&self, room: &RoomId, have: &[GovHead]) -> Result<Vec<GovChange>> {
        Ok(self.gov(room)?.changes_since(have))
    }

    /// Performs a governance action as this device, if its role allows it;
    /// returns the signed change once it is durable, for peers.
    pub fn govern(&mut self, room: &RoomId, action: Action) -> Result<GovChange> {
        let me = self.author();
        let was_reader = self.may_read(room, &me)?;
        let readers_before = self.readers_before(room)?;
        let change = self.act(room, action)?;
        self.follow_governance(room, was_reader, &readers_before)?;
        Ok(change)
    }

    /// Signs and commits one governance change of this device, with none of
    /// [`Replica::govern`]'s follow-up.
    pub(super) fn act(&mut self, room: &RoomId, action: Action) -> Result<GovChange> {
        let time = self.gov_time();
        let Some(gov) = self.govs.get_mut(room) else { return Err(Error::UnknownRoom(*room)) };
        let change = gov.act(&self.key, action, time).map_err(Error::Governance)?;
        let mut batch = WriteBatch::new();
        stage(&mut batch, &change);
        self.commit_governance(room, batch)?;
        Ok(change)
    }

    /// Commits staged governance changes; if the store fails, the room's
    /// governance is rebuilt from what the store holds, so memory never runs
    /// ahead of the disk.
    fn commit_governance(&mut self, room: &RoomId, batch: WriteBatch) -> Result<()> {
        if let Err(e) = self.store.commit(batch) {
            let rooms: HashMap<RoomId, Genesis> =
                self.rooms.get(room).map(|g| (*room, g.clone())).into_iter().collect();
            match load(&self.store, &rooms) {
                Ok(mut reloaded) => {
                    if let Some(gov) = reloaded.remove(room) {
                        self.govs.insert(*room, gov);
                    }
                }
                Err(_) => {
                    self.govs.remove(room);
                }
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Issues an invite to the room and registers it; returns the invite, to
    /// hand to the invitee (a ticket carries it), and the registering change,
    /// for peers.
    pub fn invite(
        &mut self,
        room: &RoomId,
        role: Role,
        invitee: Option<AuthorId>,
        expires_millis: Option<u64>,
    ) -> Result<(Invite, GovChange)> {
        let now = self.clock.now_millis();
        let seed = self.key.derive(CONTEXT_INVITE_ID, &self.hlc.tick(now).as_u64().to_be_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&seed[..16]);
        let invite = Invite::issue(
            &self.key,
            *room,
            InviteId::from_bytes(id),
            role,
            invitee,
            expires_millis,
        );
        let change = self.govern(room, Action::Invite(invite.clone()))?;
        Ok((invite, change))
    }

    /// Receives governance changes from peers or a relay, in any order. Each
    /// has its own outcome; the outer error means the store failed, and then
    /// none of them was kept.
    pub fn apply_governance(
        &mut self,
        room: &RoomId,
        changes: Vec<GovChange>,
    ) -> Result<Vec<Result<GovApplied, GovError>>> {
        let me = self.author();
        let was_reader = self.may_read(room, &me)?;
        let readers_before = self.readers_before(room)?;
        let gov = self.gov_mut(room)?;
        let mut batch = WriteBatch::new();
        let mut outcomes = vec![Ok(GovApplied::Duplicate); changes.len()];
        let mut accepted = 0;
        // Dependencies within the batch first, whatever order it came in
        // (a store's order is by hash), so that only what is really missing
        // waits; outcomes are reported in the order given.
        for (at, change) in causal_order(changes) {
            let outcome = gov.receive(change);
            if let Ok(GovApplied::Applied { accepted: heads }) = &outcome {
                for change in heads.iter().filter_map(|h| gov.change(h)) {
                    stage(&mut batch, &change);
                    accepted += 1;
                }
            }
            outcomes[at] = outcome;
        }
        if accepted > 0 {
            self.commit_governance(room, batch)?;
            self.retry_pending(room)?;
            self.follow_governance(room, was_reader, &readers_before)?;
        }
        Ok(outcomes)
    }

    /// The readers with published keys before a change of the governance,
    /// which `follow_governance` compares with those after it to
    /// find new readers. Only an encrypted room needs them; an unencrypted
    /// one gets none (an empty list allocates nothing).
    fn readers_before(&self, room: &RoomId) -> Result<Vec<(AuthorId, DeviceKeys)>> {
        Ok(if self.is_encrypted(room)? {
            self.governance(room)?.readers_with_keys()
        } else {
            Vec::new()
        })
    }

    /// What a change of the governance, received or made here, asks of this
    /// device in an encrypted room: admitted (or the founding arrived), it
    /// publishes its keys, so members share room keys with it; back as a
    /// reader, or with new keys, it asks again for what waits; otherwise it
    /// answers requests of readers that were not readers before.
    fn follow_governance(
        &mut self,
        room: &RoomId,
        was_reader: bool,
        readers_before: &[(AuthorId, DeviceKeys)],
    ) -> Result<()> {
        if !self.is_encrypted(room)? {
            return Ok(());
        }
        let me = self.author();
        let published = self.publish_keys_if_needed(room)?;
        let renew = published.is_some() || (!was_reader && self.may_read(room, &me)?);
        if let Some(change) = published {
            self.announce_governance(*room, change);
        }
        if renew {
            self.renew_key_requests(room)
        } else {
            self.answer_new_readers(room, readers_before)
        }
    }
}
