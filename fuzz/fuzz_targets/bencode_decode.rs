//! libFuzzer entry for `bencode_decode`: all logic and invariants live in `squall_fuzz::bencode_decode`, which
//! tests/fuzz_regressions.rs also runs on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| squall_fuzz::bencode_decode(data));
