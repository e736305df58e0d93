//! The durable queue (`--state-dir`): pending deliveries on disk, in `DIR/webhooks/`.
//!
//! Two kinds of records, in segments framed and checksummed as the session journal's are
//! (`sessions::journal::segment`, with a magic of their own):
//! - `Queued`: a delivery's id, its session, its body (the exact bytes that are signed) and
//!   when it was queued. Written and fsynced before the delivery is first sent.
//! - `Done`: the delivery with this id is finished (delivered, given up, or refused with 410).
//!
//! A delivery is pending while its `Queued` has no `Done`. Sealed segments are compacted
//! (`sessions::journal::compact::rewrite`): a `Queued` whose `Done` is there is left out, and
//! a `Done` is kept for `keep_done_for` (the sessions' retention and a margin) so that a
//! restart can tell which restored sessions' events were already queued
//! (`Intake::restored`), then left out too.
//!
//! The state directory's `LOCK`, taken by the session journal (which opens first), keeps a
//! second process out of this directory too.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tracing::warn;

use super::{event::time_of, Delivery};
use crate::sessions::journal::{
    compact,
    segment::{self, Magic},
};

/// What this store's segments start with: "EndCall WebHOOKs, format 1".
pub(crate) const MAGIC: &Magic = b"ECWHOOK1";

/// The store's directory inside the state directory.
pub(crate) const SUBDIR: &str = "webhooks";

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StoreRecord {
    #[prost(oneof = "Entry", tags = "1, 2")]
    pub entry: Option<Entry>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Entry {
    #[prost(message, tag = "1")]
    Queued(Queued),
    #[prost(message, tag = "2")]
    Done(Done),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Queued {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub session_id: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
    /// Wall-clock microseconds: the retry window counts from here, across restarts.
    #[prost(uint64, tag = "4")]
    pub queued_micros: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Done {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint64, tag = "2")]
    pub at_micros: u64,
    /// [`Ending`] as a number.
    #[prost(uint32, tag = "3")]
    pub ending: u32,
}

/// How a delivery finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Delivered = 1,
    GaveUp = 2,
    Gone = 3,
}

impl StoreRecord {
    pub(crate) fn queued(delivery: &Delivery) -> Self {
        StoreRecord {
            entry: Some(Entry::Queued(Queued {
                id: delivery.id.to_string(),
                session_id: delivery.session_id.to_string(),
                body: delivery.body.clone(),
                queued_micros: delivery.queued_at.as_micros(),
            })),
        }
    }

    pub(crate) fn done(id: &str, ending: Ending, at: SystemTime) -> Self {
        StoreRecord {
            entry: Some(Entry::Done(Done {
                id: id.to_owned(),
                at_micros: time_of(at).as_micros(),
                ending: ending as u32,
            })),
        }
    }
}

impl From<&Queued> for Delivery {
    fn from(queued: &Queued) -> Self {
        Delivery {
            id: Arc::from(queued.id.as_str()),
            session_id: Arc::from(queued.session_id.as_str()),
            body: queued.body.clone(),
            queued_at: endcall_core::domain::Time::from_micros(queued.queued_micros),
        }
    }
}

/// Where and how the store is kept.
#[derive(Clone, Debug)]
pub(crate) struct StoreSettings {
    /// The state directory (`--state-dir`); the store lives in its `webhooks/`.
    pub state_dir: PathBuf,
    /// The active segment is sealed, and the sealed ones compacted, past this size.
    pub segment_bytes: u64,
    /// How long a `Done` is kept after it was written.
    pub keep_done_for: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("--state-dir {}: the webhook store: {source}", dir.display())]
pub struct StoreError {
    dir: PathBuf,
    source: io::Error,
}

/// The pending deliveries a read of the store found.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// The oldest pending deliveries, in the order they were queued, at most as many as asked.
    pub deliveries: Vec<Delivery>,
    /// Every pending delivery on disk, those returned included.
    pub total: usize,
}

/// What was on disk at start-up.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub pending: Pending,
    /// The id of every delivery the store holds a record of, pending or done.
    pub known: HashSet<Arc<str>>,
    /// One line per damaged segment, repaired.
    pub damage: Vec<String>,
    /// The store's directory did not exist: webhooks were just turned on, so no event of a
    /// session that ended before can have been lost, and none is queued for one.
    pub fresh: bool,
}

