//! `concord-bench`: runs Concord and a raw baseline (sled or yrs) on the same
//! seeded workload in one process and prints a markdown table per benchmark:
//! medians, spread over runs, and the ratio Concord / baseline.
//!
//! ```sh
//! cargo run --release -p concord-tests --bin concord-bench -- [NAME...] [--seed N] [--runs R] [--quick] [--large N]
//! cargo run --release -p concord-tests --features dynamodb --bin concord-bench -- relay-ingest
//! ```
//!
//! Names: `append`, `page`, `cold-open`, `memory`, `disk`, and the network
//! benchmarks `gossip`, `partition`, `catchup-net` (all eight when none is
//! given); the relay's `relay-ingest-sled` and `relay-ingest-dynamodb`
//! (`relay-ingest` for both) run only when named, as do the same in end to
//! end encrypted rooms, `append-e2ee`, `page-e2ee`, `gossip-e2ee`,
//! `relay-ingest-sled-e2ee` and `relay-ingest-dynamodb-e2ee` (`e2ee` for
//! all five), each beside a baseline doing the same cryptography. The
//! DynamoDB halves need the `dynamodb` feature and start DynamoDB Local
//! unless `CONCORD_DYNAMODB_ENDPOINT` is set. `--quick` shrinks every size for a
//! smoke run; `--large N` sets the size of the large room of `cold-open`.
//! Results and method are in `docs/benchmarks.md`.

// The memory benchmarks count live heap bytes with a `#[global_allocator]`
// that wraps the system allocator, and implementing `GlobalAlloc` is unsafe.
// That impl (in `bench/alloc.rs`) is the only unsafe code here.
#![allow(unsafe_code)]

#[path = "../bench/mod.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    bench::main()
}
