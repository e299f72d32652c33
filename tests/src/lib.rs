//! Concord's cross-crate integration and simulation tests live in `tests/`
//! of this crate (they need the node as well as the core); `run-all.sh` beside
//! it is the whole test suite. Shared helpers go in this library once two
//! crates' tests need them; the core's own helpers are in
//! `core/tests/common/mod.rs`.
#![deny(missing_docs)]

pub mod chaos;
pub mod dynamodb_local;
