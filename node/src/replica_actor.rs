//! The replica actor: one device's [`Replica`] on its own OS thread, driven
//! through a cloneable [`ReplicaHandle`] over a bounded channel.
//!
//! Every replica operation that changes something ends in a sled flush,
//! which takes milliseconds. An async task that called it directly would
//! stall its executor thread and every task on it, so the replica lives on a
//! dedicated thread and async callers send it jobs and await the reply on a
//! oneshot channel. Jobs run one at a time in arrival order, which is also
//! what the replica's `&mut self` API requires.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use concord_core::{Replica, Store};
use tokio::sync::{mpsc, oneshot};

use crate::error::{NodeError, Result};

/// Jobs that may wait for the replica thread. A full queue makes callers
/// wait (backpressure) instead of letting a burst of gossip grow memory
/// without bound; 64 covers a burst of one group commit per peer.
pub const REPLICA_QUEUE: usize = 64;

type Job<S> = Box<dyn FnOnce(&mut Replica<S>) + Send>;

enum Message<S: Store> {
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
        // Jobs catch their own panics, so the thread itself does not panic.
        let _ = self.thread.join();
    }
}

impl<S: Store + 'static> ReplicaHandle<S> {
    /// Moves `replica` onto a new thread named `concord-replica`.
    pub fn spawn(replica: Replica<S>) -> std::io::Result<(Self, ReplicaThread)> {
        let (jobs, inbox) = mpsc::channel(REPLICA_QUEUE);
        let thread = std::thread::Builder::new()
            .name("concord-replica".into())
            .spawn(move || run(replica, inbox))?;
        Ok((Self { jobs }, ReplicaThread { thread }))
    }

    /// Runs `job` on the replica thread and returns its result. Waits while
    /// the queue is full.
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

    /// Runs the jobs already queued, then closes the replica (its store is
    /// dropped on the replica thread) and ends the thread. Later calls on
    /// any handle fail with [`NodeError::Closed`].
    pub async fn shutdown(&self) -> Result<()> {
        let (done, closed) = oneshot::channel();
        self.jobs.send(Message::Stop(done)).await.map_err(|_| NodeError::Closed)?;
        closed.await.map_err(|_| NodeError::Closed)
    }
}

fn run<S: Store>(mut replica: Replica<S>, mut inbox: mpsc::Receiver<Message<S>>) {
    while let Some(message) = inbox.blocking_recv() {
        match message {
            // A job reports its own panic to its caller; the replica's
            // operations are transactions, so it stays usable.
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

/// The message a panic carried, if it was text.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
