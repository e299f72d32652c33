//! `concord-chaos`'s command line: draw or read schedules, run and check
//! each, shrink failures into schedule files, and print the summary table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use super::check::Counts;
use super::history::History;
use super::run::{run, RunConfig};
use super::schedule::{generate, Options, Schedule};
use super::shrink::shrink;

const USAGE: &str = "usage: concord-chaos [--seed N] [--schedules N] [--duration SECS] \
[--quiet SECS] [--dynamodb] [--bug ack-before-flush] [--expect-failure] [--replay FILE] \
[--shrink-runs N] [--max-shrunk-steps N] [--without KIND,...] [--dump DIR] [--work-dir DIR] [--node-bin FILE] [--summary FILE]";

#[derive(Debug)]
struct Args {
    seed: Option<u64>,
    schedules: u64,
    duration: f64,
    quiet: f64,
    dynamodb: bool,
    bug: Option<String>,
    expect_failure: bool,
    replay: Option<PathBuf>,
    shrink_runs: usize,
    work_dir: Option<PathBuf>,
    node_bin: Option<PathBuf>,
    summary: Option<PathBuf>,
    without: Vec<String>,
    max_shrunk_steps: Option<usize>,
    dump: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        seed: None,
        schedules: 1,
        duration: 6.0,
        quiet: 45.0,
        dynamodb: false,
        bug: None,
        expect_failure: false,
        replay: None,
        shrink_runs: 40,
        work_dir: None,
        node_bin: None,
        summary: None,
        without: Vec::new(),
        max_shrunk_steps: None,
        dump: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value =
            || it.next().cloned().ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--seed" => a.seed = Some(value()?.parse()?),
            "--schedules" => a.schedules = value()?.parse()?,
            "--duration" => a.duration = value()?.parse()?,
            "--quiet" => a.quiet = value()?.parse()?,
            "--dynamodb" => a.dynamodb = true,
            "--bug" => a.bug = Some(value()?),
            "--expect-failure" => a.expect_failure = true,
            "--replay" => a.replay = Some(PathBuf::from(value()?)),
            "--shrink-runs" => a.shrink_runs = value()?.parse()?,
            "--work-dir" => a.work_dir = Some(PathBuf::from(value()?)),
            "--node-bin" => a.node_bin = Some(PathBuf::from(value()?)),
            "--summary" => a.summary = Some(PathBuf::from(value()?)),
            "--dump" => a.dump = Some(PathBuf::from(value()?)),
            "--max-shrunk-steps" => a.max_shrunk_steps = Some(value()?.parse()?),
            "--without" => a.without.extend(value()?.split(',').map(str::to_owned)),
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Starts DynamoDB Local (stopped when this process exits) and returns
/// its endpoint and its JVM's pid, which store outages stop and continue.
fn start_dynamodb() -> Result<(String, u32)> {
    let started = crate::dynamodb_local::start()?;
    Ok((started.endpoint, started.pid))
}

/// Everything the schedules of one invocation added up to.
#[derive(Default)]
struct Summary {
    schedules: u64,
    failed: Vec<(u64, String)>,
    ops: BTreeMap<String, [u64; 3]>,
    faults: BTreeMap<String, u64>,
    counts: Counts,
    converge_ms: Vec<u64>,
}

impl Summary {
    fn add(&mut self, seed: u64, history: &History, counts: &Counts) {
        self.schedules += 1;
        for (k, v) in &history.ops {
            let slot = self.ops.entry(k.clone()).or_default();
            for i in 0..3 {
                slot[i] += v[i];
            }
        }
        for (k, v) in &history.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        self.counts.add(counts);
        if let Some(d) = history.converged_after {
            self.converge_ms.push(d.as_millis() as u64);
        }
        if !counts.clean() {
            self.failed.push((seed, counts.failures()));
        }
    }

