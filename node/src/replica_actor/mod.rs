//! The replica actor: one device's [`Replica`] on its own OS thread, driven
//! through a cloneable [`ReplicaHandle`] over a bounded channel.
//!
//! Every replica operation that changes something ends in a sled flush,
//! which takes milliseconds. An async task that called it directly would
//! stall its executor thread and every task on it, so the replica lives on a
//! dedicated thread and async callers send it requests and await the reply
//! on a oneshot channel. Requests run one at a time in arrival order, which
//! is also what the replica's `&mut self` API requires.
//!
//! The node speaks to the replica only through the typed [`Request`]s of
//! `request.rs`, each answered by one core method, so the contract between
//! the two is that one enum. Local changes that queue up behind one another
//! are committed together (group commit: one flush for the burst, each
//! change still acknowledged only once it is durable). [`ReplicaHandle::call`]
//! runs any closure on the replica, for tools and tests that need the whole
//! core API; the node itself never uses it. When its queue is empty the
//! thread shreds what was erased since it last did (`Replica::shred`)
//! before it waits for more.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use concord_core::{Announcement, Op, Replica, Sent, Store};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::error::{NodeError, Result};

mod request;

pub(crate) use request::{OwnedFlight, ReaderAsk, Reply, Request};

/// Requests that may wait for the replica thread. A full queue makes the
/// node's handles wait (backpressure) and the swarm actor turn network work
/// away, instead of letting a burst of gossip grow memory without bound; 64
/// covers a burst of one group commit per peer.
pub const REPLICA_QUEUE: usize = 64;

/// Announcements (room keys, key requests, published device keys) waiting
/// for the swarm actor to gossip them. Each is already stored, so one that
/// finds the queue full is not lost: catch-up carries it.
pub const ANNOUNCE_QUEUE: usize = 256;

/// Local changes committed in one batch (one flush) at most: a burst of
/// sends from an app queues behind the flush in progress, and the next flush
/// takes them all, up to this many.
const GROUP_COMMIT_MAX: usize = 256;

type Job<S> = Box<dyn FnOnce(&mut Replica<S>) + Send>;

enum Message<S: Store> {
    /// Boxed: a request can carry a sync session, which is large.
    Request(Box<Request>),
    Run(Job<S>),
    Stop(oneshot::Sender<()>),
}

/// A cloneable handle to a replica running on its own thread.
pub struct ReplicaHandle<S: Store> {
    jobs: mpsc::Sender<Message<S>>,
}

impl<S: Store> Clone for ReplicaHandle<S> {
    fn clone(&self) -> Self {
        Self { jobs: self.jobs.clone() }
    }
}

impl<S: Store> std::fmt::Debug for ReplicaHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaHandle").field("closed", &self.jobs.is_closed()).finish()
    }
}

/// The thread a replica runs on; [`ReplicaThread::join`] waits for it.
#[derive(Debug)]
pub struct ReplicaThread {
    thread: JoinHandle<()>,
}

impl ReplicaThread {
    /// Blocks until the replica thread has ended (after
    /// [`ReplicaHandle::shutdown`] or once every handle is dropped).
    pub fn join(self) {
        // Requests catch their own panics, so the thread itself does not panic.
        let _ = self.thread.join();
    }
}

impl<S: Store + 'static> ReplicaHandle<S> {
    /// Moves `replica` onto a new thread named `concord-replica`. What the
    /// replica announces in answer to peers ([`Replica::take_announcements`])
    /// arrives on the receiver, for gossip.
    pub fn spawn(replica: Replica<S>) -> std::io::Result<(Self, ReplicaThread, Announcements)> {
        let (jobs, inbox) = mpsc::channel(REPLICA_QUEUE);
        let (announce, announcements) = mpsc::channel(ANNOUNCE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("concord-replica".into())
            .spawn(move || run(replica, inbox, announce))?;
        Ok((Self { jobs }, ReplicaThread { thread }, announcements))
    }

    /// Sends a request and waits for its answer. Waits while the queue is
    /// full.
    pub(crate) async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Message::Request(Box::new(make(reply))))
            .await
            .map_err(|_| NodeError::Closed)?;
        // A dropped reply means the thread ended before answering.
        answer.await.map_err(|_| NodeError::Closed)?
    }

    /// Sends a request if the queue has room, without waiting: the swarm
    /// actor must never block on the replica. [`NodeError::Busy`] when the
    /// queue is full.
    pub(crate) fn try_ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Message::Request(Box::new(make(reply)))) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(NodeError::Busy),
            Err(TrySendError::Closed(_)) => Err(NodeError::Closed),
        }
    }

    /// Runs `job` on the replica thread and returns its result. Waits while
    /// the queue is full. For tools and tests that need the whole core API;
    /// the node uses typed requests only.
    pub async fn call<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Replica<S>) -> T + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job<S> = Box::new(move |replica| {
            let out = catch_unwind(AssertUnwindSafe(|| job(replica))).map_err(panic_message);
            // The caller may have stopped waiting; the job still ran.
            let _ = reply.send(out);
        });
        self.jobs.send(Message::Run(job)).await.map_err(|_| NodeError::Closed)?;
        // A dropped reply means the thread ended before running the job.
        answer.await.map_err(|_| NodeError::Closed)?.map_err(NodeError::Panicked)
    }

    /// Like [`ReplicaHandle::call`] for jobs returning a core result.
    pub async fn try_call<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Replica<S>) -> concord_core::Result<T> + Send + 'static,
    {
        Ok(self.call(job).await??)
    }

    /// Runs the requests already queued, then closes the replica (its store
    /// is dropped on the replica thread) and ends the thread. Later calls on
    /// any handle fail with [`NodeError::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let (done, closed) = oneshot::channel();
        self.jobs.send(Message::Stop(done)).await.map_err(|_| NodeError::Closed)?;
        closed.await.map_err(|_| NodeError::Closed)
    }
}

