#![no_main]
//! The `verified` fuzz target: see the entry point it calls.

libfuzzer_sys::fuzz_target!(|data: &[u8]| vodmesh_proto::fuzzing::verified(data));
