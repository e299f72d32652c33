//! The checker: Jepsen's set checker, adapted to a chat room. From the
//! acknowledged-operation log and every device's final reads it counts each
//! way a promise was broken. Any non-zero count fails the schedule.
//!
//! Who is held to what:
//! - the *members* at the end are the devices device 0's (the admin's)
//!   governance lists; every member must show every acknowledged,
//!   undeleted message with its last acknowledged text (or a later text
//!   whose edit had no reply), its reply, attachments and acknowledged
//!   reactions, readable (the room shares history, so a member holds keys
//!   for all of it), and all members must render the room identically;
//! - an operation without a reply (the node was killed, or it timed out)
//!   may or may not have happened; whichever, it must look the same
//!   everywhere;
//! - the removed device must not read any message whose author's
//!   governance already lacked it when the author posted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::history::{FinalRead, History, Outcome, PostRecord};
use super::protocol::{attachment_bytes, Item};

/// Each checker count of one schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Acknowledged messages, reactions or memberships missing on a member.
    pub lost: u64,
    /// Deleted messages shown, or found by id, on a member.
    pub resurrected: u64,
    /// Edited-away texts still shown.
    pub stale_bodies: u64,
    /// A message twice in one render, or one post under two ids.
    pub duplicates: u64,
    /// Messages no operation made (unknown text, author or id).
    pub unexpected: u64,
    /// Members whose render (or member list) differs from the first's.
    pub divergent: u64,
    /// Messages the removed device reads that were sent after its removal
    /// was seen.
    pub removed_received: u64,
    /// Messages a member shows without a readable body at the end.
    pub unreadable_bodies: u64,
    /// Wrong reply, or attachments missing or with other bytes.
    pub wrong_content: u64,
    /// Panics in any process's log.
    pub panics: u64,
    /// Restarts that failed, devices that could not be read at the end,
    /// processes that did not start.
    pub reopen_failures: u64,
    /// 1 if the quiet phase ended without convergence.
    pub not_converged: u64,
}

impl Counts {
    /// The counts as (name, value) pairs, in table order.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("lost", self.lost),
            ("resurrected", self.resurrected),
            ("stale_bodies", self.stale_bodies),
            ("duplicates", self.duplicates),
            ("unexpected", self.unexpected),
            ("divergent", self.divergent),
            ("removed_received", self.removed_received),
            ("unreadable_bodies", self.unreadable_bodies),
            ("wrong_content", self.wrong_content),
            ("panics", self.panics),
            ("reopen_failures", self.reopen_failures),
            ("not_converged", self.not_converged),
        ]
    }

    /// Whether every count is zero.
    pub fn clean(&self) -> bool {
        self.named().iter().all(|(_, n)| *n == 0)
    }

    /// Whether everything but convergence is zero (the quiet phase polls
    /// for this).
    pub fn settled(&self) -> bool {
        self.named().iter().filter(|(k, _)| *k != "not_converged").all(|(_, n)| *n == 0)
    }

    /// Adds another schedule's counts.
    pub fn add(&mut self, other: &Counts) {
        self.lost += other.lost;
        self.resurrected += other.resurrected;
        self.stale_bodies += other.stale_bodies;
        self.duplicates += other.duplicates;
        self.unexpected += other.unexpected;
        self.divergent += other.divergent;
        self.removed_received += other.removed_received;
        self.unreadable_bodies += other.unreadable_bodies;
        self.wrong_content += other.wrong_content;
        self.panics += other.panics;
        self.reopen_failures += other.reopen_failures;
        self.not_converged += other.not_converged;
    }

    /// The non-zero counts, for a failure line.
    pub fn failures(&self) -> String {
        let bad: Vec<String> =
            self.named().iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        bad.join(" ")
    }
}

fn is_deleted(post: &PostRecord) -> Option<Outcome> {
    if post.post_delete {
        return post.outcome;
    }
    post.delete
}

