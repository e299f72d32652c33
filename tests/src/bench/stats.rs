//! Timing and summaries: repeated runs, wall-clock timing of a call (in the
//! harness only; the core runs on a manual clock), quantiles and the median
//! with its spread.

use std::time::Instant;

use anyhow::Result;

/// Runs `once` `runs` times, reporting progress on stderr, and returns each
/// run's result.
pub fn runs<T>(name: &str, runs: usize, mut once: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
    (1..=runs)
        .map(|i| {
            eprintln!("{name}: run {i}/{runs}");
            once()
        })
        .collect()
}

/// Runs `f` and returns its result with the seconds it took.
pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let start = Instant::now();
    let out = f()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

/// Times `f` once per item; returns the seconds of each call.
pub fn time_each<I: Copy>(items: &[I], mut f: impl FnMut(I) -> Result<()>) -> Result<Vec<f64>> {
    items.iter().map(|&item| Ok(timed(|| f(item))?.1)).collect()
}

/// The `q`-quantile (0 to 1) of `samples`, by nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    assert!(!samples.is_empty(), "quantile of no samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of some samples and their range.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Self {
        Self {
            median: quantile(samples, 0.5),
            min: quantile(samples, 0.0),
            max: quantile(samples, 1.0),
        }
    }
}

/// Column `i` of per-run result rows.
pub fn column<const N: usize>(rows: &[[f64; N]], i: usize) -> Vec<f64> {
    rows.iter().map(|r| r[i]).collect()
}
