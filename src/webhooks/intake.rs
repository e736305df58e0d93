//! The intake thread: turns ended sessions' reports into deliveries, journals them (with a
//! store) and hands them to the delivery task.
//!
//! A thread of its own because writing an event's body (the report's JSON, about 1.2 KB) is
//! CPU work an RPC should not do, and journaling it is an fsync nobody should wait for. Woken
//! by a report, it lets the batch gather for `GATHER` (the reports that follow queue without
//! waking it, so the RPCs that end sessions make no system call for it, as with the report
//! thread), then writes the batch in one go and one fsync (group commit, as the session
//! journal does), and hands it to the delivery task in one message.
//!
//! With a store, the delivery task holds at most `--webhook-queue` deliveries in memory.
//! Beyond that, deliveries wait on disk only, and new ones queue behind them; when the task
//! is down to half, this thread reads the oldest of them back from the store. So memory stays
//! bounded however long the receiver is away, and the disk holds the rest.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, SystemTime},
};

use crossbeam_channel::{unbounded, Receiver, Sender};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::{
    event::{self, time_of, CALL_ENDED},
    signing::event_id,
    store::{Ending, Recovered, Store, StoreRecord},
    Delivery, Settings,
};
use crate::sessions::journal::segment;
use endcall_core::report::Report;

/// A batch is cut here even if more is queued, to bound the memory one write takes.
const MAX_BATCH: usize = 1024;

/// How long a batch gathers after the report that woke the thread: at most this much is
/// added to a delivery's latency, and at a thousand sessions ending a second the RPCs wake
/// this thread a hundred times a second, not a thousand.
const GATHER: Duration = Duration::from_millis(10);

pub(super) enum Msg {
    /// A session ended: queue its event.
    Ended(Box<Report>),
    /// A session came back closed from the state journal at start: queue its event unless
    /// the store knows it.
    Restored(Box<Report>),
    /// No more `Restored` will come.
    RestoreDone,
    /// The delivery task is finished with this delivery (with a store only).
    Done { id: Arc<str>, ending: Ending },
    /// Answered once everything before it is journaled and handed on.
    Flush(Sender<()>),
}

/// The store and what this thread knows of it.
struct Durable {
    store: Store,
    /// The ids the store held at start, until the restored sessions have been offered.
    known: Option<HashSet<Arc<str>>>,
    /// Deliveries handed to the task and not yet done: at most `--webhook-queue`.
    handed: HashSet<Arc<str>>,
    /// Deliveries pending on disk, handed or not.
    on_disk: usize,
}

pub(super) struct Intake {
    settings: Arc<Settings>,
    durable: Option<Durable>,
    to_task: UnboundedSender<Vec<Delivery>>,
    /// The pending-deliveries gauge: with a store, this thread keeps it; without, the
    /// submitter and the task do.
    pending: Arc<AtomicUsize>,
    failed: CancellationToken,
}

impl Intake {
    pub(super) fn new(
        settings: Arc<Settings>,
        opened: Option<(Store, Recovered)>,
        to_task: UnboundedSender<Vec<Delivery>>,
        pending: Arc<AtomicUsize>,
        failed: CancellationToken,
    ) -> Self {
        let mut intake = Intake {
            settings,
            durable: None,
            to_task,
            pending,
            failed,
        };
        if let Some((store, recovered)) = opened {
            let mut durable = Durable {
                store,
                known: Some(recovered.known),
                handed: HashSet::new(),
                on_disk: recovered.pending.total,
            };
            for delivery in &recovered.pending.deliveries {
                durable.handed.insert(Arc::clone(&delivery.id));
            }
            let _ = intake.to_task.send(recovered.pending.deliveries);
            intake.pending.store(durable.on_disk, Ordering::Relaxed);
            intake.durable = Some(durable);
        }
        intake
    }

