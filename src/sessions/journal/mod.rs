//! Durability (`--state-dir`): every input a session's machine takes is written to an
//! append-only journal before anyone hears of its effects, and replayed on start.
//!
//! The machine is deterministic, so a session is rebuilt exactly by feeding it the same inputs
//! (worker events, timer ticks, expiry) at the same absolute times: its state, directives and
//! sequence numbers come back as they were, and its deadlines, which are absolute, are re-armed
//! by the registry as usual. Nothing about a machine's insides is ever serialised.
//!
//! * `record`: what one record holds (protobuf, so the format can grow).
//! * `segment`: the files: checksummed frames, torn or damaged tails detected and cut off.
//! * `writer`: one thread appends and fsyncs in batches (group commit); an event's reply and
//!   the directives it issued wait for the fsync that covers them.
//! * `compact`: sealed segments are rewritten without the sessions that have been dropped.

pub(crate) mod compact;
pub(crate) mod record;
pub(crate) mod segment;
mod writer;

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) use self::record::{MachineInput, Record};
use endcall_core::domain::SessionId;

/// Where and how the journal is kept.
#[derive(Clone, Debug)]
pub struct JournalSettings {
    pub dir: PathBuf,
    /// The active segment is sealed, and the sealed ones compacted, past this size.
    pub segment_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("--state-dir {}: {source}", dir.display())]
    Io { dir: PathBuf, source: io::Error },
    #[error("--state-dir {}: another process is using this state directory", dir.display())]
    Locked { dir: PathBuf },
}

/// Completes once the record it was handed out for is on disk. An error means it never will
/// be: the journal failed, and the process is stopping.
pub(crate) type Durable = oneshot::Receiver<()>;

/// What was on disk at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each session's records in order, from index 0 without gaps.
    pub sessions: Vec<(SessionId, Vec<Record>)>,
    /// One line per problem found and repaired (a torn tail, a damaged record, a gap).
    pub damage: Vec<String>,
    pub segments: usize,
    pub records: usize,
}

/// A journal opened and read, not yet accepting records.
pub struct Opened {
    pub recovered: Recovered,
    settings: JournalSettings,
    lock: File,
    next_segment: u64,
}

/// The handle the registry appends through.
pub struct Journal {
    appends: mpsc::Sender<writer::Append>,
    failed: CancellationToken,
    /// Held for the process's life: a second sidecar on the same directory would interleave
    /// its records with ours.
    _lock: Arc<File>,
}

/// After an fsync: these sessions' directives up to these sequence numbers may be shown.
pub(crate) type Publish = Box<dyn Fn(&[(SessionId, u64)]) + Send>;

impl Opened {
    /// Locks `settings.dir` (creating it if needed), reads every segment, cuts off torn or
    /// damaged tails, and gathers each session's records.
    pub fn open(settings: JournalSettings) -> Result<Opened, OpenError> {
        let dir = settings.dir.clone();
        let io_error = |source| OpenError::Io {
            dir: dir.clone(),
            source,
        };
        // Owner only: records hold session ids and the workers' close error texts.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_error)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked { dir }),
            Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
        }
        compact::remove_leftovers(&dir).map_err(io_error)?;
        let (recovered, last_segment) = recover(&dir).map_err(io_error)?;
        Ok(Opened {
            recovered,
            settings,
            lock,
            next_segment: last_segment + 1,
        })
    }

    /// Starts the writer (on a new segment) and the compactor, which first compacts what was
    /// recovered. `publish` runs on the writer thread after each fsync.
    pub fn start(self, publish: Publish) -> io::Result<Journal> {
        let failed = CancellationToken::new();
        // The thread stops with the process.
        let (compactor, _) = compact::spawn(
            self.settings.dir.clone(),
            "endcall-compact",
            "state journal",
            compact::compact,
        )?;
        if self.next_segment > 1 {
            let _ = compactor.send(self.next_segment - 1);
        }
        let appends = writer::spawn(
            self.settings,
            self.next_segment,
            publish,
            compactor,
            failed.clone(),
        )?;
        Ok(Journal {
            appends,
            failed,
            _lock: Arc::new(self.lock),
        })
    }
}

impl Journal {
    /// Queues `record`. With `publish`, the session's directives up to that sequence number
    /// become visible once the record is on disk; with `ack`, the caller can wait for that.
    /// Never blocks: callers hold a shard lock, and the queue keeps their order.
    pub fn append(
        &self,
        record: &Record,
        publish: Option<(SessionId, u64)>,
        ack: bool,
    ) -> Option<Durable> {
        let mut bytes = Vec::with_capacity(64);
        segment::encode(record, &mut bytes);
        let (ack_tx, ack_rx) = if ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // A send fails only once the writer has stopped after a failure: the dropped ack
        // then tells the caller.
        let _ = self.appends.send(writer::Append {
            bytes,
            publish,
            ack: ack_tx,
        });
        ack_rx
    }

