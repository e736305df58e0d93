//! The on-disk format: numbered segment files of checksummed, length-prefixed records.
//!
//! A segment starts with an 8-byte magic; each record is `len: u32 LE`, `crc32: u32 LE` (of
//! the payload), then `len` bytes of protobuf. A crash can leave a partly written record at
//! the end of the newest segment (a torn tail), and a bad disk can damage bytes anywhere: both
//! show as a frame that does not check out, and everything from there on is cut off.
//!
//! The framing knows nothing of what a record holds: the session journal's records and the
//! webhook store's (`src/webhooks/store.rs`) are both kept this way, each in a directory of
//! its own and with a magic of its own.

use std::{
    fs::{self, File},
    io::{self, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use prost::Message;

/// The 8 bytes a segment of one kind starts with.
pub(crate) type Magic = [u8; 8];

const FRAME_HEADER: usize = 8;
/// No record comes near this (ids and texts are capped at a few KiB): a larger length is damage.
const MAX_RECORD: usize = 1 << 20;
const SUFFIX: &str = ".journal";

/// Appends `record`, framed, to `out`.
pub(crate) fn encode(record: &impl Message, out: &mut Vec<u8>) {
    let payload = record.encode_to_vec();
    // MAX_RECORD is far below u32::MAX; the registry's input limits keep records small.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Where a segment stops making sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Bytes from here on were cut off.
    pub offset: u64,
    pub file_len: u64,
    pub what: &'static str,
}

/// The records of one segment that check out, and where the rest went wrong, if it did.
#[derive(Debug)]
pub(crate) struct Contents<M> {
    pub records: Vec<M>,
    /// The length of the part that checks out.
    pub valid_len: u64,
    pub damage: Option<Damage>,
}

/// Reads a whole segment, stopping at the first frame that does not check out.
pub(crate) fn read<M: Message + Default>(magic: &Magic, path: &Path) -> io::Result<Contents<M>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(parse(magic, &bytes))
}

pub(crate) fn parse<M: Message + Default>(magic: &Magic, bytes: &[u8]) -> Contents<M> {
    let file_len = bytes.len() as u64;
    let damaged = |offset: usize, what| Damage {
        offset: offset as u64,
        file_len,
        what,
    };
    let mut contents = Contents {
        records: Vec::new(),
        valid_len: 0,
        damage: None,
    };
    if bytes.len() < magic.len() || bytes[..magic.len()] != magic[..] {
        // Created but its header never reached the disk, or not a segment of ours.
        contents.damage = Some(damaged(0, "no segment header"));
        return contents;
    }
    let mut at = magic.len();
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + FRAME_HEADER) else {
            contents.damage = Some(damaged(at, "torn record header at the end"));
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_RECORD {
            contents.damage = Some(damaged(at, "impossible record length"));
            break;
        }
        let start = at + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + len) else {
            contents.damage = Some(damaged(at, "torn record at the end"));
            break;
        };
        if crc32fast::hash(payload) != crc {
            contents.damage = Some(damaged(at, "checksum mismatch"));
            break;
        }
        match M::decode(payload) {
            Ok(record) => contents.records.push(record),
            Err(_) => {
                contents.damage = Some(damaged(at, "undecodable record"));
                break;
            }
        }
        at = start + len;
    }
    contents.valid_len = match &contents.damage {
        Some(damage) => damage.offset,
        None => at as u64,
    };
    contents
}

pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

/// The segments in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(SUFFIX))
            .and_then(|id| id.parse::<u64>().ok());
        if let Some(id) = id {
            segments.push((id, path));
        }
    }
    segments.sort_unstable_by_key(|(id, _)| *id);
    Ok(segments)
}

/// Creates a new, empty segment whose header is on disk.
pub(crate) fn create(dir: &Path, id: u64, magic: &Magic) -> io::Result<File> {
    use std::io::Write as _;
    let mut file = File::options()
        .mode(0o600)
        .create_new(true)
        .append(true)
        .open(path(dir, id))?;
    file.write_all(magic)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a file's creation, renaming or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One line for the log about a damaged segment: which file, what, where, and what was kept.
pub(crate) fn describe_damage<M>(path: &Path, contents: &Contents<M>) -> Option<String> {
    let damage = contents.damage.as_ref()?;
    Some(format!(
        "{}: {} at byte {} of {}; cut off {} bytes, kept {} records before it",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |name| name.to_string_lossy().into_owned()
        ),
        damage.what,
        damage.offset,
        damage.file_len,
        damage.file_len - damage.offset,
        contents.records.len(),
    ))
}

/// Cuts a damaged segment back to the part that checks out, or removes it if nothing does.
pub(crate) fn repair<M>(path: &Path, contents: &Contents<M>) -> io::Result<()> {
    if contents.valid_len == 0 {
        fs::remove_file(path)?;
    } else {
        let file = File::options().write(true).open(path)?;
        file.set_len(contents.valid_len)?;
        file.sync_all()?;
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::journal::record::{MachineInput, Record, MAGIC};
    use endcall_core::domain::{Event, SessionId, SpeechId, Time};

    fn record(i: u32) -> Record {
        Record::new(
            &SessionId::new("s"),
            Time::from_micros(1),
            i,
            Time::from_micros(u64::from(i)),
            None,
            &MachineInput::Event(Event::SpeechCreated {
                speech: SpeechId::new("A"),
            }),
        )
    }

    fn segment(n: u32) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for i in 0..n {
            encode(&record(i), &mut bytes);
        }
        bytes
    }

    fn parse(bytes: &[u8]) -> Contents<Record> {
        super::parse(MAGIC, bytes)
    }

    #[test]
    fn a_whole_segment_reads_back() {
        let bytes = segment(3);
        let contents = parse(&bytes);
        assert_eq!(contents.records, vec![record(0), record(1), record(2)]);
        assert_eq!(contents.valid_len, bytes.len() as u64);
        assert_eq!(contents.damage, None);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let whole = segment(2);
        let good = segment(1).len();
        // Every way of tearing the last record: mid-header and mid-payload.
        for cut in good + 1..whole.len() {
            let contents = parse(&whole[..cut]);
            assert_eq!(contents.records, vec![record(0)], "cut at {cut}");
            assert_eq!(contents.valid_len, good as u64);
            assert!(contents.damage.unwrap().what.starts_with("torn"));
        }
    }

    #[test]
    fn a_flipped_byte_is_caught_and_what_precedes_it_loads() {
        let whole = segment(3);
        let first = segment(1).len();
        let second = segment(2).len();
        for at in first..second {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x40;
            let contents = parse(&bytes);
            assert_eq!(contents.records, vec![record(0)], "flip at {at}");
            assert_eq!(contents.valid_len, first as u64);
            assert!(contents.damage.is_some());
        }
    }

    #[test]
    fn a_zeroed_tail_or_missing_header_is_damage() {
        let mut bytes = segment(1);
        let good = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        let contents = parse(&bytes);
        assert_eq!(contents.valid_len, good as u64);
        assert_eq!(contents.damage.unwrap().what, "impossible record length");
        let contents = parse(b"ECJ");
        assert_eq!(contents.damage.unwrap().what, "no segment header");
        assert_eq!(contents.valid_len, 0);
    }
}
