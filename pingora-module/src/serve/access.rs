//! The access log's writer: lines go to stdout from a thread of their own, so a slow reader of
//! stdout (a full pipe, a stalled log shipper) never holds up a request.
//!
//! A request renders its line straight into one shared batch, under a lock held for that
//! alone (about a thousand instructions). The writer thread wakes when a batch starts
//! (never per line), lets it fill for [`BATCH_WINDOW`] (less when it passes [`FLUSH_BYTES`]),
//! then swaps it out and writes it with one `write` call: under load that is one wake-up and
//! one system call per batch of hundreds of lines, none per line. A batch is bounded by
//! [`MAX_BATCH_BYTES`]; a line that finds it full is dropped and counted in
//! `ixproxy_access_log_dropped_total` rather than blocking the worker.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ixproxy_core::access_log::AccessRecord;
use ixproxy_core::config::AccessLogFormat;
use prometheus::IntCounter;

/// How long a started batch collects lines before it is written.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting for the rest of its window.
const FLUSH_BYTES: usize = 64 * 1024;
/// The most a batch may hold while stdout is slow (the former queue's 16 Ki lines of ~250
/// bytes); lines beyond it are dropped and counted.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The room a batch must have left to take another line (a longer one, which only a request
/// head near its size limit full of escaped characters makes, is taken back and dropped).
const LINE_ROOM: usize = 64 * 1024;

struct Writer {
    batch: Mutex<Vec<u8>>,
    /// Signalled when a batch starts, and when it passes [`FLUSH_BYTES`].
    ready: Condvar,
    dropped: IntCounter,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Starts the writer thread (once per process); `dropped` counts lines that found the batch
/// full.
///
/// # Errors
/// The thread cannot be spawned.
pub fn start(dropped: IntCounter) -> std::io::Result<()> {
    if WRITER.get().is_some() {
        return Ok(());
    }
    let writer = WRITER.get_or_init(|| Writer {
        batch: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
        ready: Condvar::new(),
        dropped,
    });
    std::thread::Builder::new()
        .name("ixproxy-access-log".to_owned())
        .spawn(move || drain(writer))?;
    Ok(())
}

/// Renders `record` in `format` and queues it as one line; a no-op before [`start`] and for
/// [`AccessLogFormat::Off`].
pub fn log(record: &AccessRecord<'_>, format: AccessLogFormat) {
    if let Some(writer) = WRITER.get() {
        writer.append(|batch| record.render_into(format, batch));
    }
}

/// Writes what is batched now, from the calling thread (at exit: the last window's lines are
/// not lost).
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        let batch = std::mem::take(&mut *writer.lock());
        // Nothing is left to report a failing stdout to.
        let _ = write_batch(&batch);
    }
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves at worst a torn line: keep logging.
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Renders one line straight into the batch (no copy of its own), under the lock; a line
    /// that would take the batch past [`MAX_BATCH_BYTES`] is taken back and counted as dropped.
    fn append(&self, render: impl FnOnce(&mut Vec<u8>) -> bool) {
        let mut batch = self.lock();
        let before = batch.len();
        // Room for any line is checked first, so the batch never grows past its bound.
        if before + LINE_ROOM > MAX_BATCH_BYTES {
            drop(batch);
            self.dropped.inc();
            return;
        }
        if !render(&mut batch) {
            return;
        }
        if batch.len() >= MAX_BATCH_BYTES {
            batch.truncate(before);
            drop(batch);
            self.dropped.inc();
            return;
        }
        batch.push(b'\n');
        let after = batch.len();
        drop(batch);
        // The writer sleeps on an empty batch and wakes early for a full one: only these two
        // crossings signal it.
        if before == 0 || (before < FLUSH_BYTES && after >= FLUSH_BYTES) {
            self.ready.notify_one();
        }
    }
}

/// Waits for a batch, lets it collect for its window, writes it; ends when stdout fails.
fn drain(writer: &Writer) {
    let mut spare = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let mut batch = writer.lock();
        while batch.is_empty() {
            batch = writer
                .ready
                .wait(batch)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if batch.len() < FLUSH_BYTES {
            batch = writer
                .ready
                .wait_timeout_while(batch, BATCH_WINDOW, |b| b.len() < FLUSH_BYTES)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut *batch, &mut spare);
        drop(batch);
        if write_batch(&spare).is_err() {
            return;
        }
        spare.clear();
        // A burst's large buffer is not kept for ever.
        spare.shrink_to(FLUSH_BYTES);
    }
}

fn write_batch(batch: &[u8]) -> std::io::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(batch)?;
    out.flush()
}
