//! libFuzzer entry for `http_request`: all logic and invariants live in `squall_fuzz::http_request`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::http_request(data));
