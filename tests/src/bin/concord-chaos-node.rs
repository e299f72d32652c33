//! `concord-chaos-node`: one device node or the relay in its own process,
//! driven by `concord-chaos` over the line-based JSON control protocol of
//! `concord_tests::chaos::protocol` (see `docs/reliability.md`).
//!
//! ```sh
//! concord-chaos-node --dir DIR --key-seed HEX64 [--skew-ms N] [--bug ack-before-flush]
//! concord-chaos-node --relay --dir DIR --key-seed HEX64 [--dynamodb ENDPOINT PREFIX]
//! ```

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(concord_tests::chaos::child::main(&args))?;
    // Background tasks (gossip, sync, a spawned write) end with the process.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
