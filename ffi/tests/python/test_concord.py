"""Tests of the Concord Python bindings against the real engine.

They load the compiled library through the generated module (`concord.py`,
made by `ffi/build-bindings.sh`) and run two clients on loopback, with mDNS
off so that other clients on the machine stay out. Run them with
`ffi/test-python.sh`; set CONCORD_BINDINGS to use another generated module
directory. Only the standard library is needed.
"""

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BINDINGS = os.environ.get(
    "CONCORD_BINDINGS",
    os.path.join(HERE, "..", "..", "target-bindings", "python"),
)
sys.path.insert(0, os.path.abspath(BINDINGS))

import concord  # noqa: E402
from concord import Client, ClientConfig, ConcordError, TimelineDiff  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# Long enough for a first gossip mesh or a catch-up on a loaded 2-core CI box.
TIMEOUT = 20.0


def config():
    # A short catch-up period heals anything gossip drops before its mesh forms.
    return ClientConfig(mdns=False, sync_interval_ms=300, listen_addresses=[LOOPBACK])


async def eventually(probe, what, timeout=TIMEOUT):
    """Awaits `probe()` until it returns something truthy, and returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def bodies(room, limit=100):
    page = await room.page(None, limit)
    return [item.body for item in page.items]


class Recorder(concord.TimelineListener):
    """Records every diff and the thread it arrived on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.diffs = []
        self.threads = set()

    def on_diffs(self, room_id, diffs):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.diffs.extend(diffs)

    def snapshot(self):
        with self.lock:
            return list(self.diffs), set(self.threads)


class Events(concord.EventListener):
    def __init__(self):
        self.lock = threading.Lock()
        self.events = []

    def on_event(self, event):
        with self.lock:
            self.events.append(event)

    def connected(self):
        with self.lock:
            return [e.peer_id for e in self.events if e.is_peer_connected()]

    def invite_outcomes(self, room_id):
        """InviteRedeemed and InviteFailed events about `room_id`, in order."""
        with self.lock:
            return [
                e for e in self.events
                if (e.is_invite_redeemed() or e.is_invite_failed()) and e.room_id == room_id
            ]


class ClientsTestCase(unittest.IsolatedAsyncioTestCase):
    """Two clients, A and B, each on its own data directory."""

    async def asyncSetUp(self):
        self.dirs = [tempfile.mkdtemp(prefix="concord-py-") for _ in range(2)]
        self.a = await Client.open(self.dirs[0], config())
        self.b = await Client.open(self.dirs[1], config())

    async def asyncTearDown(self):
        for client in (self.a, self.b):
            try:
                await client.shutdown()
            except ConcordError.Closed:
                pass
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    async def shared_room(self):
        """A room A created and B joined by ticket, once B sees A's first message."""
        room_a = await self.a.create_room("lobby")
        ticket = await room_a.ticket()
        self.assertTrue(ticket.startswith("concord1"))
        room_b = await self.b.join_room(ticket)
        self.assertEqual(room_a.id(), room_b.id())
        await room_a.send("welcome")
        await eventually(lambda: self._has(room_b, "welcome"), "B to see A's first message")
        return room_a, room_b

    @staticmethod
    async def _has(room, body):
        return body in await bodies(room)


class TestEncryption(ClientsTestCase):
    async def test_rooms_are_encrypted_by_default_and_keys_go_both_ways(self):
        room_a, room_b = await self.shared_room()
        self.assertTrue((await room_a.info()).encrypted)
        self.assertTrue((await room_b.info()).encrypted)
        page = await room_b.page(None, 10)
        self.assertEqual([item.waiting_for_key for item in page.items], [False])
        # B read A's message with A's room key; A reads B's with B's.
        await room_b.send("encrypted both ways")
        await eventually(lambda: self._has(room_a, "encrypted both ways"), "A to read B")
        page = await room_a.page(None, 10)
        self.assertFalse(any(item.waiting_for_key for item in page.items))

    async def test_an_unencrypted_room_is_an_explicit_choice(self):
        options = concord.RoomOptions(encrypted=False, share_history=False, members=None)
        room = await self.a.create_room_with_options("in the clear", options)
        self.assertFalse((await room.info()).encrypted)
        listed = {r.id: r.encrypted for r in await self.a.rooms()}
        self.assertIs(listed[room.id()], False)
        shared = concord.RoomOptions(encrypted=True, share_history=True, members=[])
        crew = await self.a.create_room_with_options("crew", shared)
        self.assertTrue((await crew.info()).encrypted)
        governance = await crew.governance()
        self.assertEqual([m.author_id for m in governance.members], [self.a.author_id()])


