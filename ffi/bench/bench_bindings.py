#!/usr/bin/env python3
"""Benchmark of the Python bindings against the Rust API they wrap.

    CARGO_PROFILE=release ffi/build-bindings.sh python
    python3 ffi/bench/bench_bindings.py                    # 10,000 messages
    python3 ffi/bench/bench_bindings.py --messages 2000    # quick: under a minute

Two parts, each run through the generated module (`concord.py`) and, as the
baseline, through Rust by the example `ffi/examples/call_overhead.rs`
(built here with `cargo build --release`), on the same seeded texts. Every
run is a fresh process (this script started again with `--child`, or the
example), and the runs alternate between Python and Rust:

- messages (`--message-runs` runs): two clients on 127.0.0.1 in one
  process, mDNS off. A creates a room, B joins it by ticket and counts A's
  messages arriving in its timeline listener. A sends `--messages` texts
  one after the other; every `--every` messages the run waits until B has
  them all and samples the process's VmRSS (/proc/self/status). Reported:
  the rate, the RSS after warm-up (`--warmup` messages) and at the end, the
  growth per message in between and in each half of it (memory that levels
  off grows less in the second half), and for Python the objects the
  garbage collector tracks; the baseline is two `concord_node` nodes doing
  the same in a Rust process, which also reports its live heap (counted by
  its global allocator) beside its VmRSS. A third process, the example's
  `docs` mode, is the raw baseline of the memory growth: raw yrs holding
  the same number of messages as the room's author document does, twice
  (A's document in A and its copy in B). `--rate R` paces A's sends at R
  messages per second (default: unpaced), so that gossip's time-bound
  records (kept 10 s and 120 s) level off within a run; `--store-cache-mib`
  sets the store's page cache of every client on both sides (default: the
  library's).
- calls (`--runs` runs): one client alone, `--calls` timed calls each of
  `peer_id`, `unread_count` and `send` (after 100 untimed ones), through the
  bindings, through the `concord-ffi` wrappers called from Rust, and through
  `concord_node` directly. Reported: the median over runs of each run's
  median time per call, the range, and Python against `concord_node`.

The seed (`--seed`, default 42) is printed; the texts come from splitmix64
(see `texts`), the same generator as the Rust side's, and the script checks
that both sides sent the same texts. Standard library only. Markdown tables
go to stdout, progress to stderr.
"""

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DEFAULT_BINDINGS = os.path.join(ROOT, "ffi", "target-bindings", "python")
EXAMPLE = "call_overhead"
OPS = ("peer_id", "unread_count", "send")

# Untimed calls of each operation before the timed ones (as in the Rust
# example): the first calls pay for lazily built state.
WARMUP_CALLS = 100
# Catch-up period of every client (as in the Rust example): bounds how long
# a message gossip dropped takes to reach B.
SYNC_INTERVAL_MS = 2000
# How long a checkpoint waits for B to have everything A sent.
ARRIVAL_TIMEOUT_S = 60.0
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# How long a child yields to the loop after its last call, so that the Rust
# thread that completed it leaves its continuation callback before the
# interpreter exits (see the end of `main` in examples/python/chat.py).
EXIT_GRACE_S = 0.1
MASK64 = (1 << 64) - 1


def progress(message):
    print(message, file=sys.stderr, flush=True)


def emit(record):
    """One JSON line on stdout, as a child run reports (like the example)."""
    print(json.dumps(record), flush=True)


# ----- the workload ------------------------------------------------------------


def texts(seed):
    """Seeded message texts, the same as the Rust example's `Texts`:
    splitmix64, a length of 20 to 200 bytes, lowercase letters with about
    one space in five, never a space first, last or twice in a row."""
    state = seed & MASK64

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    while True:
        length = 20 + next_u64() % 181
        out, previous_space = [], True
        for i in range(length):
            c = next_u64() % 32
            if c >= 26 and not previous_space and i + 1 < length:
                out.append(" ")
                previous_space = True
            else:
                out.append(chr(97 + c % 26))
                previous_space = False
        yield "".join(out)


def take_texts(seed, n):
    gen = texts(seed)
    return [next(gen) for _ in range(n)]


def digest(items):
    """FNV-1a over the texts, each followed by a newline (as in Rust)."""
    h = 0xCBF29CE484222325
    for text in items:
        for b in text.encode() + b"\n":
            h = ((h ^ b) * 0x100000001B3) & MASK64
    return f"{h:016x}"


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status")


# ----- a child run through the bindings ------------------------------------------


