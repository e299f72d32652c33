//! Governance: the founding, every role's rights, invites, the audit trail,
//! forgeries and privilege escalations refused, and replicas that receive
//! concurrent changes in random orders ending identical.
//!
//! The randomized tests are seeded (printed); `CONCORD_SEED=<n>` replays one.
//!
//! One file over the house's 600 lines: the unit tests of every governance
//! rule, sharing one set of signed fixtures.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::test_support::test_seed;

const ROOM: RoomId = RoomId([7; 32]);
const T0: i64 = 1_700_000_000_000;

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_seed([n; 32])
}

/// The cast: an admin (the creator), a moderator, a member, a read-only
/// member, and two keys that are not members.
struct Cast {
    admin: DeviceKey,
    moderator: DeviceKey,
    member: DeviceKey,
    reader: DeviceKey,
    outsider: DeviceKey,
    newcomer: DeviceKey,
}

fn cast() -> Cast {
    Cast {
        admin: key(1),
        moderator: key(2),
        member: key(3),
        reader: key(4),
        outsider: key(5),
        newcomer: key(6),
    }
}

fn founded(c: &Cast) -> (Governance, GovChange) {
    let mut gov = Governance::new(ROOM, c.admin.author(), false);
    let init = gov
        .act(
            &c.admin,
            Action::Init {
                name: "ops".into(),
                members: vec![
                    (c.moderator.author(), Role::Moderator),
                    (c.member.author(), Role::Member),
                    (c.reader.author(), Role::ReadOnly),
                ],
            },
            T0,
        )
        .unwrap();
    (gov, init)
}

/// A replica that has received every change `from` holds.
fn replica_of(from: &mut Governance) -> Governance {
    let mut gov = Governance::new(from.room, from.base.creator(), false);
    for change in from.changes() {
        assert!(matches!(gov.receive(change), Ok(GovApplied::Applied { .. })));
    }
    gov
}

fn invite(issuer: &DeviceKey, id: u8, role: Role, invitee: Option<AuthorId>) -> Invite {
    Invite::issue(issuer, ROOM, InviteId([id; 16]), role, invitee, None)
}

/// Signs `action` by `key` on `gov`'s current document without asking
/// whether the author may: what a forger does.
fn forge(
    gov: &mut Governance,
    key: &DeviceKey,
    action: &Action,
    write_as: Option<&Action>,
    time: i64,
) -> Option<GovChange> {
    let mut fork = gov.doc.fork();
    // `write_as`: the operations of another action under this one's message.
    let change =
        commit_as(&mut fork, &key.author(), action, write_as.unwrap_or(action), time).ok()?;
    Some(GovChange::sign(key, ROOM, change, action.clone()))
}

#[test]
fn test_founding_gives_the_creator_admin_and_the_initial_members_their_roles() {
    let c = cast();
    let (mut gov, init) = founded(&c);
    let state = gov.state();
    assert!(state.founded());
    assert_eq!(state.name(), "ops");
    assert_eq!(state.role(&c.admin.author()), Some(Role::Admin));
    assert_eq!(state.role(&c.moderator.author()), Some(Role::Moderator));
    assert_eq!(state.role(&c.member.author()), Some(Role::Member));
    assert_eq!(state.role(&c.reader.author()), Some(Role::ReadOnly));
    assert_eq!(state.role(&c.outsider.author()), None);
    assert_eq!(gov.heads(), vec![init.head()]);

    // Nobody else founds it, and the creator founds it once.
    let mut other = Governance::new(ROOM, c.admin.author(), false);
    let stranger = Action::Init { name: "mine".into(), members: vec![] };
    assert_eq!(other.act(&c.outsider, stranger, T0), Err(GovError::Denied(Denied::NotFounder)));
    assert_eq!(
        gov.act(&c.admin, Action::Init { name: "again".into(), members: vec![] }, T0),
        Err(GovError::Denied(Denied::Founding("founded already")))
    );
    // Before the founding, nothing is allowed.
    assert_eq!(
        other.act(&c.admin, Action::SetTopic("early".into()), T0),
        Err(GovError::Denied(Denied::Founding("not founded yet")))
    );
}

