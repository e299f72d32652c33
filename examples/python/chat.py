#!/usr/bin/env python3
"""A small line-based chat over Concord's Python bindings.

It does what `concord chat` does, in a few hundred lines of Python on the
generated module (`concord.py`, made by `ffi/build-bindings.sh python`):

    python3 examples/python/chat.py --name alice               # prints a ticket
    python3 examples/python/chat.py --name bob --join TICKET   # joins alice's room

Each line typed is sent as a message; the terminal is a view of the room's
timeline, printed from a `TimelineListener` as it changes (own messages
too, which is how a sent line shows up). Lines starting with / are
commands (/help lists them); /quit or the end of input leaves.

Threads: the listeners are called on Rust threads, so they only hand what
they get to the asyncio loop (`loop.call_soon_threadsafe`); stdin is read
on a thread of its own for the same reason. Everything else, printing
included, happens on the loop's thread, one thing at a time.

Only the standard library is needed (Python 3.8+).
"""

import argparse
import asyncio
import os
import signal
import sys
import threading

try:
    import concord
    from concord import Client, ClientConfig, ConcordError, SignalKind
except ImportError as e:
    sys.exit(
        f"error: cannot import the concord bindings ({e}); run ffi/build-bindings.sh python "
        "and set PYTHONPATH=ffi/target-bindings/python"
    )

# A terminal runs on a laptop or a server, not on a phone's battery, so it
# heals what gossip missed within seconds (as `concord chat` does) rather
# than the phone default of 30.
SYNC_INTERVAL_MS = 5000
# How many messages of the room's history are shown when the chat starts.
HISTORY = 50
# How long to wait for listeners on 0.0.0.0 to report every interface's
# address before a ticket is made, and how often to look.
ADDRESS_SETTLE_S = 0.3
ADDRESS_POLL_S = 0.05
# How long to yield to the loop after the last call, before the interpreter
# exits: see the end of `main`.
EXIT_GRACE_S = 0.1

HELP = """\
Each line you type is sent as a message. Lines starting with / are commands:
  /reply N TEXT    reply to message N
  /edit N TEXT     replace the text of your message N
  /delete N        delete your message N (its text is erased everywhere it arrives)
  /react N EMOJI   react to message N
  /peers           connected peers
  /ticket          print a ticket for the room again
  /history         print the latest messages again
  /quit            leave (end of input does the same)
N is the number in front of each message; numbers are local to this session.
Start a line with // to send a message that begins with /."""


def say(line):
    print(line, flush=True)


def short(author_id):
    """How another member is shown: the first 8 hex digits of their id."""
    return author_id[:8]


def default_data_dir(name):
    """Where `concord chat --name NAME` keeps its store: the same directory,
    so either front end opens the other's identity and rooms (one at a
    time: a store has one user)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        sys.exit(f"error: {name!r} cannot name a data directory (or give --data-dir)")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "concord", name)


def post(loop, inbox, item):
    """Hands `item` to the chat loop from any thread, never waiting."""
    try:
        loop.call_soon_threadsafe(inbox.put_nowait, item)
    except RuntimeError:
        pass  # the loop has closed: the chat is over


class TimelineToLoop(concord.TimelineListener):
    """Hands the room's timeline diffs to the asyncio loop. Called on the
    replica's Rust thread: it must not touch the view or wait for the
    client, only pass the diffs on."""

    def __init__(self, loop, inbox):
        self._loop, self._inbox = loop, inbox

    def on_diffs(self, room_id, diffs):
        post(self._loop, self._inbox, ("diffs", diffs))


class EventsToLoop(concord.EventListener):
    """Hands the client's events to the asyncio loop, from a Rust thread."""

    def __init__(self, loop, inbox):
        self._loop, self._inbox = loop, inbox

    def on_event(self, event):
        post(self._loop, self._inbox, ("event", event))


def read_stdin(loop, inbox):
    """Reads stdin lines on their own thread: a blocking read cannot be
    cancelled, and as a daemon thread it does not hold up the exit. It
    reads the file descriptor itself, not `sys.stdin`, whose lock a thread
    blocked in it would hold while the interpreter shuts down."""
    pending = b""
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            post(loop, inbox, ("line", line))
    if pending:
        post(loop, inbox, ("line", pending.decode("utf-8", errors="replace")))
    post(loop, inbox, ("quit", None))


