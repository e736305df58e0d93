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
    /// The ids the store held at start, until the restored sessions have been offered; `None`
    /// for a store just created (webhooks were off before: nothing to make up for).
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
                known: (!recovered.fresh).then_some(recovered.known),
                handed: HashSet::new(),
                on_disk: recovered.pending.total,
            };
            for delivery in &recovered.pending.deliveries {
                durable.handed.insert(Arc::clone(&delivery.id));
            }
            if !recovered.pending.deliveries.is_empty() {
                let _ = intake.to_task.send(recovered.pending.deliveries);
            }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use endcall_core::{
        domain::{Options, SessionId, Time},
        machine::Session,
    };

    use super::*;
    use crate::webhooks::{signing::Secret, store::StoreSettings};

    fn settings() -> Arc<Settings> {
        settings_with_queue(10)
    }

    fn settings_with_queue(queue: usize) -> Arc<Settings> {
        Arc::new(Settings {
            url: "http://127.0.0.1:9/hook".parse().unwrap(),
            secret: Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            include_error_message: false,
            retry_for: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            concurrency: 1,
            queue,
        })
    }

    fn store_settings(dir: &std::path::Path) -> StoreSettings {
        StoreSettings {
            state_dir: dir.to_owned(),
            segment_bytes: 1 << 20,
            keep_done_for: Duration::from_secs(60),
        }
    }

    fn ended(id: &str) -> Report {
        let session = Session::new(Arc::new(Options::default()), Time::from_micros(7));
        Report::of(&SessionId::new(id), &session)
    }

    fn flush(intake: &Sender<Msg>) {
        let (done, flushed) = crossbeam_channel::bounded(1);
        intake.send(Msg::Flush(done)).unwrap();
        flushed.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    fn sessions(batch: &[Delivery]) -> Vec<String> {
        batch.iter().map(|d| d.session_id.to_string()).collect()
    }

    /// At start, a restored session whose event the store knows is left alone (it is pending, or
    /// was delivered); one it does not know is queued, journaled, and handed on. Once the restore
    /// is done, nothing more is made up for.
    #[test]
    fn restored_sessions_are_queued_only_when_the_store_does_not_know_them() {
        let dir = tempfile::tempdir().unwrap();
        let start = |dir: &std::path::Path| {
            let (to_task, from_intake) = tokio::sync::mpsc::unbounded_channel();
            let opened = Store::open(&store_settings(dir), 10).unwrap();
            let intake = spawn(Intake::new(
                settings(),
                Some(opened),
                to_task,
                Arc::default(),
                CancellationToken::new(),
            ))
            .unwrap();
            (intake, from_intake)
        };
        // Ends a life: its thread (and its store, and the store's compaction) is gone once
        // what it hands on is closed.
        let end = |intake: Sender<Msg>,
                   mut from_intake: tokio::sync::mpsc::UnboundedReceiver<_>| {
            drop(intake);
            while from_intake.blocking_recv().is_some() {}
        };
        // A first life: "known" is queued (and never sent: no task runs).
        let (intake, mut from_intake) = start(dir.path());
        intake.send(Msg::Ended(Box::new(ended("known")))).unwrap();
        flush(&intake);
        assert_eq!(sessions(&from_intake.try_recv().unwrap()), ["known"]);
        end(intake, from_intake);

        // The restart: "known" comes back pending; "lost" was never queued.
        let (intake, mut from_intake) = start(dir.path());
        assert_eq!(sessions(&from_intake.try_recv().unwrap()), ["known"]);
        intake
            .send(Msg::Restored(Box::new(ended("known"))))
            .unwrap();
        intake.send(Msg::Restored(Box::new(ended("lost")))).unwrap();
        intake.send(Msg::RestoreDone).unwrap();
        intake.send(Msg::Restored(Box::new(ended("late")))).unwrap();
        flush(&intake);
        let handed: Vec<String> = std::iter::from_fn(|| from_intake.try_recv().ok())
            .flat_map(|batch| sessions(&batch))
            .collect();
        assert_eq!(handed, ["lost"]);
        end(intake, from_intake);

        // "lost" is on disk now, beside "known".
        let (_, recovered) = Store::open(&store_settings(dir.path()), 10).unwrap();
        let mut pending: Vec<String> = sessions(&recovered.pending.deliveries);
        pending.sort();
        assert_eq!(pending, ["known", "lost"]);
    }

    /// A store just created (webhooks newly turned on) makes up for nothing.
    #[test]
    fn a_new_store_queues_no_restored_session() {
        let dir = tempfile::tempdir().unwrap();
        let (to_task, mut from_intake) = tokio::sync::mpsc::unbounded_channel();
        let opened = Store::open(&store_settings(dir.path()), 10).unwrap();
        assert!(opened.1.fresh);
        let intake = spawn(Intake::new(
            settings(),
            Some(opened),
            to_task,
            Arc::default(),
            CancellationToken::new(),
        ))
        .unwrap();
        intake
            .send(Msg::Restored(Box::new(ended("before"))))
            .unwrap();
        flush(&intake);
        let handed: Vec<String> = std::iter::from_fn(|| from_intake.try_recv().ok())
            .flat_map(|batch| sessions(&batch))
            .collect();
        assert!(handed.is_empty(), "{handed:?}");
    }

    /// With a store, at most `--webhook-queue` deliveries are handed to the task; the rest wait on
    /// disk, and come out oldest first once the task is down to half.
    #[test]
    fn beyond_the_queue_deliveries_wait_on_disk_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (to_task, mut from_intake) = tokio::sync::mpsc::unbounded_channel();
        let opened = Store::open(
            &StoreSettings {
                state_dir: dir.path().to_owned(),
                segment_bytes: 1 << 20,
                keep_done_for: Duration::from_secs(60),
            },
            4,
        )
        .unwrap();
        let pending = Arc::new(AtomicUsize::new(0));
        let intake = spawn(Intake::new(
            settings_with_queue(4),
            Some(opened),
            to_task,
            Arc::clone(&pending),
            CancellationToken::new(),
        ))
        .unwrap();
        let flush = || {
            let (done, flushed) = crossbeam_channel::bounded(1);
            intake.send(Msg::Flush(done)).unwrap();
            flushed.recv_timeout(Duration::from_secs(10)).unwrap();
        };
        let mut handed = Vec::new();
        let mut take = |from: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<Delivery>>| {
            let got: Vec<Delivery> = std::iter::from_fn(|| from.try_recv().ok())
                .flatten()
                .collect();
            handed.extend(got.iter().map(|d| d.session_id.to_string()));
            got
        };
        for n in 0..10 {
            let session = Session::new(Arc::new(Options::default()), Time::from_micros(1));
            let report = Report::of(&SessionId::new(&format!("s{n}")), &session);
            intake.send(Msg::Ended(Box::new(report))).unwrap();
        }
        flush();
        let mut held = take(&mut from_intake);
        assert_eq!(held.len(), 4, "the queue's bound");
        assert_eq!(pending.load(Ordering::Relaxed), 10, "all ten on disk");
        // The task finishes deliveries one by one; at half the bound the oldest waiting come out.
        while !held.is_empty() {
            let done = held.remove(0);
            intake
                .send(Msg::Done {
                    id: done.id,
                    ending: Ending::Delivered,
                })
                .unwrap();
            flush();
            let more = take(&mut from_intake);
            assert!(held.len() + more.len() <= 4, "over the bound");
            held.extend(more);
        }
        let expected: Vec<String> = (0..10).map(|n| format!("s{n}")).collect();
        assert_eq!(handed, expected, "each once, oldest first");
        assert_eq!(pending.load(Ordering::Relaxed), 0);
    }
}
