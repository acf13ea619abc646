//! libFuzzer entry for `extended_and_metadata`: all logic and invariants live in `squall_fuzz::extended_and_metadata`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::extended_and_metadata(data));