class View:
    """The session's view of the room: the number given to each message and
    what was last printed for it."""

    def __init__(self, client, room, name):
        self.client = client
        self.room = room
        self.me = client.author_id()
        self.name = name
        self.numbers = {}  # message id -> number
        self.ids = []  # number - 1 -> message id
        self.shown = {}  # message id -> MessageItem last printed
        self.online = {}  # author id -> last presence said

    def number(self, message_id):
        if message_id not in self.numbers:
            self.ids.append(message_id)
            self.numbers[message_id] = len(self.ids)
        return self.numbers[message_id]

    def who(self, author_id):
        return f"{self.name} (you)" if author_id == self.me else short(author_id)

    def line(self, n, item):
        out = f"[{n}] {self.who(item.author_id)}: "
        if item.reply_to is not None:
            out += f"↪[{self.numbers.get(item.reply_to, '?')}] "
        out += item.body if item.body is not None else "(text not arrived yet)"
        if item.edited_ms is not None:
            out += " (edited)"
        if item.attachments:
            out += f"  (+{len(item.attachments)} attachments)"
        if item.reactions:
            out += "  [" + ", ".join(f"{r.emoji} {len(r.author_ids)}" for r in item.reactions) + "]"
        return out

    def show(self, item):
        previous = self.shown.get(item.id)
        # (The generated records' == does not accept None, hence the test.)
        if previous is not None and previous == item:
            return
        line = self.line(self.number(item.id), item)
        if previous is None:
            say(line)
        elif previous.edited_ms != item.edited_ms:
            say(f"edited: {line}")
        else:
            say(f"updated: {line}")
        self.shown[item.id] = item

    def removed(self, message_id):
        if self.shown.pop(message_id, None) is not None:
            say(f"[{self.number(message_id)}] deleted")

    def diffs(self, diffs):
        for diff in diffs:
            if diff.is_insert() or diff.is_update():
                self.show(diff.item)
            elif diff.is_remove():
                self.removed(diff.id)

    async def history(self):
        page = await self.room.page(None, HISTORY)
        for item in reversed(page.items):
            self.show(item)
        return len(page.items)

    def event(self, event):
        if event.is_peer_connected():
            say(f"* connected to peer {event.peer_id}")
        elif event.is_peer_lost():
            say(f"* disconnected from peer {event.peer_id}")
        elif event.is_discovered():
            say(f"* found peer {event.peer_id} on the local network")
        elif event.is_signal() and event.room_id == self.room.id():
            if event.author_id == self.me:
                return
            who = short(event.author_id)
            if event.kind == SignalKind.TYPING:
                say(f"* {who} is typing")
            elif event.kind == SignalKind.ONLINE and not self.online.get(event.author_id):
                # Online comes every presence period: say it on a change only.
                self.online[event.author_id] = True
                say(f"* {who} is online")
            elif event.kind == SignalKind.OFFLINE:
                self.online[event.author_id] = False
                say(f"* {who} went offline")

    def target(self, args, usage):
        """Parses `N rest` into the id of the message numbered N and the rest."""
        n, _, rest = args.partition(" ")
        try:
            n = int(n.strip("[]#"))
        except ValueError:
            raise Mistake(f"usage: {usage}") from None
        if not 1 <= n <= len(self.ids) or self.ids[n - 1] not in self.shown:
            raise Mistake(f"no message [{n}] in this session")
        return self.ids[n - 1], rest.strip()

    async def command(self, line):
        """Handles one line of input; returns False when the chat should end."""
        line = line.rstrip()
        if not line.strip():
            return True
        if line.startswith("//"):
            await self.room.send(line[1:])
            return True
        if not line.startswith("/"):
            await self.room.send(line)
            return True
        verb, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if verb in ("quit", "exit"):
            return False
        if verb == "help":
            say(HELP)
        elif verb == "reply":
            to, text = self.target(rest, "/reply N TEXT")
            if not text:
                raise Mistake("usage: /reply N TEXT")
            await self.room.reply(to, text)
        elif verb == "edit":
            message_id, text = self.target(rest, "/edit N TEXT")
            await self.room.edit(message_id, text)
        elif verb == "delete":
            message_id, _ = self.target(rest, "/delete N")
            await self.room.delete(message_id)
        elif verb == "react":
            message_id, emoji = self.target(rest, "/react N EMOJI")
            if not emoji:
                raise Mistake("usage: /react N EMOJI")
            await self.room.react(message_id, emoji)
        elif verb == "peers":
            peers = await self.client.peers()
            say(f"peers: {len(peers)} connected")
            for peer in peers:
                say(f"  {peer}")
        elif verb == "ticket":
            say(f"ticket: {await self.room.ticket()}")
        elif verb == "history":
            self.shown.clear()
            say("--- history ---")
            say(f"--- {await self.history()} messages ---")
        else:
            raise Mistake(f"unknown command /{verb} (try /help)")
        return True


