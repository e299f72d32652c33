//! The one seeded workload generator every benchmark draws from: message
//! times, bodies and raw ids, plus the key layouts the raw baselines store
//! them under.

use concord_core::BUCKET_SPAN_MILLIS;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One day of clock time: Concord's bucket span.
pub const DAY_MILLIS: u64 = BUCKET_SPAN_MILLIS;

/// Where every workload's clock starts: a bucket boundary (2023-11-15 UTC),
/// so "within one day" means within one bucket.
pub const START_MILLIS: u64 = 19_676 * DAY_MILLIS;

/// A busy room's rate: 4,000 messages per day of clock time, so a room of
/// 20,000 messages spans five buckets.
pub const MESSAGES_PER_DAY: u64 = 4_000;

/// Body lengths in bytes (ASCII text, so bytes and characters agree).
const BODY_BYTES: std::ops::RangeInclusive<usize> = 20..=200;

/// Random streams of one seed, so adding a draw in one place does not shift
/// the others.
#[derive(Clone, Copy)]
pub enum Stream {
    /// The messages.
    Messages = 0,
    /// Choices a benchmark makes over the messages (page cursors).
    Choices = 1,
    /// Device keys of the authors beyond the workload's own (`relay-ingest`).
    Authors = 2,
}

/// A seeded random generator for one stream.
pub fn rng(seed: u64, stream: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}

/// Clock time that `count` messages take at [`MESSAGES_PER_DAY`].
pub fn busy_span(count: usize) -> u64 {
    (count as u64 * DAY_MILLIS).div_ceil(MESSAGES_PER_DAY)
}

/// One message of the workload.
pub struct Msg {
    /// Its time, in milliseconds since the Unix epoch; strictly increasing
    /// along the workload, so time order is workload order.
    pub at: u64,
    /// A raw 16-byte id (the baselines' message id).
    pub id: [u8; 16],
    /// The text.
    pub body: String,
}

/// Raw key layouts of the baselines.
#[derive(Clone, Copy)]
pub enum KeyLayout {
    /// `id (16) ‖ author (32) ‖ time (8)`: a store of messages by id.
    IdFirst,
    /// `time (8) ‖ author (32) ‖ id (16)`: a timeline ordered by time.
    TimeFirst,
}

/// Bytes of per-message metadata the yrs baseline stores beside the body:
/// id (16) ‖ author (32) ‖ time (8) ‖ flags (4).
pub const METADATA_BYTES: usize = 60;

/// A single author's messages into one room.
pub struct Workload {
    /// Seed of the Concord device key.
    pub device_seed: [u8; 32],
    /// The baselines' author bytes.
    pub author: [u8; 32],
    /// The messages, oldest first.
    pub messages: Vec<Msg>,
}

impl Workload {
    /// `count` messages at random times within `span` milliseconds from
    /// [`START_MILLIS`], with bodies of 20 to 200 bytes of random text.
    pub fn generate(seed: u64, count: usize, span: u64) -> Self {
        assert!(span >= count as u64, "times must be distinct: span {span} < count {count}");
        let mut rng = rng(seed, Stream::Messages);
        let mut device_seed = [0u8; 32];
        rng.fill_bytes(&mut device_seed);
        let mut author = [0u8; 32];
        rng.fill_bytes(&mut author);
        let mut offsets: Vec<u64> = (0..count).map(|_| rng.random_range(0..span)).collect();
        offsets.sort_unstable();
        // Make times distinct without leaving the span: shift the i-th time
        // to at least i, and each later one past its predecessor.
        let top = span - count as u64;
        let mut messages = Vec::with_capacity(count);
        for (i, offset) in offsets.into_iter().enumerate() {
            let at = START_MILLIS + offset.min(top) + i as u64;
            let mut id = [0u8; 16];
            rng.fill_bytes(&mut id);
            messages.push(Msg { at, id, body: text(&mut rng) });
        }
        Self { device_seed, author, messages }
    }

    /// The baseline key of `msg` in `layout`.
    pub fn key(&self, layout: KeyLayout, msg: &Msg) -> Vec<u8> {
        let time = msg.at.to_be_bytes();
        let parts: [&[u8]; 3] = match layout {
            KeyLayout::IdFirst => [&msg.id, &self.author, &time],
            KeyLayout::TimeFirst => [&time, &self.author, &msg.id],
        };
        parts.concat()
    }

    /// The yrs baseline's value for `msg`: metadata then body.
    pub fn record(&self, msg: &Msg) -> Vec<u8> {
        let mut out = Vec::with_capacity(METADATA_BYTES + msg.body.len());
        out.extend_from_slice(&msg.id);
        out.extend_from_slice(&self.author);
        out.extend_from_slice(&msg.at.to_be_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(msg.body.as_bytes());
        out
    }
}

/// Random lowercase words separated by single spaces.
fn text(rng: &mut ChaCha8Rng) -> String {
    let len = rng.random_range(BODY_BYTES);
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let word = rng.random_range(1..=10).min(len - out.len());
        out.extend((0..word).map(|_| char::from(b'a' + rng.random_range(0..26u8))));
        if out.len() < len {
            out.push(' ');
        }
    }
    out
}
