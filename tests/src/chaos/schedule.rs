//! A chaos schedule: the devices, and a list of timed steps (workload
//! operations and faults), drawn from a seed or read from a schedule file.
//! The same seed and options always draw the same schedule; a schedule
//! file replays exactly the steps it lists (shrinking writes such files).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which process a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Device `n`.
    Device(usize),
    /// The relay.
    Relay,
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Device `dev` posts post number `post` (a reply to post `reply_to`,
    /// with attachments of these sizes).
    Post {
        /// The device.
        dev: usize,
        /// The post's number in the schedule (names its text).
        post: usize,
        /// The post replied to, by number.
        reply_to: Option<usize>,
        /// Attachment sizes in bytes.
        attachments: Vec<u32>,
    },
    /// The author edits its post number `post` (edit number `edit`).
    Edit {
        /// The author.
        dev: usize,
        /// The post.
        post: usize,
        /// The edit's number (names its text).
        edit: usize,
    },
    /// The author deletes its post number `post`.
    Delete {
        /// The author.
        dev: usize,
        /// The post.
        post: usize,
    },
    /// Device `dev` posts post number `post` and deletes it at once.
    PostDelete {
        /// The author.
        dev: usize,
        /// The post's number.
        post: usize,
    },
    /// Device `dev` reacts to post number `post`.
    React {
        /// The device.
        dev: usize,
        /// The post.
        post: usize,
        /// The emoji.
        emoji: String,
    },
    /// The admin (device 0) invites device `dev`, which joins with the ticket.
    Invite {
        /// The invitee.
        dev: usize,
    },
    /// The admin sets device `dev`'s role.
    SetRole {
        /// The member.
        dev: usize,
        /// `member` or `moderator`.
        role: String,
    },
    /// The admin removes device `dev`.
    Remove {
        /// The member.
        dev: usize,
    },
    /// SIGKILL, and a restart `down_ms` later.
    Kill {
        /// Whom.
        target: Target,
        /// Time down.
        down_ms: u64,
    },
    /// Device `dev` starts post number `post`, and is SIGKILLed
    /// `after_ms` later, whether or not the post was acknowledged.
    KillMidPost {
        /// The device.
        dev: usize,
        /// The post's number.
        post: usize,
        /// Delay from sending the post to the kill.
        after_ms: u64,
        /// Time down.
        down_ms: u64,
    },
    /// A partition: `side` (devices, and the relay if `relay`) cannot
    /// reach the others, for `for_ms`.
    Partition {
        /// The devices on one side.
        side: Vec<usize>,
        /// Whether the relay is on that side.
        relay: bool,
        /// How long.
        for_ms: u64,
    },
    /// Device `dev`'s link to the relay delays every chunk and drops the
    /// connection with `drop_pct` percent per chunk, for `for_ms`.
    Lossy {
        /// The device.
        dev: usize,
        /// Delay per chunk.
        delay_ms: u64,
        /// Connection drop chance per chunk, in percent.
        drop_pct: u32,
        /// How long.
        for_ms: u64,
    },
    /// Device `dev`'s clock moves by `millis` (until the quiet phase).
    Skew {
        /// The device.
        dev: usize,
        /// The offset from real time.
        millis: i64,
    },
    /// The relay store (DynamoDB Local) stops answering for `for_ms`.
    StoreOutage {
        /// How long.
        for_ms: u64,
    },
}

impl Action {
    /// Whether this step is a fault (not a workload operation).
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Action::Kill { .. }
                | Action::KillMidPost { .. }
                | Action::Partition { .. }
                | Action::Lossy { .. }
                | Action::Skew { .. }
                | Action::StoreOutage { .. }
        )
    }

    /// The fault's kind, for the tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Post { .. } => "post",
            Action::Edit { .. } => "edit",
            Action::Delete { .. } => "delete",
            Action::PostDelete { .. } => "post_delete",
            Action::React { .. } => "react",
            Action::Invite { .. } => "invite",
            Action::SetRole { .. } => "set_role",
            Action::Remove { .. } => "remove",
            Action::Kill { target: Target::Relay, .. } => "kill_relay",
            Action::Kill { .. } | Action::KillMidPost { .. } => "kill_device",
            Action::Partition { .. } => "partition",
            Action::Lossy { .. } => "lossy_link",
            Action::Skew { .. } => "clock_skew",
            Action::StoreOutage { .. } => "store_outage",
        }
    }
}

/// A timed step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Milliseconds after the workload starts.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// A whole schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it was drawn from (names the keys and texts too).
    pub seed: u64,
    /// Device nodes, 3 to 6.
    pub devices: usize,
    /// Devices that are members from the start (0..initial); the others
    /// join by invite.
    pub initial: usize,
    /// Whether the relay persists to DynamoDB Local (else sled).
    pub dynamodb: bool,
    /// The deliberate bug the devices run with, if any.
    #[serde(default)]
    pub bug: Option<String>,
    /// The steps, in time order.
    pub steps: Vec<Step>,
}

/// What a drawn schedule may contain.
#[derive(Clone, Debug)]
pub struct Options {
    /// Length of the workload phase.
    pub duration_ms: u64,
    /// Relay on DynamoDB Local, with store outages among the faults.
    pub dynamodb: bool,
    /// A deliberate bug for the devices.
    pub bug: Option<String>,
    /// Step kinds ([`Action::kind`]) never drawn, to keep a known bug out
    /// of a run that looks for others.
    pub without: Vec<String>,
}

const EMOJI: [&str; 4] = ["+1", "heart", "eyes", "tada"];