#[test]
fn test_each_role_has_exactly_its_rights() {
    let c = cast();
    let (mut gov, _) = founded(&c);
    let role_err = |role, what| Err(GovError::Denied(Denied::Role { role, what }));
    let (admin, moderator, member, reader) =
        (c.admin.author(), c.moderator.author(), c.member.author(), c.reader.author());

    // The name and settings: admins only.
    assert!(matches!(
        gov.act(&c.moderator, Action::SetName("x".into()), T0),
        Err(GovError::Denied(Denied::Role { role: Role::Moderator, .. }))
    ));
    gov.act(&c.admin, Action::SetName("ops-2".into()), T0 + 1).unwrap();
    gov.act(
        &c.admin,
        Action::SetSetting { key: "history".into(), value: "members".into() },
        T0 + 1,
    )
    .unwrap();
    // The topic: moderators and admins.
    gov.act(&c.moderator, Action::SetTopic("on call".into()), T0 + 2).unwrap();
    assert_eq!(
        gov.act(&c.member, Action::SetTopic("mine".into()), T0 + 2),
        role_err(Role::Member, "set the topic")
    );
    // Nobody raises their own role; stepping down is fine.
    assert_eq!(
        gov.act(&c.member, Action::SetRole { member, role: Role::Admin }, T0 + 3),
        role_err(Role::Member, "raise their own role")
    );
    assert_eq!(
        gov.act(&c.moderator, Action::SetRole { member: moderator, role: Role::Admin }, T0 + 3),
        role_err(Role::Moderator, "raise their own role")
    );
    // A moderator sets members' and readers' roles below moderator only.
    gov.act(&c.moderator, Action::SetRole { member: reader, role: Role::Member }, T0 + 4).unwrap();
    assert_eq!(
        gov.act(&c.moderator, Action::SetRole { member: reader, role: Role::Moderator }, T0 + 4),
        role_err(Role::Moderator, "grant or change the roles of moderators and admins")
    );
    assert_eq!(
        gov.act(&c.moderator, Action::Remove { member: admin }, T0 + 4),
        role_err(Role::Moderator, "remove moderators or admins")
    );
    assert_eq!(
        gov.act(&c.member, Action::Remove { member: reader }, T0 + 4),
        role_err(Role::Member, "remove other members")
    );
    // Bans: a moderator bans a member; the banned key is no member, cannot
    // be re-added, and only an admin lifts the ban.
    gov.act(&c.moderator, Action::Ban { member: reader }, T0 + 5).unwrap();
    assert_eq!(gov.state().role(&reader), None);
    assert!(gov.state().is_banned(&reader));
    assert_eq!(
        gov.act(&c.admin, Action::SetRole { member: reader, role: Role::Member }, T0 + 6),
        Err(GovError::Denied(Denied::Target("the key is banned")))
    );
    assert_eq!(
        gov.act(&c.moderator, Action::Unban { member: reader }, T0 + 6),
        role_err(Role::Moderator, "lift bans")
    );
    gov.act(&c.admin, Action::Unban { member: reader }, T0 + 6).unwrap();
    assert_eq!(gov.state().role(&reader), None, "unbanning does not re-add");
    // Leaving: any member removes themselves.
    gov.act(&c.member, Action::Remove { member }, T0 + 7).unwrap();
    assert_eq!(gov.state().role(&member), None);
    assert_eq!(
        gov.act(&c.member, Action::SetTopic("still here?".into()), T0 + 8),
        Err(GovError::Denied(Denied::NotMember))
    );

    // A second replica agrees with every verdict.
    let other = replica_of(&mut gov);
    assert_eq!(other.state(), gov.state());
    assert_eq!(other.state().name(), "ops-2");
    assert_eq!(other.state().topic(), "on call");
    assert_eq!(other.state().settings().get("history").map(String::as_str), Some("members"));
}

