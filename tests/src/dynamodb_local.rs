//! Amazon's DynamoDB Local for one process of this crate (the benchmarks,
//! the chaos harness): started by `tests/dynamodb-local.sh`, which watches
//! the calling process and stops the server when it exits.

use anyhow::{bail, Context, Result};

/// A running DynamoDB Local.
pub struct Started {
    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its JVM's process id (store outages stop and continue it).
    pub pid: u32,
}

/// Starts DynamoDB Local for the calling process.
pub fn start() -> Result<Started> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dynamodb-local.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(["start", "--watch", &std::process::id().to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run tests/dynamodb-local.sh")?;
    if !out.status.success() {
        bail!("tests/dynamodb-local.sh start failed");
    }
    let stdout = String::from_utf8(out.stdout)?;
    let endpoint = stdout.lines().last().context("an endpoint")?.trim().to_owned();
    let port = endpoint.rsplit(':').next().unwrap_or_default();
    let pid_file =
        concat!(env!("CARGO_MANIFEST_DIR"), "/.dynamodb/run/").to_owned() + port + ".pid";
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {pid_file}"))?
        .trim()
        .parse()
        .with_context(|| format!("a pid in {pid_file}"))?;
    Ok(Started { endpoint, pid })
}
