#!/usr/bin/env bash
# The whole test suite: what the README's test command and CI run.
# Needs the Rust toolchain (cargo, rustfmt, clippy), Python 3, Node/npm and
# Java 17; installs what else the tests need: iproute2 (the network-namespace
# test) and JNA (the Kotlin test) from Debian's packages, the Kotlin compiler
# from npm (pinned in ffi/tests/kotlin/package-lock.json), and Amazon's
# DynamoDB Local from npm (pinned in tests/dynamodb-local.sh), which the
# relay store's DynamoDB tests start and stop themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# A one-off build gains nothing from incremental caches, which would take
# several GB of disk beside the build itself.
export CARGO_INCREMENTAL=0
disk() { df -h . | awk 'NR==2 { print "disk: " $4 " free of " $2 }'; }
disk

step "test dependencies"
sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ -f /usr/share/java/jna.jar ] || missing+=(libjna-java)
if [ ${#missing[@]} -gt 0 ]; then
    sudo_if apt-get update -qq
    sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
npm ci --prefix ffi/tests/kotlin --no-audit --no-fund --loglevel=error
tests/dynamodb-local.sh install
echo "ok: $(ip -V); JNA; $(ffi/tests/kotlin/node_modules/kotlin-compiler/bin/kotlinc -version 2>&1 | tail -1); DynamoDB Local"

# One feature set for every cargo step, so that each dependency is compiled
# once in check mode (clippy, rustdoc) and once in build mode (binaries,
# tests, the bindings), never again with other features:
# - the relay store on DynamoDB is linted, documented and tested with the rest,
#   and the CQL store is linted and documented with the rest (its suite needs
#   a cluster: `CONCORD_CQL_NODES=host:port cargo test -p concord-node
#   --features cql --test relay_store_cql`);
# - the bindings' generator (concord-ffi/cli) is built with the tests;
# - the main job and the example run from that same build (`cargo run -p X`
#   would resolve features for X alone, without the other members' and the
#   tests' features, and compile yrs, sled, automerge and libp2p again).
features=concord-node/dynamodb,concord-tests/dynamodb,concord-ffi/cli
lint_features=$features,concord-node/cql
step "concord-core stays sans-IO: no tokio, no libp2p in its dependency tree"
tree=$(cargo tree -p concord-core -e normal --prefix none)
if grep -E '^(tokio|libp2p[a-z0-9-]*) v' <<<"$tree"; then
    echo "concord-core depends on tokio or libp2p" >&2
    exit 1
fi
echo "ok: $(wc -l <<<"$tree") crates, none of them tokio or libp2p"

# The mobile library links the node without its default features: no
# relay, no `concord` binary, and so none of their dependencies. Proc-macro
# crates are left out of the tree: they run in the compiler and are never
# linked (uniffi's macros parse TOML, so `toml` is in their subtree).
step "the mobile library (concord-ffi) carries no relay or CLI dependencies"
tree=$(cargo tree -p concord-ffi -e normal,no-proc-macro --prefix none)
if grep -E '^(clap|toml|tracing-subscriber|aws-config|aws-sdk-[a-z0-9-]+|scylla) v' <<<"$tree"; then
    echo "concord-ffi links clap, toml, tracing-subscriber, the AWS SDK or scylla" >&2
    exit 1
fi
echo "ok: $(sed 's/ (\*)$//' <<<"$tree" | sort -u | wc -l) crates linked, none of them clap, toml, tracing-subscriber, aws-config, aws-sdk-* or scylla"

step "formatting"
cargo fmt --all --check

step "clippy, warnings denied (with the CQL relay store)"
cargo clippy --workspace --all-targets --locked --features "$lint_features" -- -D warnings

step "docs, warnings denied"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --features "$lint_features"

step "build every target once"
build_all=(--workspace --all-targets --locked --features "$features")
cargo build "${build_all[@]}"
bin=target/debug

step "the README's main job: concord demo"
"$bin/concord" demo

step "example: two replicas reconciled without a network"
"$bin/two-replicas"

step "tests (with the relay store's DynamoDB suite against DynamoDB Local)"
# Built above with every target; the bindings' scripts below ask cargo for
# the same build, which then has nothing to do.
cargo test --workspace --locked --features "$features"
disk

# Whole processes under seeded faults (docs/reliability.md): device nodes
# and a relay, each a concord-chaos-node process, through fixed seeds of
# kills, partitions, a lossy link and clock skew, judged by the checker;
# then the harness's own proof that it can fail: a deliberate bug (posts
# acknowledged before they are written) must be caught and shrink to a
# schedule of at most 3 steps (drawn without invites, so that its shrunk
# size stays comparable from run to run). About 2 minutes; the DynamoDB
# store outage runs with --dynamodb, not here.
step "chaos: fixed seeds over whole processes, and the deliberate bug they must catch"
chaos_work=$(mktemp -d)
"$bin/concord-chaos" --seed 1 --schedules 8 --duration 4 --shrink-runs 0 \
    --work-dir "$chaos_work"
"$bin/concord-chaos" --seed 10 --schedules 1 --duration 4 --without invite --quiet 6 \
    --bug ack-before-flush --expect-failure --shrink-runs 12 --max-shrunk-steps 3 \
    --work-dir "$chaos_work"
rm -rf "$chaos_work"

step "bindings: Python suite, Swift API check, Kotlin on the JVM"
export CONCORD_FFI_BUILD="${build_all[*]}"
ffi/test-python.sh
ffi/check-swift.sh
ffi/test-kotlin.sh
disk; du -sh target
