#![no_main]
//! The `gateway` fuzz target: see the entry point it calls.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vodmesh_console::serve::fuzz_request(data));
