#![no_main]
//! The `playlist` fuzz target: see the entry point it calls.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vodmesh_tools::source::fuzz_playlist(data));