    fn delivery(&self, report: &Report) -> Delivery {
        let mut body = String::with_capacity(2048);
        event::call_ended(report, self.settings.include_error_message, &mut body);
        Delivery {
            id: Arc::from(event_id(CALL_ENDED, report)),
            session_id: Arc::from(report.session_id.as_str()),
            body: body.into(),
            queued_at: time_of(SystemTime::now()),
        }
    }

    /// Runs until every sender is gone, or the store fails.
    fn run(&mut self, queued: &Receiver<Msg>) {
        let mut framed = Vec::new();
        let mut accepted = Vec::new();
        let mut flushes = Vec::new();
        while let Ok(first) = queued.recv() {
            if matches!(first, Msg::Ended(_) | Msg::Done { .. }) {
                thread::sleep(GATHER);
            }
            framed.clear();
            accepted.clear();
            for msg in std::iter::once(first).chain(queued.try_iter().take(MAX_BATCH - 1)) {
                match msg {
                    Msg::Ended(report) => accepted.push(self.delivery(&report)),
                    Msg::Restored(report) => {
                        let known = self
                            .durable
                            .as_ref()
                            .and_then(|durable| durable.known.as_ref())
                            .is_none_or(|known| {
                                known.contains(event_id(CALL_ENDED, &report).as_str())
                            });
                        if !known {
                            accepted.push(self.delivery(&report));
                        }
                    }
                    Msg::RestoreDone => {
                        if let Some(durable) = &mut self.durable {
                            durable.known = None;
                        }
                    }
                    Msg::Done { id, ending } => {
                        if let Some(durable) = &mut self.durable {
                            segment::encode(
                                &StoreRecord::done(&id, ending, SystemTime::now()),
                                &mut framed,
                            );
                            durable.handed.remove(&id);
                            durable.on_disk = durable.on_disk.saturating_sub(1);
                        }
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
            }
            if let Err(err) = self.hand_on(&mut framed, &mut accepted) {
                error!(
                    error = %err,
                    "webhook store write failed: no further delivery can be made durable; stopping"
                );
                self.failed.cancel();
                // Queued and later messages are dropped; the process is stopping, and the
                // restart offers every session the state journal gave back closed again.
                while queued.recv().is_ok() {}
                return;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Journals the batch (with a store), then hands its deliveries to the task.
    fn hand_on(
        &mut self,
        framed: &mut Vec<u8>,
        accepted: &mut Vec<Delivery>,
    ) -> std::io::Result<()> {
        let Some(durable) = &mut self.durable else {
            if !accepted.is_empty() {
                let _ = self.to_task.send(std::mem::take(accepted));
            }
            return Ok(());
        };
        for delivery in accepted.iter() {
            segment::encode(&StoreRecord::queued(delivery), framed);
        }
        durable.store.append(framed)?;
        let queue = self.settings.queue;
        // Behind deliveries waiting on disk, new ones wait there too: oldest first.
        let waiting = durable.on_disk > durable.handed.len();
        durable.on_disk += accepted.len();
        let mut handing = Vec::with_capacity(accepted.len());
        for delivery in accepted.drain(..) {
            if !waiting && durable.handed.len() < queue {
                durable.handed.insert(Arc::clone(&delivery.id));
                handing.push(delivery);
            }
        }
        if durable.on_disk > durable.handed.len() && durable.handed.len() <= queue / 2 {
            let room = queue - durable.handed.len();
            let pending = durable.store.pending(&durable.handed, room)?;
            durable.on_disk = pending.total;
            for delivery in pending.deliveries {
                durable.handed.insert(Arc::clone(&delivery.id));
                handing.push(delivery);
            }
        }
        if !handing.is_empty() {
            let _ = self.to_task.send(handing);
        }
        self.pending.store(durable.on_disk, Ordering::Relaxed);
        Ok(())
    }
}

/// Starts the intake thread; returns the way to it.
pub(super) fn spawn(mut intake: Intake) -> std::io::Result<Sender<Msg>> {
    let (tx, rx) = unbounded();
    thread::Builder::new()
        .name("endcall-webhooks".into())
        .spawn(move || intake.run(&rx))?;
    Ok(tx)
}
