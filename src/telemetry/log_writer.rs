//! A log writer that never blocks a worker and makes no system call on the request path.
//!
//! Each formatted line (tracing-subscriber hands a whole event to one `write`) is pushed into a
//! bounded queue; a dedicated thread drains the queue every [`TICK`] and writes the batch to
//! stderr in one `write`. Workers share no lock: the queue is a bounded lock-free channel, and
//! since the drain thread never blocks on it, a push never wakes anyone. When the queue is full
//! the line is dropped and counted (`org_gateway_log_lines_dropped_total`) instead of making the
//! request wait for the terminal or the log shipper.
//!
//! Lines still queued are written by [`flush`], which runs at shutdown, before a failpoint
//! aborts and from the panic hook; a process killed by a signal loses at most one tick of lines.

use crate::telemetry::metrics;
use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Lines held at most; about 13 MB of typical access-log lines.
pub const QUEUE_LINES: usize = 65_536;

/// How often queued lines are written out.
pub const TICK: Duration = Duration::from_millis(5);

struct Queue {
    tx: SyncSender<Vec<u8>>,
    /// Shared by the drain thread and [`flush`] only; workers never take it.
    rx: Mutex<Receiver<Vec<u8>>>,
    /// Held while a batch is taken and written, so batches reach stderr in queue order.
    out: Mutex<()>,
}

/// How long [`flush`] waits for a write in progress (stderr may be blocked by a stuck pipe:
/// shutdown and aborts must not hang on it).
const FLUSH_WAIT: Duration = Duration::from_millis(500);

static QUEUE: OnceCell<Queue> = OnceCell::new();

/// The [`MakeWriter`] of the queue; writes go straight to stderr until the queue is started.
#[derive(Clone, Copy, Default)]
pub struct QueuedStderr;

impl QueuedStderr {
    /// Starts the queue and its drain thread (once per process) and returns the writer.
    pub fn start() -> Self {
        QUEUE.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE_LINES);
            let thread = std::thread::Builder::new().name("org-gateway-log".into());
            thread
                .spawn(|| loop {
                    std::thread::sleep(TICK);
                    if let Some(q) = QUEUE.get() {
                        drain(q, None);
                    }
                })
                .expect("spawn the log writer thread");
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                flush();
                previous(info);
            }));
            Queue {
                tx,
                rx: Mutex::new(rx),
                out: Mutex::new(()),
            }
        });
        Self
    }
}

/// Writes every queued line to stderr now, unless a write already in progress takes longer
/// than [`FLUSH_WAIT`] (then those lines are left to the drain thread).
pub fn flush() {
    if let Some(q) = QUEUE.get() {
        drain(q, Some(FLUSH_WAIT));
    }
}

/// Takes what is queued and writes it in one go; `wait` bounds the wait for another writer.
fn drain(q: &Queue, wait: Option<Duration>) {
    let _out = match wait {
        Some(w) => match q.out.try_lock_for(w) {
            Some(guard) => guard,
            None => return,
        },
        None => q.out.lock(),
    };
    let mut batch = Vec::new();
    {
        let rx = q.rx.lock();
        while let Ok(line) = rx.try_recv() {
            batch.extend_from_slice(&line);
        }
    }
    if !batch.is_empty() {
        write_stderr(&batch);
    }
}

fn write_stderr(bytes: &[u8]) {
    // Nowhere to report a failing stderr; the line is lost either way.
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// One event's line on its way to the queue.
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match QUEUE.get() {
            Some(q) => match q.tx.try_send(buf.to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => metrics::LOG_LINES_DROPPED.inc(),
                Err(TrySendError::Disconnected(line)) => write_stderr(&line),
            },
            None => write_stderr(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueuedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pass_through_the_queue_and_a_full_queue_drops_and_counts() {
        let writer = QueuedStderr::start();
        let before = metrics::LOG_LINES_DROPPED.get();
        for i in 0..100 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(metrics::LOG_LINES_DROPPED.get(), before);
        flush();
        let q = QUEUE.get().unwrap();
        assert!(q.rx.lock().try_recv().is_err(), "flush empties the queue");

        // With the drain held off, pushes past the bound return at once and are counted.
        let held = q.rx.lock();
        for _ in 0..QUEUE_LINES + 5 {
            writer.make_writer().write_all(b"x\n").unwrap();
        }
        assert!(metrics::LOG_LINES_DROPPED.get() >= before + 5);
        // Discard the test's lines rather than print them.
        while held.try_recv().is_ok() {}
    }
}
