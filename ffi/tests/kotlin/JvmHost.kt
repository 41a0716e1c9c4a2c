// The Kotlin bindings and the platform-neutral controller on the JVM, against
// the real library, in a testnet's client namespace. The "OS" is played with
// JNA calls into libc: a TUN device per establish (its descriptor handed to
// the session, as VpnService.Builder.establish().detachFd() does), SO_MARK on
// protected sockets plus an ip rule that sends everything unmarked into the
// tunnel (the Linux analogue of VpnService.protect()).
//
//   JvmHost STATE_DIR LEDGER BOOTSTRAP URL SHA256 LOG
//
// Lists nodes, refuses bad input, connects through 3 hops with the fd it
// provides, checks the status and the events (through the controller's
// view), downloads URL through the tunnel and checks SHA256, disconnects,
// shuts down. Prints "ok: …" per step; exits non-zero on the first failure.

package net.hopwire.test

import com.sun.jna.Library
import com.sun.jna.Native
import com.sun.jna.NativeLong
import com.sun.jna.ptr.IntByReference
import java.net.URI
import java.security.MessageDigest
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.atomic.AtomicInteger
import kotlin.system.exitProcess
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import net.hopwire.core.ConnectOptions
import net.hopwire.core.Event
import net.hopwire.core.HopwireException
import net.hopwire.core.NodeRole
import net.hopwire.core.SessionConfig
import net.hopwire.core.SettingsChange
import net.hopwire.core.SocketProtector
import net.hopwire.core.State
import net.hopwire.core.TunnelProvider
import net.hopwire.core.TunnelSettings
import net.hopwire.core.TunnelState
import net.hopwire.mobile.HopwireController

@Suppress("FunctionName")
interface LibC : Library {
    fun open(path: String, flags: Int): Int
    fun ioctl(fd: Int, request: NativeLong, arg: ByteArray): Int
    fun close(fd: Int): Int
    fun setsockopt(fd: Int, level: Int, name: Int, value: IntByReference, len: Int): Int

    companion object {
        val C: LibC = Native.load("c", LibC::class.java)
    }
}

const val O_RDWR = 2
const val O_CLOEXEC = 0x80000
const val TUNSETIFF = 0x400454caL
const val IFF_TUN = 0x0001
const val IFF_NO_PI = 0x1000
const val SOL_SOCKET = 1
const val SO_MARK = 36
const val MARK = 0x6878
const val TABLE = "6878"

fun ip(vararg args: String) {
    val p = ProcessBuilder(listOf("ip") + args).redirectErrorStream(true).start()
    val out = p.inputStream.bufferedReader().readText()
    check(p.waitFor() == 0) { "ip ${args.joinToString(" ")}: $out" }
}

class JnaTunnel : TunnelProvider {
    val established = CopyOnWriteArrayList<TunnelSettings>()
    val teardowns = AtomicInteger()
    private var rules = false

    override fun establish(settings: TunnelSettings): Int {
        val name = "hwkt${established.size}"
        established.add(settings)
        val fd = LibC.C.open("/dev/net/tun", O_RDWR or O_CLOEXEC)
        check(fd >= 0) { "open /dev/net/tun: ${Native.getLastError()}" }
        val ifr = ByteArray(40)
        name.toByteArray().copyInto(ifr)
        val flags = IFF_TUN or IFF_NO_PI
        ifr[16] = (flags and 0xff).toByte()
        ifr[17] = (flags shr 8).toByte()
        if (LibC.C.ioctl(fd, NativeLong(TUNSETIFF), ifr) < 0) {
            LibC.C.close(fd)
            error("TUNSETIFF $name: errno ${Native.getLastError()}")
        }
        ip("addr", "add", "${settings.innerV4}/32", "dev", name)
        settings.innerV6?.let { ip("-6", "addr", "add", "$it/128", "dev", name, "nodad") }
        ip("link", "set", name, "mtu", settings.mtu.toString(), "up")
        for (r in settings.routes) {
            val family = if (':' in r.address) "-6" else "-4"
            ip(family, "route", "replace", "${r.address}/${r.prefix}", "dev", name, "table", TABLE)
        }
        if (!rules) {
            for (family in listOf("-4", "-6")) {
                ip(family, "rule", "add", "not", "fwmark", "0x%x".format(MARK), "lookup", TABLE, "priority", "101")
            }
            rules = true
        }
        return fd
    }

    override fun teardown() {
        teardowns.incrementAndGet()
        if (rules) {
            for (family in listOf("-4", "-6")) {
                ip(family, "rule", "del", "not", "fwmark", "0x%x".format(MARK), "lookup", TABLE, "priority", "101")
            }
            rules = false
        }
    }
}

class MarkProtector : SocketProtector {
    val calls = AtomicInteger()
    val failures = AtomicInteger()

    override fun protect(fd: Int): Boolean {
        calls.incrementAndGet()
        val ok = LibC.C.setsockopt(fd, SOL_SOCKET, SO_MARK, IntByReference(MARK), 4) == 0
        if (!ok) failures.incrementAndGet()
        return ok
    }
}