#[test]
fn test_invites_admit_once_the_key_they_name_until_they_expire_or_are_revoked() {
    let c = cast();
    let (mut gov, _) = founded(&c);
    let newcomer = c.newcomer.author();

    // A one-use invite: the first redeemer joins, the next is refused.
    let open = invite(&c.admin, 1, Role::Member, None);
    gov.act(&c.admin, Action::Invite(open.clone()), T0 + 1).unwrap();
    assert_eq!(gov.state().pending_invites().count(), 1);
    gov.act(&c.newcomer, Action::Join(open.clone()), T0 + 2).unwrap();
    assert_eq!(gov.state().role(&newcomer), Some(Role::Member));
    assert_eq!(gov.state().members()[&newcomer].by, c.admin.author());
    assert_eq!(gov.state().pending_invites().count(), 0);
    assert_eq!(
        gov.act(&c.outsider, Action::Join(open), T0 + 3),
        Err(GovError::Denied(Denied::Invite("already used")))
    );

    // An invite for one key admits that key only.
    let named = invite(&c.moderator, 2, Role::ReadOnly, Some(c.outsider.author()));
    gov.act(&c.moderator, Action::Invite(named.clone()), T0 + 4).unwrap();
    let mut wrong = Governance::new(ROOM, c.admin.author(), false);
    for change in gov.changes() {
        wrong.receive(change).unwrap();
    }
    assert_eq!(
        wrong.act(&key(9), Action::Join(named.clone()), T0 + 5),
        Err(GovError::Denied(Denied::Invite("issued for another key")))
    );
    gov.act(&c.outsider, Action::Join(named), T0 + 5).unwrap();
    assert_eq!(gov.state().role(&c.outsider.author()), Some(Role::ReadOnly));

    // Moderators invite below moderator only; members do not invite.
    assert!(matches!(
        gov.act(&c.moderator, Action::Invite(invite(&c.moderator, 3, Role::Admin, None)), T0 + 6),
        Err(GovError::Denied(Denied::Role { .. }))
    ));
    assert!(matches!(
        gov.act(&c.member, Action::Invite(invite(&c.member, 4, Role::Member, None)), T0 + 6),
        Err(GovError::Denied(Denied::Role { .. }))
    ));

    // Expiry is judged against the join's own time; revoking closes it.
    let expiring = Invite::issue(
        &c.admin,
        ROOM,
        InviteId([5; 16]),
        Role::Member,
        None,
        Some((T0 + 100) as u64),
    );
    gov.act(&c.admin, Action::Invite(expiring.clone()), T0 + 7).unwrap();
    assert_eq!(
        gov.act(&key(10), Action::Join(expiring.clone()), T0 + 100),
        Err(GovError::Denied(Denied::Invite("expired")))
    );
    gov.act(&c.admin, Action::Revoke { invite: expiring.id() }, T0 + 8).unwrap();
    assert_eq!(
        gov.act(&key(10), Action::Join(expiring), T0 + 9),
        Err(GovError::Denied(Denied::Invite("not registered or revoked")))
    );
    // Invites for another room, or never registered, admit nobody.
    let foreign =
        Invite::issue(&c.admin, RoomId([8; 16 * 2]), InviteId([6; 16]), Role::Member, None, None);
    assert_eq!(
        gov.act(&key(11), Action::Join(foreign), T0 + 10),
        Err(GovError::Denied(Denied::Invite("issued for another room")))
    );
    assert_eq!(
        gov.act(&key(11), Action::Join(invite(&c.admin, 7, Role::Member, None)), T0 + 10),
        Err(GovError::Denied(Denied::Invite("not registered or revoked")))
    );

    let other = replica_of(&mut gov);
    assert_eq!(other.state(), gov.state());
}

#[test]
fn test_the_audit_trail_lists_who_changed_what_and_when_in_causal_order() {
    let c = cast();
    let (mut gov, init) = founded(&c);
    gov.act(&c.moderator, Action::SetTopic("incidents".into()), T0 + 10).unwrap();
    gov.act(&c.admin, Action::Ban { member: c.member.author() }, T0 + 20).unwrap();
    let other = replica_of(&mut gov);
    let trail = other.history();
    assert_eq!(trail, gov.history());
    let lines: Vec<(AuthorId, i64, String)> =
        trail.iter().map(|e| (e.author, e.time_millis, e.action.describe())).collect();
    assert_eq!(
        lines,
        vec![
            (c.admin.author(), T0, "created the room \"ops\" with 3 other members".to_owned()),
            (c.moderator.author(), T0 + 10, "set the topic to \"incidents\"".to_owned()),
            (c.admin.author(), T0 + 20, format!("banned {}", &c.member.author().to_string()[..8])),
        ]
    );
    assert_eq!(trail[0].head, init.head());
}

#[test]
fn test_a_change_waits_for_its_causal_past_and_replays_are_harmless() {
    let c = cast();
    let (mut gov, init) = founded(&c);
    let topic = gov.act(&c.moderator, Action::SetTopic("a".into()), T0 + 1).unwrap();
    let mut late = Governance::new(ROOM, c.admin.author(), false);
    // Before the founding change nobody but the creator is known here, so
    // the moderator's change is not kept; the creator's waits.
    assert_eq!(late.receive(topic.clone()), Err(GovError::MissingDependencies));
    let renamed = gov.act(&c.admin, Action::SetName("b".into()), T0 + 2).unwrap();
    assert_eq!(
        late.receive(renamed.clone()),
        Ok(GovApplied::Pending { missing: vec![topic.head()] })
    );
    assert_eq!(late.receive(init.clone()), Ok(GovApplied::Applied { accepted: vec![init.head()] }));
    assert_eq!(late.state().topic(), "");
    // Offered again, the moderator's change is judged, and unblocks the rest.
    assert_eq!(
        late.receive(topic.clone()),
        Ok(GovApplied::Applied { accepted: vec![topic.head(), renamed.head()] })
    );
    assert_eq!(late.state().topic(), "a");
    assert_eq!(late.state().name(), "b");
    assert_eq!(late.receive(topic.clone()), Ok(GovApplied::Duplicate));
    assert!(late.knows(&[init.head(), topic.head()]));
    assert_eq!(late.state_at(&[init.head()]).unwrap().topic(), "");
    assert_eq!(late.state_at(&[[0; 32]]), Err(GovError::UnknownHeads));
    // The same change offered to another room is refused.
    let mut elsewhere = Governance::new(RoomId([8; 32]), c.admin.author(), false);
    assert!(matches!(elsewhere.receive(init.clone()), Err(GovError::WrongRoom { .. })));
    // Encoding round-trips and is verified.
    let decoded = GovChange::from_bytes(topic.as_bytes()).unwrap();
    assert_eq!(decoded, topic);
    assert_eq!(decoded.action(), &Action::SetTopic("a".into()));
    assert_eq!(late.changes_since(&[init.head()]), vec![topic.clone(), renamed.clone()]);
    // A restored governance equals the one it was stored from.
    let restored =
        Governance::restore(ROOM, c.admin.author(), false, vec![renamed, topic, init]).unwrap();
    assert_eq!(restored.state(), late.state());
    let partial = Governance::restore(ROOM, c.admin.author(), false, gov.changes()[1..].to_vec());
    assert!(matches!(partial, Err(GovError::Document(_))));
}

