//! The integration tests, as one binary (one link, one process to start): the real server
//! in-process on 127.0.0.1:0 or a Unix socket, the built binary as a process, and the fuzz
//! target's corpus replayed. One module per theme; their support is `endcall_testkit`.
// Tests: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod durability;
mod fuzz_replay;
mod health_reflection;
mod lifecycle;
mod limits;
mod process;
mod security;
mod silence;
mod teardown;
mod unix_socket;
mod versions;