    /// Completes once everything appended so far is on disk (records without an ack, such as
    /// timer ticks, included): for a clean stop.
    pub fn sync(&self) -> Durable {
        let (tx, rx) = oneshot::channel();
        let _ = self.appends.send(writer::Append {
            bytes: Vec::new(),
            publish: None,
            ack: Some(tx),
        });
        rx
    }

    /// Cancelled when a write or fsync failed: nothing more can be made durable, so the
    /// server must stop (and be restarted, which replays what is on disk).
    pub fn failed(&self) -> &CancellationToken {
        &self.failed
    }
}

/// Reads every segment in order; returns what they hold and the newest segment's number.
fn recover(dir: &Path) -> io::Result<(Recovered, u64)> {
    let mut recovered = Recovered::default();
    // (id, generation) -> index -> record. A record may appear twice (a compaction that was
    // interrupted before it removed its inputs): the copies are identical.
    let mut sessions: HashMap<(String, u64), BTreeMap<u32, Record>> = HashMap::new();
    let segments = segment::list(dir)?;
    let last = segments.last().map_or(0, |(id, _)| *id);
    for (_, path) in &segments {
        let contents = segment::read::<Record>(record::MAGIC, path)?;
        recovered.segments += 1;
        if let Some(report) = segment::describe_damage(path, &contents) {
            warn!(journal_damage = %report, "state journal damaged: repaired");
            recovered.damage.push(report);
            segment::repair(path, &contents)?;
        }
        for record in contents.records {
            recovered.records += 1;
            sessions
                .entry((record.session.clone(), record.generation))
                .or_default()
                .entry(record.index)
                .or_insert(record);
        }
    }
    // The newest generation of each id, unless it was dropped.
    let mut newest: HashMap<String, (u64, BTreeMap<u32, Record>)> = HashMap::new();
    for ((id, generation), records) in sessions {
        match newest.get(&id) {
            Some((kept, _)) if *kept > generation => {}
            _ => {
                newest.insert(id, (generation, records));
            }
        }
    }
    for (id, (_, records)) in newest {
        let dropped = records
            .values()
            .any(|record| matches!(record.input, Some(record::Input::Dropped(_))));
        if dropped {
            continue;
        }
        // Replay needs a first record and no holes: keep the run from index 0.
        let total = records.len();
        let mut run = Vec::with_capacity(total);
        for (expected, (index, record)) in (0u32..).zip(records) {
            if index != expected {
                break;
            }
            run.push(record);
        }
        let ignored = total - run.len();
        if run.first().is_none_or(|first| first.created.is_none()) {
            recovered.damage.push(format!(
                "session {id:?}: its first record is missing; not restored ({total} records ignored)"
            ));
            continue;
        }
        if ignored > 0 {
            recovered.damage.push(format!(
                "session {id:?}: record #{} is missing; replayed up to it, {ignored} records after it ignored",
                run.len()
            ));
        }
        recovered.sessions.push((SessionId::new(&id), run));
    }
    if recovered.records > 0 || !recovered.damage.is_empty() {
        info!(
            segments = recovered.segments,
            records = recovered.records,
            sessions = recovered.sessions.len(),
            damaged = recovered.damage.len(),
            "state journal read"
        );
    }
    Ok((recovered, last))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use endcall_core::domain::{Event, Options, SpeechId, Time};

    fn settings(dir: &Path) -> JournalSettings {
        JournalSettings {
            dir: dir.to_owned(),
            segment_bytes: 1 << 20,
        }
    }

    fn record(session: &str, generation: u64, index: u32, input: MachineInput) -> Record {
        let defaults = Options::default();
        Record::new(
            &SessionId::new(session),
            Time::from_micros(generation),
            index,
            Time::from_micros(generation + u64::from(index)),
            (index == 0).then_some(&defaults),
            &input,
        )
    }

    fn created(speech: &str) -> MachineInput {
        MachineInput::Event(Event::SpeechCreated {
            speech: SpeechId::new(speech),
        })
    }

    /// Writes `records` as segment `id`, as the writer would have.
    fn write_segment(dir: &Path, id: u64, records: &[Record]) {
        let mut bytes = record::MAGIC.to_vec();
        for record in records {
            segment::encode(record, &mut bytes);
        }
        std::fs::write(segment::path(dir, id), bytes).unwrap();
    }

    fn ids(recovered: &Recovered) -> Vec<(String, usize)> {
        let mut ids: Vec<_> = recovered
            .sessions
            .iter()
            .map(|(id, records)| (id.to_string(), records.len()))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn appended_records_are_read_back_by_session_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Opened::open(settings(dir.path()))
            .unwrap()
            .start(Box::new(|_| {}))
            .unwrap();
        let mut acks = Vec::new();
        for i in 0..3 {
            acks.extend(journal.append(&record("a", 1, i, created("A")), None, true));
        }
        acks.extend(journal.append(&record("b", 1, 0, created("B")), None, true));
        for ack in acks {
            ack.blocking_recv().unwrap();
        }
        drop(journal);

        let opened = Opened::open(settings(dir.path())).unwrap();
        assert_eq!(
            ids(&opened.recovered),
            vec![("a".into(), 3), ("b".into(), 1)]
        );
        assert!(opened.recovered.damage.is_empty());
    }

    #[test]
    fn a_second_sidecar_cannot_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Opened::open(settings(dir.path())).unwrap();
        let second = Opened::open(settings(dir.path()));
        assert!(matches!(second, Err(OpenError::Locked { .. })));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_reported_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            1,
            &[
                record("a", 1, 0, created("A")),
                record("a", 1, 1, created("B")),
            ],
        );
        let path = segment::path(dir.path(), 1);
        let whole = std::fs::metadata(&path).unwrap().len();
        // Half of a third record, as a crash in the middle of a write leaves it.
        let mut torn = Vec::new();
        segment::encode(&record("a", 1, 2, created("C")), &mut torn);
        let mut file = File::options().append(true).open(&path).unwrap();
        file.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(file);

        let opened = Opened::open(settings(dir.path())).unwrap();
        assert_eq!(ids(&opened.recovered), vec![("a".into(), 2)]);
        assert_eq!(
            opened.recovered.damage.len(),
            1,
            "{:?}",
            opened.recovered.damage
        );
        assert!(opened.recovered.damage[0].contains("torn"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole, "truncated");
    }

    #[test]
    fn a_session_missing_a_record_is_replayed_up_to_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            1,
            &[
                record("a", 1, 0, created("A")),
                record("a", 1, 2, created("C")),
                record("b", 1, 1, created("B")),
            ],
        );
        let opened = Opened::open(settings(dir.path())).unwrap();
        assert_eq!(ids(&opened.recovered), vec![("a".into(), 1)]);
        assert_eq!(opened.recovered.damage.len(), 2);
    }

    #[test]
    fn compaction_leaves_out_dropped_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            1,
            &[
                record("gone", 1, 0, created("A")),
                record("kept", 1, 0, created("A")),
            ],
        );
        write_segment(
            dir.path(),
            2,
            &[
                record("gone", 1, 1, MachineInput::Dropped),
                record("kept", 1, 1, created("B")),
            ],
        );
        compact::compact(dir.path(), 2).unwrap();
        let segments = segment::list(dir.path()).unwrap();
        assert_eq!(
            segments.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2]
        );
        let opened = Opened::open(settings(dir.path())).unwrap();
        assert_eq!(ids(&opened.recovered), vec![("kept".into(), 2)]);
    }

    #[test]
    fn an_interrupted_compaction_loses_and_duplicates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The crash came after the output replaced segment 2, before segment 1 was removed:
        // segment 2 holds copies of segment 1's records. A partial output is also left over.
        let first = [
            record("a", 1, 0, created("A")),
            record("a", 1, 1, created("B")),
        ];
        write_segment(dir.path(), 1, &first);
        let mut all = first.to_vec();
        all.push(record("a", 1, 2, created("C")));
        write_segment(dir.path(), 2, &all);
        std::fs::write(
            dir.path().join("00000000000000000003.compacting"),
            b"partial",
        )
        .unwrap();

        let opened = Opened::open(settings(dir.path())).unwrap();
        assert_eq!(ids(&opened.recovered), vec![("a".into(), 3)]);
        assert!(opened.recovered.damage.is_empty());
        assert!(!dir.path().join("00000000000000000003.compacting").exists());
    }

    #[test]
    fn an_id_used_again_after_its_drop_restores_its_newest_session() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(
            dir.path(),
            1,
            &[
                record("a", 1, 0, created("A")),
                record("a", 1, 1, MachineInput::Dropped),
                record("a", 100, 0, created("X")),
            ],
        );
        let opened = Opened::open(settings(dir.path())).unwrap();
        let (_, records) = &opened.recovered.sessions[0];
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].generation, 100);
    }
}
