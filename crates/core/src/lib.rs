//! endcall-core: the end-call contract (`docs/contract.md`) as a pure state machine.
//!
//! Events and the time go in, directives and the next state come out: no I/O, no clock, no
//! tokio, no protobuf. This crate's dependencies keep it so; the sidecar crate wraps it with
//! the session registry, timers, durability and the gRPC edge.
#![forbid(unsafe_code)]

pub mod domain;
pub mod machine;
pub mod report;
pub mod tool;