    fn percentile(&self, p: f64) -> u64 {
        let mut v = self.converge_ms.clone();
        v.sort_unstable();
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        out += "| measure | value |\n|---|---|\n";
        out += &format!("| schedules | {} |\n", self.schedules);
        out += &format!("| schedules failed | {} |\n", self.failed.len());
        let total: u64 = self.ops.values().map(|c| c.iter().sum::<u64>()).sum();
        out += &format!("| operations sent | {total} |\n");
        for (k, [acked, failed, unknown]) in &self.ops {
            out += &format!(
                "| op `{k}` (acked / refused / no reply) | {acked} / {failed} / {unknown} |\n"
            );
        }
        for (k, v) in &self.faults {
            out += &format!("| fault `{k}` | {v} |\n");
        }
        for (k, v) in self.counts.named() {
            out += &format!("| check `{k}` | {v} |\n");
        }
        out += &format!(
            "| convergence after heal p50 / p99 / max | {} ms / {} ms / {} ms |\n",
            self.percentile(0.5),
            self.percentile(0.99),
            self.converge_ms.iter().max().copied().unwrap_or(0)
        );
        for (seed, what) in &self.failed {
            out += &format!("| failed seed {seed} | {what} |\n");
        }
        out
    }
}

/// Runs `concord-chaos` with `args`; returns the process's exit code.
pub async fn main(args: &[String]) -> Result<i32> {
    let a = parse(args)?;
    let exe = std::env::current_exe()?;
    let node_bin = match &a.node_bin {
        Some(p) => p.clone(),
        None => exe.with_file_name("concord-chaos-node"),
    };
    let work_dir = a.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("concord-chaos"));
    std::fs::create_dir_all(&work_dir)?;
    let replayed: Option<Schedule> = match &a.replay {
        Some(path) => Some(serde_json::from_str(&std::fs::read_to_string(path)?)?),
        None => None,
    };
    let dynamodb = a.dynamodb || replayed.as_ref().is_some_and(|s| s.dynamodb);
    let config = RunConfig {
        node_bin,
        quiet: Duration::from_secs_f64(a.quiet),
        dynamodb: if dynamodb && a.dump.is_none() { Some(start_dynamodb()?) } else { None },
        work_dir: work_dir.clone(),
    };
    let base = a.seed.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    });
    let options = Options {
        duration_ms: (a.duration * 1000.0) as u64,
        dynamodb,
        bug: a.bug.clone(),
        without: a.without.clone(),
    };
    let schedules: Vec<Schedule> = match replayed {
        Some(s) => vec![s],
        None => (0..a.schedules).map(|i| generate(base + i, &options)).collect(),
    };
    if let Some(dir) = &a.dump {
        // Writes the drawn schedules as files, and runs nothing.
        std::fs::create_dir_all(dir)?;
        for s in &schedules {
            let file = dir.join(format!("seed-{}.json", s.seed));
            std::fs::write(file, serde_json::to_string_pretty(s)? + "\n")?;
        }
        return Ok(0);
    }
    println!("concord-chaos: seed {base}, {} schedule(s)", schedules.len());
    let mut summary = Summary::default();
    let mut largest_shrunk = 0;
    for schedule in &schedules {
        let r = run(schedule, &config).await.with_context(|| format!("seed {}", schedule.seed))?;
        summary.add(schedule.seed, &r.history, &r.counts);
        if let Some(path) = &a.summary {
            // After every schedule, so that a long run cut short keeps its table.
            std::fs::write(path, summary.table())?;
        }
        let faults: u64 = r.history.faults.values().sum();
        let converged = r.history.converged_after.map(|d| format!("{} ms", d.as_millis()));
        println!(
            "seed {}: {} devices, {} ops, {} faults, converged after {}: {}",
            schedule.seed,
            schedule.devices,
            r.history.op_total(),
            faults,
            converged.unwrap_or_else(|| "never".into()),
            if r.counts.clean() {
                "ok".to_owned()
            } else {
                format!("FAIL {}", r.counts.failures())
            }
        );
        if r.counts.clean() {
            continue;
        }
        let mut extra = schedule.bug.as_ref().map(|b| format!(" --bug {b}")).unwrap_or_default();
        if !a.without.is_empty() {
            extra += &format!(" --without {}", a.without.join(","));
        }
        println!(
            "  replay: cargo run -p concord-tests --bin concord-chaos -- --seed {} --duration {}{}{}",
            schedule.seed,
            a.duration,
            if dynamodb { " --dynamodb" } else { "" },
            extra
        );
        let (small, counts) = if a.shrink_runs > 0 {
            shrink(schedule, &r.counts, &config, a.shrink_runs).await
        } else {
            (schedule.clone(), r.counts.clone())
        };
        largest_shrunk = largest_shrunk.max(small.steps.len());
        let file = work_dir.join(format!("failing-{}.json", schedule.seed));
        std::fs::write(&file, serde_json::to_string_pretty(&small)? + "\n")?;
        println!(
            "  shrunk to {} of {} steps ({}): {}\n  replay: cargo run -p concord-tests --bin concord-chaos -- --replay {}",
            small.steps.len(),
            schedule.steps.len(),
            counts.failures(),
            file.display(),
            file.display()
        );
    }
    let table = summary.table();
    println!("\n{table}");
    if let Some(path) = &a.summary {
        std::fs::write(path, &table)?;
    }
    let failed = !summary.failed.is_empty();
    if a.expect_failure {
        // The harness's own test: a deliberate bug must be caught, and
        // shrink to a small schedule.
        let small = a.max_shrunk_steps.is_none_or(|max| largest_shrunk <= max);
        if !failed {
            println!("expected a failure, and every schedule passed");
        } else if !small {
            println!("the failure shrank to {largest_shrunk} steps only");
        }
        return Ok(if failed && small { 0 } else { 1 });
    }
    Ok(if failed { 1 } else { 0 })
}
