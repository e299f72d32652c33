//! A DynamoDB-API server for the tests that need one: the server at
//! `CONCORD_DYNAMODB_ENDPOINT`, or else Amazon's DynamoDB Local started once
//! per test process by `tests/dynamodb-local.sh` (it stops when the test
//! process exits). Tests use table prefixes of their own.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};

/// The region every test uses (DynamoDB Local runs with `-sharedDb`, so any
/// region sees the same tables).
pub const REGION: &str = "us-east-1";

/// The server's endpoint, started once per test process if not given.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            if let Ok(endpoint) = std::env::var("CONCORD_DYNAMODB_ENDPOINT") {
                return endpoint;
            }
            let script =
                concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/dynamodb-local.sh").to_string();
            let started = Instant::now();
            let out = std::process::Command::new("bash")
                .arg(&script)
                .args(["start", "--watch", &std::process::id().to_string()])
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run tests/dynamodb-local.sh");
            assert!(out.status.success(), "tests/dynamodb-local.sh start failed");
            let stdout = String::from_utf8(out.stdout).expect("utf-8");
            let endpoint = stdout.lines().last().expect("an endpoint").trim().to_string();
            eprintln!("DynamoDB Local at {endpoint}, up in {:?}", started.elapsed());
            endpoint
        })
        .as_str()
}

/// A table prefix no other test or run uses.
pub fn prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("concord_{test}_{}_{nanos}_", std::process::id())
}

/// A plain client, to read the tables directly.
pub fn raw_client() -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint())
        .credentials_provider(Credentials::new("concord", "concord", None, None, "test"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}
