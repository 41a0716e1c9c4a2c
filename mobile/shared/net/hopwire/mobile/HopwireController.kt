// The app's side of a Hopwire session, the same on every Kotlin host: the
// Android VpnService shell and its UI use it, and the JVM tests run it
// against the real library. Nothing here knows Android: the OS's parts come
// in as the bindings' TunnelProvider and SocketProtector, and the user's
// remembered choice as a ChoiceStore.

package net.hopwire.mobile

import kotlinx.coroutines.channels.BufferOverflow
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import net.hopwire.core.ConnectOptions
import net.hopwire.core.ErrorKind
import net.hopwire.core.Event
import net.hopwire.core.EventListener
import net.hopwire.core.Hop
import net.hopwire.core.HopPayment
import net.hopwire.core.HopwireException
import net.hopwire.core.Node
import net.hopwire.core.NodeRole
import net.hopwire.core.Session
import net.hopwire.core.SessionConfig
import net.hopwire.core.Settings
import net.hopwire.core.SettingsChange
import net.hopwire.core.SocketProtector
import net.hopwire.core.State
import net.hopwire.core.Status
import net.hopwire.core.TunnelProvider
import net.hopwire.core.TunnelState
import net.hopwire.core.Wallet

/** Where the user's last connect choice is kept (Android: SharedPreferences). */
interface ChoiceStore {
    fun load(): ConnectOptions?
    fun save(choice: ConnectOptions)
}

/** A store that forgets on exit. */
class MemoryChoiceStore : ChoiceStore {
    @Volatile private var choice: ConnectOptions? = null
    override fun load() = choice
    override fun save(choice: ConnectOptions) {
        this.choice = choice
    }
}

/**
 * What a screen shows: the state with a headline and what to say under it
 * (never "connecting" without how long or why), the circuit, traffic and
 * spending.
 */
data class TunnelView(
    val state: State,
    val headline: String,
    /** The reason while reconnecting, the error and what to do, or the exit. */
    val detail: String?,
    /** Set in the error state: what kind of failure, for the UI to act on. */
    val errorKind: ErrorKind?,
    val circuit: List<Hop>,
    val innerV4: String?,
    val innerV6: String?,
    val rxBps: ULong,
    val txBps: ULong,
    val payments: List<HopPayment>,
    val spent: ULong,
) {
    companion object {
        val INITIAL = TunnelView(
            state = State.DISCONNECTED,
            headline = "Disconnected",
            detail = "Not connected: traffic goes out directly.",
            errorKind = null,
            circuit = emptyList(),
            innerV4 = null,
            innerV6 = null,
            rxBps = 0u,
            txBps = 0u,
            payments = emptyList(),
            spent = 0u,
        )

        /** The view after `event`; pure, so a UI test can drive it. */
        fun reduce(view: TunnelView, event: Event): TunnelView = when (event) {
            is Event.State -> when (val s = event.state) {
                TunnelState.Disconnected -> INITIAL
                TunnelState.Connecting -> view.copy(
                    state = State.CONNECTING,
                    headline = "Connecting",
                    detail = "Finding nodes and building a circuit…",
                    errorKind = null,
                )
                TunnelState.Connected -> view.copy(
                    state = State.CONNECTED,
                    headline = "Connected",
                    detail = view.circuit.lastOrNull()?.let { "Exit in ${it.region} · ${view.circuit.size} hops" },
                    errorKind = null,
                )
                is TunnelState.Reconnecting -> view.copy(
                    state = State.RECONNECTING,
                    headline = "Reconnecting (attempt ${s.attempt})",
                    detail = "${s.reason}. Traffic is held back until the new circuit is up.",
                    errorKind = null,
                )
                is TunnelState.Error -> view.copy(
                    state = State.ERROR,
                    headline = "Could not connect",
                    detail = "${s.message}. ${advice(s.kind)}",
                    errorKind = s.kind,
                    circuit = emptyList(),
                )
            }
            is Event.Circuit -> view.copy(
                circuit = event.circuit,
                innerV4 = event.innerV4,
                innerV6 = event.innerV6,
                detail = if (view.state == State.CONNECTED) {
                    event.circuit.lastOrNull()?.let { "Exit in ${it.region} · ${event.circuit.size} hops" }
                } else {
                    view.detail
                },
            )
            is Event.Traffic -> view.copy(
                rxBps = event.rxBps,
                txBps = event.txBps,
                payments = event.payments,
                spent = event.spent,
            )
            is Event.Settings, is Event.Wallet, is Event.Lagged -> view
        }

        /** What the user can do about an error of `kind`. */
        fun advice(kind: ErrorKind): String = when (kind) {
            ErrorKind.NO_EXIT -> "Choose another country or raise the price cap."
            ErrorKind.HOP_UNREACHABLE, ErrorKind.EXIT_REFUSED -> "Try again: another path will be chosen."
            ErrorKind.FUNDS -> "Top up the wallet."
            ErrorKind.LEDGER_UNREACHABLE -> "Check the network and try again."
            ErrorKind.PLATFORM -> "Allow Hopwire to set up a VPN, then try again."
            ErrorKind.CONFIG, ErrorKind.BAD_INPUT -> "Check the app's settings."
            ErrorKind.NOT_PERMITTED, ErrorKind.VERSION, ErrorKind.INTERNAL -> "Update the app or report the problem."
            ErrorKind.CLOSED -> "Restart the app."
        }
    }
}

