// The Python suite's scenario from Kotlin on the JVM, through the generated
// bindings (JNA) and the real engine: two clients on loopback create and
// join a room, chat, edit, delete (the body is gone from both), react, page
// back; a device joins a room of members with an invite ticket alone and
// posts; errors are typed exceptions; the listener fires on Rust threads;
// suspend functions work under coroutines. Run by ffi/test-kotlin.sh.

import java.nio.file.Files
import java.util.Collections
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import uniffi.concord.Client
import uniffi.concord.ClientConfig
import uniffi.concord.ConcordException
import uniffi.concord.MemberRole
import uniffi.concord.Room
import uniffi.concord.RoomOptions
import uniffi.concord.TimelineDiff
import uniffi.concord.TimelineListener

const val LOOPBACK = "/ip4/127.0.0.1/tcp/0"
const val TIMEOUT_MS = 20_000L

fun config() = ClientConfig(mdns = false, syncIntervalMs = 300uL, listenAddresses = listOf(LOOPBACK))

suspend fun <T> eventually(what: String, probe: suspend () -> T?): T {
    val deadline = System.currentTimeMillis() + TIMEOUT_MS
    while (true) {
        val value = probe()
        if (value != null && value != false) return value
        check(System.currentTimeMillis() < deadline) { "timed out waiting for $what" }
        delay(50)
    }
}

suspend fun bodies(room: Room): List<String?> = room.page(null, 100u).items.map { it.body }

inline fun <reified E : Throwable> assertThrows(what: String, block: () -> Unit) {
    try {
        block()
    } catch (e: Throwable) {
        check(e is E) { "$what: expected ${E::class.simpleName}, got $e" }
        return
    }
    error("$what: expected ${E::class.simpleName}, nothing thrown")
}

class Recorder : TimelineListener {
    val diffs: MutableList<TimelineDiff> = Collections.synchronizedList(mutableListOf())
    val threads: MutableSet<Long> = Collections.synchronizedSet(mutableSetOf())

    override fun onDiffs(roomId: String, diffs: List<TimelineDiff>) {
        threads.add(Thread.currentThread().id)
        this.diffs.addAll(diffs)
    }
}

fun main() = runBlocking {
    val dirs = List(2) { Files.createTempDirectory("concord-kt-").toString() }
    val a = Client.open(dirs[0], config())
    val b = Client.open(dirs[1], config())
    var checks = 0

    // Create, and join by ticket.
    val roomA = a.createRoom("lobby")
    val ticket = roomA.ticket()
    check(ticket.startsWith("concord1"))
    val roomB = b.joinRoom(ticket)
    check(roomA.id() == roomB.id())
    val recorder = Recorder()
    val subscription = roomB.subscribe(recorder)

    // Chat both ways, with a reply.
    val hello = roomA.send("hello from A")
    eventually("B to get A's message") { "hello from A" in bodies(roomB) }
    val answer = roomB.reply(hello, "hi A")
    eventually("A to get B's reply") { "hi A" in bodies(roomA) }
    val reply = roomA.page(null, 10u).items.first { it.body == "hi A" }
    check(reply.id == answer && reply.replyTo == hello && reply.authorId == b.authorId())
    // End-to-end encrypted by default: each read the other's message, so
    // room keys went both ways; nothing waits for a key.
    check(roomA.info().encrypted && roomB.info().encrypted) { "rooms are encrypted by default" }
    check(roomB.page(null, 10u).items.none { it.waitingForKey })
    val clear = a.createRoomWithOptions(
        "in the clear", RoomOptions(encrypted = false, shareHistory = false, members = null))
    check(!clear.info().encrypted && a.rooms().first { it.id == clear.id() }.encrypted == false)
    checks++

    // The listener fired on a Rust thread, not this one.
    eventually("the listener to see the message") {
        recorder.diffs.toList().any { it is TimelineDiff.Insert && it.item.id == hello }
    }
    check(Thread.currentThread().id !in recorder.threads) { "listener ran on the caller's thread" }
    checks++

    // Edit.
    roomA.edit(hello, "hello again from A")
    eventually("B to see the edit") { "hello again from A" in bodies(roomB) }
    check("hello from A" !in bodies(roomB))
    checks++

    // React.
    roomB.react(hello, "👍")
    val reactions = eventually("A to see the reaction") {
        roomA.message(hello)?.reactions?.filter { it.emoji == "👍" }?.takeIf { it.isNotEmpty() }
    }
    check(reactions[0].authorIds == listOf(b.authorId()))
    checks++

    // Delete for everyone: the body is gone from both.
    val secret = roomA.send("secret")
    eventually("B to get the secret") { "secret" in bodies(roomB) }
    roomA.delete(secret)
    eventually("the delete to reach B") { "secret" !in bodies(roomB) && roomB.message(secret) == null }
    for (room in listOf(roomA, roomB)) {
        check("secret" !in bodies(room) && room.message(secret) == null)
    }
    eventually("the listener to see the delete") {
        recorder.diffs.toList().any { it is TimelineDiff.Remove && it.id == secret }
    }
    subscription.cancel()
    check(subscription.isCancelled())
    checks++

    // Page back through history, newest first, without gaps; suspend calls
    // run concurrently.
    val history = a.createRoom("history")
    val sent = (0 until 25).map { n -> async { history.send("message $n") } }.awaitAll()
    val seen = mutableListOf<String>()
    var before: String? = null
    do {
        val page = history.page(before, 10u)
        seen += page.items.map { it.id }
        before = page.older
    } while (page.hasMore)
    check(seen.toSet() == sent.toSet() && seen.size == 25)
    check(seen == history.page(null, 100u).items.map { it.id }) { "pages run newest first" }
    checks++

    // A room of members: B joins with an invite ticket alone, becomes a
    // member by itself once the governance arrives, and posts; A gets it.
    val crew = a.createRoomWith("crew", listOf())
    val crewB = b.joinRoom(crew.inviteTicket(MemberRole.MEMBER, b.authorId(), null))
    eventually("B to become a member") {
        crewB.governance().members.any { it.authorId == b.authorId() && it.role == MemberRole.MEMBER }
    }
    crewB.send("B joined by ticket")
    eventually("A to get B's post") { "B joined by ticket" in bodies(crew) }
    checks++

    // Typed exceptions.
    assertThrows<ConcordException.InvalidTicket>("bad ticket") { b.joinRoom("concord1!!!!") }
    assertThrows<ConcordException.InvalidCursor>("bad cursor") { roomA.page("zz", 10u) }
    assertThrows<ConcordException.InvalidId>("bad id") { roomA.edit("42", "x") }
    assertThrows<ConcordException.NotAuthor>("not the author") { roomB.edit(hello, "mine now") }
    assertThrows<ConcordException.InvalidAddress>("bad address") { a.dial("nope") }
    checks++

    // A closed client.
    a.shutdown()
    assertThrows<ConcordException.Closed>("closed client") { roomA.send("too late") }
    assertThrows<ConcordException.Closed>("closed client") { a.rooms() }
    checks++

    b.shutdown()
    dirs.forEach { java.io.File(it).deleteRecursively() }
    println("Kotlin: $checks checks passed")
}
