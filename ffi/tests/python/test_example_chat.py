"""The Python chat example (`examples/python/chat.py`) run for real.

Two chat processes on 127.0.0.1 with mDNS off: A creates a room and prints
its ticket, B joins with it, A's message reaches B's stdout and B's reply
reaches A's, and both leave on /quit. Run with `ffi/test-python.sh`; the
chats load the generated module from CONCORD_BINDINGS, as test_concord does.
"""

import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BINDINGS = os.path.abspath(
    os.environ.get("CONCORD_BINDINGS", os.path.join(HERE, "..", "..", "target-bindings", "python"))
)
CHAT = os.path.abspath(os.path.join(HERE, "..", "..", "..", "examples", "python", "chat.py"))
# Generous: the machine may be busy building, and a message gossip misses
# waits for the chat's next catch-up (every 5 s).
DEADLINE = 30.0
LOCAL = ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]


class Chat:
    """A running chat.py: its stdin, and its stdout lines as they come."""

    def __init__(self, name, args, workdir):
        env = dict(os.environ)
        env["PYTHONPATH"] = BINDINGS + os.pathsep + env.get("PYTHONPATH", "")
        self.name = name
        self.stderr = open(os.path.join(workdir, f"{name}.stderr"), "w+")
        self.process = subprocess.Popen(
            [sys.executable, CHAT, "--name", name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            text=True,
            encoding="utf-8",
        )
        self.lines = queue.Queue()
        self.transcript = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def what_happened(self):
        self.stderr.seek(0)
        return (
            f"{self.name} printed:\n" + "\n".join(self.transcript)
            + f"\n{self.name}'s stderr:\n" + self.stderr.read()
        )

    def wait_for(self, what, want):
        """The first line from now on that `want` accepts; fails after DEADLINE."""
        deadline = time.monotonic() + DEADLINE
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"{self.name} never showed {what}; {self.what_happened()}")
            self.transcript.append(line)
            if want(line):
                return line

    def wait_exit(self):
        try:
            return self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit; {self.what_happened()}") from None

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass


class TestExampleChat(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="concord-py-chat-")
        self.chats = []

    def tearDown(self):
        # A failed test must not leave chats running.
        for chat in self.chats:
            chat.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, name, *args):
        data = ["--data-dir", os.path.join(self.dir, name)]
        chat = Chat(name, [*data, *LOCAL, *args], self.dir)
        self.chats.append(chat)
        return chat

    def test_two_chats_exchange_messages_then_quit(self):
        a = self.spawn("alice")
        ticket = a.wait_for("a ticket", lambda l: l.startswith("ticket: "))[len("ticket: "):]
        self.assertTrue(ticket.startswith("concord1"), ticket)
        b = self.spawn("bob", "--join", ticket)
        a.wait_for("a connection", lambda l: l.startswith("* connected to peer"))
        b.wait_for("a connection", lambda l: l.startswith("* connected to peer"))

        a.send("hello from alice")
        a.wait_for("its own message", lambda l: "alice (you): hello from alice" in l)
        at_b = b.wait_for("alice's message", lambda l: "hello from alice" in l)
        self.assertNotIn("(you)", at_b, "bob shows alice's message as his own")

        b.send("hi from bob")
        b.wait_for("its own message", lambda l: "bob (you): hi from bob" in l)
        at_a = a.wait_for("bob's reply", lambda l: "hi from bob" in l)
        self.assertNotIn("(you)", at_a, "alice shows bob's message as her own")

        a.send("/quit")
        self.assertEqual(a.wait_exit(), 0, a.what_happened())
        b.send("/quit")
        self.assertEqual(b.wait_exit(), 0, b.what_happened())


if __name__ == "__main__":
    unittest.main(verbosity=2)