/// The categories of forged and escalating changes the big run draws from.
const FORGERIES: usize = 12;

/// One forged or escalating change of category `kind`, built on `gov`'s
/// current document; `None` when the category does not apply right now.
fn forgery(
    rng: &mut ChaCha8Rng,
    gov: &mut Governance,
    keys: &[DeviceKey],
    kind: usize,
    time: i64,
) -> Option<(Vec<u8>, &'static str)> {
    let state = gov.state().clone();
    let with_role = |pred: &dyn Fn(Option<Role>) -> bool| -> Vec<&DeviceKey> {
        keys.iter().filter(|k| pred(state.role(&k.author()))).collect()
    };
    let any = |rng: &mut ChaCha8Rng| keys.choose(rng).map(DeviceKey::author);
    let fresh = |rng: &mut ChaCha8Rng| DeviceKey::from_seed(rng.random());
    let every_action = |rng: &mut ChaCha8Rng, target: AuthorId, issuer: &DeviceKey| -> Action {
        let inv = Invite::issue(
            issuer,
            ROOM,
            InviteId(rng.random()),
            Role::ALL[rng.random_range(0..4)],
            None,
            None,
        );
        match rng.random_range(0..9) {
            0 => Action::SetName("taken".into()),
            1 => Action::SetTopic("taken".into()),
            2 => Action::SetSetting { key: "k".into(), value: "v".into() },
            3 => Action::SetRole { member: target, role: Role::ALL[rng.random_range(0..4)] },
            4 => Action::Remove { member: target },
            5 => Action::Ban { member: target },
            6 => Action::Unban { member: target },
            7 => Action::Invite(inv),
            _ => Action::Init { name: "again".into(), members: vec![] },
        }
    };
    match kind {
        // A key that is not a member does anything at all.
        0 => {
            let outsider = fresh(rng);
            let target = any(rng)?;
            let action = every_action(rng, target, &outsider);
            Some((forge(gov, &outsider, &action, None, time)?.bytes, "non-member acts"))
        }
        // A member or read-only member grants themselves a higher role.
        1 => {
            let low = *with_role(&|r| r.is_some_and(|r| r < Role::Admin)).choose(rng)?;
            let current = state.role(&low.author())?;
            let role = Role::ALL[rng.random_range(usize::from(current.to_u8()) + 1..4)];
            let action = Action::SetRole { member: low.author(), role };
            Some((forge(gov, low, &action, None, time)?.bytes, "self-promotion"))
        }
        // A member or read-only member moderates or administers.
        2 => {
            let low = *with_role(&|r| r.is_some_and(|r| r < Role::Moderator)).choose(rng)?;
            let target =
                *with_role(&|r| r.is_some()).iter().find(|k| k.author() != low.author())?;
            let action = match rng.random_range(0..6) {
                0 => Action::Remove { member: target.author() },
                1 => Action::Ban { member: target.author() },
                2 => Action::SetRole { member: target.author(), role: Role::ReadOnly },
                3 => Action::SetName("mine".into()),
                4 => Action::Invite(Invite::issue(
                    low,
                    ROOM,
                    InviteId(rng.random()),
                    Role::Member,
                    None,
                    None,
                )),
                _ => Action::SetTopic("mine".into()),
            };
            // Read-only members may not even set the topic; members may not either.
            Some((forge(gov, low, &action, None, time)?.bytes, "member escalates"))
        }
        // A moderator acts on admins or moderators, or grants high roles.
        3 => {
            let moderator = *with_role(&|r| r == Some(Role::Moderator)).choose(rng)?;
            let high = with_role(&|r| r.is_some_and(|r| r >= Role::Moderator));
            let target = high.iter().find(|k| k.author() != moderator.author())?;
            let action = match rng.random_range(0..5) {
                0 => Action::Remove { member: target.author() },
                1 => Action::Ban { member: target.author() },
                2 => Action::SetRole { member: any(rng)?, role: Role::Admin },
                3 => Action::SetName("mine".into()),
                _ => Action::Unban { member: any(rng)? },
            };
            Some((forge(gov, moderator, &action, None, time)?.bytes, "moderator escalates"))
        }
        // A redeemed one-use invite presented again by another key.
        4 => {
            let used =
                state.invites().values().filter(|i| state.is_redeemed(&i.id())).collect::<Vec<_>>();
            let invite = (*used.choose(rng)?).clone();
            let joiner = fresh(rng);
            Some((forge(gov, &joiner, &Action::Join(invite), None, time)?.bytes, "reused invite"))
        }
        // Invites that were never good here: another room's, another key's,
        // never registered, registered by someone else, expired.
        5 => {
            let admin = *with_role(&|r| r == Some(Role::Admin)).choose(rng)?;
            let joiner = fresh(rng);
            let id = InviteId(rng.random());
            let (action, what) = match rng.random_range(0..4) {
                0 => (
                    Action::Join(Invite::issue(
                        admin,
                        RoomId(rng.random()),
                        id,
                        Role::Member,
                        None,
                        None,
                    )),
                    "foreign room's invite",
                ),
                1 => {
                    let bound = state.pending_invites().find(|i| i.invitee().is_some())?.clone();
                    (Action::Join(bound), "invite for another key")
                }
                2 => (
                    Action::Join(Invite::issue(admin, ROOM, id, Role::Admin, None, None)),
                    "unregistered invite",
                ),
                _ => {
                    let member = *with_role(&|r| r == Some(Role::Member)).choose(rng)?;
                    let token = Invite::issue(admin, ROOM, id, Role::Member, None, None);
                    return Some((
                        forge(gov, member, &Action::Invite(token), None, time)?.bytes,
                        "invite registered by another",
                    ));
                }
            };
            Some((forge(gov, &joiner, &action, None, time)?.bytes, what))
        }
        // An expired, still registered invite.
        6 => {
            let expired = state
                .pending_invites()
                .find(|i| i.expires_millis().is_some_and(|e| e as i64 <= time))?
                .clone();
            Some((
                forge(gov, &fresh(rng), &Action::Join(expired), None, time)?.bytes,
                "expired invite",
            ))
        }
        // An author allowed the action it names, whose operations do
        // something else (here: make itself admin).
        7 => {
            let below_admin =
                with_role(&|r| r.is_some_and(|r| r >= Role::Member && r < Role::Admin));
            let moderator = *below_admin.choose(rng)?;
            let named = Action::Remove { member: moderator.author() };
            let ops = Action::SetRole { member: moderator.author(), role: Role::Admin };
            Some((
                forge(gov, moderator, &named, Some(&ops), time)?.bytes,
                "operations differ from the action",
            ))
        }
        // A legitimate action citing heads that do not exist.
        8 => {
            let admin = *with_role(&|r| r == Some(Role::Admin)).choose(rng)?;
            let honest = forge(gov, admin, &Action::SetTopic("phantom".into()), None, time)?;
            let mut expanded = honest.change.decode();
            expanded.deps = vec![ChangeHash(rng.random())];
            let change = Change::from(expanded);
            Some((GovChange::sign(admin, ROOM, change, honest.action).bytes, "nonexistent heads"))
        }
        // A change signed by one key whose automerge actor is another.
        9 => {
            let admin = *with_role(&|r| r == Some(Role::Admin)).choose(rng)?;
            let signer = fresh(rng);
            let honest = forge(gov, admin, &Action::SetTopic("borrowed".into()), None, time)?;
            Some((
                GovChange::sign(&signer, ROOM, honest.change, honest.action).bytes,
                "borrowed actor",
            ))
        }
        // A legitimate change with one bit flipped.
        10 => {
            let admin = *with_role(&|r| r == Some(Role::Admin)).choose(rng)?;
            let honest = forge(gov, admin, &Action::SetTopic("flipped".into()), None, time)?;
            let mut bytes = honest.as_bytes().to_vec();
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
            Some((bytes, "bit flip"))
        }
        // A legitimate change of another room replayed here.
        _ => {
            let admin = *with_role(&|r| r == Some(Role::Admin)).choose(rng)?;
            let honest = forge(gov, admin, &Action::SetTopic("replayed".into()), None, time)?;
            let resigned =
                GovChange::sign(admin, RoomId(rng.random()), honest.change, honest.action);
            Some((resigned.bytes, "another room's change"))
        }
    }
}