/// Draws the schedule of `seed`.
pub fn generate(seed: u64, options: &Options) -> Schedule {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let devices = rng.random_range(3..=6);
    let mut initial = if devices > 3 && rng.random_bool(0.6) { devices - 1 } else { devices };
    if options.without.iter().any(|w| w == "invite") {
        initial = devices;
    }
    let mut steps = Vec::new();
    // Posts so far: (author, number).
    let mut posts: Vec<(usize, usize)> = Vec::new();
    let mut next_post = 0;
    let mut edits = 0;
    let mut members: Vec<usize> = (0..initial).collect();
    let mut removed: Option<usize> = None;
    let mut at = 0u64;
    let end = options.duration_ms;
    while at < end {
        at += rng.random_range(20..200);
        let action = draw(&mut rng, devices, &mut members, &mut removed, &posts, options);
        let action = match action {
            Some(a) if !options.without.iter().any(|w| w == a.kind()) => a,
            _ => continue,
        };
        let action = match action {
            Action::Post { dev, reply_to, attachments, .. } => {
                posts.push((dev, next_post));
                next_post += 1;
                Action::Post { dev, post: next_post - 1, reply_to, attachments }
            }
            Action::PostDelete { dev, .. } | Action::KillMidPost { dev, .. } => {
                let post = next_post;
                next_post += 1;
                match action {
                    Action::PostDelete { .. } => Action::PostDelete { dev, post },
                    Action::KillMidPost { after_ms, down_ms, .. } => {
                        Action::KillMidPost { dev, post, after_ms, down_ms }
                    }
                    _ => unreachable!(),
                }
            }
            Action::Edit { dev, post, .. } => {
                edits += 1;
                Action::Edit { dev, post, edit: edits - 1 }
            }
            other => other,
        };
        steps.push(Step { at_ms: at, action });
    }
    Schedule { seed, devices, initial, dynamodb: options.dynamodb, bug: options.bug.clone(), steps }
}

fn draw(
    rng: &mut ChaCha8Rng,
    devices: usize,
    members: &mut Vec<usize>,
    removed: &mut Option<usize>,
    posts: &[(usize, usize)],
    options: &Options,
) -> Option<Action> {
    let actor = members[rng.random_range(0..members.len())];
    let own: Vec<usize> = posts.iter().filter(|(d, _)| *d == actor).map(|(_, p)| *p).collect();
    let roll = rng.random_range(0..100);
    Some(match roll {
        0..=29 => {
            let reply_to = (!posts.is_empty() && rng.random_bool(0.2))
                .then(|| posts[rng.random_range(0..posts.len())].1);
            let attachments =
                if rng.random_bool(0.1) { vec![rng.random_range(1..20_000)] } else { Vec::new() };
            Action::Post { dev: actor, post: 0, reply_to, attachments }
        }
        30..=39 if !own.is_empty() => {
            Action::Edit { dev: actor, post: own[rng.random_range(0..own.len())], edit: 0 }
        }
        40..=46 if !own.is_empty() => {
            Action::Delete { dev: actor, post: own[rng.random_range(0..own.len())] }
        }
        47..=51 => Action::PostDelete { dev: actor, post: 0 },
        52..=61 if !posts.is_empty() => Action::React {
            dev: actor,
            post: posts[rng.random_range(0..posts.len())].1,
            emoji: EMOJI[rng.random_range(0..EMOJI.len())].to_owned(),
        },
        62..=64 if !options.without.iter().any(|w| w == "invite") => {
            let outside: Vec<usize> =
                (0..devices).filter(|d| !members.contains(d) && Some(*d) != *removed).collect();
            let dev = *outside.first()?;
            members.push(dev);
            Action::Invite { dev }
        }
        65..=67 if members.len() > 1 => {
            let dev = members[rng.random_range(1..members.len())];
            let role = if rng.random_bool(0.5) { "moderator" } else { "member" };
            Action::SetRole { dev, role: role.to_owned() }
        }
        68 if removed.is_none()
            && members.len() > 3
            && !options.without.iter().any(|w| w == "remove") =>
        {
            let dev = members[rng.random_range(1..members.len())];
            members.retain(|m| *m != dev);
            *removed = Some(dev);
            Action::Remove { dev }
        }
        70..=75 => {
            let target = if rng.random_bool(0.25) {
                Target::Relay
            } else {
                Target::Device(rng.random_range(0..devices))
            };
            Action::Kill { target, down_ms: rng.random_range(100..2_000) }
        }
        76..=79 => Action::KillMidPost {
            dev: actor,
            post: 0,
            after_ms: rng.random_range(0..30),
            down_ms: rng.random_range(100..1_500),
        },
        80..=84 => {
            let mut side: Vec<usize> = (0..devices).filter(|_| rng.random_bool(0.5)).collect();
            if side.is_empty() {
                side.push(rng.random_range(0..devices));
            }
            Action::Partition {
                side,
                relay: rng.random_bool(0.3),
                for_ms: rng.random_range(300..3_000),
            }
        }
        85..=88 => Action::Lossy {
            dev: rng.random_range(0..devices),
            delay_ms: rng.random_range(5..200),
            drop_pct: rng.random_range(0..15),
            for_ms: rng.random_range(500..3_000),
        },
        89..=91 => {
            let minute = 60_000i64;
            let magnitude = match rng.random_range(0..3) {
                0 => rng.random_range(1..60) * minute,
                1 => rng.random_range(1..24) * 60 * minute,
                _ => rng.random_range(1..4) * 24 * 60 * minute,
            };
            let millis = if rng.random_bool(0.5) { magnitude } else { -magnitude };
            Action::Skew { dev: rng.random_range(0..devices), millis }
        }
        92..=93 if options.dynamodb => Action::StoreOutage { for_ms: rng.random_range(500..3_000) },
        _ => return None,
    })
}