def load_bindings(directory, allow_debug):
    """Imports the generated module from `directory`, refusing a debug
    build of the library unless told otherwise; returns it and the path of
    the library it loads."""
    lib = os.path.realpath(os.path.join(directory, "libconcord_ffi.so"))
    if not os.path.exists(lib):
        sys.exit(
            f"no bindings in {directory}: run CARGO_PROFILE=release ffi/build-bindings.sh python"
        )
    if f"{os.sep}release{os.sep}" not in lib and not allow_debug:
        sys.exit(
            f"the bindings in {directory} load {lib}, not a release build: run "
            "CARGO_PROFILE=release ffi/build-bindings.sh python (or pass --allow-debug)"
        )
    sys.path.insert(0, directory)
    import concord

    return concord, lib


def make_arrivals(concord):
    class Arrivals(concord.TimelineListener):
        """Counts one author's messages inserted into a timeline. Called on
        B's replica thread only, so the counter has one writer."""

        def __init__(self, author_id):
            self.author_id = author_id
            self.count = 0

        def on_diffs(self, room_id, diffs):
            n = 0
            for diff in diffs:
                if diff.is_insert() and diff.item.author_id == self.author_id:
                    n += 1
            self.count += n

    return Arrivals


async def wait_for(arrivals, want, what):
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    while arrivals.count < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {arrivals.count} of {want}")
        await asyncio.sleep(0.002)


def client_config(concord, args, listen):
    """The settings of every client: mDNS off, the benchmark's catch-up
    period, and the store's cache if `--store-cache-mib` says so."""
    config = concord.ClientConfig(
        mdns=False, sync_interval_ms=SYNC_INTERVAL_MS, listen_addresses=listen
    )
    if args.store_cache_mib is not None:
        config.store_cache_mib = args.store_cache_mib
    return config


async def child_messages(concord, args):
    """The messages part through the bindings, in this (fresh) process."""
    config = client_config(concord, args, [LOOPBACK])
    a = await concord.Client.open(os.path.join(args.dir, "a"), config)
    b = await concord.Client.open(os.path.join(args.dir, "b"), config)
    room_a = await a.create_room("bench")
    room_b = await b.join_room(await room_a.ticket())
    arrivals = make_arrivals(concord)(a.author_id())
    subscription = await room_b.subscribe(arrivals)
    # One message first, so that B is connected and in the room's mesh
    # before the timed sends.
    await room_a.send("hello")
    await wait_for(arrivals, 1, "the first message")
    base = arrivals.count

    # Made before the first sample, so they add nothing to the growth.
    sent_texts = take_texts(args.seed, args.messages)
    start = time.perf_counter()
    for i, text in enumerate(sent_texts, 1):
        if args.rate > 0:
            await asyncio.sleep(max(0.0, start + (i - 1) / args.rate - time.perf_counter()))
        await room_a.send(text)
        if i % args.every == 0 or i == args.messages:
            await wait_for(arrivals, base + i, "B to receive A's messages")
            elapsed = time.perf_counter() - start
            rss = rss_kib()  # before gc.get_objects() allocates its list
            emit({"api": "python", "sent": i, "received": arrivals.count - base,
                  "rss_kib": rss, "elapsed_s": elapsed, "objects": len(gc.get_objects())})
    emit({"api": "python", "texts_digest": digest(sent_texts)})
    subscription.cancel()
    await a.shutdown()
    await b.shutdown()
    await asyncio.sleep(EXIT_GRACE_S)


async def child_calls(concord, args):
    """One run of the calls part through the bindings."""
    config = client_config(concord, args, [])
    client = await concord.Client.open(os.path.join(args.dir, "calls"), config)
    room = await client.create_room("bench")
    for i in range(min(WARMUP_CALLS, args.calls)):
        client.peer_id()
        await room.unread_count()
        await room.send(f"warm-up {i}")
    clock = time.perf_counter_ns

    def report(op, times):
        times.sort()
        emit({"api": "python", "op": op, "calls": len(times),
              "p50_ns": times[round((len(times) - 1) * 0.5)],
              "p90_ns": times[round((len(times) - 1) * 0.9)]})

    times = []
    for _ in range(args.calls):
        t = clock()
        client.peer_id()
        times.append(clock() - t)
    report("peer_id", times)

    times = []
    for _ in range(args.calls):
        t = clock()
        await room.unread_count()
        times.append(clock() - t)
    report("unread_count", times)

    sent_texts = take_texts(args.seed, args.calls)
    times = []
    for text in sent_texts:
        t = clock()
        await room.send(text)
        times.append(clock() - t)
    report("send", times)
    emit({"api": "python", "texts_digest": digest(sent_texts)})
    await client.shutdown()
    await asyncio.sleep(EXIT_GRACE_S)


