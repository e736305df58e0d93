//! Fuzz targets for endcall-sidecar; see `service` for the input format and the invariants.
#![forbid(unsafe_code)]

pub mod service;
