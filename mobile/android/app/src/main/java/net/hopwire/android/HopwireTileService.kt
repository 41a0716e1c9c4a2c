package net.hopwire.android

import android.app.PendingIntent
import android.content.Intent
import android.net.VpnService
import android.os.Build
import android.service.quicksettings.Tile
import android.service.quicksettings.TileService
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.MainScope
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import net.hopwire.mobile.TunnelView

/**
 * The Quick Settings tile: active while the tunnel is up or coming up, with
 * the view's headline under its label (API 29+). A tap turns the tunnel off,
 * or on with the last choice.
 */
class HopwireTileService : TileService() {
    /** Follows the tunnel while the tile is on screen. */
    private var listening: CoroutineScope? = null

    override fun onStartListening() {
        super.onStartListening()
        listening = MainScope().apply { launch { HopwireVpnService.view.collect { show(it) } } }
    }

    override fun onStopListening() {
        listening?.cancel()
        listening = null
        super.onStopListening()
    }

    override fun onClick() {
        super.onClick()
        when {
            HopwireVpnService.view.value.isOn -> HopwireVpnService.disconnect(this)
            VpnService.prepare(this) == null -> HopwireVpnService.connect(this, null)
            else -> askInApp()
        }
    }

    /**
     * Without the VPN permission yet: the system's consent dialog answers
     * only an activity (startActivityForResult), so the app asks for it and
     * then connects.
     */
    private fun askInApp() {
        val intent = Intent(this, MainActivity::class.java)
            .setAction(MainActivity.ACTION_CONNECT)
            .addFlags(Intent.FLAG_ACTIVITY_NEW_TASK)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.UPSIDE_DOWN_CAKE) {
            startActivityAndCollapse(PendingIntent.getActivity(this, 0, intent, PendingIntent.FLAG_IMMUTABLE))
        } else {
            // The Intent form: the only one before Android 14, refused for apps targeting 14+ on 14+.
            @Suppress("DEPRECATION")
            startActivityAndCollapse(intent)
        }
    }

    private fun show(view: TunnelView) {
        val tile = qsTile ?: return
        tile.state = if (view.isOn) Tile.STATE_ACTIVE else Tile.STATE_INACTIVE
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) tile.subtitle = view.headline
        tile.updateTile()
    }
}