def child(args):
    concord, _ = load_bindings(args.bindings, args.allow_debug)
    part = child_messages if args.child == "messages" else child_calls
    asyncio.run(part(concord, args))


# ----- running the sides ---------------------------------------------------------


def build_example():
    """Builds the Rust example in release (with the features the bindings'
    build uses, so that the two share their artifacts); returns its path."""
    progress("building the Rust example (cargo build --release) ...")
    subprocess.run(
        ["cargo", "build", "--release", "-p", "concord-ffi", "--features", "cli",
         "--example", EXAMPLE],
        cwd=ROOT,
        check=True,
    )
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "examples", EXAMPLE)


def run_json(command):
    """Runs a child; returns its JSON lines (its stderr passes through)."""
    out = subprocess.run([*map(str, command)], check=True, stdout=subprocess.PIPE, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


class Sides:
    """Starts the runs of either side with the shared options."""

    def __init__(self, args, binary, scratch):
        self.args, self.binary, self.scratch = args, binary, scratch
        self.runs = 0
        self.python = [sys.executable, os.path.abspath(__file__), "--bindings", args.bindings]
        if args.allow_debug:
            self.python.append("--allow-debug")

    def _dir(self):
        self.runs += 1
        opts = ["--dir", os.path.join(self.scratch, f"run-{self.runs}")]
        if self.args.store_cache_mib is not None:
            opts += ["--store-cache-mib", self.args.store_cache_mib]
        return opts

    def messages(self, api):
        a = self.args
        opts = ["--messages", a.messages, "--every", a.every, "--seed", a.seed]
        if api == "yrs":
            return run_json([self.binary, "docs", *opts])
        opts += ["--rate", a.rate, *self._dir()]
        if api == "python":
            return run_json([*self.python, "--child", "messages", *opts])
        return run_json([self.binary, "messages", *opts])

    def calls(self, api):
        a = self.args
        opts = ["--calls", a.calls, "--seed", a.seed, *self._dir()]
        if api == "python":
            return run_json([*self.python, "--child", "calls", *opts])
        return run_json([self.binary, "calls", "--api", api, *opts])


def check_digests(lines, expected):
    got = {line["texts_digest"] for line in lines if "texts_digest" in line}
    if got != {expected}:
        raise RuntimeError(f"the sides sent different texts: {got}, expected {expected}")


# ----- the report ----------------------------------------------------------------


def show_ns(ns):
    if ns < 10_000:
        return f"{ns / 1e3:.2f} µs"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns / 1e6:.2f} ms"


def show_mib(kib):
    return f"{kib / 1024:.1f} MiB"


def show_bytes(b):
    return f"{b:,.0f} B"


def show_rate(r):
    return f"{r:,.0f} msg/s"


def show_count(n):
    return f"{n:,.0f}"


def show_ratio(r):
    return f"{r:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if b > 0 else "–"


def spread(values, show):
    """The median, and the range as `min – max`."""
    return show(statistics.median(values)), f"{show(min(values))} – {show(max(values))}"


def summarise(run, warmup):
    """One messages run's figures from its samples. The span after warm-up
    is also cut at the sample nearest its middle, for the growth per
    message in each half."""
    samples = [s for s in run if "sent" in s]
    warm = next((s for s in samples if s["sent"] >= warmup), samples[0])
    end = samples[-1]
    middle = min(samples, key=lambda s: abs(s["sent"] - (warm["sent"] + end["sent"]) / 2))

    def growth(key, a, b):
        if key not in a or b["sent"] == a["sent"]:
            return None
        return (b[key] - a[key]) * 1024 / (b["sent"] - a["sent"])

    out = {
        "received": end["received"],
        "rate": end["sent"] / end["elapsed_s"],
        "warm_sent": warm["sent"],
        "middle_sent": middle["sent"],
        "end_sent": end["sent"],
        "rss_warm": warm["rss_kib"],
        "rss_end": end["rss_kib"],
        "objects_warm": warm.get("objects"),
        "objects_end": end.get("objects"),
        "series": {s["sent"]: s["rss_kib"] for s in samples},
        "heap_series": {s["sent"]: s["heap_kib"] for s in samples if "heap_kib" in s},
    }
    for key, name in (("rss_kib", "growth"), ("heap_kib", "heap_growth")):
        out[name] = growth(key, warm, end)
        out[name + "_first"] = growth(key, warm, middle)
        out[name + "_second"] = growth(key, middle, end)
        first, second = out[name + "_first"], out[name + "_second"]
        out[name + "_ratio"] = second / first if first and second is not None else None
    return out


