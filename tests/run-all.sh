#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI run.
# Needs only the Rust toolchain (cargo, rustfmt, clippy); it installs nothing else yet.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "concord-core stays sans-IO: no tokio, no libp2p in its dependency tree"
tree=$(cargo tree -p concord-core -e normal --prefix none)
if grep -E '^(tokio|libp2p[a-z0-9-]*) v' <<<"$tree"; then
    echo "concord-core depends on tokio or libp2p" >&2
    exit 1
fi
echo "ok: $(wc -l <<<"$tree") crates, none of them tokio or libp2p"

step "formatting"
cargo fmt --all --check

step "clippy, warnings denied"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "the README's main job"
cargo run --locked -p concord-examples --bin two-replicas

step "tests"
cargo test --workspace --locked
