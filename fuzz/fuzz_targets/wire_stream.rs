//! libFuzzer entry for `wire_stream`: all logic and invariants live in `squall_fuzz::wire_stream`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::wire_stream(data));