def messages_table(args, py_runs, rust_runs, yrs_runs):
    py = [summarise(r, args.warmup) for r in py_runs]
    rs = [summarise(r, args.warmup) for r in rust_runs]
    ys = [summarise(r, args.warmup) for r in yrs_runs]
    warm, middle, end = py[0]["warm_sent"], py[0]["middle_sent"], py[0]["end_sent"]
    rows = [
        ("messages sent by A and received by B's listener", "received", show_count),
        ("send and receive rate", "rate", show_rate),
        (f"VmRSS after warm-up ({warm:,} messages)", "rss_warm", show_mib),
        (f"VmRSS at the end ({end:,} messages)", "rss_end", show_mib),
        ("VmRSS growth per message after warm-up", "growth", show_bytes),
        (f"… from {warm:,} to {middle:,} messages", "growth_first", show_bytes),
        (f"… from {middle:,} to {end:,} messages", "growth_second", show_bytes),
        ("… second half / first half", "growth_ratio", show_ratio),
    ]
    cache = (f"store cache {args.store_cache_mib} MiB" if args.store_cache_mib is not None
             else "store cache: the default")
    pace = f"{args.rate:,.0f} messages per second" if args.rate > 0 else "unpaced"
    lines = [
        f"messages: seed {args.seed}, {args.messages:,} messages, {pace}, VmRSS every "
        f"{args.every:,}, warm-up {args.warmup:,}, {cache}, {args.message_runs} runs",
        "",
        "| metric | Python bindings | Python min – max | Rust `concord_node` "
        "| Rust min – max | bindings / Rust | raw yrs, A's document twice | bindings / raw yrs |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    # The raw documents are compared on memory growth only.
    against_docs = ("growth", "growth_first", "growth_second", "heap_growth",
                    "heap_growth_first", "heap_growth_second")
    for name, key, show in rows:
        p = [x[key] for x in py if x[key] is not None]
        r = [x[key] for x in rs if x[key] is not None]
        if not p or not r:
            continue
        compare = ("–" if key in ("received", "growth_ratio")
                   else ratio(statistics.median(p), statistics.median(r)))
        y = [x[key] for x in ys if x[key] is not None] if key in against_docs else []
        docs = (f"{show(statistics.median(y))} | {ratio(statistics.median(p), statistics.median(y))}"
                if y else "– | –")
        lines.append(f"| {name} | {' | '.join(spread(p, show))} | {' | '.join(spread(r, show))} "
                     f"| {compare} | {docs} |")
    objects = [x["objects_end"] - x["objects_warm"] for x in py]
    lines.append("| Python objects tracked by gc, growth after warm-up | "
                 + " | ".join(spread(objects, lambda n: f"{n:+,.0f}")) + " | – | – | – | – | – |")
    heap_rows = [
        ("live heap growth per message after warm-up", "heap_growth", show_bytes),
        (f"… from {warm:,} to {middle:,} messages", "heap_growth_first", show_bytes),
        (f"… from {middle:,} to {end:,} messages", "heap_growth_second", show_bytes),
        ("… second half / first half", "heap_growth_ratio", show_ratio),
    ]
    for name, key, show in heap_rows:
        r = [x[key] for x in rs if x[key] is not None]
        y = [x[key] for x in ys if x[key] is not None]
        docs = show(statistics.median(y)) if y else "–"
        if r:
            lines.append(f"| {name} | – | – | {' | '.join(spread(r, show))} | – | {docs} "
                         f"| – |")
    lines += [
        "",
        "| messages | VmRSS, Python bindings (median) | VmRSS, Rust `concord_node` (median) "
        "| live heap, Rust `concord_node` (median) |",
        "|--:|--:|--:|--:|",
    ]
    for sent in sorted(py[0]["series"]):
        p = statistics.median(x["series"][sent] for x in py)
        r = statistics.median(x["series"][sent] for x in rs)
        heaps = [x["heap_series"][sent] for x in rs if sent in x["heap_series"]]
        h = show_mib(statistics.median(heaps)) if heaps else "–"
        lines.append(f"| {sent:,} | {show_mib(p)} | {show_mib(r)} | {h} |")
    return "\n".join(lines)


def calls_table(args, per_run):
    """`per_run[api][op]` lists each run's median time per call, in ns."""
    apis = [("python", "Python bindings"), ("ffi", "Rust via `concord-ffi`"),
            ("node", "Rust `concord_node`")]
    header, rule = "| call, median per call |", "|---|"
    for _, title in apis:
        header += f" {title} | min – max |"
        rule += "--:|--:|"
    header += " Python / `concord_node` | Python − `concord_node` |"
    rule += "--:|--:|"
    lines = [
        f"calls: seed {args.seed}, {args.calls:,} calls of each per run, {args.runs} runs",
        "",
        header,
        rule,
    ]
    names = {"peer_id": "`peer_id()` (sync)", "unread_count": "`unread_count()`",
             "send": "`send(text)`"}
    for op in OPS:
        row = f"| {names[op]} |"
        for api, _ in apis:
            row += " " + " | ".join(spread(per_run[api][op], show_ns)) + " |"
        py = statistics.median(per_run["python"][op])
        node = statistics.median(per_run["node"][op])
        # Below 0.1 µs the Rust figure is the clock's own cost, not the call's.
        row += f" {ratio(py, node) if node >= 100 else '–'} | {show_ns(py - node)} |"
        lines.append(row)
    return "\n".join(lines)


# ----- main ----------------------------------------------------------------------


def bench(args):
    print(f"seed {args.seed}", flush=True)
    _, lib = load_bindings(args.bindings, args.allow_debug)
    progress(f"bindings: {lib}")
    binary = build_example()
    scratch = tempfile.mkdtemp(prefix="concord-bench-bindings-")
    started = time.monotonic()
    expected_messages = digest(take_texts(args.seed, args.messages))
    expected_calls = digest(take_texts(args.seed, args.calls))
    try:
        sides = Sides(args, binary, scratch)
        py_runs, rust_runs, yrs_runs = [], [], []
        for r in range(args.message_runs):
            progress(f"messages: run {r + 1} of {args.message_runs}, {args.messages:,} each ...")
            for api, runs in (("python", py_runs), ("node", rust_runs), ("yrs", yrs_runs)):
                lines = sides.messages(api)
                if api != "yrs":
                    check_digests(lines, expected_messages)
                runs.append(lines)
                end = [s for s in lines if "sent" in s][-1]
                progress(f"  {api}: {end['received']:,} received in {end['elapsed_s']:.1f} s, "
                         f"VmRSS {show_mib(end['rss_kib'])}")

        per_run = {api: {op: [] for op in OPS} for api in ("python", "ffi", "node")}
        for r in range(args.runs):
            progress(f"calls: run {r + 1} of {args.runs} ...")
            for api in ("node", "ffi", "python"):
                lines = sides.calls(api)
                check_digests(lines, expected_calls)
                for line in lines:
                    if "op" in line:
                        per_run[api][line["op"]].append(line["p50_ns"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(messages_table(args, py_runs, rust_runs, yrs_runs))
    print()
    print(calls_table(args, per_run))
    progress(f"done in {time.monotonic() - started:.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=1_000, help="VmRSS sample period (messages)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages sent per second in the messages part [default: 0, unpaced]")
    parser.add_argument("--warmup", type=int, help="messages before the warm-up sample "
                        "[default: a fifth of --messages, at least --every]")
    parser.add_argument("--message-runs", type=int, default=3, help="runs of the messages part")
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls of each kind per run")
    parser.add_argument("--runs", type=int, default=5, help="runs of the calls part")
    parser.add_argument("--store-cache-mib", type=int,
                        help="the store's page cache of every client [default: the library's]")
    parser.add_argument("--bindings", default=os.environ.get("CONCORD_BINDINGS", DEFAULT_BINDINGS),
                        help="the generated module's directory")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept bindings that load a debug build (numbers meaningless)")
    parser.add_argument("--child", choices=["messages", "calls"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.bindings = os.path.abspath(args.bindings)
    if min(args.messages, args.every, args.calls, args.runs, args.message_runs) <= 0:
        parser.error("--messages, --every, --calls, --runs and --message-runs must be positive")
    if not args.rate >= 0:
        parser.error("--rate must be 0 (unpaced) or a number of messages per second")
    if args.store_cache_mib is not None and args.store_cache_mib <= 0:
        parser.error("--store-cache-mib must be positive")
    if args.warmup is None:
        args.warmup = max(args.every, args.messages // 5 // args.every * args.every)
    if args.child:
        child(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
