//! Post-call webhooks: every ended session's report, delivered to the operator's backend as a
//! signed Standard Webhooks `call.ended` event, at least once, off every RPC's path.
//!
//! The way of a report:
//! 1. The registry hands an ended session's report to the app's hooks, on the RPC (or timer)
//!    that ended it; [`Submitter::ended`] queues it for the intake thread and returns at once
//!    (without `--state-dir`, a report beyond `--webhook-queue` pending deliveries is
//!    dropped there: counted, and logged at most once a second).
//! 2. The intake thread (`intake.rs`) writes the event's body, and with `--state-dir` journals
//!    the delivery (`store.rs`) and fsyncs it before anything is sent; then it hands the
//!    delivery to the delivery task.
//! 3. The delivery task (`delivery.rs`), a tokio task of its own, sends it through the
//!    process's outbound HTTP client (`crate::outbound`), signed (`signing.rs`), at most
//!    `--webhook-concurrency` at a time, each within `--webhook-timeout`; a failure is retried
//!    with exponential backoff and jitter (honouring `Retry-After`) for `--webhook-retry-for`,
//!    and 410 Gone stops it. With `--state-dir` its end is journaled too.
//!
//! This layer sits after `sessions` (its store reuses the session journal's segment files)
//! and before `grpc` and `app`, which it does not import.

pub(crate) mod config;
mod delivery;
mod event;
mod intake;
pub(crate) mod signing;
mod store;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use crossbeam_channel::Sender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{outbound::HttpClient, telemetry::metrics};
use endcall_core::{domain::Time, report::Report};

pub(crate) use self::config::Settings;
pub(crate) use self::config::{WebhookArgs, WebhookConfigError};
use self::intake::Msg;
pub(crate) use self::store::StoreError;
pub(crate) use self::store::StoreSettings;

/// One event to deliver.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Delivery {
    /// `webhook-id`: the same on every attempt and after a restart.
    pub id: Arc<str>,
    /// For log lines.
    pub session_id: Arc<str>,
    /// The exact bytes signed and sent.
    pub body: Bytes,
    /// Wall-clock time it was queued: the retry window and the delivery latency count from it.
    pub queued_at: Time,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the webhook intake thread: {0}")]
    Thread(std::io::Error),
}

/// What the registry's hooks hand reports to. Cheap to clone; never blocks.
#[derive(Clone)]
pub(crate) struct Submitter {
    intake: Sender<Msg>,
    pending: Arc<AtomicUsize>,
    /// Without a store: the most pending deliveries held (`--webhook-queue`).
    bound: Option<usize>,
    drops: Arc<DropLog>,
}

impl Submitter {
    /// Queues the `call.ended` event of a session that just ended. Returns at once: beyond
    /// the bound (memory mode only) the event is dropped, counted and logged.
    pub(crate) fn ended(&self, report: Report) {
        if let Some(bound) = self.bound {
            if self.pending.fetch_add(1, Ordering::Relaxed) >= bound {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.drops.dropped(bound);
                return;
            }
        }
        // Fails only once the intake has stopped (the process is ending, or the store failed
        // and the process is stopping for it).
        if self.intake.send(Msg::Ended(Box::new(report))).is_err() && self.bound.is_some() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A session the state journal gave back closed at start: its event is queued unless the
    /// store already knows its id (it was queued, or even delivered, before the restart).
    /// This is what covers a crash between the session's close reaching the disk and its
    /// delivery's record doing so.
    pub(crate) fn restored(&self, report: Report) {
        let _ = self.intake.send(Msg::Restored(Box::new(report)));
    }

    /// Every restored session has been offered: the ids read at start are no longer needed.
    pub(crate) fn restore_done(&self) {
        let _ = self.intake.send(Msg::RestoreDone);
    }

    /// Whether restored sessions should be offered at all (only with a store).
    pub(crate) fn wants_restored(&self) -> bool {
        self.bound.is_none()
    }
}

/// Counts dropped deliveries and logs them at most once a second: a drop logs at once unless a
/// line went out this second; the delivery task's once-a-second tick logs what was left over.
#[derive(Default)]
pub(crate) struct DropLog {
    since_last_line: AtomicU64,
    /// Seconds since the Unix epoch of the last line.
    last_line: AtomicU64,
}

impl DropLog {
    fn dropped(&self, bound: usize) {
        metrics::webhook_deliveries("dropped", 1);
        self.since_last_line.fetch_add(1, Ordering::Relaxed);
        self.line(bound);
    }

