package net.hopwire.android

import android.content.Context
import net.hopwire.core.ConnectOptions
import net.hopwire.mobile.ChoiceStore

/**
 * The user's last connect choice in SharedPreferences, so that always-on
 * (the system starting the service with no app in sight) connects the way
 * the user last did. Node records are not kept: they are a one-off way of
 * building a circuit, not a preference.
 */
class PrefsChoiceStore(context: Context) : ChoiceStore {
    private val prefs = context.getSharedPreferences(FILE, Context.MODE_PRIVATE)

    override fun load(): ConnectOptions? {
        if (!prefs.contains(HOPS)) return null
        return ConnectOptions(
            country = prefs.getString(COUNTRY, null),
            hops = prefs.getInt(HOPS, 0).toUByte(),
            maxPricePerGib = if (prefs.contains(MAX_PRICE)) prefs.getLong(MAX_PRICE, 0).toULong() else null,
        )
    }

    override fun save(choice: ConnectOptions) {
        val edit = prefs.edit().putInt(HOPS, choice.hops.toInt())
        choice.country?.let { edit.putString(COUNTRY, it) } ?: edit.remove(COUNTRY)
        // toLong keeps all 64 bits; load turns them back with toULong.
        choice.maxPricePerGib?.let { edit.putLong(MAX_PRICE, it.toLong()) } ?: edit.remove(MAX_PRICE)
        edit.apply()
    }

    private companion object {
        const val FILE = "choice"
        const val COUNTRY = "country"
        const val HOPS = "hops"
        const val MAX_PRICE = "max_price_per_gib"
    }
}