class TestChat(ClientsTestCase):
    async def test_two_clients_chat_edit_delete_react_and_page_back(self):
        room_a, room_b = await self.shared_room()

        # Chat both ways, with a reply.
        hello = await room_a.send("hello from A")
        await eventually(lambda: self._has(room_b, "hello from A"), "B to get A's message")
        answer = await room_b.reply(hello, "hi A")
        await eventually(lambda: self._has(room_a, "hi A"), "A to get B's reply")
        page = await room_a.page(None, 10)
        reply = next(i for i in page.items if i.body == "hi A")
        self.assertEqual(reply.id, answer)
        self.assertEqual(reply.reply_to, hello)
        self.assertEqual(reply.author_id, self.b.author_id())
        self.assertGreater(reply.timestamp_ms, 1_600_000_000_000)
        own = next(i for i in page.items if i.id == hello)
        self.assertIsNotNone(own.delivery, "own messages carry a delivery state")
        self.assertIsNone(reply.delivery, "others' messages do not")

        # Edit: B sees the new text, not the old one.
        await room_a.edit(hello, "hello again from A")
        await eventually(lambda: self._has(room_b, "hello again from A"), "B to see the edit")
        self.assertNotIn("hello from A", await bodies(room_b))
        edited = await room_b.message(hello)
        self.assertIsNotNone(edited.edited_ms)

        # React, and see the reaction arrive.
        await room_b.react(hello, "👍")

        async def reacted():
            item = await room_a.message(hello)
            return item and [r for r in item.reactions if r.emoji == "👍"]

        reactions = await eventually(reacted, "A to see B's reaction")
        self.assertEqual(reactions[0].author_ids, [self.b.author_id()])

        # Delete for everyone: the body is gone from both devices.
        secret = await room_a.send("secret")
        await eventually(lambda: self._has(room_b, "secret"), "B to get the secret")
        await room_a.delete(secret)

        async def gone_from_b():
            return "secret" not in await bodies(room_b) and await room_b.message(secret) is None

        await eventually(gone_from_b, "the delete to reach B")
        for room in (room_a, room_b):
            self.assertNotIn("secret", await bodies(room))
            self.assertIsNone(await room.message(secret))
        # A deleted message cannot be edited or reacted to.
        with self.assertRaises(ConcordError.MessageDeleted):
            await room_a.edit(secret, "back")
        # Only the author edits.
        with self.assertRaises(ConcordError.NotAuthor):
            await room_b.edit(hello, "not yours")

        await room_b.mark_read(hello)
        await room_b.typing(True)

    async def test_page_back_through_history(self):
        room_a = await self.a.create_room("history")
        sent = [await room_a.send(f"message {n}") for n in range(25)]
        seen, before, pages = [], None, 0
        while True:
            page = await room_a.page(before, 10)
            pages += 1
            seen.extend(item.id for item in page.items)
            if not page.has_more:
                self.assertIsNone(page.older)
                break
            before = page.older
            self.assertIsNotNone(before)
        self.assertEqual(pages, 3)
        self.assertEqual(seen, list(reversed(sent)), "pages run newest first, without gaps")
        rooms = await self.a.rooms()
        self.assertIn(("history", room_a.id()), [(r.name, r.id) for r in rooms])
        self.assertEqual(rooms[0].creator_id, self.a.author_id())


