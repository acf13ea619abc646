//! libFuzzer entry for `mse_handshake`: all logic and invariants live in `squall_fuzz::mse_handshake`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::mse_handshake(data));
