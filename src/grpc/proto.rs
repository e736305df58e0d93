//! Code generated from `proto/endcall/v1/endcall.proto` by `build.rs`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("endcall.v1");
}

/// The encoded descriptor set of our proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("endcall_descriptor");