class TestGovernance(ClientsTestCase):
    async def test_members_only_room_invite_roles_and_moderation(self):
        from concord import MemberRole

        room_a = await self.a.create_room_with("crew", [])
        room_b = await self.b.join_room(await room_a.ticket())
        gov = await eventually(
            lambda: self._founded(room_b), "B to receive the room's governance"
        )
        self.assertFalse(gov.open)
        self.assertEqual(
            [(m.author_id, m.role) for m in gov.members],
            [(self.a.author_id(), MemberRole.ADMIN)],
        )
        # Not a member yet: a typed exception, and nothing is sent.
        with self.assertRaises(ConcordError.NotAllowed):
            await room_b.send("let me in")
        # A invites B's key; B redeems it once the invite arrives.
        invite = await room_a.invite(MemberRole.MEMBER, self.b.author_id(), None)
        await eventually(
            lambda: self._has_invite(room_b), "B to see the registered invite"
        )
        await room_b.redeem(invite)
        await eventually(lambda: self._member(room_a, self.b.author_id()), "A to see B join")
        hello = await room_b.send("B is in")
        await eventually(lambda: self._has(room_a, "B is in"), "A to see B's message")
        # A member may not moderate; an admin deletes B's message everywhere.
        with self.assertRaises(ConcordError.NotAllowed):
            await room_b.set_topic("mine")
        await room_a.set_topic("launch")
        await room_a.delete(hello)
        await eventually(
            lambda: self._gone(room_b, "B is in"), "the moderated message to leave B"
        )
        # Bad arguments are typed errors.
        with self.assertRaises(ConcordError.InvalidId):
            await room_a.kick("not an author")
        with self.assertRaises(ConcordError.InvalidInput):
            await room_b.redeem("zz")
        # A removes B; the audit trail tells it all.
        await room_a.kick(self.b.author_id())
        await eventually(
            lambda: self._not_member(room_b, self.b.author_id()), "B to see its removal"
        )
        with self.assertRaises(ConcordError.NotAllowed):
            await room_b.send("still here?")
        trail = [e.description.split(" ")[0] for e in await room_a.audit()]
        # The room is encrypted: A and B each published device keys once.
        self.assertEqual(trail.count("published"), 2, trail)
        self.assertEqual([t for t in trail if t != "published"], ["created", "invited", "joined", "set", "removed"])

    async def test_invite_ticket_alone_makes_its_holder_a_member(self):
        from concord import MemberRole

        events = Events()
        subscription = self.b.subscribe_events(events)
        room_a = await self.a.create_room_with("crew", [])
        ticket = await room_a.invite_ticket(MemberRole.MEMBER, self.b.author_id(), None)
        self.assertTrue(ticket.startswith("concord1"))
        # B joins with the ticket alone: its client redeems the invite by
        # itself once the room's governance arrives.
        room_b = await self.b.join_room(ticket)
        self.assertEqual(room_a.id(), room_b.id())

        async def outcomes():
            return events.invite_outcomes(room_b.id())

        first = (await eventually(outcomes, "B's invite to be redeemed"))[0]
        self.assertTrue(first.is_invite_redeemed(), first)
        self.assertTrue(await self._member(room_b, self.b.author_id()))
        await room_b.send("B joined by ticket")
        await eventually(
            lambda: self._has(room_a, "B joined by ticket"), "A to see B's message"
        )
        self.assertTrue(await self._member(room_a, self.b.author_id()))
        # Joining with the same ticket again is harmless: B is a member.
        await self.b.join_room(ticket)

        async def second():
            return len(events.invite_outcomes(room_b.id())) == 2

        await eventually(second, "the second join's outcome")
        self.assertTrue(events.invite_outcomes(room_b.id())[1].is_invite_redeemed())
        trail = [e.description.split(" ")[0] for e in await room_a.audit()]
        # The room is encrypted: A and B each published device keys once.
        self.assertEqual(trail.count("published"), 2, trail)
        self.assertEqual([t for t in trail if t != "published"], ["created", "invited", "joined"])
        # Bad arguments are typed errors.
        with self.assertRaises(ConcordError.InvalidId):
            await room_a.invite_ticket(MemberRole.MEMBER, "not an author", None)
        subscription.cancel()

    @staticmethod
    async def _founded(room):
        gov = await room.governance()
        return gov if gov.members else None

    @staticmethod
    async def _has_invite(room):
        return bool((await room.governance()).pending_invites)

    @staticmethod
    async def _member(room, author_id):
        return any(m.author_id == author_id for m in (await room.governance()).members)

    @classmethod
    async def _not_member(cls, room, author_id):
        return not await cls._member(room, author_id)

    @staticmethod
    async def _gone(room, body):
        return body not in await bodies(room)