/// The open store: appends on the intake thread, compaction on a thread of its own.
pub(crate) struct Store {
    dir: PathBuf,
    file: File,
    segment: u64,
    written: u64,
    segment_bytes: u64,
    compactor: mpsc::Sender<u64>,
    /// Joined when the store is dropped, so that nothing rewrites the directory after.
    compacting: Option<std::thread::JoinHandle<()>>,
    /// Held by a compaction and by a read of the pending deliveries: a compaction renames and
    /// removes segments, and a read in the middle of it could miss some.
    rewriting: Arc<Mutex<()>>,
}

impl Store {
    /// Creates `DIR/webhooks` if needed, reads and repairs every segment, and returns the
    /// store on a new segment, with what it holds: the oldest `max_pending` pending deliveries
    /// and every id it knows.
    pub(crate) fn open(
        settings: &StoreSettings,
        max_pending: usize,
    ) -> Result<(Store, Recovered), StoreError> {
        let dir = settings.state_dir.join(SUBDIR);
        let io_error = |source| StoreError {
            dir: dir.clone(),
            source,
        };
        let fresh = !dir.exists();
        // Owner only: bodies hold the reports (session ids, timelines).
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error)?;
        compact::remove_leftovers(&dir).map_err(io_error)?;
        let mut damage = Vec::new();
        for (_, path) in segment::list(&dir).map_err(io_error)? {
            let contents = segment::read::<StoreRecord>(MAGIC, &path).map_err(io_error)?;
            if let Some(report) = segment::describe_damage(&path, &contents) {
                warn!(webhook_store_damage = %report, "webhook store damaged: repaired");
                segment::repair(&path, &contents).map_err(io_error)?;
                damage.push(report);
            }
        }
        let mut known = HashSet::new();
        let pending =
            read_pending(&dir, &HashSet::new(), max_pending, Some(&mut known)).map_err(io_error)?;
        let last = segment::list(&dir)
            .map_err(io_error)?
            .last()
            .map_or(0, |(id, _)| *id);
        let keep_done_for = settings.keep_done_for;
        let rewriting = Arc::new(Mutex::new(()));
        let held = Arc::clone(&rewriting);
        let (compactor, compacting) = compact::spawn(
            dir.clone(),
            "endcall-webhook-compact",
            "webhook store",
            move |dir, up_to| {
                let _rewriting = held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                compact(dir, up_to, keep_done_for, SystemTime::now())
            },
        )
        .map_err(io_error)?;
        if last > 0 {
            let _ = compactor.send(last);
        }
        let segment = last + 1;
        let file = segment::create(&dir, segment, MAGIC).map_err(io_error)?;
        let store = Store {
            dir,
            file,
            segment,
            written: MAGIC.len() as u64,
            segment_bytes: settings.segment_bytes,
            compactor,
            compacting: Some(compacting),
            rewriting,
        };
        Ok((
            store,
            Recovered {
                pending,
                known,
                damage,
                fresh,
            },
        ))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `framed` (records framed by `segment::encode`) and fsyncs it; past the segment
    /// size, seals the segment and has the sealed ones compacted.
    pub(crate) fn append(&mut self, framed: &[u8]) -> io::Result<()> {
        if framed.is_empty() {
            return Ok(());
        }
        self.file.write_all(framed)?;
        self.file.sync_data()?;
        self.written += framed.len() as u64;
        if self.written >= self.segment_bytes {
            let next = self.segment + 1;
            self.file = segment::create(&self.dir, next, MAGIC)?;
            let sealed = self.segment;
            self.segment = next;
            self.written = MAGIC.len() as u64;
            // The compactor stops only with the process.
            let _ = self.compactor.send(sealed);
        }
        Ok(())
    }

    /// The oldest pending deliveries not in `skip`, at most `max`, and how many are pending
    /// in all. Reads every segment: for refilling memory after an overload, not per delivery.
    pub(crate) fn pending(&self, skip: &HashSet<Arc<str>>, max: usize) -> io::Result<Pending> {
        let _rewriting = self
            .rewriting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read_pending(&self.dir, skip, max, None)
    }
}

