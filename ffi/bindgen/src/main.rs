//! `uniffi-bindgen`, built from the workspace's pinned UniFFI so the
//! generated bindings always match the scaffolding in `hopwire-ffi`.
//! `ffi/generate.sh` runs it in library mode.

fn main() {
    uniffi::uniffi_bindgen_main()
}
