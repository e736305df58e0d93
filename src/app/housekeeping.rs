//! The process's side of the registry's hooks: end-of-call reports go to the log and, when
//! configured, to the webhook receiver; rooms the sidecar must delete go to the teardown
//! worker; the timer task's once-a-second tick lets the allocator give freed memory back.

use std::sync::Arc;

use endcall_core::{domain::TeardownOrder, report::Report};

use crate::{
    app::teardown::{self, TeardownQueue, Teardowns},
    sessions::{
        clock::Clock,
        registry::{Hooks, TimerThread, Wiring},
    },
    telemetry,
    webhooks::Submitter,
};

/// The hooks the server gives its registry.
pub(crate) struct ProcessHooks {
    teardowns: TeardownQueue,
    /// Where ended sessions' events go, with `--webhook-url`.
    webhooks: Option<Submitter>,
}

impl ProcessHooks {
    /// What a registry of this process is wired to: tokio's clock, these hooks, and its timer
    /// task where `timers` says; and the teardown queue's receiving end, to start once the
    /// registry exists (orders a restart hands out wait in it until then).
    pub(crate) fn wiring(timers: TimerThread, webhooks: Option<Submitter>) -> (Wiring, Teardowns) {
        let (queue, teardowns) = teardown::queue();
        let wiring = Wiring {
            clock: Clock::new(),
            timers,
            hooks: Arc::new(ProcessHooks {
                teardowns: queue,
                webhooks,
            }),
        };
        (wiring, teardowns)
    }
}

impl Hooks for ProcessHooks {
    fn wants_reports(&self) -> bool {
        self.webhooks.is_some() || telemetry::reports_enabled()
    }

    /// Neither consumer does any I/O or waits here: both queue the report for a thread of
    /// their own. With both on, the log gets a copy (a few allocations, far less than the
    /// JSON either writes).
    fn session_ended(&self, report: Report) {
        match &self.webhooks {
            None => telemetry::session_ended(report),
            Some(webhooks) => {
                if telemetry::reports_enabled() {
                    telemetry::session_ended(report.clone());
                }
                webhooks.ended(report);
            }
        }
    }

    fn wants_restored_reports(&self) -> bool {
        self.webhooks
            .as_ref()
            .is_some_and(Submitter::wants_restored)
    }

    fn session_restored_ended(&self, report: Report) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.restored(report);
        }
    }

    fn teardown(&self, order: TeardownOrder) {
        self.teardowns.push(order);
    }

    fn housekeeping(&self) {
        nudge_the_allocator();
    }
}

/// Above mimalloc's largest size class (512 KiB): such a block has a page of its own, which
/// goes back to the allocator the moment the block is freed.
const NUDGE_BYTES: usize = 1 << 20;

/// Lets the allocator give freed memory back to the system while the sidecar is idle.
///
/// mimalloc (the binary's allocator, `src/main.rs`) returns a freed page to the system a
/// second after it was freed (its purge delay), but only from inside a later page free: an
/// idle process frees none, so after a burst of sessions has gone, the memory they held would
/// stay in RSS until traffic came back. Freeing a block this large frees its page, which runs
/// the purges now due. It costs one allocation a second and writes nothing but the page's
/// header.
fn nudge_the_allocator() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(NUDGE_BYTES)));
}
