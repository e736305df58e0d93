//! Test support shared by endcall-sidecar's integration tests, its benches and its fuzz target:
//! the server in-process and as a process, request builders, test certificates, and the fuzz
//! target's interpreter (so a corpus file means the same run to libFuzzer and to the tests).
#![forbid(unsafe_code)]
// Test support: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

pub mod fuzz;
pub mod pki;
pub mod process;
pub mod requests;
pub mod server;

pub use requests::*;
pub use server::{Client, TestServer};

/// How long a test waits for something that should happen in milliseconds; generous so a
/// loaded CI machine cannot make it flaky, and only ever reached when the test fails anyway.
pub const PATIENCE: Duration = Duration::from_secs(10);
