//! The workload and fault steps of a schedule, as the runner plays them:
//! each operation goes to its device and its outcome (acknowledged,
//! refused, no reply) into the history; each fault is injected and its
//! healing scheduled.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::history::{Outcome, PostRecord, ReactRecord};
use super::protocol::Cmd;
use super::proxy::LinkMode;
use super::run::{call, outcome, Later, Runner, NET_TIMEOUT, OP_TIMEOUT};
use super::schedule::{Action, Target};

impl Runner<'_> {
    fn text(&self, post: usize) -> String {
        format!("s{}p{post}", self.schedule.seed)
    }

    fn post_id(&self, post: usize) -> Option<String> {
        self.history.posts.get(&post).and_then(|p| p.id.clone())
    }

    pub(super) async fn step(&mut self, action: &Action) -> Result<()> {
        if action.is_fault() {
            self.history.fault(action.kind());
        }
        match action {
            Action::Post { dev, post, reply_to, attachments } => {
                let text = self.text(*post);
                let reply_id = reply_to.and_then(|r| self.post_id(r));
                let cmd = Cmd::Post {
                    text: text.clone(),
                    reply_to: reply_id.clone(),
                    attachments: attachments.clone(),
                };
                let r = call(self.devices[*dev].as_ref(), cmd, OP_TIMEOUT).await;
                self.record_post(*dev, *post, text, &r, reply_id, attachments.clone(), false);
            }
            Action::PostDelete { dev, post } => {
                let text = self.text(*post);
                let r = call(
                    self.devices[*dev].as_ref(),
                    Cmd::PostDelete { text: text.clone() },
                    OP_TIMEOUT,
                )
                .await;
                self.record_post(*dev, *post, text, &r, None, Vec::new(), true);
            }
            Action::KillMidPost { dev, post, after_ms, down_ms } => {
                let text = self.text(*post);
                let cmd = Cmd::Post { text: text.clone(), reply_to: None, attachments: Vec::new() };
                let r = match self.devices[*dev].as_ref() {
                    None => Err(Outcome::Failed),
                    Some(p) => match p.send(cmd).await {
                        Err(_) => Err(Outcome::Unknown),
                        Ok(mut rx) => {
                            tokio::time::sleep(Duration::from_millis(*after_ms)).await;
                            match rx.try_recv() {
                                Ok(reply) if reply.ok => Ok(reply.data),
                                Ok(_) => Err(Outcome::Failed),
                                Err(_) => Err(Outcome::Unknown),
                            }
                        }
                    },
                };
                self.record_post(*dev, *post, text, &r, None, Vec::new(), false);
                self.kill(Target::Device(*dev), *down_ms).await;
            }
            Action::Edit { dev, post, edit } => {
                let Some(id) = self.post_id(*post) else { return Ok(()) };
                let text = format!("{}e{edit}", self.text(*post));
                let r = call(
                    self.devices[*dev].as_ref(),
                    Cmd::Edit { id, text: text.clone() },
                    OP_TIMEOUT,
                )
                .await;
                self.history.count("edit", outcome(&r));
                if let Some(p) = self.history.posts.get_mut(post) {
                    p.edits.push((text, outcome(&r)));
                }
            }
            Action::Delete { dev, post } => {
                let Some(id) = self.post_id(*post) else { return Ok(()) };
                if self.history.posts[post].delete == Some(Outcome::Acked) {
                    return Ok(());
                }
                let r = call(self.devices[*dev].as_ref(), Cmd::Delete { id }, OP_TIMEOUT).await;
                self.history.count("delete", outcome(&r));
                if let Some(p) = self.history.posts.get_mut(post) {
                    if p.delete != Some(Outcome::Unknown) || outcome(&r) == Outcome::Acked {
                        p.delete = Some(outcome(&r));
                    }
                }
            }
            Action::React { dev, post, emoji } => {
                let Some(id) = self.post_id(*post) else { return Ok(()) };
                let r = call(
                    self.devices[*dev].as_ref(),
                    Cmd::React { id, emoji: emoji.clone() },
                    OP_TIMEOUT,
                )
                .await;
                self.history.count("react", outcome(&r));
                self.history.reactions.push(ReactRecord {
                    dev: *dev,
                    post: *post,
                    emoji: emoji.clone(),
                    outcome: outcome(&r),
                });
            }
            Action::Invite { dev } => {
                let author = self.history.authors[*dev].clone();
                let r = call(self.devices[0].as_ref(), Cmd::Invite { author }, OP_TIMEOUT).await;
                let mut o = outcome(&r);
                if let Ok(v) = &r {
                    let ticket = v["ticket"].as_str().unwrap_or_default().to_owned();
                    self.invite_tickets[*dev] = Some(ticket.clone());
                    let joined =
                        call(self.devices[*dev].as_ref(), Cmd::Join { ticket }, OP_TIMEOUT).await;
                    if joined.is_err() && self.devices[*dev].is_some() {
                        o = outcome(&joined);
                    }
                    self.connect(*dev).await;
                }
                self.history.count("invite", o);
                self.history.invites.push((*dev, o));
            }
            Action::SetRole { dev, role } => {
                let author = self.history.authors[*dev].clone();
                let r = call(
                    self.devices[0].as_ref(),
                    Cmd::SetRole { author, role: role.clone() },
                    OP_TIMEOUT,
                )
                .await;
                self.history.count("set_role", outcome(&r));
            }
            Action::Remove { dev } => {
                let author = self.history.authors[*dev].clone();
                self.history.posts_before_removal =
                    self.history.posts.keys().next_back().map_or(0, |n| n + 1);
                let r = call(self.devices[0].as_ref(), Cmd::Remove { author }, OP_TIMEOUT).await;
                self.history.count("remove", outcome(&r));
                self.history.removal = Some((*dev, outcome(&r)));
            }
            Action::Kill { target, down_ms } => self.kill(*target, *down_ms).await,
            Action::Partition { side, relay, for_ms } => {
                if let Some((_, old, r)) = self.partition.take() {
                    self.apply_partition(&old, r, false).await;
                }
                let id = self.history.faults.values().sum::<u64>();
                self.apply_partition(side, *relay, true).await;
                self.partition = Some((id, side.clone(), *relay));
                self.later.push((Instant::now() + Duration::from_millis(*for_ms), Later::Heal(id)));
            }
            Action::Lossy { dev, delay_ms, drop_pct, for_ms } => {
                self.proxies[*dev].set_mode(LinkMode { delay_ms: *delay_ms, drop_pct: *drop_pct });
                self.later.push((
                    Instant::now() + Duration::from_millis(*for_ms),
                    Later::LinkClean(*dev),
                ));
            }
            Action::Skew { dev, millis } => {
                self.skews[*dev] = *millis;
                let _ =
                    call(self.devices[*dev].as_ref(), Cmd::Skew { millis: *millis }, NET_TIMEOUT)
                        .await;
            }
            Action::StoreOutage { for_ms } => {
                self.store_pause(true);
                self.later
                    .push((Instant::now() + Duration::from_millis(*for_ms), Later::StoreResume));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record_post(
        &mut self,
        dev: usize,
        post: usize,
        text: String,
        r: &Result<serde_json::Value, Outcome>,
        reply_to: Option<String>,
        attachments: Vec<u32>,
        post_delete: bool,
    ) {
        let o = outcome(r);
        self.history.count(if post_delete { "post_delete" } else { "post" }, o);
        let (id, members_before) = match r {
            Ok(v) => (
                v["id"].as_str().map(str::to_owned),
                v["members"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            ),
            Err(_) => (None, Vec::new()),
        };
        self.history.posts.insert(
            post,
            PostRecord {
                author: dev,
                text,
                outcome: Some(o),
                id,
                members_before,
                reply_to,
                attachments,
                edits: Vec::new(),
                delete: None,
                post_delete,
            },
        );
    }
}
