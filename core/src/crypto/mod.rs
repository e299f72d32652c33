//! Cryptography beyond signatures, all from audited crates: room content
//! end to end with vodozemac's Megolm ([`megolm`]), room keys to each device
//! with vodozemac's Olm ([`olm`]), and content sealed at rest with
//! RustCrypto's XChaCha20-Poly1305 under keys kept out of the log-structured
//! store ([`rest`]). Nothing here is hand-written cryptography: these
//! modules choose constructions, bind what each protects to where it
//! belongs, and encode the results.

pub(crate) mod megolm;
pub(crate) mod olm;
pub(crate) mod rest;

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod hostile_alloc;