/// One legitimate action by someone allowed it, chosen by the rules as
/// written in the docs (not by asking `authorize`).
fn legitimate(
    rng: &mut ChaCha8Rng,
    gov: &Governance,
    keys: &mut Vec<DeviceKey>,
    time: i64,
) -> Option<(usize, Action)> {
    let state = gov.state();
    let holders = |role: Role| -> Vec<usize> {
        (0..keys.len()).filter(|i| state.role(&keys[*i].author()) == Some(role)).collect()
    };
    let low = |i: &usize| state.role(&keys[*i].author()).is_some_and(|r| r < Role::Moderator);
    let admins = holders(Role::Admin);
    let mods = holders(Role::Moderator);
    let members: Vec<usize> = (0..keys.len()).filter(low).collect();
    match rng.random_range(0..10) {
        0 => Some((*admins.choose(rng)?, Action::SetName(format!("room {time}")))),
        1 => {
            let who = *admins.iter().chain(&mods).collect::<Vec<_>>().choose(rng)?;
            Some((*who, Action::SetTopic(format!("topic {time}"))))
        }
        2 => {
            let target = *members.choose(rng)?;
            let mut role = if state.role(&keys[target].author()) == Some(Role::Member) {
                Role::ReadOnly
            } else {
                Role::Member
            };
            let who = *admins.iter().chain(&mods).collect::<Vec<_>>().choose(rng)?;
            if admins.contains(who) && rng.random_bool(0.3) {
                role = Role::Moderator;
            }
            Some((*who, Action::SetRole { member: keys[target].author(), role }))
        }
        3 => {
            let target = *members.choose(rng)?;
            let who = *mods.choose(rng).or_else(|| admins.choose(rng))?;
            Some((who, Action::Remove { member: keys[target].author() }))
        }
        4 => {
            let target = *members.choose(rng)?;
            Some((*admins.choose(rng)?, Action::Ban { member: keys[target].author() }))
        }
        5 => {
            let banned = *state.bans().keys().collect::<Vec<_>>().choose(rng)?;
            Some((*admins.choose(rng)?, Action::Unban { member: *banned }))
        }
        6 => {
            let who = *admins.choose(rng)?;
            let expires = rng.random_bool(0.3).then_some(time as u64 + 5);
            let invitee = rng.random_bool(0.3).then(|| DeviceKey::from_seed(rng.random()));
            let invite = Invite::issue(
                &keys[who],
                ROOM,
                InviteId(rng.random()),
                Role::Member,
                invitee.as_ref().map(DeviceKey::author),
                expires,
            );
            if let Some(k) = invitee {
                keys.push(k);
            }
            Some((who, Action::Invite(invite)))
        }
        7 | 8 => {
            // Redeem an open, unexpired invite: the key it names, or a new one.
            let invite = state
                .pending_invites()
                .filter(|i| i.expires_millis().is_none_or(|e| time < e as i64))
                .collect::<Vec<_>>()
                .choose(rng)
                .map(|i| (*i).clone())?;
            let joiner = match invite.invitee() {
                Some(k) => keys.iter().position(|key| key.author() == k)?,
                None => {
                    keys.push(DeviceKey::from_seed(rng.random()));
                    keys.len() - 1
                }
            };
            if state.role(&keys[joiner].author()).is_some()
                || state.is_banned(&keys[joiner].author())
            {
                return None;
            }
            Some((joiner, Action::Join(invite)))
        }
        _ => {
            let who = *mods.choose(rng)?;
            Some((who, Action::SetRole { member: keys[who].author(), role: Role::Member }))
        }
    }
}