/**
 * One Hopwire session and what the UI needs of it. Construct it off the
 * main thread (it opens the state directory); the suspend calls never block
 * the caller's thread: they run on the session's own threads.
 */
class HopwireController(
    config: SessionConfig,
    tunnel: TunnelProvider,
    protector: SocketProtector,
    private val choices: ChoiceStore = MemoryChoiceStore(),
) : AutoCloseable {
    private val viewState = MutableStateFlow(TunnelView.INITIAL)

    /** The current screen state; updated from the session's events. */
    val view: StateFlow<TunnelView> = viewState.asStateFlow()

    private val eventFlow = MutableSharedFlow<Event>(
        extraBufferCapacity = 256,
        onBufferOverflow = BufferOverflow.DROP_OLDEST,
    )

    /** Every event, for a screen that wants more than [view]. */
    val events: SharedFlow<Event> = eventFlow.asSharedFlow()

    private val session = Session(
        config,
        tunnel,
        protector,
        object : EventListener {
            override fun onEvent(event: Event) {
                viewState.update { TunnelView.reduce(it, event) }
                eventFlow.tryEmit(event)
            }
        },
    )

    /** The choice last connected with (or the defaults: any exit, 3 hops). */
    val lastChoice: ConnectOptions
        get() = choices.load() ?: ConnectOptions()

    /** Connects with `choice`, remembering it for next time and for always-on. */
    suspend fun connect(choice: ConnectOptions = lastChoice): Status {
        choices.save(choice)
        return session.connect(choice)
    }

    /** What always-on does when the OS starts the service without the app. */
    suspend fun connectLast(): Status = session.connect(lastChoice)

    suspend fun disconnect(): Status = session.disconnect()

    fun status(): Status = session.status()

    suspend fun nodes(role: NodeRole? = null, country: String? = null): List<Node> = session.nodes(role, country)

    suspend fun wallet(closeIdle: Boolean = false): Wallet = session.wallet(closeIdle)

    fun settings(): Settings = session.settings()

    fun changeSettings(change: SettingsChange): Settings = session.changeSettings(change)

    /** Disconnects and ends the session; the controller is done. */
    suspend fun shutdown() {
        session.shutdown()
    }

    /** Frees the native session (shutting it down if [shutdown] was not called). */
    override fun close() {
        session.close()
    }

    companion object {
        /** The message to show for a failed call. */
        fun describe(e: HopwireException): String = e.message ?: e.javaClass.simpleName
    }
}
