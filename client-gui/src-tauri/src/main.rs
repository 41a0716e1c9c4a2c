// No console window on Windows; on Linux this is a plain binary.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

/// WebKit settings the app starts with unless the user's environment says
/// otherwise. A handful of panels of our own need neither GPU compositing
/// (nor so the DMA-BUF renderer that hands GPU buffers to the window) nor a
/// JavaScript JIT: without them WebKit's processes take about 100 MiB less
/// (bench/gui.sh), and a web process that never writes executable memory
/// is a smaller target.
const WEBKIT_DEFAULTS: [(&str, &str); 3] = [
    ("WEBKIT_DISABLE_COMPOSITING_MODE", "1"),
    ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
    ("JSC_useJIT", "0"),
];

fn main() {
    // Before any thread exists: WebKit's processes inherit these.
    for (name, value) in WEBKIT_DEFAULTS {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
    hopwire_gui::app::run();
}