#[test]
fn test_ten_thousand_forgeries_are_refused_and_every_legitimate_change_accepted() {
    let seed =
        test_seed("test_ten_thousand_forgeries_are_refused_and_every_legitimate_change_accepted");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = cast();
    // The author side, where honest keys act and forgers build on the same
    // document; and the judge, which receives everything.
    let (mut world, init) = founded(&c);
    let mut judge = Governance::new(ROOM, c.admin.author(), false);
    judge.receive(init).unwrap();
    let mut keys = vec![c.admin, c.moderator, c.member, c.reader];
    let mut refused: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut forged, mut legit, mut time) = (0usize, 0usize, T0);
    while forged < 10_000 {
        time += 1;
        if rng.random_bool(0.05) {
            let Some((who, action)) = legitimate(&mut rng, &world, &mut keys, time) else {
                continue;
            };
            let change = world
                .act(&keys[who], action.clone(), time)
                .unwrap_or_else(|e| panic!("seed {seed}: legitimate {action:?} refused: {e}"));
            let verdict = judge.receive(change);
            assert!(
                matches!(verdict, Ok(GovApplied::Applied { .. })),
                "seed {seed}: legitimate {action:?} not accepted by the judge: {verdict:?}"
            );
            legit += 1;
            continue;
        }
        let kind = rng.random_range(0..FORGERIES);
        let Some((bytes, what)) = forgery(&mut rng, &mut world, &keys, kind, time) else {
            continue;
        };
        let heads = judge.heads();
        // As from the wire: decoded, then judged.
        let verdict =
            GovChange::from_bytes(&bytes).map_err(GovError::from).and_then(|c| judge.receive(c));
        assert!(
            !matches!(verdict, Ok(GovApplied::Applied { .. }) | Ok(GovApplied::Duplicate)),
            "seed {seed}: forgery ({what}) accepted"
        );
        assert_eq!(judge.heads(), heads, "seed {seed}: forgery ({what}) changed the heads");
        *refused.entry(what).or_default() += 1;
        forged += 1;
    }
    assert_eq!(judge.state(), world.state(), "seed {seed}");
    assert_eq!(judge.heads(), world.heads(), "seed {seed}");
    eprintln!("refused {forged} forgeries, accepted {legit} legitimate changes: {refused:?}");
    assert!(legit >= 200, "too few legitimate changes ({legit}) to mean anything");
    // Every category was exercised.
    assert_eq!(refused.len(), 15, "categories refused: {refused:?}");
}

