// No console window on Windows; on Linux this is a plain binary.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // A handful of panels need no GPU compositing, and without it WebKit's
    // processes take about 100 MiB less (bench/gui.sh); a user's own
    // setting wins.
    if std::env::var_os("WEBKIT_DISABLE_COMPOSITING_MODE").is_none() {
        std::env::set_var("WEBKIT_DISABLE_COMPOSITING_MODE", "1");
    }
    hopwire_gui::app::run();
}