/// The receiving end of a replica's announcements.
pub type Announcements = mpsc::Receiver<Announcement>;

fn run<S: Store>(
    mut replica: Replica<S>,
    mut inbox: mpsc::Receiver<Message<S>>,
    announce: mpsc::Sender<Announcement>,
) {
    let mut next = None;
    loop {
        for announcement in replica.take_announcements() {
            // Full or closed: it is stored, and catch-up carries it.
            let _ = announce.try_send(announcement);
        }
        if next.is_none() && inbox.is_empty() {
            shred_when_idle(&mut replica);
        }
        let Some(message) = next.take().or_else(|| inbox.blocking_recv()) else { return };
        match message {
            Message::Request(request) => match into_commit(request) {
                Err(request) => request.answer(&mut replica),
                // Group commit: every change already queued behind this one
                // goes into the same batch and the same flush.
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < GROUP_COMMIT_MAX {
                        match inbox.try_recv() {
                            Ok(Message::Request(request)) => match into_commit(request) {
                                Ok(change) => batch.push(change),
                                Err(request) => {
                                    next = Some(Message::Request(request));
                                    break;
                                }
                            },
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    commit(&mut replica, batch);
                }
            },
            Message::Run(job) => job(&mut replica),
            Message::Stop(done) => {
                inbox.close();
                drop(replica);
                let _ = done.send(());
                return;
            }
        }
    }
}

/// The change a commit request carries, or the request if it is another.
fn into_commit(request: Box<Request>) -> Result<(Op, Reply<Sent>), Box<Request>> {
    match *request {
        Request::Commit { op, reply } => Ok((op, reply)),
        other => Err(Box::new(other)),
    }
}

/// Commits a batch of local changes under one flush and answers each.
fn commit<S: Store>(replica: &mut Replica<S>, batch: Vec<(Op, Reply<Sent>)>) {
    let (ops, replies): (Vec<Op>, Vec<Reply<Sent>>) = batch.into_iter().unzip();
    let outcome = catch_unwind(AssertUnwindSafe(|| replica.commit(ops)));
    match outcome {
        Ok(Ok(results)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result.map_err(NodeError::from));
            }
        }
        // Nothing of the batch was stored.
        Ok(Err(e)) => {
            for reply in replies {
                let _ = reply.send(Err(NodeError::from(e.clone())));
            }
        }
        Err(panic) => {
            let why = panic_message(panic);
            for reply in replies {
                let _ = reply.send(Err(NodeError::Panicked(why.clone())));
            }
        }
    }
}

/// Crypto-shredding (`Replica::shred`) runs when nothing waits for the
/// replica: after a burst of work that erased content, before the thread
/// sleeps. Checking costs one read of one record.
fn shred_when_idle<S: Store>(replica: &mut Replica<S>) {
    let shredded = catch_unwind(AssertUnwindSafe(|| match replica.shred_pending() {
        Ok(true) => replica.shred().map(|_| ()),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    }));
    match shredded {
        Ok(Ok(())) => {}
        // Retried the next time the thread is idle.
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot shred erased content yet"),
        Err(p) => tracing::warn!(panic = %panic_message(p), "shredding panicked"),
    }
}

/// The message a panic carried, if it was text.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Answers `reply` with what `answer` returns, or with
/// [`NodeError::Panicked`] if it panics.
fn respond<T>(reply: Reply<T>, answer: impl FnOnce() -> Result<T>) {
    let out = catch_unwind(AssertUnwindSafe(answer))
        .unwrap_or_else(|p| Err(NodeError::Panicked(panic_message(p))));
    // The caller may have stopped waiting; the request still ran.
    let _ = reply.send(out);
}
