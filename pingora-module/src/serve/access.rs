//! The access log's writer: lines go to stdout from a thread of their own, so a slow reader of
//! stdout (a full pipe, a stalled log shipper) never holds up a request.
//!
//! Lines queue in a bounded channel; when it is full a line is dropped and counted in
//! `ixproxy_access_log_dropped_total` rather than blocking the worker.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use prometheus::IntCounter;

/// Lines that may wait for the writer thread.
const QUEUE_LINES: usize = 16 * 1024;

struct Writer {
    lines: SyncSender<String>,
    dropped: IntCounter,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Starts the writer thread (once per process); `dropped` counts lines that found the queue
/// full.
///
/// # Errors
/// The thread cannot be spawned.
pub fn start(dropped: IntCounter) -> std::io::Result<()> {
    if WRITER.get().is_some() {
        return Ok(());
    }
    let (lines, queue) = sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("ixproxy-access-log".to_owned())
        .spawn(move || drain(&queue))?;
    let _ = WRITER.set(Writer { lines, dropped });
    Ok(())
}

/// Queues one line (without its newline); a no-op before [`start`].
pub fn write_line(line: &str) {
    let Some(writer) = WRITER.get() else {
        return;
    };
    match writer.lines.try_send(line.to_owned()) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => writer.dropped.inc(),
        // The writer thread is gone (stdout closed): nothing to write to.
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Writes queued lines, flushing whenever the queue runs empty; ends when stdout fails.
fn drain(queue: &Receiver<String>) {
    let stdout = std::io::stdout();
    while let Ok(first) = queue.recv() {
        let mut out = stdout.lock();
        let mut line = Some(first);
        while let Some(text) = line {
            if writeln!(out, "{text}").is_err() {
                return;
            }
            line = queue.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}