class Mistake(Exception):
    """Something to tell the user; the chat goes on."""


async def settled_ticket(client, room):
    """A ticket once the client's addresses stop changing, so that it lists
    every interface a listener on 0.0.0.0 reports (one at a time)."""
    last = await client.addresses()
    waited = 0.0
    while waited < ADDRESS_SETTLE_S:
        await asyncio.sleep(ADDRESS_POLL_S)
        waited += ADDRESS_POLL_S
        now = await client.addresses()
        if now == last and now:
            break
        last = now
    return await room.ticket()


async def open_room(client, args):
    if args.join:
        return await client.join_room(args.join)
    rooms = await client.rooms()
    if rooms:
        return await client.room(rooms[0].id)
    return await client.create_room(f"{args.name}'s room")


async def session(client, args):
    loop = asyncio.get_running_loop()
    # Lines, diffs and events, in arrival order. Unbounded: a listener must
    # never wait, and everything queued is printed as soon as the loop is
    # free (a real app would coalesce diffs into its model instead).
    inbox = asyncio.Queue()
    # Subscribe to events first, so that no connection goes unsaid.
    events = client.subscribe_events(EventsToLoop(loop, inbox))
    room = await open_room(client, args)
    info = await room.info()
    say(f"ticket: {await settled_ticket(client, room)}")
    say(f"room: {info.name} ({room.id()})")
    say(f"you: {args.name} (author {short(client.author_id())})")
    say("type a message and press enter; /help lists the commands")

    view = View(client, room, args.name)
    timeline = await room.subscribe(TimelineToLoop(loop, inbox))
    await view.history()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, inbox.put_nowait, ("quit", None))
        except (NotImplementedError, RuntimeError):
            pass  # no signal handlers here (Windows): /quit and EOF still work
    threading.Thread(target=read_stdin, args=(loop, inbox), name="stdin", daemon=True).start()

    try:
        while True:
            kind, value = await inbox.get()
            if kind == "quit":
                break
            if kind == "diffs":
                view.diffs(value)
            elif kind == "event":
                view.event(value)
            elif kind == "line":
                try:
                    if not await view.command(value):
                        break
                except Mistake as e:
                    print(f"! {e}", file=sys.stderr, flush=True)
                except ConcordError.Closed:
                    raise
                except ConcordError as e:
                    print(f"! {e}", file=sys.stderr, flush=True)
    finally:
        timeline.cancel()
        events.cancel()


async def main():
    parser = argparse.ArgumentParser(
        description="A line-based chat in one Concord room, over the Python bindings.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="your name, shown for your own messages")
    parser.add_argument("--join", metavar="TICKET", help="join the room of this ticket")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data directory [default: $XDG_DATA_HOME/concord/NAME, "
        "or ~/.local/share/concord/NAME, as for `concord chat`]",
    )
    parser.add_argument(
        "--listen",
        metavar="MULTIADDR",
        action="append",
        help="listen on this address (repeatable) "
        "[default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]",
    )
    parser.add_argument(
        "--no-mdns", action="store_true", help="do not discover peers on the local network"
    )
    args = parser.parse_args()

    data_dir = args.data_dir or default_data_dir(args.name)
    os.makedirs(data_dir, exist_ok=True)
    config = ClientConfig(
        mdns=not args.no_mdns,
        sync_interval_ms=SYNC_INTERVAL_MS,
        listen_addresses=args.listen or ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"],
    )
    try:
        client = await Client.open(data_dir, config)
    except ConcordError as e:
        print(f"error: cannot open the store in {data_dir}: {e}", file=sys.stderr)
        return 1
    try:
        await session(client, args)
    except ConcordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        try:
            await client.shutdown()
        except ConcordError.Closed:
            pass
        # The Rust thread that finished that last call may still be inside
        # its continuation callback: it has queued the wake-up and needs the
        # interpreter lock once more to return. Before Python 3.14, a thread
        # asking for the lock while the interpreter shuts down is ended with
        # pthread_exit, and unwinding that through Rust aborts the process
        # ("FATAL: exception not rethrown"). Yielding to the loop lets the
        # callback finish first.
        await asyncio.sleep(EXIT_GRACE_S)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
