//! The UniFFI bindings generator, built against the same uniffi version as
//! the library so that generated code and scaffolding always agree. Run it
//! through `ffi/build-bindings.sh`.

fn main() {
    uniffi::uniffi_bindgen_main();
}
