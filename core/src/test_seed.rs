//! The seed of a randomized test, shared by the crate's unit tests
//! (`test_support`) and its integration tests (`tests/common`), which
//! include this file.

/// The seed a randomized test runs with: `CONCORD_SEED` if set, to replay a
/// failure, otherwise derived from `name` (FNV-1a). Always printed.
pub fn test_seed(name: &str) -> u64 {
    let seed =
        std::env::var("CONCORD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        });
    println!("{name}: seed {seed} (replay with CONCORD_SEED={seed})");
    seed
}