fun ok(step: String) {
    println("ok: $step")
    System.out.flush()
}

fun sha256(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

fun main(args: Array<String>) {
    if (args.size != 6) {
        System.err.println("usage: JvmHost STATE_DIR LEDGER BOOTSTRAP URL SHA256 LOG")
        exitProcess(2)
    }
    try {
        run(args[0], args[1], args[2], args[3], args[4], args[5])
    } catch (e: Throwable) {
        System.err.println("FAILED: $e")
        e.printStackTrace()
        exitProcess(1)
    }
    exitProcess(0)
}

fun run(stateDir: String, ledger: String, bootstrap: String, url: String, expected: String, log: String) = runBlocking {
    val tunnel = JnaTunnel()
    val protector = MarkProtector()
    val config = SessionConfig(
        stateDir = stateDir,
        bootstrap = listOf(bootstrap),
        ledger = ledger,
        logFilter = "info",
        logFile = log,
    )
    val controller = HopwireController(config, tunnel, protector)
    val events = CopyOnWriteArrayList<Event>()
    val collector = launch(start = CoroutineStart.UNDISPATCHED) { controller.events.collect { events.add(it) } }
    check(controller.status().state == State.DISCONNECTED)
    check(controller.view.value.state == State.DISCONNECTED)
    ok("a session, disconnected")

    val nodes = controller.nodes()
    val exits = nodes.count { NodeRole.EXIT in it.roles }
    val relays = nodes.count { NodeRole.RELAY in it.roles }
    check(exits >= 1 && relays >= 2) { "the DHT lists $exits exits and $relays relays: $nodes" }
    ok("nodes: $exits exits, $relays relays")

    try {
        controller.connect(ConnectOptions(hops = 4u))
        error("4 hops were accepted")
    } catch (e: HopwireException.BadInput) {
        check("hops" in (e.message ?: "")) { e.toString() }
    }
    try {
        controller.changeSettings(SettingsChange(dns = listOf("not an address")))
        error("a bad resolver was accepted")
    } catch (e: HopwireException.BadInput) {
    }
    ok("bad input is HopwireException.BadInput")

    val status = controller.connect(ConnectOptions(hops = 3u))
    check(status.state == State.CONNECTED) { "connect answered $status" }
    check(status.circuit.size == 3) { "circuit ${status.circuit}" }
    check(tunnel.established.size == 1) { "establish was called ${tunnel.established.size} times" }
    check(tunnel.established[0].innerV4 == status.innerV4) { "${tunnel.established[0]} vs $status" }
    check(protector.calls.get() >= 1 && protector.failures.get() == 0) {
        "protect: ${protector.calls} calls, ${protector.failures} failures"
    }
    check(controller.lastChoice.hops.toInt() == 3)
    ok("connected through ${status.circuit.joinToString(" → ") { it.region }} at ${status.innerV4}")

    val view = withTimeout(10_000) { controller.view.first { it.state == State.CONNECTED && it.circuit.size == 3 } }
    check(view.headline == "Connected" && view.detail?.startsWith("Exit in") == true) { view.toString() }
    check(view.circuit.map { it.id } == status.circuit.map { it.id }) { "view ${view.circuit} vs $status" }
    ok("the view says: ${view.headline} — ${view.detail}")

    val body = URI(url).toURL().openStream().use { it.readBytes() }
    check(sha256(body) == expected) { "the download (${body.size} bytes) is not byte-exact" }
    ok("downloaded ${body.size} bytes through the tunnel, byte-exact")
    val traffic = withTimeout(10_000) {
        controller.view.first { it.rxBps > 0u || controller.status().bytesReceived >= body.size.toULong() }
    }
    check(controller.status().bytesReceived >= body.size.toULong())
    ok("traffic counted: ${controller.status().bytesReceived} bytes in, view rx ${traffic.rxBps} bit/s")

    val down = controller.disconnect()
    check(down.state == State.DISCONNECTED) { "disconnect answered $down" }
    withTimeout(10_000) { controller.view.first { it.state == State.DISCONNECTED } }
    check(tunnel.teardowns.get() >= 1) { "teardown was not called" }
    ok("disconnected; the provider heard teardown")

    // The collector hears the last events on this thread's next suspension.
    withTimeout(10_000) {
        while (events.filterIsInstance<Event.State>().lastOrNull()?.state != TunnelState.Disconnected) delay(20)
    }
    val states = events.filterIsInstance<Event.State>().map { it.state }
    val connecting = states.indexOf(TunnelState.Connecting)
    val connected = states.indexOf(TunnelState.Connected)
    check(connecting >= 0 && connected > connecting) { "state events $states" }
    check(states.last() == TunnelState.Disconnected) { "state events $states" }
    check(events.any { it is Event.Circuit }) { "no circuit event" }
    ok("events: ${states.joinToString(" → ") { it.javaClass.simpleName }}")

    controller.shutdown()
    try {
        controller.status()
        error("status answered after shutdown")
    } catch (e: HopwireException.Closed) {
    }
    controller.close()
    collector.cancel()
    ok("shut down; later calls are HopwireException.Closed")
}
