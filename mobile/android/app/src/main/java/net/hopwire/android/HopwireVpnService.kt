package net.hopwire.android

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
import android.content.Context
import android.content.Intent
import android.graphics.drawable.Icon
import android.net.VpnService
import android.os.Build
import android.util.Log
import java.io.File
import kotlinx.coroutines.CoroutineExceptionHandler
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.sync.Mutex
import kotlinx.coroutines.sync.withLock
import kotlinx.coroutines.withContext
import net.hopwire.core.CallbackException
import net.hopwire.core.ConnectOptions
import net.hopwire.core.ErrorKind
import net.hopwire.core.HopwireException
import net.hopwire.core.SessionConfig
import net.hopwire.core.SocketProtector
import net.hopwire.core.State
import net.hopwire.core.TunnelProvider
import net.hopwire.core.TunnelSettings
import net.hopwire.mobile.HopwireController
import net.hopwire.mobile.TunnelView

/**
 * Hopwire's VPN. While it runs it owns one [HopwireController] (one
 * session), gives the session Android's VPN interface and socket
 * protection, and keeps a foreground notification saying what the tunnel
 * does.
 *
 * The app and the tile start it with [connect] and [disconnect]. The
 * system starts it for always-on (the `android.net.VpnService` action, or
 * no intent when Android restarts it after killing the process); it then
 * connects with the user's last choice and retries while the network or
 * the nodes are not there yet.
 *
 * Lockdown: on Android, holding traffic back while the VPN is down is the
 * system's always-on "Block connections without VPN". Only the user can
 * set it, in Android's VPN settings; the app can read it (API 29+,
 * [alwaysOn]) but not set it. The session's own `lockdown` setting has no
 * effect here: on Android the session has no firewall of its own.
 */
class HopwireVpnService : VpnService() {
    private val scope = CoroutineScope(
        SupervisorJob() + Dispatchers.Main.immediate +
            CoroutineExceptionHandler { _, e -> Log.e(TAG, "unexpected failure", e) },
    )

    /**
     * Connects and disconnects run one at a time, in the order asked, which
     * keeps the start ids and always-on retries below in order. (The
     * session itself lets a later disconnect cancel a connect that is still
     * finding nodes; this service does not use that yet: a disconnect waits
     * here for the connect before it.)
     */
    private val commands = Mutex()

    /** Made by the first command, off the main thread; touched only under [commands]. */
    private var controller: HopwireController? = null

    /** Counts commands, so that a scheduled always-on retry can tell whether anything was asked since. */
    private var commandCount = 0

    /** The newest start, so that a finished disconnect does not stop the service under a connect asked after it. */
    private var lastStartId = 0

    /** Notifications are posted only while in the foreground, so none outlives the service. */
    private var foreground = false

    /** The view the notification shows now. */
    private var posted: TunnelView? = null

    private val notifications by lazy { getSystemService(NotificationManager::class.java) }

    private val tunnel = object : TunnelProvider {
        override fun establish(settings: TunnelSettings): Int {
            val builder = Builder()
                .setSession(getString(R.string.app_name))
                .setMtu(settings.mtu.toInt())
                // The session reads and writes it with non-blocking I/O.
                .setBlocking(false)
                // Whatever network is the default, following it as it changes.
                .setUnderlyingNetworks(null)
                .setConfigureIntent(openApp())
            if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
                // Not metered in itself: the VPN takes its underlying
                // network's meteredness, so apps still see Wi-Fi as unmetered.
                builder.setMetered(false)
            }
            // `settings.excluded` (the first hop, the ledger) is not routed
            // around the tunnel here: the session protects its own sockets
            // to them, and a route would let every app's traffic to them
            // bypass the tunnel too.
            val descriptor = try {
                builder.addAddress(settings.innerV4, 32)
                settings.innerV6?.let { builder.addAddress(it, 128) }
                // Always both defaults: IPv6 the exit does not carry goes
                // into the tunnel and is dropped there, instead of around it.
                settings.routes.forEach { builder.addRoute(it.address, it.prefix.toInt()) }
                settings.dns.forEach { builder.addDnsServer(it) }
                builder.establish()
            } catch (e: RuntimeException) {
                throw CallbackException.Failed("Android refused the tunnel's settings: ${e.message}")
            } ?: throw CallbackException.Failed(
                "Android gave no VPN interface: Hopwire's VPN permission was revoked, or another app is the always-on VPN",
            )
            // The session owns the descriptor from here on and closes it.
            return descriptor.detachFd()
        }

