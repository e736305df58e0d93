//! The writer behind the log thread: it writes what the thread hands it in batches, and
//! pauses after each batch.
//!
//! Why: tracing-appender's thread blocks on its channel once it has written what was queued.
//! Blocking there spins and yields before it parks, and the next line to arrive has to wake it
//! (a futex call on the logging thread, then two context switches). Sessions end a few
//! microseconds apart, so the thread was woken every few lines and used about as much CPU as
//! the formatting of the lines: about 3 µs per report line as text, 7 µs as JSON, against
//! 0.2–0.5 µs with the pause (`cargo bench --bench report`, "log writer"). The thread flushes
//! its writer when the channel is empty; pausing there lets the next lines gather, so it wakes
//! at most once a pause and writes each batch with a few large `write` calls instead of one
//! per line.

use std::{
    io::{self, BufWriter, Write},
    thread,
    time::Duration,
};

/// How long the log thread waits between batches: the longest a line waits before it is
/// written, on top of the writing itself. Short next to anything a person tailing the log
/// would notice; long enough that a busy sidecar writes hundreds of lines a batch. The report
/// thread gathers its batches for as long, so a report line can take up to twice this.
pub(super) const PACE: Duration = Duration::from_millis(10);

/// Bytes gathered before they are written without waiting for the end of the batch.
const BUFFER: usize = 16 * 1024;

pub(super) struct Paced<W: Write> {
    out: BufWriter<W>,
    pace: Duration,
    /// Whether anything was written since the last flush: an idle log does not pause.
    wrote: bool,
}

impl<W: Write> Paced<W> {
    pub(super) fn new(out: W, pace: Duration) -> Self {
        Paced {
            out: BufWriter::with_capacity(BUFFER, out),
            pace,
            wrote: false,
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wrote = true;
        self.out.write(buf)
    }

    /// Writes the batch out, then pauses if there was one.
    fn flush(&mut self) -> io::Result<()> {
        let result = self.out.flush();
        if std::mem::take(&mut self.wrote) {
            thread::sleep(self.pace);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Instant,
    };

    use super::*;

    /// Records each `write` call it receives.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_is_written_in_one_call_at_the_flush() {
        let calls = Calls::default();
        let mut paced = Paced::new(calls.clone(), Duration::ZERO);
        paced.write_all(b"one\n").unwrap();
        paced.write_all(b"two\n").unwrap();
        assert!(
            calls.0.lock().unwrap().is_empty(),
            "nothing before the flush"
        );
        paced.flush().unwrap();
        assert_eq!(*calls.0.lock().unwrap(), [b"one\ntwo\n".to_vec()]);
    }

    #[test]
    fn a_batch_larger_than_the_buffer_is_written_whole_and_in_order() {
        let calls = Calls::default();
        let mut paced = Paced::new(calls.clone(), Duration::ZERO);
        let lines: Vec<String> = (0..2_000).map(|i| format!("line {i:>40}\n")).collect();
        for line in &lines {
            paced.write_all(line.as_bytes()).unwrap();
        }
        paced.flush().unwrap();
        let calls = calls.0.lock().unwrap();
        assert!(calls.len() > 1 && calls.len() < 10, "{} calls", calls.len());
        assert_eq!(calls.concat(), lines.concat().into_bytes());
    }

    /// The pause follows a batch; a flush with nothing written (the thread's last one at
    /// shutdown) returns at once. The pace is long so that a slow machine cannot blur the two.
    #[test]
    fn only_a_flush_that_wrote_pauses() {
        let pace = Duration::from_millis(300);
        let mut paced = Paced::new(Calls::default(), pace);
        paced.write_all(b"line\n").unwrap();
        let start = Instant::now();
        paced.flush().unwrap();
        assert!(start.elapsed() >= pace);
        let mut idle = Paced::new(Calls::default(), Duration::from_secs(600));
        let start = Instant::now();
        idle.flush().unwrap();
        assert!(start.elapsed() < Duration::from_secs(60));
    }
}
