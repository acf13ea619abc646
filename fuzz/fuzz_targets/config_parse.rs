//! libFuzzer entry for `config_parse`: all logic and invariants live in `squall_fuzz::config_parse`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::config_parse(data));
