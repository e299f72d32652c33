//! Shrinking: a failing schedule is cut down, step by step, to a small one
//! that still fails, as delta debugging does (Zeller's ddmin, greedy):
//! remove chunks of steps, halving the chunk size, keep any removal after
//! which the schedule still fails with one of the counts that failed first,
//! and stop at single steps or when the run budget is spent.

use super::check::Counts;
use super::run::{run, RunConfig};
use super::schedule::Schedule;

/// Whether `counts` still shows one of the failures of `first`.
fn same_failure(first: &Counts, counts: &Counts) -> bool {
    first.named().iter().zip(counts.named()).any(|((_, a), (_, b))| *a > 0 && b > 0)
}

/// Shrinks `schedule`, which failed with `first`, within `budget` runs.
/// Returns the smallest failing schedule found and its counts.
pub async fn shrink(
    schedule: &Schedule,
    first: &Counts,
    config: &RunConfig,
    budget: usize,
) -> (Schedule, Counts) {
    let mut best = schedule.clone();
    let mut best_counts = first.clone();
    let mut runs = 0;
    let mut chunk = best.steps.len().div_ceil(2).max(1);
    while runs < budget && !best.steps.is_empty() {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.steps.len() && runs < budget {
            let mut candidate = best.clone();
            let end = (start + chunk).min(candidate.steps.len());
            candidate.steps.drain(start..end);
            runs += 1;
            match run(&candidate, config).await {
                Ok(r) if same_failure(first, &r.counts) => {
                    eprintln!(
                        "chaos: shrink run {runs}: {} steps still fail ({})",
                        candidate.steps.len(),
                        r.counts.failures()
                    );
                    best = candidate;
                    best_counts = r.counts;
                    removed_any = true;
                }
                _ => start = end,
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    (best, best_counts)
}
