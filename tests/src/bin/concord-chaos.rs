//! `concord-chaos`: seeded fault schedules over whole processes (device
//! nodes and a relay, each its own `concord-chaos-node` process), judged by
//! a Jepsen-style checker; failing schedules are shrunk into replayable
//! schedule files. See `docs/reliability.md`.
//!
//! ```sh
//! cargo run -p concord-tests --bin concord-chaos -- --seed 1 --schedules 10 --duration 6
//! cargo run -p concord-tests --bin concord-chaos -- --replay tests/chaos/regressions/FILE.json
//! cargo run -p concord-tests --features dynamodb --bin concord-chaos -- --dynamodb
//! ```

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let code = runtime.block_on(concord_tests::chaos::cli::main(&args))?;
    std::process::exit(code);
}
