//! # concord-ffi
//!
//! UniFFI bindings (Kotlin, Swift, Python) over the node API. Thin wrappers
//! only; they are generated once the node exposes its `Client` and `Room`
//! handles (see `docs/architecture.md`).
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub use concord_node as node;
