//! The one thread that writes the journal: appends in arrival order, one fsync per batch.
//!
//! Whatever queued up while the previous fsync ran goes out in the next write and shares the
//! next fsync (group commit), so the cost of durability per event falls as load rises. Only
//! after that fsync are the batch's directives published to watchers and its events' replies
//! released: nothing anyone has seen can be missing after a crash.

use std::{
    fs::File,
    io::{self, Write as _},
    sync::mpsc,
    time::Instant,
};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::{record::MAGIC, segment, JournalSettings, Publish};
use crate::telemetry::metrics;
use endcall_core::domain::SessionId;

/// A batch is cut here even if more is queued, to bound the memory one write takes.
const MAX_BATCH: usize = 4096;

pub(super) struct Append {
    /// One framed record.
    pub bytes: Vec<u8>,
    pub publish: Option<(SessionId, u64)>,
    pub ack: Option<oneshot::Sender<()>>,
}

pub(super) fn spawn(
    settings: JournalSettings,
    first_segment: u64,
    publish: Publish,
    compactor: mpsc::Sender<u64>,
    failed: CancellationToken,
) -> io::Result<mpsc::Sender<Append>> {
    let file = segment::create(&settings.dir, first_segment, MAGIC)?;
    let (tx, rx) = mpsc::channel();
    let mut writer = Writer {
        settings,
        segment: first_segment,
        file,
        written: MAGIC.len() as u64,
        publish,
        compactor,
    };
    std::thread::Builder::new()
        .name("endcall-journal".into())
        .spawn(move || {
            if let Err(err) = writer.run(&rx) {
                error!(
                    error = %err,
                    dir = %writer.settings.dir.display(),
                    "state journal write failed: no further event can be made durable; stopping"
                );
                failed.cancel();
                // Queued and later appends are dropped unacknowledged, which their callers see
                // as a failure, until the registry (the last sender) is gone.
                while rx.recv().is_ok() {}
            }
        })?;
    Ok(tx)
}

struct Writer {
    settings: JournalSettings,
    segment: u64,
    file: File,
    written: u64,
    publish: Publish,
    compactor: mpsc::Sender<u64>,
}

impl Writer {
    /// Runs until every sender is gone (a clean stop) or a write fails.
    fn run(&mut self, rx: &mpsc::Receiver<Append>) -> io::Result<()> {
        let mut batch = Vec::new();
        let mut buffer = Vec::new();
        let mut published = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            buffer.clear();
            for append in &batch {
                buffer.extend_from_slice(&append.bytes);
            }
            let started = Instant::now();
            self.file.write_all(&buffer)?;
            self.file.sync_data()?;
            metrics::journal_sync(started.elapsed(), batch.len());
            self.written += buffer.len() as u64;

            published.clear();
            let mut acks = Vec::with_capacity(batch.len());
            for append in batch.drain(..) {
                published.extend(append.publish);
                acks.extend(append.ack);
            }
            if !published.is_empty() {
                (self.publish)(&published);
            }
            for ack in acks {
                let _ = ack.send(());
            }
            if self.written >= self.settings.segment_bytes {
                self.rotate()?;
            }
        }
        Ok(())
    }

    /// Seals the active segment, starts the next, and hands the sealed ones to compaction.
    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        self.file = segment::create(&self.settings.dir, next, MAGIC)?;
        let sealed = self.segment;
        self.segment = next;
        self.written = MAGIC.len() as u64;
        // The compactor stops only with the process.
        let _ = self.compactor.send(sealed);
        Ok(())
    }
}