/// Judges a run.
pub fn check(history: &History) -> Counts {
    let mut c = Counts {
        panics: history.panics,
        reopen_failures: history.reopen_failures + history.setup_failures,
        not_converged: u64::from(history.converged_after.is_none()),
        ..Counts::default()
    };
    // Text -> (post number, edit index: 0 the post, n the n-th edit).
    let mut texts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (n, post) in &history.posts {
        texts.insert(&post.text, (*n, 0));
        for (i, (text, _)) in post.edits.iter().enumerate() {
            texts.insert(text, (*n, i + 1));
        }
    }
    let author_of = |dev: usize| history.authors.get(dev).cloned().unwrap_or_default();
    let Some(Some(admin)) = history.finals.first() else {
        c.reopen_failures += 1;
        return c;
    };
    let members: BTreeSet<usize> =
        (0..history.devices).filter(|d| admin.members.contains(&author_of(*d))).collect();
    for (dev, outcome) in &history.invites {
        let removed = history.removal.is_some_and(|(r, _)| r == *dev);
        if *outcome == Outcome::Acked && !removed && !members.contains(dev) {
            c.lost += 1;
        }
    }
    if let Some((dev, Outcome::Acked)) = history.removal {
        if members.contains(&dev) {
            c.lost += 1;
        }
    }
    let mut first: Option<&FinalRead> = None;
    for dev in &members {
        let Some(Some(read)) = history.finals.get(*dev) else {
            c.reopen_failures += 1;
            continue;
        };
        check_member(history, &texts, read, &mut c);
        match first {
            None => first = Some(read),
            Some(f) if f.items != read.items || f.members != read.members => c.divergent += 1,
            Some(_) => {}
        }
    }
    if let Some((dev, Outcome::Acked)) = history.removal {
        if let Some(Some(read)) = history.finals.get(dev) {
            let me = author_of(dev);
            for item in &read.items {
                let Some(body) = &item.body else { continue };
                let Some((n, _)) = texts.get(body.as_str()) else { continue };
                let post = &history.posts[n];
                // Only an acknowledged post says what its author's
                // governance held when it was made; one issued before the
                // removal that lacks the device was made before its invite
                // reached the author, and is meant for it.
                let after_removal = post.outcome == Some(Outcome::Acked)
                    && *n >= history.posts_before_removal
                    && !post.members_before.is_empty()
                    && !post.members_before.contains(&me);
                if post.author != dev && after_removal {
                    c.removed_received += 1;
                }
            }
        }
    }
    c
}

/// Checks one member's render against the log.
fn check_member(
    history: &History,
    texts: &BTreeMap<&str, (usize, usize)>,
    read: &FinalRead,
    c: &mut Counts,
) {
    let mut seen_ids = BTreeSet::new();
    let mut seen_posts: BTreeMap<usize, &Item> = BTreeMap::new();
    for item in &read.items {
        if !seen_ids.insert(item.id.as_str()) {
            c.duplicates += 1;
            continue;
        }
        let Some(body) = &item.body else {
            // Which post it is cannot be told without its body; it counts
            // against the post it should have been, below, as missing.
            c.unreadable_bodies += 1;
            continue;
        };
        let Some(&(n, edit)) = texts.get(body.as_str()) else {
            c.unexpected += 1;
            continue;
        };
        let post = &history.posts[&n];
        if history.authors.get(post.author) != Some(&item.author)
            || post.id.as_ref().is_some_and(|id| *id != item.id)
            || post.outcome.is_none()
        {
            c.unexpected += 1;
            continue;
        }
        if seen_posts.insert(n, item).is_some() {
            c.duplicates += 1;
            continue;
        }
        if matches!(is_deleted(post), Some(Outcome::Acked)) {
            c.resurrected += 1;
            continue;
        }
        // The last acknowledged text, or any later one whose edit had no reply.
        let last_acked =
            post.edits.iter().rposition(|(_, o)| *o == Outcome::Acked).map(|i| i + 1).unwrap_or(0);
        let allowed =
            edit == last_acked || (edit > last_acked && post.edits[edit - 1].1 == Outcome::Unknown);
        if !allowed {
            if edit < last_acked {
                c.stale_bodies += 1;
            } else {
                c.unexpected += 1;
            }
        }
        let want_reply = post.reply_to.as_ref();
        let attachments_ok = item.attachments.len() == post.attachments.len()
            && post.attachments.iter().enumerate().all(|(i, len)| {
                let want =
                    blake3::hash(&attachment_bytes(&post.text, i, *len)).to_hex().to_string();
                item.attachments[i].as_deref() == Some(want.as_str())
            });
        if item.reply_to.as_ref() != want_reply || !attachments_ok {
            c.wrong_content += 1;
        }
    }
    for (n, post) in &history.posts {
        // A refused delete deleted nothing; one without a reply may have.
        let deleted = matches!(is_deleted(post), Some(Outcome::Acked | Outcome::Unknown));
        let must = post.outcome == Some(Outcome::Acked) && !post.post_delete && !deleted;
        if must && !seen_posts.contains_key(n) {
            c.lost += 1;
        }
    }
    for r in &history.reactions {
        if r.outcome != Outcome::Acked {
            continue;
        }
        let Some(item) = seen_posts.get(&r.post) else { continue };
        let who = &history.authors[r.dev];
        let present =
            item.reactions.iter().any(|(e, authors)| *e == r.emoji && authors.contains(who));
        if !present {
            c.lost += 1;
        }
    }
    for (_, found) in &read.probe {
        if *found {
            c.resurrected += 1;
        }
    }
}
