package net.hopwire.android

import android.Manifest
import android.app.Activity
import android.content.Intent
import android.content.pm.PackageManager
import android.net.VpnService
import android.os.Build
import android.os.Bundle
import android.provider.Settings
import android.text.InputType
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.TextView
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.MainScope
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import net.hopwire.core.ConnectOptions
import net.hopwire.mobile.TunnelView

/**
 * The smallest useful screen: what the tunnel does and why, an exit
 * country, one Connect/Disconnect button, and Android's always-on settings
 * for Hopwire. Plain framework views, to keep dependencies few.
 */
class MainActivity : Activity() {
    private lateinit var choices: PrefsChoiceStore
    private lateinit var headline: TextView
    private lateinit var detail: TextView
    private lateinit var country: EditText
    private lateinit var toggle: Button
    private lateinit var alwaysOn: TextView

    /** Follows the tunnel while the activity is visible. */
    private var visible: CoroutineScope? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        choices = PrefsChoiceStore(this)
        headline = TextView(this).apply { textSize = 24f }
        detail = TextView(this)
        country = EditText(this).apply {
            hint = getString(R.string.country_hint)
            setSingleLine(true)
            inputType = InputType.TYPE_CLASS_TEXT or InputType.TYPE_TEXT_FLAG_CAP_CHARACTERS
            setText(choices.load()?.country)
        }
        toggle = Button(this).apply {
            setOnClickListener {
                if (HopwireVpnService.view.value.isOn) HopwireVpnService.disconnect(this@MainActivity) else connect()
            }
        }
        alwaysOn = TextView(this)
        val vpnSettings = Button(this).apply {
            text = getString(R.string.vpn_settings)
            setOnClickListener { startActivity(Intent(Settings.ACTION_VPN_SETTINGS)) }
        }
        val padding = (16 * resources.displayMetrics.density).toInt()
        setContentView(
            LinearLayout(this).apply {
                orientation = LinearLayout.VERTICAL
                setPadding(padding, padding, padding, padding)
                listOf(headline, detail, country, toggle, alwaysOn, vpnSettings).forEach { addView(it) }
            },
        )
        askForNotifications()
        // Not again when the activity is recreated (rotation): it was handled.
        if (savedInstanceState == null) handle(intent)
    }

    override fun onNewIntent(intent: Intent) {
        super.onNewIntent(intent)
        handle(intent)
    }

    override fun onStart() {
        super.onStart()
        visible = MainScope().apply {
            launch { HopwireVpnService.view.collect { render(it) } }
            launch { HopwireVpnService.alwaysOn.collect { render(it) } }
        }
    }

    override fun onStop() {
        visible?.cancel()
        visible = null
        super.onStop()
    }

    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        super.onActivityResult(requestCode, resultCode, data)
        if (requestCode != REQUEST_VPN) return
        if (resultCode == RESULT_OK) {
            HopwireVpnService.connect(this, chosen())
        } else {
            detail.text = getString(R.string.vpn_refused)
        }
    }

    /** The tile sends [ACTION_CONNECT] when the VPN permission is still to be asked for. */
    private fun handle(intent: Intent) {
        if (intent.action == ACTION_CONNECT) connect()
    }

    /** Asks for the VPN permission first if Android has not given it yet (the system's consent dialog). */
    private fun connect() {
        val consent = VpnService.prepare(this)
        if (consent == null) {
            HopwireVpnService.connect(this, chosen())
        } else {
            startActivityForResult(consent, REQUEST_VPN)
        }
    }

    /** The last choice (hops, price cap) with the country typed here. */
    private fun chosen(): ConnectOptions {
        val typed = country.text.toString().trim().uppercase().ifEmpty { null }
        return (choices.load() ?: ConnectOptions()).copy(country = typed)
    }

    /** Without it (Android 13+) the tunnel's notification is hidden; the tunnel works the same. */
    private fun askForNotifications() {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU &&
            checkSelfPermission(Manifest.permission.POST_NOTIFICATIONS) != PackageManager.PERMISSION_GRANTED
        ) {
            requestPermissions(arrayOf(Manifest.permission.POST_NOTIFICATIONS), REQUEST_NOTIFICATIONS)
        }
    }

    private fun render(view: TunnelView) {
        headline.text = view.headline
        detail.text = view.detail.orEmpty()
        toggle.text = getString(if (view.isOn) R.string.disconnect else R.string.connect)
        country.isEnabled = !view.isOn
    }

    private fun render(system: AlwaysOn?) {
        alwaysOn.text = if (system == null) {
            getString(R.string.always_on_unknown)
        } else {
            getString(R.string.always_on_state, onOff(system.enabled), onOff(system.lockdown))
        }
    }

    private fun onOff(value: Boolean) = getString(if (value) R.string.on else R.string.off)

    companion object {
        /** Connect, asking for the VPN permission first: what the tile opens the app with. */
        const val ACTION_CONNECT = "net.hopwire.android.action.CONNECT_ASKING"
        private const val REQUEST_VPN = 1
        private const val REQUEST_NOTIFICATIONS = 2
    }
}
