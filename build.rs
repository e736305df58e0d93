//! Generates the gRPC code from `proto/` with protox, a pure-Rust protobuf compiler, so a
//! build needs no `protoc` on the machine.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protox and tonic-prost-build do not announce their inputs; without this, editing the
    // proto would not rebuild.
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(["endcall/v1/endcall.proto"], ["proto"])?;

    // Reflection serves this set, so grpcurl works with no proto file at hand.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("endcall_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // tonic's prost codec with buffers sized for this service's messages (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::SizedCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, {
            // Every message implements `prost::Name`: the codec names the message type of a
            // request that does not decode.
            let mut config = tonic_prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
