//! Keeps the journal proportional to the sessions held, not to the calls ever served.
//!
//! Sealed segments (never written again) are read, the records of sessions that were dropped
//! are left out, and the rest is written to a new file that takes the newest sealed segment's
//! place by an atomic rename; the older inputs are removed after. A crash at any point leaves
//! either the inputs, or the output beside inputs whose records it duplicates (replay ignores
//! duplicates), never less.
//!
//! The rewrite itself ([`rewrite`]) knows nothing of what a record holds: the webhook store
//! (`src/webhooks/store.rs`) compacts its own segments with it, keeping what it chooses.

use std::{
    collections::HashSet,
    fs::{self, File},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
};

use prost::Message;
use tracing::{debug, error};

use super::{
    record::{Input, Record, MAGIC},
    segment::{self, Magic},
};

const TMP_SUFFIX: &str = ".compacting";

/// Removes a compaction's output left unfinished by a crash (its inputs are all still there).
pub(crate) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(TMP_SUFFIX))
        {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Starts a compaction thread named `name`; send it a segment number to run `compact` over
/// every segment up to it. `what` names the store in its error line. The thread ends once the
/// sender is dropped and the compaction under way, if any, is done.
pub(crate) fn spawn(
    dir: PathBuf,
    name: &str,
    what: &'static str,
    compact: impl Fn(&Path, u64) -> io::Result<()> + Send + 'static,
) -> io::Result<(mpsc::Sender<u64>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<u64>();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(mut up_to) = rx.recv() {
                // Requests that queued up while one ran are covered by the newest of them.
                while let Ok(later) = rx.try_recv() {
                    up_to = up_to.max(later);
                }
                if let Err(err) = compact(&dir, up_to) {
                    // The inputs are intact: the journal only stays larger until the next try.
                    error!(error = %err, dir = %dir.display(), "{what} compaction failed");
                }
            }
        })?;
    Ok((tx, thread))
}

/// Rewrites the session journal's segments numbered up to `up_to` into one, without dropped
/// sessions.
pub(super) fn compact(dir: &Path, up_to: u64) -> io::Result<()> {
    rewrite(dir, up_to, MAGIC, |records: &[Record]| {
        let dropped: HashSet<(&str, u64)> = records
            .iter()
            .filter(|record| matches!(record.input, Some(Input::Dropped(_))))
            .map(|record| (record.session.as_str(), record.generation))
            .collect();
        records
            .iter()
            .map(|record| !dropped.contains(&(record.session.as_str(), record.generation)))
            .collect()
    })
}

/// Rewrites the segments numbered up to `up_to` into one, keeping the records `keep` marks
/// (it is given every record, oldest first, and answers one `bool` per record).
pub(crate) fn rewrite<M: Message + Default>(
    dir: &Path,
    up_to: u64,
    magic: &Magic,
    keep: impl FnOnce(&[M]) -> Vec<bool>,
) -> io::Result<()> {
    let inputs: Vec<_> = segment::list(dir)?
        .into_iter()
        .filter(|(id, _)| *id <= up_to)
        .collect();
    let Some((last, _)) = inputs.last() else {
        return Ok(());
    };
    let last = *last;
    let mut records = Vec::new();
    let mut bytes_in = 0;
    for (_, path) in &inputs {
        let contents = segment::read::<M>(magic, path)?;
        // Recovery repaired every segment before compaction ever runs, and sealed ones are
        // not written again: damage here is a disk fault, and the segment is left alone.
        if contents.damage.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged; not compacting it", path.display()),
            ));
        }
        bytes_in += contents.valid_len;
        records.extend(contents.records);
    }
    let kept_flags = keep(&records);
    let mut out = magic.to_vec();
    let mut kept = 0usize;
    for (i, record) in records.iter().enumerate() {
        // A record `keep` said nothing about is kept: losing one is the failure to avoid.
        if kept_flags.get(i).copied().unwrap_or(true) {
            segment::encode(record, &mut out);
            kept += 1;
        }
    }
    let tmp = dir.join(format!("{last:020}{TMP_SUFFIX}"));
    let mut file = File::options()
        .mode(0o600)
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    file.write_all(&out)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, segment::path(dir, last))?;
    segment::sync_dir(dir)?;
    for (id, path) in &inputs {
        if *id != last {
            fs::remove_file(path)?;
        }
    }
    segment::sync_dir(dir)?;
    debug!(
        dir = %dir.display(),
        segments = inputs.len(),
        bytes_in,
        bytes_out = out.len(),
        records_in = records.len(),
        records_kept = kept,
        "compacted"
    );
    Ok(())
}