impl Drop for Store {
    /// Stops the compaction thread, after the compaction under way if any.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.compactor, mpsc::channel().0));
        if let Some(thread) = self.compacting.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the store twice: first every `Done` (and, with `known`, every id), then the
/// `Queued` records that have none, in order. Only what is returned is held, not every body.
fn read_pending(
    dir: &Path,
    skip: &HashSet<Arc<str>>,
    max: usize,
    mut known: Option<&mut HashSet<Arc<str>>>,
) -> io::Result<Pending> {
    let segments = segment::list(dir)?;
    let mut done: HashSet<String> = HashSet::new();
    for (_, path) in &segments {
        for record in segment::read::<StoreRecord>(MAGIC, path)?.records {
            match record.entry {
                Some(Entry::Done(d)) => {
                    if let Some(known) = known.as_deref_mut() {
                        known.insert(Arc::from(d.id.as_str()));
                    }
                    done.insert(d.id);
                }
                Some(Entry::Queued(q)) => {
                    if let Some(known) = known.as_deref_mut() {
                        known.insert(Arc::from(q.id.as_str()));
                    }
                }
                None => {}
            }
        }
    }
    let mut pending = Pending::default();
    // A compaction interrupted before it removed its inputs leaves copies: count each once.
    let mut seen: HashSet<String> = HashSet::new();
    for (_, path) in &segments {
        for record in segment::read::<StoreRecord>(MAGIC, path)?.records {
            let Some(Entry::Queued(queued)) = record.entry else {
                continue;
            };
            if done.contains(&queued.id) || !seen.insert(queued.id.clone()) {
                continue;
            }
            pending.total += 1;
            if pending.deliveries.len() < max && !skip.contains(queued.id.as_str()) {
                pending.deliveries.push(Delivery::from(&queued));
            }
        }
    }
    Ok(pending)
}

/// Rewrites the sealed segments up to `up_to` without finished deliveries, and without the
/// `Done` records older than `keep_done_for` at `now`.
fn compact(dir: &Path, up_to: u64, keep_done_for: Duration, now: SystemTime) -> io::Result<()> {
    let horizon = time_of(now)
        .as_micros()
        .saturating_sub(u64::try_from(keep_done_for.as_micros()).unwrap_or(u64::MAX));
    compact::rewrite(dir, up_to, MAGIC, |records: &[StoreRecord]| {
        let done: HashSet<&str> = records
            .iter()
            .filter_map(|record| match &record.entry {
                Some(Entry::Done(d)) => Some(d.id.as_str()),
                _ => None,
            })
            .collect();
        records
            .iter()
            .map(|record| match &record.entry {
                Some(Entry::Queued(q)) => !done.contains(q.id.as_str()),
                Some(Entry::Done(d)) => d.at_micros > horizon,
                None => false,
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use endcall_core::domain::Time;

    use super::*;

    fn settings(dir: &Path) -> StoreSettings {
        StoreSettings {
            state_dir: dir.to_owned(),
            segment_bytes: 1 << 20,
            keep_done_for: Duration::from_secs(360),
        }
    }

    fn delivery(n: u32) -> Delivery {
        Delivery {
            id: Arc::from(format!("msg_{n}")),
            session_id: Arc::from(format!("call-{n}")),
            body: Bytes::from(format!("{{\"n\":{n}}}")),
            queued_at: Time::from_micros(1_000 + u64::from(n)),
        }
    }

    fn framed(records: &[StoreRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            segment::encode(record, &mut out);
        }
        out
    }

    fn ids(pending: &Pending) -> Vec<String> {
        pending
            .deliveries
            .iter()
            .map(|d| d.id.to_string())
            .collect()
    }

    #[test]
    fn pending_deliveries_come_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, recovered) = Store::open(&settings(dir.path()), 10).unwrap();
        assert!(recovered.fresh);
        assert_eq!(recovered.pending.total, 0);
        let queued: Vec<_> = (0..4).map(|n| StoreRecord::queued(&delivery(n))).collect();
        store.append(&framed(&queued)).unwrap();
        store
            .append(&framed(&[StoreRecord::done(
                "msg_1",
                Ending::Delivered,
                SystemTime::now(),
            )]))
            .unwrap();
        drop(store);

        let (store, recovered) = Store::open(&settings(dir.path()), 10).unwrap();
        assert!(!recovered.fresh);
        assert_eq!(ids(&recovered.pending), ["msg_0", "msg_2", "msg_3"]);
        assert_eq!(recovered.pending.total, 3);
        assert_eq!(recovered.pending.deliveries[1].body, delivery(2).body);
        assert_eq!(
            recovered.pending.deliveries[1].queued_at,
            delivery(2).queued_at
        );
        assert_eq!(recovered.known.len(), 4);
        assert!(recovered.damage.is_empty());

        // At most as many as asked, the oldest first, skipping those already held.
        let skip: HashSet<Arc<str>> = [Arc::from("msg_0")].into_iter().collect();
        let pending = store.pending(&skip, 1).unwrap();
        assert_eq!(ids(&pending), ["msg_2"]);
        assert_eq!(pending.total, 3);
    }

    #[test]
    fn a_torn_tail_is_repaired_and_what_precedes_it_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(&settings(dir.path()), 10).unwrap();
        store
            .append(&framed(&[StoreRecord::queued(&delivery(0))]))
            .unwrap();
        drop(store);
        let path = segment::path(&dir.path().join(SUBDIR), 1);
        let torn = framed(&[StoreRecord::queued(&delivery(1))]);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(file);

        let (_, recovered) = Store::open(&settings(dir.path()), 10).unwrap();
        assert_eq!(ids(&recovered.pending), ["msg_0"]);
        assert_eq!(recovered.damage.len(), 1, "{:?}", recovered.damage);
    }

    #[test]
    fn compaction_leaves_out_finished_deliveries_and_old_done_records() {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join(SUBDIR);
        fs::create_dir_all(&store_dir).unwrap();
        let now = SystemTime::now();
        let long_ago = now - Duration::from_secs(3600);
        let mut bytes = MAGIC.to_vec();
        bytes.extend(framed(&[
            StoreRecord::queued(&delivery(0)),
            StoreRecord::queued(&delivery(1)),
            StoreRecord::queued(&delivery(2)),
            StoreRecord::done("msg_0", Ending::Delivered, now),
            StoreRecord::done("msg_1", Ending::GaveUp, long_ago),
        ]));
        fs::write(segment::path(&store_dir, 1), bytes).unwrap();
        compact(&store_dir, 1, Duration::from_secs(360), now).unwrap();

        let records = segment::read::<StoreRecord>(MAGIC, &segment::path(&store_dir, 1))
            .unwrap()
            .records;
        let kinds: Vec<_> = records
            .iter()
            .map(|record| match &record.entry {
                Some(Entry::Queued(q)) => format!("queued {}", q.id),
                Some(Entry::Done(d)) => format!("done {}", d.id),
                None => "none".into(),
            })
            .collect();
        // msg_2 is still pending; msg_0's done is recent, so a restart still knows its id.
        assert_eq!(kinds, ["queued msg_2", "done msg_0"]);
        let (_, recovered) = Store::open(&settings(dir.path()), 10).unwrap();
        assert_eq!(ids(&recovered.pending), ["msg_2"]);
        assert!(recovered.known.contains("msg_0"));
        assert!(!recovered.known.contains("msg_1"));
    }

    #[test]
    fn segments_are_sealed_past_their_size_and_nothing_pending_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut small = settings(dir.path());
        small.segment_bytes = 256;
        let (mut store, _) = Store::open(&small, 10).unwrap();
        for n in 0..20 {
            store
                .append(&framed(&[StoreRecord::queued(&delivery(n))]))
                .unwrap();
            if n % 2 == 0 {
                store
                    .append(&framed(&[StoreRecord::done(
                        &format!("msg_{n}"),
                        Ending::Delivered,
                        SystemTime::now(),
                    )]))
                    .unwrap();
            }
        }
        assert!(store.segment > 2, "rotated: segment {}", store.segment);
        let pending = store.pending(&HashSet::new(), 100).unwrap();
        let odd: Vec<String> = (0..20)
            .filter(|n| n % 2 == 1)
            .map(|n| format!("msg_{n}"))
            .collect();
        assert_eq!(ids(&pending), odd);
    }
}
