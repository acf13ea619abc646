//! libFuzzer entry for `metainfo_parse`: all logic and invariants live in `squall_fuzz::metainfo_parse`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::metainfo_parse(data));
