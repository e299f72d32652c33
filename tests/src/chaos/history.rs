//! What a run of a schedule recorded: the outcome of every operation the
//! driver sent (the acknowledged-operation log), the faults injected, and
//! each device's final reads through the API. The checker judges this.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::Item;

/// How an operation ended, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Replied `ok`: the node promised it is durable.
    Acked,
    /// Replied with an error: it did not happen.
    Failed,
    /// No reply (killed, timed out): it may or may not have happened.
    Unknown,
}

/// One post, its edits and its delete.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PostRecord {
    /// The author device.
    pub author: usize,
    /// Its text.
    pub text: String,
    /// How the post ended (`None`: never sent).
    pub outcome: Option<Outcome>,
    /// Its id, once acknowledged.
    pub id: Option<String>,
    /// The members the author's governance listed just before it posted.
    pub members_before: Vec<String>,
    /// The id of the message it replies to.
    pub reply_to: Option<String>,
    /// Attachment sizes.
    pub attachments: Vec<u32>,
    /// Edits: text and outcome, in order.
    pub edits: Vec<(String, Outcome)>,
    /// The delete's outcome, if one was sent.
    pub delete: Option<Outcome>,
    /// Posted and deleted in one step.
    pub post_delete: bool,
}

/// A reaction sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReactRecord {
    /// Who reacted.
    pub dev: usize,
    /// The post, by number.
    pub post: usize,
    /// The emoji.
    pub emoji: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// A device's final reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FinalRead {
    /// Its timeline.
    pub items: Vec<Item>,
    /// Its governance's members.
    pub members: Vec<String>,
    /// The members whose device keys its governance holds.
    #[serde(default)]
    pub keyed: Vec<String>,
    /// For each probed id (deleted messages), whether `message(id)` found it.
    pub probe: Vec<(String, bool)>,
}

/// Everything a run recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// Device count.
    pub devices: usize,
    /// Each device's author id.
    pub authors: Vec<String>,
    /// The relay's author id.
    pub relay_author: String,
    /// Posts by number.
    pub posts: BTreeMap<usize, PostRecord>,
    /// Reactions.
    pub reactions: Vec<ReactRecord>,
    /// Invites: (device, outcome).
    pub invites: Vec<(usize, Outcome)>,
    /// The removal: (device, outcome).
    pub removal: Option<(usize, Outcome)>,
    /// Posts numbered below this were issued before the removal was.
    #[serde(default)]
    pub posts_before_removal: usize,
    /// Operations by kind and outcome.
    pub ops: BTreeMap<String, [u64; 3]>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Each device's final reads (`None`: it could not be read).
    pub finals: Vec<Option<FinalRead>>,
    /// Restarts that failed (a store that would not reopen).
    pub reopen_failures: u64,
    /// Processes that did not start at all during setup.
    pub setup_failures: u64,
    /// Panics found in the processes' logs.
    pub panics: u64,
    /// Time from the quiet phase's start to convergence, if reached.
    pub converged_after: Option<Duration>,
}

impl History {
    /// Counts one operation's outcome.
    pub fn count(&mut self, kind: &str, outcome: Outcome) {
        let slot = self.ops.entry(kind.to_owned()).or_default();
        slot[match outcome {
            Outcome::Acked => 0,
            Outcome::Failed => 1,
            Outcome::Unknown => 2,
        }] += 1;
    }

    /// Counts one fault.
    pub fn fault(&mut self, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
    }

    /// Operations sent, in all.
    pub fn op_total(&self) -> u64 {
        self.ops.values().map(|c| c.iter().sum::<u64>()).sum()
    }
}