class TestListeners(ClientsTestCase):
    async def test_timeline_listener_fires_from_rust_threads(self):
        room_a, room_b = await self.shared_room()
        recorder = Recorder()
        subscription = await room_b.subscribe(recorder)
        main = threading.get_ident()

        sent = await room_a.send("seen by a listener")

        def inserted():
            diffs, _ = recorder.snapshot()
            return [d.item for d in diffs if d.is_insert() and d.item.id == sent]

        # Only await here: the callback must arrive while the main thread waits.
        async def probe():
            return inserted()

        items = await eventually(probe, "the listener to see the message")
        self.assertEqual(items[0].body, "seen by a listener")
        _, threads = recorder.snapshot()
        self.assertNotIn(main, threads, "listeners are called on Rust threads")

        # Edits and deletes arrive as diffs too.
        await room_a.delete(sent)

        async def removed():
            diffs, _ = recorder.snapshot()
            return [d for d in diffs if d.is_remove() and d.id == sent]

        await eventually(removed, "the listener to see the delete")

        # Cancelling stops delivery.
        subscription.cancel()
        self.assertTrue(subscription.is_cancelled())
        count = len(recorder.snapshot()[0])
        await room_b.send("after cancel")
        await asyncio.sleep(0.3)
        self.assertEqual(len(recorder.snapshot()[0]), count)

    async def test_a_throwing_listener_does_not_break_the_room(self):
        calls = []

        class Broken(concord.TimelineListener):
            def on_diffs(self, room_id, diffs):
                calls.append(len(diffs))
                raise RuntimeError("app bug")

        room_a = await self.a.create_room("robust")
        sub = await room_a.subscribe(Broken())
        await room_a.send("one")
        await room_a.send("two")
        self.assertEqual(await bodies(room_a), ["two", "one"])
        # The listener ran for both changes: its exception did not unsubscribe it.
        self.assertEqual(len(calls), 2)
        sub.cancel()

    async def test_event_listener_sees_the_peer_connect(self):
        events = Events()
        subscription = self.a.subscribe_events(events)
        await self.shared_room()

        async def connected():
            return self.b.peer_id() in events.connected()

        await eventually(connected, "a PeerConnected event")
        self.assertIn(self.b.peer_id(), await self.a.peers())
        subscription.cancel()


class TestErrors(ClientsTestCase):
    async def test_bad_arguments_raise_typed_errors(self):
        room = await self.a.create_room("errors")
        good = await room.send("x")
        for ticket in ["", "hello", "concord1", "concord1!!!!", "concord1" + "a" * 10_000]:
            with self.assertRaises(ConcordError.InvalidTicket, msg=ticket[:20]):
                await self.b.join_room(ticket)
        for cursor in ["", "zz", "00" * 10, good]:
            with self.assertRaises(ConcordError.InvalidCursor):
                await room.page(cursor, 10)
        for bad_id in ["", "42", "not-a-uuid"]:
            with self.assertRaises(ConcordError.InvalidId):
                await room.edit(bad_id, "y")
            with self.assertRaises(ConcordError.InvalidId):
                await room.react(bad_id, "👍")
        with self.assertRaises(ConcordError.InvalidId):
            await self.a.room("xyz")
        with self.assertRaises(ConcordError.UnknownRoom):
            await self.a.room("00" * 32)
        with self.assertRaises(ConcordError.UnknownMessage):
            await room.edit("01890000-0000-7000-8000-000000000000", "y")
        with self.assertRaises(ConcordError.InvalidAddress):
            await self.a.dial("not an address")
        with self.assertRaises(ConcordError.InvalidAddress):
            await Client.open(self.dirs[0] + "-x", ClientConfig(listen_addresses=["nope"]))
        with self.assertRaises(ConcordError.InvalidInput):
            await Client.open(self.dirs[0] + "-x", ClientConfig(sync_interval_ms=0))
        # Every error is a ConcordError, and the room still works afterwards.
        self.assertTrue(issubclass(ConcordError.InvalidTicket, ConcordError))
        await room.edit(good, "still fine")
        self.assertEqual(await bodies(room), ["still fine"])

    async def test_closed_client_raises_closed(self):
        room = await self.a.create_room("closing")
        await self.a.shutdown()
        with self.assertRaises(ConcordError.Closed):
            await room.send("too late")
        with self.assertRaises(ConcordError.Closed):
            await self.a.create_room("too late")
        with self.assertRaises(ConcordError.Closed):
            await self.a.rooms()
        with self.assertRaises(ConcordError.Closed):
            await room.page(None, 10)
        with self.assertRaises(ConcordError.Closed):
            await self.a.listen(LOOPBACK)
        # Identity stays readable; a second shutdown is harmless or Closed.
        self.assertEqual(len(self.a.author_id()), 64)

    async def test_reopening_keeps_identity_and_rooms(self):
        author, peer = self.a.author_id(), self.a.peer_id()
        room = await self.a.create_room("durable")
        await room.send("kept")
        await self.a.shutdown()
        self.a = await Client.open(self.dirs[0], config())
        self.assertEqual((self.a.author_id(), self.a.peer_id()), (author, peer))
        again = await self.a.room(room.id())
        self.assertEqual(await bodies(again), ["kept"])


class TestAsync(ClientsTestCase):
    async def test_async_methods_run_concurrently_under_asyncio(self):
        room = await self.a.create_room("busy")
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(room.send(f"m{n}") for n in range(50)))
        task.cancel()
        self.assertEqual(len(set(ids)), 50)
        self.assertGreater(ticks, 0, "the event loop kept running during the calls")
        page = await room.page(None, 100)
        self.assertEqual(sorted(i.body for i in page.items), sorted(f"m{n}" for n in range(50)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
