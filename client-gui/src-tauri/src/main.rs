// No console window on Windows; on Linux this is a plain binary.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    hopwire_gui::app::run();
}