    /// Logs the drops not logged yet, unless a line already went out this second.
    pub(crate) fn line(&self, bound: usize) {
        if self.since_last_line.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_line.load(Ordering::Relaxed);
        if now > last
            && self
                .last_line
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = self.since_last_line.swap(0, Ordering::Relaxed);
            if dropped == 0 {
                return;
            }
            warn!(
                dropped,
                limit = bound,
                "webhook queue full (--webhook-queue): call.ended events dropped; set --state-dir to keep them on disk instead"
            );
        }
    }
}

/// The running webhook delivery: its intake thread and its delivery task.
pub(crate) struct Webhooks {
    submitter: Submitter,
    task: JoinHandle<usize>,
    stop: CancellationToken,
    failed: CancellationToken,
    store_dir: Option<PathBuf>,
}

impl Webhooks {
    /// Starts the intake thread and the delivery task (on the current runtime). With `store`,
    /// first opens the store and takes up the deliveries it holds.
    pub(crate) fn start(
        settings: Settings,
        store: Option<StoreSettings>,
        client: HttpClient,
    ) -> Result<Webhooks, StartError> {
        let settings = Arc::new(settings);
        metrics::webhooks_zero();
        let pending = Arc::new(AtomicUsize::new(0));
        let failed = CancellationToken::new();
        let (to_task, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let opened = store
            .as_ref()
            .map(|store| store::Store::open(store, settings.queue))
            .transpose()?;
        let store_dir = opened.as_ref().map(|(store, _)| store.dir().to_owned());
        if let Some((store, recovered)) = &opened {
            for damage in &recovered.damage {
                warn!(%damage, "webhook store repaired");
            }
            if recovered.pending.total > 0 {
                info!(
                    dir = %store.dir().display(),
                    pending = recovered.pending.total,
                    "webhook deliveries restored"
                );
            }
        }
        let durable = opened.is_some();
        let intake = intake::spawn(intake::Intake::new(
            Arc::clone(&settings),
            opened,
            to_task,
            Arc::clone(&pending),
            failed.clone(),
        ))
        .map_err(StartError::Thread)?;
        let stop = CancellationToken::new();
        let drops = Arc::new(DropLog::default());
        let task = tokio::spawn(
            delivery::Task::new(
                Arc::clone(&settings),
                client,
                deliveries,
                intake.clone(),
                Arc::clone(&pending),
                durable,
                Arc::clone(&drops),
            )
            .run(stop.clone()),
        );
        Ok(Webhooks {
            submitter: Submitter {
                intake,
                pending,
                bound: (!durable).then_some(settings.queue),
                drops,
            },
            task,
            stop,
            failed,
            store_dir,
        })
    }

    pub(crate) fn submitter(&self) -> Submitter {
        self.submitter.clone()
    }

    /// Cancelled if the store failed to write (never, without one): the server must stop, as
    /// it does when the state journal fails.
    pub(crate) fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Pending deliveries: queued and not yet delivered, given up or dropped.
    pub(crate) fn pending(&self) -> usize {
        self.submitter.pending.load(Ordering::Relaxed)
    }

    /// The end of the drain. Without a store, deliveries go on until none is pending or
    /// `deadline` passes, and what is still pending then is counted as lost. With one, what
    /// was queued is put on disk and the rest waits there for the next start.
    pub(crate) async fn stop(self, deadline: Instant) {
        if self.store_dir.is_none() {
            while self.pending() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Everything submitted so far is journaled (or handed over) before the task stops.
        let (flushed, done) = crossbeam_channel::bounded(1);
        if self.submitter.intake.send(Msg::Flush(flushed)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(5)))
                .await;
        }
        self.stop.cancel();
        let held = self.task.await.unwrap_or(0);
        match &self.store_dir {
            None => {
                let lost = self.submitter.pending.load(Ordering::Relaxed);
                if lost > 0 {
                    metrics::webhook_deliveries("lost", lost as u64);
                    warn!(
                        lost,
                        "webhook deliveries still pending at the end of the drain are lost (without --state-dir they are held in memory only)"
                    );
                }
            }
            Some(dir) => {
                let pending = self.submitter.pending.load(Ordering::Relaxed);
                if pending > 0 || held > 0 {
                    info!(
                        pending,
                        dir = %dir.display(),
                        "webhook deliveries still pending stay on disk for the next start"
                    );
                }
            }
        }
    }
}
