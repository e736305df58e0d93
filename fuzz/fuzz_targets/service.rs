//! Decoded requests, in sequences, through the real gRPC service layer; the interpreter and
//! its invariants are `endcall_testkit::fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    endcall_testkit::fuzz::run(data);
});
