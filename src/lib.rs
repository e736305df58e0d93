//! endcall-sidecar: decides when a voice-AI agent's call is over.
//!
//! Layers, from the inside out: `domain` (the contract's vocabulary), `machine` (the pure
//! per-session state machine), `report` (what a session tells about itself), `registry`
//! (sessions, per-session ordering, timers, expiry, limits), `journal` (durability), `convert`,
//! `service` and `codec` (the gRPC edge), `server` (listeners, health, reflection, drain),
//! `config` and `telemetry`; `auth` and `tls` (the optional bearer token and TLS); `runtime`
//! (the tokio runtime's one setting).
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod codec;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod journal;
pub mod limits;
pub mod machine;
pub mod probe;
pub mod proto;
pub mod registry;
pub mod report;
pub mod runtime;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod timers;
pub mod tls;
pub mod tool;