        // The session has closed the descriptor, which is what takes the
        // interface down on Android: nothing is left to undo.
        override fun teardown() = Unit
    }

    private val protector = object : SocketProtector {
        override fun protect(fd: Int): Boolean = this@HopwireVpnService.protect(fd)
    }

    override fun onCreate() {
        super.onCreate()
        val channel = NotificationChannel(CHANNEL, getString(R.string.channel_tunnel), NotificationManager.IMPORTANCE_LOW)
        channel.description = getString(R.string.channel_tunnel_description)
        notifications.createNotificationChannel(channel)
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        lastStartId = startId
        // First, whatever the action: the app, the tile and the
        // notification start this service with startForegroundService,
        // which must be answered with startForeground within seconds. The
        // foreground type comes from the manifest.
        val showing = posted
        startForeground(
            NOTIFICATION_ID,
            if (showing != null) notification(showing) else notification(getString(R.string.starting), null, on = true),
        )
        foreground = true
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) {
            alwaysOnState.value = AlwaysOn(enabled = isAlwaysOn, lockdown = isLockdownEnabled)
        }
        val action = intent?.action
        return when (action) {
            ACTION_CONNECT -> {
                val choice = choiceFrom(intent)
                submit { connect(choice) }
                START_STICKY
            }
            ACTION_DISCONNECT -> {
                submit { disconnect(startId) }
                START_NOT_STICKY
            }
            null, SERVICE_INTERFACE -> {
                if (!viewState.value.isOn) connectAlwaysOn(attempt = 0)
                START_STICKY
            }
            else -> {
                Log.w(TAG, "unknown action $action")
                if (stopSelfResult(startId)) leaveForeground()
                START_NOT_STICKY
            }
        }
    }

    override fun onRevoke() {
        // The user turned Hopwire off in Android's settings, or another VPN
        // app took over: the interface is gone. Not super.onRevoke(), which
        // stops the service at once: the disconnect stops it once the
        // session has let go.
        val startId = lastStartId
        submit { disconnect(startId) }
    }

    override fun onDestroy() {
        scope.cancel()
        controller?.let { c ->
            // The session outlives its service only to shut down, off the
            // main thread; the next service's session waits for that (they
            // share the state directory).
            closing = closer.launch {
                try {
                    c.shutdown()
                } finally {
                    c.close()
                }
            }
        }
        controller = null
        viewState.value = TunnelView.INITIAL
        alwaysOnState.value = null
        super.onDestroy()
    }

    private fun submit(command: suspend () -> Unit) {
        commandCount++
        scope.launch { commands.withLock { command() } }
    }

    private suspend fun connect(choice: ConnectOptions?) {
        val c = controller() ?: return
        try {
            c.connect(choice ?: c.lastChoice)
        } catch (e: HopwireException) {
            // The view (and so the app, the tile and the notification)
            // already says why and what to do.
            Log.i(TAG, "connect failed: ${HopwireController.describe(e)}")
        }
    }

    private suspend fun disconnect(startId: Int) {
        try {
            controller?.disconnect()
        } catch (e: HopwireException) {
            Log.w(TAG, "disconnect failed: ${HopwireController.describe(e)}")
        }
        if (stopSelfResult(startId)) leaveForeground()
    }

    /**
     * Always-on: connects with the last choice. A failure that may pass by
     * itself ([RETRIED]) is tried again, later and later, until it works or
     * the user asks for something else: no one is there to press Connect
     * again.
     */
    private fun connectAlwaysOn(attempt: Int) {
        val asked = ++commandCount
        scope.launch {
            val retry = commands.withLock {
                if (asked != commandCount) return@withLock false
                val c = controller() ?: return@withLock false
                try {
                    c.connectLast()
                    false
                } catch (e: HopwireException) {
                    Log.i(TAG, "always-on connect failed: ${HopwireController.describe(e)}")
                    e.kind in RETRIED
                }
            }
            if (retry) {
                delay(retryDelay(attempt))
                if (asked == commandCount) connectAlwaysOn(attempt + 1)
            }
        }
    }

    /** The controller, made on first use; null (and the view says why) when the session cannot start. */
    private suspend fun controller(): HopwireController? {
        controller?.let { return it }
        closing?.join()
        return try {
            val made = withContext(Dispatchers.IO) {
                HopwireController(sessionConfig(), tunnel, protector, PrefsChoiceStore(this@HopwireVpnService))
            }
            controller = made
            scope.launch { made.view.collect { show(it) } }
            made
        } catch (e: HopwireException) {
            show(
                TunnelView.INITIAL.copy(
                    state = State.ERROR,
                    headline = getString(R.string.start_failed),
                    detail = "${HopwireController.describe(e)}. ${TunnelView.advice(e.kind)}",
                    errorKind = e.kind,
                ),
            )
            null
        }
    }

    /**
     * The session's configuration. The state directory (wallet key,
     * settings, guard, DHT peers) is in noBackupFilesDir, which neither
     * cloud backup nor device-to-device transfer copies. The network to join
     * comes from the build (gradle.properties). Debug builds log to the
     * cache directory: the session appends and never trims, and Android
     * clears caches when storage runs low.
     */
    private fun sessionConfig() = SessionConfig(
        stateDir = File(noBackupFilesDir, "hopwire").path,
        bootstrap = BuildConfig.HOPWIRE_BOOTSTRAP.split(',').map(String::trim).filter(String::isNotEmpty),
        ledger = BuildConfig.HOPWIRE_LEDGER.trim().ifEmpty { null },
        logFilter = if (BuildConfig.DEBUG) "info" else null,
        logFile = if (BuildConfig.DEBUG) File(cacheDir, "hopwire.log").path else null,
    )

    /** Publishes `view` to the app and the tile, and to the notification when what it says changed. */
    private fun show(view: TunnelView) {
        viewState.value = view
        val last = posted
        if (foreground && (last == null || last.headline != view.headline || last.detail != view.detail)) {
            notifications.notify(NOTIFICATION_ID, notification(view))
            posted = view
        }
    }

    private fun leaveForeground() {
        foreground = false
        stopForeground(STOP_FOREGROUND_REMOVE)
    }

    private fun notification(view: TunnelView) = notification(view.headline, view.detail, view.isOn)

    private fun notification(headline: String, detail: String?, on: Boolean): Notification {
        // Through startForegroundService: the action may run while the app is
        // in the background.
        val disconnect = PendingIntent.getForegroundService(
            this,
            0,
            Intent(this, HopwireVpnService::class.java).setAction(ACTION_DISCONNECT),
            PendingIntent.FLAG_IMMUTABLE,
        )
        val action = Notification.Action.Builder(
            Icon.createWithResource(this, R.drawable.ic_tile),
            getString(if (on) R.string.disconnect else R.string.close),
            disconnect,
        ).build()
        return Notification.Builder(this, CHANNEL)
            .setSmallIcon(R.drawable.ic_tile)
            .setContentTitle(headline)
            .setContentText(detail)
            // An error's detail (what failed and what to do) is longer than a line.
            .setStyle(Notification.BigTextStyle().bigText(detail))
            .setContentIntent(openApp())
            .setOngoing(true)
            .setOnlyAlertOnce(true)
            .setCategory(Notification.CATEGORY_SERVICE)
            .addAction(action)
            .build()
    }

    private fun openApp(): PendingIntent =
        PendingIntent.getActivity(this, 0, Intent(this, MainActivity::class.java), PendingIntent.FLAG_IMMUTABLE)

    companion object {
        private const val TAG = "HopwireVpn"
        private const val ACTION_CONNECT = "net.hopwire.android.action.CONNECT"
        private const val ACTION_DISCONNECT = "net.hopwire.android.action.DISCONNECT"
        private const val EXTRA_COUNTRY = "country"
        private const val EXTRA_HOPS = "hops"
        private const val EXTRA_MAX_PRICE = "max_price_per_gib"
        private const val CHANNEL = "tunnel"
        private const val NOTIFICATION_ID = 1
        private const val RETRY_FIRST_MS = 5_000L
        private const val RETRY_MAX_MS = 300_000L

        /**
         * The failures always-on tries again: after boot the network may not
         * be up yet, and nodes come and go. The others (funds, permission,
         * configuration, version) need the user.
         */
        private val RETRIED = setOf(
            ErrorKind.NO_EXIT,
            ErrorKind.HOP_UNREACHABLE,
            ErrorKind.EXIT_REFUSED,
            ErrorKind.LEDGER_UNREACHABLE,
        )

        private val viewState = MutableStateFlow(TunnelView.INITIAL)

        /** The tunnel as the app and the tile show it: the running session's view; [TunnelView.INITIAL] while no service runs. */
        val view: StateFlow<TunnelView> = viewState.asStateFlow()

        private val alwaysOnState = MutableStateFlow<AlwaysOn?>(null)

        /** Android's always-on settings for Hopwire, read when the service starts (API 29+); null while unknown. */
        val alwaysOn: StateFlow<AlwaysOn?> = alwaysOnState.asStateFlow()

        /** Shuts down the sessions of destroyed services. */
        private val closer = CoroutineScope(SupervisorJob() + Dispatchers.Default)

        /** The newest of those shutdowns; a new session waits for it. Main thread only. */
        private var closing: Job? = null

        /**
         * Connects with `choice`, or with the last choice when it is null.
         * The caller has the VPN permission: [VpnService.prepare] returned
         * null.
         */
        fun connect(context: Context, choice: ConnectOptions?) {
            val intent = Intent(context, HopwireVpnService::class.java).setAction(ACTION_CONNECT)
            if (choice != null) {
                intent.putExtra(EXTRA_HOPS, choice.hops.toInt())
                choice.country?.let { intent.putExtra(EXTRA_COUNTRY, it) }
                choice.maxPricePerGib?.let { intent.putExtra(EXTRA_MAX_PRICE, it.toLong()) }
            }
            context.startForegroundService(intent)
        }

        fun disconnect(context: Context) {
            context.startForegroundService(Intent(context, HopwireVpnService::class.java).setAction(ACTION_DISCONNECT))
        }

        private fun choiceFrom(intent: Intent?): ConnectOptions? {
            if (intent == null || !intent.hasExtra(EXTRA_HOPS)) return null
            return ConnectOptions(
                country = intent.getStringExtra(EXTRA_COUNTRY),
                hops = intent.getIntExtra(EXTRA_HOPS, 0).toUByte(),
                maxPricePerGib = if (intent.hasExtra(EXTRA_MAX_PRICE)) intent.getLongExtra(EXTRA_MAX_PRICE, 0).toULong() else null,
            )
        }

        /** 5 s, doubling, at most 5 min. */
        private fun retryDelay(attempt: Int): Long = minOf(RETRY_FIRST_MS shl minOf(attempt, 6), RETRY_MAX_MS)
    }
}