/// Replicas act concurrently on what they know, then receive every change
/// in a random order: every replica ends with the same state and heads.
#[test]
fn test_concurrent_changes_in_any_order_end_identical() {
    let seed = test_seed("test_concurrent_changes_in_any_order_end_identical");
    let cases = std::env::var("CONCORD_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(150u64);
    for case in 0..cases {
        let case_seed = seed.wrapping_add(case);
        let mut rng = ChaCha8Rng::seed_from_u64(case_seed);
        let c = cast();
        let (mut first, _) = founded(&c);
        let replicas_n = rng.random_range(2..5);
        let mut replicas: Vec<Governance> =
            (0..replicas_n).map(|_| replica_of(&mut first)).collect();
        let mut keys = vec![c.admin, c.moderator, c.member, c.reader];
        let mut wire: Vec<GovChange> = first.changes();
        let mut time = T0;
        for _round in 0..rng.random_range(1..5) {
            // Each replica acts alone for a while.
            for r in replicas.iter_mut() {
                for _ in 0..rng.random_range(0..6) {
                    time += 1;
                    if let Some((who, action)) = legitimate(&mut rng, r, &mut keys, time) {
                        let change = r.act(&keys[who], action, time).unwrap_or_else(|e| {
                            panic!("seed {case_seed}: a legitimate action was refused: {e}")
                        });
                        wire.push(change);
                    }
                }
            }
            // Then some of what is on the wire reaches some replicas.
            for r in replicas.iter_mut() {
                let mut some: Vec<GovChange> =
                    wire.iter().filter(|_| rng.random_bool(0.5)).cloned().collect();
                some.shuffle(&mut rng);
                for change in some {
                    offer(r, change, case_seed);
                }
            }
        }
        // Finally everything reaches everyone, in a random order, offered
        // again while anything is refused for now (as catch-up does).
        for r in replicas.iter_mut() {
            let mut all = wire.clone();
            all.shuffle(&mut rng);
            while all.iter().any(|change| !r.knows(&[change.head()])) {
                for change in &all {
                    if !r.knows(&[change.head()]) {
                        offer(r, change.clone(), case_seed);
                    }
                }
            }
            assert_eq!(r.pending(), 0, "seed {case_seed}");
        }
        let expected = replicas[0].state().clone();
        let heads = replicas[0].heads();
        for r in replicas.iter_mut() {
            assert_eq!(r.state(), &expected, "seed {case_seed}: states differ");
            assert_eq!(r.heads(), heads, "seed {case_seed}: heads differ");
        }
    }
}

/// Offers a legitimate change: it may wait or be refused for now (its
/// author no reader here yet), never refused for good.
fn offer(r: &mut Governance, change: GovChange, case_seed: u64) {
    if let Err(e) = r.receive(change) {
        assert!(!e.is_senders_fault(), "seed {case_seed}: {e}");
    }
}

/// The written rules for concurrent cases (`docs/architecture.md`), each
/// delivered in both orders.
#[test]
fn test_the_rules_for_concurrent_cases() {
    let c = cast();
    let both_orders = |a: &GovChange, b: &GovChange, base: &mut Governance| -> GovState {
        let mut states = Vec::new();
        for order in [[a, b], [b, a]] {
            let mut r = replica_of(base);
            for change in order {
                assert!(matches!(r.receive(change.clone()), Ok(GovApplied::Applied { .. })));
            }
            states.push(r.state().clone());
        }
        assert_eq!(states[0], states[1]);
        states.remove(0)
    };

    // Two admins remove each other: both changes stand, both are out.
    let (mut base, _) = founded(&c);
    base.act(&c.admin, Action::SetRole { member: c.moderator.author(), role: Role::Admin }, T0 + 1)
        .unwrap();
    let (mut x, mut y) = (replica_of(&mut base), replica_of(&mut base));
    let a = x.act(&c.admin, Action::Remove { member: c.moderator.author() }, T0 + 2).unwrap();
    let b = y.act(&c.moderator, Action::Remove { member: c.admin.author() }, T0 + 2).unwrap();
    let merged = both_orders(&a, &b, &mut base);
    assert_eq!(merged.role(&c.admin.author()), None);
    assert_eq!(merged.role(&c.moderator.author()), None);

    // An admin demoted while banning: the ban was allowed at its causal past
    // and stands; the demotion stands too.
    let (mut base, _) = founded(&c);
    base.act(&c.admin, Action::SetRole { member: c.moderator.author(), role: Role::Admin }, T0 + 1)
        .unwrap();
    let (mut x, mut y) = (replica_of(&mut base), replica_of(&mut base));
    let a = x
        .act(&c.admin, Action::SetRole { member: c.moderator.author(), role: Role::Member }, T0 + 2)
        .unwrap();
    let b = y.act(&c.moderator, Action::Ban { member: c.member.author() }, T0 + 2).unwrap();
    let merged = both_orders(&a, &b, &mut base);
    assert_eq!(merged.role(&c.moderator.author()), Some(Role::Member));
    assert!(merged.is_banned(&c.member.author()));

    // A member removed while their role is changed: removal wins.
    let (mut base, _) = founded(&c);
    let (mut x, mut y) = (replica_of(&mut base), replica_of(&mut base));
    let a = x.act(&c.admin, Action::Remove { member: c.member.author() }, T0 + 2).unwrap();
    let b = y
        .act(
            &c.moderator,
            Action::SetRole { member: c.member.author(), role: Role::ReadOnly },
            T0 + 2,
        )
        .unwrap();
    assert_eq!(both_orders(&a, &b, &mut base).role(&c.member.author()), None);

    // A one-use invite redeemed by two keys at once: the smaller key joins.
    let (mut base, _) = founded(&c);
    let open = invite(&c.admin, 1, Role::Member, None);
    base.act(&c.admin, Action::Invite(open.clone()), T0 + 1).unwrap();
    let (mut x, mut y) = (replica_of(&mut base), replica_of(&mut base));
    let (k1, k2) = (key(20), key(21));
    let a = x.act(&k1, Action::Join(open.clone()), T0 + 2).unwrap();
    let b = y.act(&k2, Action::Join(open), T0 + 2).unwrap();
    let merged = both_orders(&a, &b, &mut base);
    let (small, large) = if k1.author() < k2.author() { (k1, k2) } else { (k2, k1) };
    assert_eq!(merged.role(&small.author()), Some(Role::Member));
    assert_eq!(merged.role(&large.author()), None);

    // A ban and a concurrent role change of the banned key: the ban wins.
    let (mut base, _) = founded(&c);
    let (mut x, mut y) = (replica_of(&mut base), replica_of(&mut base));
    let a = x.act(&c.admin, Action::Ban { member: c.reader.author() }, T0 + 2).unwrap();
    let b = y
        .act(
            &c.moderator,
            Action::SetRole { member: c.reader.author(), role: Role::Member },
            T0 + 2,
        )
        .unwrap();
    let merged = both_orders(&a, &b, &mut base);
    assert_eq!(merged.role(&c.reader.author()), None);
    assert!(merged.is_banned(&c.reader.author()));
}

#[test]
fn test_random_bytes_and_truncations_are_refused_without_panicking() {
    let seed = test_seed("test_random_bytes_and_truncations_are_refused_without_panicking");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = cast();
    let (mut gov, _) = founded(&c);
    let honest = gov.act(&c.moderator, Action::SetTopic("x".into()), T0 + 1).unwrap();
    for cut in 0..honest.as_bytes().len() {
        assert!(GovChange::from_bytes(&honest.as_bytes()[..cut]).is_err(), "cut at {cut}");
    }
    let mut too_big = honest.as_bytes().to_vec();
    too_big.resize(MAX_GOV_CHANGE_BYTES + 1, 0);
    assert!(matches!(
        GovChange::from_bytes(&too_big),
        Err(EnvelopeError::Decode(DecodeError::TooLarge { .. }))
    ));
    for _ in 0..2_000 {
        let mut bytes = vec![0u8; rng.random_range(0..512)];
        rng.fill_bytes(&mut bytes);
        if rng.random_bool(0.5) && bytes.len() > 5 {
            bytes[..5].copy_from_slice(&honest.as_bytes()[..5]);
        }
        assert!(GovChange::from_bytes(&bytes).is_err());
        assert!(Invite::from_bytes(&bytes).is_err());
    }
}
