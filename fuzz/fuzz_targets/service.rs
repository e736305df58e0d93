//! Decoded requests, in sequences, through the real gRPC service layer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    endcall_sidecar_fuzz::service::run(data);
});
