//! endcall-sidecar: decides when a voice-AI agent's call is over.
//!
//! Layers, each depending only on those before it:
//! - `endcall_core` (its own crate): the contract's vocabulary, the pure state machine, the
//!   end-of-call report and the tool's definition; no I/O, clock, tokio or protobuf.
//! - `telemetry`: logs, metrics and the report thread.
//! - `outbound`: the process's HTTP client (hyper, rustls) and its retry schedule.
//! - `livekit`: LiveKit's server API (`RoomService.DeleteRoom`) over that client.
//! - `sessions`: the registry of live sessions (ordering, timers, expiry, limits), the
//!   journal and the clock.
//! - `webhooks`: the delivery of each ended session's report to the operator's webhook
//!   receiver (queue, store, signing), over the outbound client.
//! - `grpc`: the service, the proto-to-domain conversion, codec, errors, limits, auth, TLS.
//! - `app`: configuration, the server and its drain, the runtime, the probe.
//!
//! What is public is what the binary, the tests, the benches and the fuzz target use.
#![forbid(unsafe_code)]

mod app;
mod grpc;
mod in_process;
mod livekit;
mod outbound;
mod sessions;
pub mod telemetry;
mod webhooks;

pub use app::{
    config::{Cli, Command, Config, ListenAddr},
    run,
    runtime::build as runtime,
    server::{serve, termination, Listener, ServeError},
};
pub use endcall_core as contract;
pub use grpc::service::EndCallApi;
pub use in_process::InProcess;

/// The API's generated types, clients and servers, and its descriptor set.
pub mod proto {
    pub use crate::grpc::proto::{v1, FILE_DESCRIPTOR_SET};
}

/// Connecting to a sidecar and asking for its health, as `endcall-sidecar probe` does.
pub mod probe {
    pub use crate::{
        app::probe::{check, connect, connect_with, default_server_name, Security},
        grpc::{
            auth::{Token, TokenArgs},
            tls::error_chain,
        },
    };
}
