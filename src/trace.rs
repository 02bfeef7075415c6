//! The compute watcher's trace (`GPUSLICE_TRACE=<path>`): one line per GPU per tick that
//! followed it, saying what the watcher saw (the poll's answer and how long the poll took)
//! and what it decided (the GPU time it charged, the credit, the gate). A recording of a
//! workload's shape as the watcher sees it, to set against the real timeline (the
//! workload's own timed events, NVML's utilization), and to replay against the controller.
//!
//! Written by the watcher thread only, buffered, never on a launch path. A trace that
//! cannot be opened or written is logged once and dropped: it is a diagnostic, and the
//! limits hold without it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::log::{Level, log};

/// One GPU's tick, as traced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TickRecord {
    /// `CLOCK_MONOTONIC` at the end of the poll, nanoseconds.
    pub at_ns: u64,
    /// The GPU's index in the tenant's usage file.
    pub gpu: u32,
    /// Since the previous tick.
    pub elapsed_ns: u64,
    /// How long the poll of the streams took.
    pub poll_ns: u64,
    /// Work in flight at the previous poll, and at this one.
    pub busy_before: bool,
    pub busy_after: bool,
    /// Launches known finished, and unfinished, at this poll.
    pub finished: u64,
    pub unfinished: u64,
    /// Processes of other tenants (and other processes of this one) with work in flight.
    pub others_in_flight: u64,
    /// The GPU time charged to this process for the tick.
    pub charged_ns: u64,
    /// What the launches seen finished took, per sampled launches (`None`: some had no
    /// sample; the polled estimate was charged).
    pub counted_ns: Option<u64>,
    /// The tenant's rate, credit and consumption after the refill.
    pub rate: f64,
    pub credit_ns: u64,
    pub consumed_ns: u64,
    /// The gate's decision: open, and the bound on launches in flight (0: unbounded).
    pub open: bool,
    pub cap: u64,
    /// Launches waited at the gate during the tick.
    pub waiting: bool,
}

/// An open trace.
#[derive(Debug)]
pub struct Trace {
    out: BufWriter<File>,
    failed: bool,
}

impl Trace {
    /// Opens (appends to) the trace at `path`; `None`, logged, if it cannot be.
    pub fn open(path: &Path) -> Option<Trace> {
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path);
        match opened {
            Ok(file) => {
                let mut trace = Trace {
                    out: BufWriter::with_capacity(1 << 16, file),
                    failed: false,
                };
                trace.line(format_args!(
                    "# gpuslice trace pid={} fields: {}",
                    std::process::id(),
                    FIELDS
                ));
                Some(trace)
            }
            Err(error) => {
                log!(
                    Level::Warn,
                    "cannot open the trace {} ({error}); not tracing",
                    path.display()
                );
                None
            }
        }
    }

    /// Adds one tick of one GPU.
    pub fn record(&mut self, r: &TickRecord) {
        self.line(format_args!(
            "{} {} {} {} {} {} {} {} {} {} {:.4} {} {} {} {} {} {}",
            r.at_ns,
            r.gpu,
            r.elapsed_ns,
            r.poll_ns,
            u8::from(r.busy_before),
            u8::from(r.busy_after),
            r.finished,
            r.unfinished,
            r.others_in_flight,
            r.charged_ns,
            r.rate,
            r.credit_ns,
            r.consumed_ns,
            u8::from(r.open),
            if r.cap == u64::MAX { 0 } else { r.cap },
            u8::from(r.waiting),
            r.counted_ns
                .map_or_else(|| "-".to_string(), |ns| ns.to_string()),
        ));
    }

    /// Writes what is buffered (at exit; the buffer also flushes itself when full).
    pub fn flush(&mut self) {
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if self.failed {
            return;
        }
        if self.out.write_fmt(args).is_err() || self.out.write_all(b"\n").is_err() {
            self.failed = true;
            log!(
                Level::Warn,
                "writing the trace failed; not tracing any more"
            );
        }
    }
}

/// The columns of a trace line, in order.
pub const FIELDS: &str = "at_ns gpu elapsed_ns poll_ns busy_before busy_after finished \
                          unfinished others_in_flight charged_ns rate credit_ns consumed_ns \
                          open cap waiting counted_ns";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_line_holds_every_field_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let mut trace = Trace::open(&path).unwrap();
        trace.record(&TickRecord {
            at_ns: 10,
            gpu: 1,
            elapsed_ns: 500,
            poll_ns: 7,
            busy_before: true,
            busy_after: false,
            finished: 3,
            unfinished: 0,
            others_in_flight: 2,
            charged_ns: 250,
            counted_ns: None,
            rate: 0.3,
            credit_ns: 99,
            consumed_ns: 98,
            open: true,
            cap: u64::MAX,
            waiting: false,
        });
        trace.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        assert!(lines.next().unwrap().starts_with("# gpuslice trace pid="));
        let line = lines.next().unwrap();
        assert_eq!(line, "10 1 500 7 1 0 3 0 2 250 0.3000 99 98 1 0 0 -");
        assert_eq!(line.split(' ').count(), FIELDS.split_whitespace().count());
    }

    #[test]
    fn a_trace_that_cannot_be_opened_is_none() {
        assert!(Trace::open(Path::new("/nonexistent/dir/trace")).is_none());
    }
}