/** Android's always-on VPN settings as they concern Hopwire (Settings → Network → VPN). */
data class AlwaysOn(val enabled: Boolean, val lockdown: Boolean)

/** Up or on its way: what the tile shows as active and the button offers to turn off. */
val TunnelView.isOn: Boolean
    get() = state == State.CONNECTING || state == State.CONNECTED || state == State.RECONNECTING

/** The kind of a failed call, as [TunnelView.advice] takes it. */
val HopwireException.kind: ErrorKind
    get() = when (this) {
        is HopwireException.NoExit -> ErrorKind.NO_EXIT
        is HopwireException.HopUnreachable -> ErrorKind.HOP_UNREACHABLE
        is HopwireException.ExitRefused -> ErrorKind.EXIT_REFUSED
        is HopwireException.Funds -> ErrorKind.FUNDS
        is HopwireException.LedgerUnreachable -> ErrorKind.LEDGER_UNREACHABLE
        is HopwireException.Config -> ErrorKind.CONFIG
        is HopwireException.Platform -> ErrorKind.PLATFORM
        is HopwireException.NotPermitted -> ErrorKind.NOT_PERMITTED
        is HopwireException.BadInput -> ErrorKind.BAD_INPUT
        is HopwireException.Version -> ErrorKind.VERSION
        is HopwireException.Internal -> ErrorKind.INTERNAL
        is HopwireException.Closed -> ErrorKind.CLOSED
    }
