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
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long the gateway, once stopped, waits for the writer thread to write the last batch (a
/// stalled stdout reader must not keep the process from exiting).
const LAST_BATCH_WAIT: Duration = Duration::from_secs(1);

struct Writer {
    batch: Mutex<Vec<u8>>,
    /// Signalled when a batch starts, when it passes [`FLUSH_BYTES`], and at [`flush`].
    ready: Condvar,
    dropped: IntCounter,
    /// Whether the writer thread runs (set once it was spawned).
    running: AtomicBool,
    /// Set by [`flush`]: the writer thread writes what is batched and ends.
    stopping: AtomicBool,
    /// Set when the writer thread has ended, for whatever reason.
    ended: Mutex<bool>,
    ended_signal: Condvar,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Starts the writer thread (once per process); `dropped` counts lines that found the batch
/// full.
///
/// # Errors
/// The thread cannot be spawned.
pub fn start(dropped: IntCounter) -> std::io::Result<()> {
    let writer = WRITER.get_or_init(|| Writer {
        batch: Mutex::new(Vec::with_capacity(FLUSH_BYTES)),
        ready: Condvar::new(),
        dropped,
        running: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        ended: Mutex::new(false),
        ended_signal: Condvar::new(),
    });
    if writer.running.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("ixproxy-access-log".to_owned())
        .spawn(move || {
            drain(writer);
            writer.end();
        });
    if let Err(e) = spawned {
        // The next start (a later reload) tries again.
        writer.running.store(false, Ordering::Release);
        return Err(e);
    }
    Ok(())
}

/// Renders `record` in `format` and queues it as one line; a no-op before [`start`] and for
/// [`AccessLogFormat::Off`].
pub fn log(record: &AccessRecord<'_>, format: AccessLogFormat) {
    if let Some(writer) = WRITER.get() {
        writer.append(|batch| record.render_into(format, batch));
    }
}

/// Has the writer thread write what is batched now and end, waiting at most
/// [`LAST_BATCH_WAIT`] for it (at exit: the last window's lines are not lost, and a stalled
/// stdout does not keep the process alive).
pub fn flush() {
    let Some(writer) = WRITER.get().filter(|w| w.running.load(Ordering::Acquire)) else {
        return;
    };
    writer.stopping.store(true, Ordering::Release);
    // Under the batch's lock: the writer is either waiting (and is woken) or will see the flag.
    drop(writer.lock());
    writer.ready.notify_one();
    let ended = writer
        .ended
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writer
        .ended_signal
        .wait_timeout_while(ended, LAST_BATCH_WAIT, |ended| !*ended);
}

impl Writer {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn end(&self) {
        let mut ended = self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *ended = true;
        self.ended_signal.notify_all();
    }

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

/// Waits for a batch, lets it collect for its window, writes it; ends when stdout fails, or
/// once [`flush`] asked and what was batched is written.
fn drain(writer: &Writer) {
    let mut spare = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let mut batch = writer.lock();
        while batch.is_empty() && !writer.stopping() {
            batch = writer
                .ready
                .wait(batch)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if batch.len() < FLUSH_BYTES && !writer.stopping() {
            batch = writer
                .ready
                .wait_timeout_while(batch, BATCH_WINDOW, |b| {
                    b.len() < FLUSH_BYTES && !writer.stopping()
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        let last = writer.stopping();
        std::mem::swap(&mut *batch, &mut spare);
        drop(batch);
        if write_batch(&spare).is_err() || last {
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
