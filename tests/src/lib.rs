//! Shared helpers for Concord's cross-crate integration tests.
#![deny(missing_docs)]

/// The seed a test runs with: `CONCORD_SEED` if set (to replay a failure),
/// otherwise a value derived from the test's name. Always printed.
pub fn test_seed(name: &str) -> u64 {
    let seed =
        std::env::var("CONCORD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let hash = blake3_free_hash(name.as_bytes());
            hash
        });
    println!("{name}: seed {seed} (replay with CONCORD_SEED={seed})");
    seed
}

/// FNV-1a: a stable, dependency-free hash for deriving seeds from names.
fn blake3_free_hash(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
