//! Cryptography beyond signatures, all from audited crates: content sealed
//! at rest under keys kept out of the log-structured store ([`rest`]).
//! Nothing here is hand-written cryptography: these modules choose
//! constructions, bind what each protects to where it belongs, and encode
//! the results.

pub(crate) mod rest;
