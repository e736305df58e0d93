//! The `service` fuzz target's interpreter: bytes become a sequence of RPCs on the real gRPC
//! service (in-process, on tokio's paused clock), and the contract's invariants are checked
//! after every step. A violated invariant panics, which libFuzzer reports as a crash and
//! proptest shrinks.
//!
//! Used by the libFuzzer target (`fuzz/fuzz_targets/service.rs`) and by the integration tests'
//! replay of the corpus, so a corpus file means the same run to both. `input` reads the bytes,
//! `harness` drives the service, `invariants` holds what every answer and report must satisfy.
//!
//! Input format: steps, read until the input ends (at most [`MAX_STEPS`]).
//! - a kind byte: 0xE0 is OnUserSpeech; any other, `kind % 9`: 0 OpenSession, 1 EndCall,
//!   2 OnSpeechCreated, 3 OnSpeechDone, 4 OnSessionClose, 5 WatchSession, 6 GetTool,
//!   7 GetSession, 8 advance the clock (0xE0 was an advance before OnUserSpeech existed; no
//!   committed corpus file has one, so each still means what it meant);
//! - advance: one byte `b`, `b < 128` is `b` × 100 ms, otherwise `b - 128` seconds;
//! - an RPC: an `ids` byte, a length, then that many bytes decoded with prost as the RPC's
//!   request (a message that does not decode skips the step: tonic refuses it before the
//!   service sees it). The length is one byte `b`: `b < 0xF8` is `b % 64`, otherwise the next
//!   two bytes, little-endian (long enough for the text limits).
//! - `ids` bits 0-2: the session id; 0-5 replace it with one of [`SESSIONS`] (so sequences meet
//!   on a few sessions and reach deep states), 6-7 keep the decoded one (any bytes).
//!   Bits 3-4: the speech id; 0-2 replace it with one of [`SPEECHES`], 3 keeps it.
//!   Bit 5: fold the close reason onto a valid one. Bit 6, on WatchSession: instead of opening
//!   a stream, drop the session's oldest open one (its client went away), and skip the message.

mod harness;
mod input;
mod invariants;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Once,
};

pub use self::input::{encode, Rpc, Step, SESSIONS, SPEECHES};
pub use self::invariants::MAX_STATUS_MESSAGE;
use self::{
    harness::Harness,
    input::{advance_by, rpc, Input, ADVANCE, KINDS, USER_SPEECH},
};

/// Live sessions at most: small, so `RESOURCE_EXHAUSTED` is met.
pub const MAX_SESSIONS: usize = 3;
/// Steps per input at most: bounds a run's time whatever the input's length.
pub const MAX_STEPS: usize = 400;

/// What a run reached, so tests can tell that inputs get deep into the service.
#[derive(Debug, Default)]
pub struct Summary {
    pub steps: usize,
    pub ok: usize,
    /// Refusals by RPC and `tonic::Code` (no strings: libFuzzer would chase their compares).
    pub refused: BTreeMap<(Rpc, i32), usize>,
    pub undecodable: usize,
    /// `pb::SessionState` values seen in reports.
    pub states: BTreeSet<i32>,
    /// `pb::DirectiveKind` values seen in reports.
    pub directives: BTreeSet<i32>,
    /// `pb::ShutdownCause` values of the `SHUTDOWN_SESSION` directives seen.
    pub causes: BTreeSet<i32>,
    /// Directives received on watch streams.
    pub watched: usize,
    /// Watch streams whose client went away (a `drop_stream` step that found one).
    pub streams_dropped: usize,
    /// `pb::TeardownCause` values of the sidecar's teardowns seen in reports.
    pub teardowns: BTreeSet<i32>,
    /// `pb::ShutdownCause` values of the `WIND_UP` and `REMIND` directives seen: the limits
    /// they led up to.
    pub reminded: BTreeSet<(i32, i32)>,
    /// `pb::EndedReason` values of closed sessions seen in reports.
    pub ended: BTreeSet<i32>,
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) -> Summary {
    quiet_logs();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut harness = Harness::start();
        let mut input = Input(data);
        while harness.summary.steps < MAX_STEPS {
            let Some(kind) = input.byte() else { break };
            if kind != USER_SPEECH && kind % KINDS == ADVANCE {
                let Some(b) = input.byte() else { break };
                harness.advance(advance_by(b)).await;
            } else {
                let Some(ids) = input.byte() else { break };
                let Some(len) = input.len() else { break };
                let message = input.take(len);
                harness.rpc(rpc(kind), ids, message).await;
            }
            harness.summary.steps += 1;
        }
        harness.finish().await;
        harness.summary
    })
}

/// Logs go nowhere, but at INFO: the end-of-call report is built and serialised when a
/// session closes, as in production.
fn quiet_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}
