//! The compute watcher's trace (`GPUSLICE_TRACE=<path>`): one line per GPU per tick the
//! controller (`policy::controller`) looked at, holding exactly what went into it and what
//! came out, so that a trace can be replayed against a fresh controller ([`replay`]) and
//! set against the real timeline (the workload's own timed events, NVML's utilization).
//!
//! The file is text. Each process that opens it appends a header line,
//! `# gpuslice trace v3 pid=<pid> tenant=<tenant> columns: <the columns>`, then its lines,
//! one per GPU per tick, the columns separated by single spaces ([`COLUMNS`], documented
//! there). Quiet ticks (nothing in flight, finished or waiting) are written only when they
//! change the controller's state: the first of a run. Give each process its own path: two
//! writing one file at once interleave their lines. Columns have grown within v3 only in
//! ways older readers of v3 refuse by name (a value they cannot parse), and this reader
//! takes every earlier v3 line as it was.
//!
//! Written by the watcher thread only, buffered, never on a launch path. A trace that
//! cannot be opened or written is logged once and dropped: it is a diagnostic, and the
//! limits hold without it.

pub mod replay;

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use gpuslice_ledger::{Activity, ComputeSettings, Priority, TenantName};

use crate::gate::UNBOUNDED;
use crate::log::{Level, log};
use crate::policy::controller::{Account, Decision, GateState, NextTick, Observation, Poll};
use crate::policy::standing::{PublishedSlot, PublishedTenant};

/// The format's version, in the header line.
pub const FORMAT: &str = "v3";

/// The columns of a tick line, in order:
///
/// - `at_ns`: `CLOCK_MONOTONIC` at the end of the poll; every other time on the line is
///   written as how long before it (`*_ago_ns`, `@` in activities; `-`: never);
/// - `gpu`: the GPU's index in the tenant's usage file; `elapsed_ns`: since the previous
///   tick; `poll_ns`: how long the poll of the streams took (not an input: a diagnostic);
/// - the observation: `slot`, the process's slot; `busy`, `finished`, `unfinished`,
///   `counted_ns` (`-`: some launches had no sample), `throughout`, `covered_ns` (with an
///   `m` after it where `covered_mixed`, and after that `covered_long_ns` where known;
///   traces from before them have none), `covered_done`,
///   `saturated` (`policy::controller::Poll`), the poll's answer; `waiters`,
///   `waited_ago_ns`, `gate_cap` (`-`: unbounded), the gate's state; `settings`, the
///   process's compute settings as `share/limit/priority` (`-` unset; priority `h`, `n`,
///   `l`);
/// - `tenants`: every tenant's records on the GPU, `;` between tenants (`-`: none, and on
///   quiet lines), each `name,gpu_time_ns,credit_ns,ceiling,slot,slot...` where the
///   ceiling is settings or `-` (no quota file) and a slot is `index:settings:activity`
///   (settings `-`: none published), an activity being its flags (`i` in flight,
///   `b` backlogged, `w` waiting, `h` holding, `q` long queue) then `@` and how long ago;
/// - `step`: `q` quiet, `d` charged and decided;
/// - the account after the charge and refill (`-` on quiet lines): `credit_ns`,
///   `consumed_ns`, `own_gpu_time_ns`; and `refill`, the refill of the credit this process
///   made, if it made one (`credit_ns:consumed_ns:elapsed_ns:refilled_ns`: the credit and
///   consumption it refilled from, over how long, and the credit it wrote; `-`: another
///   process of the tenant refilled less than `REFILL_NS` ago);
/// - the decisions (`-` on quiet lines): `charged_ns`, `rate`, `sharing`,
///   `publish_settings` (1: the settings were published), `open`, `cap` (`-`: unbounded),
///   `publish_activity` (`-`: none), `next_tick` (`n` normal, `f` fast, `h` held).
pub const COLUMNS: &str = "at_ns gpu elapsed_ns poll_ns slot busy finished unfinished \
                           counted_ns throughout covered_ns covered_done saturated waiters \
                           waited_ago_ns gate_cap settings tenants step \
                           credit_ns consumed_ns own_gpu_time_ns refill charged_ns rate sharing \
                           publish_settings open cap publish_activity next_tick";

/// What the controller decided in a tick it did not find quiet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// The first step's answers (`policy::controller::Charged`).
    pub charged_ns: u64,
    pub rate: f64,
    pub sharing: u64,
    pub published_settings: bool,
    /// The refill of the tenant's credit this process made between the steps, if any.
    pub refill: Option<Refill>,
    /// The tenant's numbers it decided the second step on.
    pub account: Account,
    pub decision: Decision,
}

/// A refill of the tenant's credit (`policy::controller::Charged::refilled_credit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    /// The credit and the consumption it refilled from, and over how long.
    pub credit_ns: u64,
    pub consumed_ns: u64,
    pub elapsed_ns: u64,
    /// The credit it wrote.
    pub refilled_ns: u64,
}

/// One GPU's tick, as traced.
#[derive(Clone, Debug, PartialEq)]
pub struct TickRecord {
    pub gpu: u32,
    pub poll_ns: u64,
    pub observation: Observation,
    /// Every tenant's records on the GPU (none on a quiet tick: it reads none).
    pub tenants: Vec<PublishedTenant>,
    /// `None`: a quiet tick.
    pub outcome: Option<Outcome>,
}

/// An open trace.
#[derive(Debug)]
pub struct Trace {
    out: BufWriter<File>,
    line: String,
    failed: bool,
}

impl Trace {
    /// Opens (appends to) the trace at `path` for a process of `tenant`; `None`, logged,
    /// if it cannot be.
    pub fn open(path: &Path, tenant: &TenantName) -> Option<Trace> {
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
                    line: String::with_capacity(512),
                    failed: false,
                };
                trace.line = header(std::process::id(), tenant);
                trace.write_line();
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
    pub fn record(&mut self, record: &TickRecord) {
        if self.failed {
            return;
        }
        self.line.clear();
        format_tick(&mut self.line, record);
        self.write_line();
    }

    /// Writes what is buffered (at exit; the buffer also flushes itself when full).
    pub fn flush(&mut self) {
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
    }

    fn write_line(&mut self) {
        if self.failed {
            return;
        }
        self.line.push('\n');
        if self.out.write_all(self.line.as_bytes()).is_err() {
            self.failed = true;
            log!(
                Level::Warn,
                "writing the trace failed; not tracing any more"
            );
        }
    }
}

/// A process's header line (without its newline).
fn header(pid: u32, tenant: &TenantName) -> String {
    format!("# gpuslice trace {FORMAT} pid={pid} tenant={tenant} columns: {COLUMNS}")
}

/// Appends `record` as a line (without its newline) to `out`.
pub fn format_tick(out: &mut String, record: &TickRecord) {
    let o = &record.observation;
    let now = o.now_ns;
    let _ = write!(
        out,
        "{} {} {} {} {} {} {} {} ",
        now,
        record.gpu,
        o.elapsed_ns,
        record.poll_ns,
        o.slot,
        u8::from(o.poll.busy),
        o.poll.finished,
        o.poll.unfinished,
    );
    write_optional(out, o.poll.counted_ns);
    let _ = write!(
        out,
        " {} {}",
        u8::from(o.poll.busy_throughout),
        o.poll.covered_ns
    );
    if o.poll.covered_mixed {
        out.push('m');
        if let Some(long) = o.poll.covered_long_ns {
            let _ = write!(out, "{long}");
        }
    }
    let _ = write!(
        out,
        " {} {}",
        u8::from(o.poll.covered_done),
        u8::from(o.poll.saturated),
    );
    let _ = write!(out, " {} ", u8::from(o.gate.waiters));
    write_ago(out, o.gate.waited_at_ns, now);
    out.push(' ');
    write_cap(out, o.gate.in_flight_cap);
    out.push(' ');
    write_settings(out, o.settings);
    out.push(' ');
    write_tenants(out, &record.tenants, now);
    let Some(outcome) = &record.outcome else {
        out.push_str(" q");
        for _ in 0..12 {
            out.push_str(" -");
        }
        return;
    };
    let (a, d) = (&outcome.account, &outcome.decision);
    let _ = write!(
        out,
        " d {} {} {} ",
        a.credit_ns, a.consumed_ns, a.own_gpu_time_ns,
    );
    match outcome.refill {
        Some(r) => {
            let _ = write!(
                out,
                "{}:{}:{}:{}",
                r.credit_ns, r.consumed_ns, r.elapsed_ns, r.refilled_ns
            );
        }
        None => out.push('-'),
    }
    let _ = write!(
        out,
        " {} {} {} {} {} ",
        outcome.charged_ns,
        outcome.rate,
        outcome.sharing,
        u8::from(outcome.published_settings),
        u8::from(d.open),
    );
    write_cap(out, d.in_flight_cap);
    out.push(' ');
    match d.publish_activity {
        Some(activity) => write_activity(out, activity, now),
        None => out.push('-'),
    }
    out.push(' ');
    out.push(match d.next_tick {
        NextTick::Normal => 'n',
        NextTick::Fast => 'f',
        NextTick::Held => 'h',
    });
}

fn write_optional(out: &mut String, value: Option<u64>) {
    match value {
        Some(value) => {
            let _ = write!(out, "{value}");
        }
        None => out.push('-'),
    }
}

fn write_cap(out: &mut String, cap: u64) {
    write_optional(out, (cap != UNBOUNDED).then_some(cap));
}

/// A time as how long before `now` it was (negative: after it); `-` for 0 (never).
fn write_ago(out: &mut String, at_ns: u64, now: u64) {
    if at_ns == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", i128::from(now) - i128::from(at_ns));
    }
}

fn write_settings(out: &mut String, s: ComputeSettings) {
    write_optional(out, s.share_permille.map(u64::from));
    out.push('/');
    write_optional(out, s.limit_permille.map(u64::from));
    out.push('/');
    out.push(match s.priority {
        None => '-',
        Some(Priority::High) => 'h',
        Some(Priority::Normal) => 'n',
        Some(Priority::Low) => 'l',
    });
}

fn write_activity(out: &mut String, activity: Activity, now: u64) {
    let flags = [
        (activity.in_flight, 'i'),
        (activity.backlogged, 'b'),
        (activity.waiting, 'w'),
        (activity.holding, 'h'),
        (activity.long_queue, 'q'),
    ];
    for (set, flag) in flags {
        if set {
            out.push(flag);
        }
    }
    out.push('@');
    write_ago(out, activity.at_ns, now);
}

fn write_tenants(out: &mut String, tenants: &[PublishedTenant], now: u64) {
    if tenants.is_empty() {
        out.push('-');
        return;
    }
    for (i, tenant) in tenants.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let _ = write!(
            out,
            "{},{},{},",
            tenant.name, tenant.gpu_time_ns, tenant.credit_ns
        );
        match tenant.ceiling {
            Some(ceiling) => write_settings(out, ceiling),
            None => out.push('-'),
        }
        for slot in &tenant.slots {
            let _ = write!(out, ",{}:", slot.index);
            match slot.settings {
                Some(settings) => write_settings(out, settings),
                None => out.push('-'),
            }
            out.push(':');
            write_activity(out, slot.activity, now);
        }
    }
}

/// Reads a tick line back (what [`format_tick`] wrote); the error says which column is
/// wrong and why.
pub fn parse_tick(line: &str) -> Result<TickRecord, String> {
    let names: Vec<&str> = COLUMNS.split_whitespace().collect();
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() != names.len() {
        return Err(format!(
            "{} columns where the format has {}",
            fields.len(),
            names.len()
        ));
    }
    let column = |name: &str| -> &str {
        names
            .iter()
            .position(|n| *n == name)
            .map_or("", |i| fields[i])
    };
    let in_column = |name: &'static str| move |what: String| format!("column {name}: {what}");
    let number = |name: &'static str| parse_u64(column(name)).map_err(in_column(name));
    let flag = |name: &'static str| parse_flag(column(name)).map_err(in_column(name));
    let now = number("at_ns")?;
    // `covered_ns`: `<ns>`, `<ns>m` (launches of a mixed stream) or `<ns>m<long ns>`.
    let covered = column("covered_ns");
    let (covered_ns, covered_mixed, covered_long_ns) = match covered.split_once('m') {
        None => (covered, false, None),
        Some((ns, "")) => (ns, true, None),
        Some((ns, long)) => (
            ns,
            true,
            Some(parse_u64(long).map_err(in_column("covered_ns"))?),
        ),
    };
    let gpu = u32::try_from(number("gpu")?).map_err(|_| in_column("gpu")("too large".into()))?;
    let slot = u32::try_from(number("slot")?).map_err(|_| in_column("slot")("too large".into()))?;
    let observation = Observation {
        now_ns: now,
        elapsed_ns: number("elapsed_ns")?,
        slot,
        poll: Poll {
            busy: flag("busy")?,
            finished: number("finished")?,
            unfinished: number("unfinished")?,
            counted_ns: parse_optional(column("counted_ns")).map_err(in_column("counted_ns"))?,
            busy_throughout: flag("throughout")?,
            covered_ns: parse_u64(covered_ns).map_err(in_column("covered_ns"))?,
            covered_done: flag("covered_done")?,
            saturated: flag("saturated")?,
            covered_mixed,
            covered_long_ns,
        },
        gate: GateState {
            waiters: flag("waiters")?,
            waited_at_ns: parse_ago(column("waited_ago_ns"), now)
                .map_err(in_column("waited_ago_ns"))?,
            in_flight_cap: parse_cap(column("gate_cap")).map_err(in_column("gate_cap"))?,
        },
        settings: parse_settings(column("settings")).map_err(in_column("settings"))?,
    };
    let tenants = parse_tenants(column("tenants"), now).map_err(in_column("tenants"))?;
    let outcome = match column("step") {
        "q" => None,
        "d" => Some(Outcome {
            charged_ns: number("charged_ns")?,
            rate: column("rate")
                .parse::<f64>()
                .map_err(|e| in_column("rate")(e.to_string()))?,
            sharing: number("sharing")?,
            published_settings: flag("publish_settings")?,
            refill: parse_refill(column("refill")).map_err(in_column("refill"))?,
            account: Account {
                credit_ns: number("credit_ns")?,
                consumed_ns: number("consumed_ns")?,
                own_gpu_time_ns: number("own_gpu_time_ns")?,
            },
            decision: Decision {
                open: flag("open")?,
                in_flight_cap: parse_cap(column("cap")).map_err(in_column("cap"))?,
                publish_activity: match column("publish_activity") {
                    "-" => None,
                    text => Some(parse_activity(text, now).map_err(in_column("publish_activity"))?),
                },
                next_tick: match column("next_tick") {
                    "n" => NextTick::Normal,
                    "f" => NextTick::Fast,
                    "h" => NextTick::Held,
                    other => {
                        return Err(in_column("next_tick")(format!(
                            "{other:?} is not n, f or h"
                        )));
                    }
                },
            },
        }),
        other => return Err(in_column("step")(format!("{other:?} is not q or d"))),
    };
    Ok(TickRecord {
        gpu,
        poll_ns: number("poll_ns")?,
        observation,
        tenants,
        outcome,
    })
}

fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

fn parse_flag(text: &str) -> Result<bool, String> {
    match text {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("{text:?} is not 0 or 1")),
    }
}

fn parse_optional(text: &str) -> Result<Option<u64>, String> {
    if text == "-" {
        Ok(None)
    } else {
        parse_u64(text).map(Some)
    }
}

fn parse_cap(text: &str) -> Result<u64, String> {
    parse_optional(text).map(|cap| cap.unwrap_or(UNBOUNDED))
}

fn parse_ago(text: &str, now: u64) -> Result<u64, String> {
    if text == "-" {
        return Ok(0);
    }
    let ago: i128 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of nanoseconds"))?;
    u64::try_from(i128::from(now) - ago)
        .ok()
        .filter(|&at| at != 0)
        .ok_or_else(|| format!("{text:?} before {now} is no time"))
}

fn parse_refill(text: &str) -> Result<Option<Refill>, String> {
    if text == "-" {
        return Ok(None);
    }
    let numbers = text
        .split(':')
        .map(parse_u64)
        .collect::<Result<Vec<u64>, String>>()?;
    let [credit_ns, consumed_ns, elapsed_ns, refilled_ns] = numbers[..] else {
        return Err(format!("{text:?} is not credit:consumed:elapsed:refilled"));
    };
    Ok(Some(Refill {
        credit_ns,
        consumed_ns,
        elapsed_ns,
        refilled_ns,
    }))
}

fn parse_settings(text: &str) -> Result<ComputeSettings, String> {
    let permille = |t: &str| -> Result<Option<u32>, String> {
        parse_optional(t)?
            .map(|v| u32::try_from(v).map_err(|_| format!("{t:?} is too large")))
            .transpose()
    };
    let mut parts = text.split('/');
    let (Some(share), Some(limit), Some(priority), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("{text:?} is not share/limit/priority"));
    };
    Ok(ComputeSettings {
        share_permille: permille(share)?,
        limit_permille: permille(limit)?,
        priority: match priority {
            "-" => None,
            "h" => Some(Priority::High),
            "n" => Some(Priority::Normal),
            "l" => Some(Priority::Low),
            other => return Err(format!("priority {other:?} is not h, n, l or -")),
        },
    })
}

fn parse_activity(text: &str, now: u64) -> Result<Activity, String> {
    let Some((flags, ago)) = text.split_once('@') else {
        return Err(format!("activity {text:?} has no @"));
    };
    let mut activity = Activity {
        at_ns: parse_ago(ago, now)?,
        ..Activity::default()
    };
    for flag in flags.chars() {
        match flag {
            'i' => activity.in_flight = true,
            'b' => activity.backlogged = true,
            'w' => activity.waiting = true,
            'h' => activity.holding = true,
            'q' => activity.long_queue = true,
            other => return Err(format!("activity flag {other:?} is not one of ibwhq")),
        }
    }
    Ok(activity)
}

fn parse_tenants(text: &str, now: u64) -> Result<Vec<PublishedTenant>, String> {
    if text == "-" {
        return Ok(Vec::new());
    }
    text.split(';')
        .map(|tenant| {
            let mut parts = tenant.split(',');
            let (Some(name), Some(gpu_time), Some(credit), Some(ceiling)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "tenant {tenant:?} is not name,gpu_time_ns,credit_ns,ceiling,slots"
                ));
            };
            let slots = parts
                .map(|slot| {
                    let mut fields = slot.split(':');
                    let (Some(index), Some(settings), Some(activity), None) =
                        (fields.next(), fields.next(), fields.next(), fields.next())
                    else {
                        return Err(format!("slot {slot:?} is not index:settings:activity"));
                    };
                    Ok(PublishedSlot {
                        index: u32::try_from(parse_u64(index)?)
                            .map_err(|_| format!("slot index {index:?} is too large"))?,
                        settings: match settings {
                            "-" => None,
                            text => Some(parse_settings(text)?),
                        },
                        activity: parse_activity(activity, now)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(PublishedTenant {
                name: TenantName::new(name).map_err(|e| e.to_string())?,
                gpu_time_ns: parse_u64(gpu_time)?,
                credit_ns: parse_u64(credit)?,
                ceiling: match ceiling {
                    "-" => None,
                    text => Some(parse_settings(text)?),
                },
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        share: Option<u32>,
        limit: Option<u32>,
        priority: Option<Priority>,
    ) -> ComputeSettings {
        ComputeSettings {
            share_permille: share,
            limit_permille: limit,
            priority,
        }
    }

    fn decided() -> TickRecord {
        TickRecord {
            gpu: 1,
            poll_ns: 7,
            observation: Observation {
                now_ns: 10_000_000,
                elapsed_ns: 500,
                slot: 3,
                poll: Poll {
                    busy: true,
                    finished: 12,
                    unfinished: 4,
                    counted_ns: None,
                    busy_throughout: true,
                    covered_ns: 7,
                    covered_done: false,
                    saturated: true,
                    covered_mixed: false,
                    covered_long_ns: None,
                },
                gate: GateState {
                    waiters: true,
                    waited_at_ns: 10_000_100,
                    in_flight_cap: 2,
                },
                settings: settings(None, Some(300), None),
            },
            tenants: vec![
                PublishedTenant {
                    name: TenantName::new("a.b-c_d").unwrap(),
                    gpu_time_ns: 98,
                    credit_ns: 99,
                    ceiling: None,
                    slots: vec![PublishedSlot {
                        index: 3,
                        settings: Some(settings(None, Some(300), None)),
                        activity: Activity {
                            in_flight: true,
                            long_queue: true,
                            at_ns: 9_999_000,
                            ..Activity::default()
                        },
                    }],
                },
                PublishedTenant {
                    name: TenantName::new("high").unwrap(),
                    gpu_time_ns: 5,
                    credit_ns: 0,
                    ceiling: Some(settings(Some(500), None, Some(Priority::High))),
                    slots: vec![
                        PublishedSlot {
                            index: 0,
                            settings: None,
                            activity: Activity::default(),
                        },
                        PublishedSlot {
                            index: 1,
                            settings: Some(settings(Some(250), Some(1000), Some(Priority::Low))),
                            activity: Activity {
                                backlogged: true,
                                waiting: true,
                                holding: true,
                                at_ns: 1,
                                ..Activity::default()
                            },
                        },
                    ],
                },
            ],
            outcome: Some(Outcome {
                charged_ns: 250,
                rate: 0.1 + 0.2,
                sharing: 2,
                published_settings: true,
                refill: Some(Refill {
                    credit_ns: 90,
                    consumed_ns: 98,
                    elapsed_ns: 30,
                    refilled_ns: 99,
                }),
                account: Account {
                    credit_ns: 99,
                    consumed_ns: 98,
                    own_gpu_time_ns: 97,
                },
                decision: Decision {
                    open: false,
                    in_flight_cap: UNBOUNDED,
                    publish_activity: Some(Activity {
                        in_flight: true,
                        at_ns: 10_000_000,
                        ..Activity::default()
                    }),
                    next_tick: NextTick::Held,
                },
            }),
        }
    }

    #[test]
    fn a_tick_line_holds_every_column_in_order_and_reads_back_the_same() {
        let record = decided();
        let mut line = String::new();
        format_tick(&mut line, &record);
        assert_eq!(
            line,
            "10000000 1 500 7 3 1 12 4 - 1 7 0 1 1 -100 2 -/300/- \
             a.b-c_d,98,99,-,3:-/300/-:iq@1000;\
             high,5,0,500/-/h,0:-:@-,1:250/1000/l:bwh@9999999 \
             d 99 98 97 90:98:30:99 250 0.30000000000000004 2 1 0 - i@0 h"
        );
        assert_eq!(line.split(' ').count(), COLUMNS.split_whitespace().count());
        assert_eq!(parse_tick(&line), Ok(record));
    }

    /// Launches of a mixed stream are marked on their `covered_ns`, so that traces written
    /// before the mark (none) read as they were.
    #[test]
    fn covered_launches_of_a_mixed_stream_are_marked_and_read_back() {
        let mut record = decided();
        record.observation.poll.covered_mixed = true;
        let mut line = String::new();
        format_tick(&mut line, &record);
        assert!(
            line.starts_with("10000000 1 500 7 3 1 12 4 - 1 7m 0 1 "),
            "{line}"
        );
        assert_eq!(line.split(' ').count(), COLUMNS.split_whitespace().count());
        assert_eq!(parse_tick(&line), Ok(record));
        let unmarked = line.replacen(" 7m ", " 7 ", 1);
        assert_eq!(parse_tick(&unmarked), Ok(decided()));
        let twice = line.replacen(" 7m ", " 7mm ", 1);
        assert!(
            parse_tick(&twice)
                .unwrap_err()
                .starts_with("column covered_ns: ")
        );
    }

    /// What a long launch of the mixed stream takes follows the mark; traces written
    /// before it (a bare `m`) read as not knowing it.
    #[test]
    fn a_mixed_streams_long_launch_is_written_after_its_mark_and_read_back() {
        let mut record = decided();
        record.observation.poll.covered_mixed = true;
        record.observation.poll.covered_long_ns = Some(1_500_000);
        let mut line = String::new();
        format_tick(&mut line, &record);
        assert!(
            line.starts_with("10000000 1 500 7 3 1 12 4 - 1 7m1500000 0 1 "),
            "{line}"
        );
        assert_eq!(parse_tick(&line), Ok(record.clone()));
        let unknown = line.replacen(" 7m1500000 ", " 7m ", 1);
        record.observation.poll.covered_long_ns = None;
        assert_eq!(parse_tick(&unknown), Ok(record));
        let garbled = line.replacen(" 7m1500000 ", " 7m15x ", 1);
        assert!(
            parse_tick(&garbled)
                .unwrap_err()
                .starts_with("column covered_ns: ")
        );
    }

    #[test]
    fn a_quiet_tick_has_no_tenants_and_no_decisions() {
        let record = TickRecord {
            tenants: Vec::new(),
            outcome: None,
            ..decided()
        };
        let mut line = String::new();
        format_tick(&mut line, &record);
        assert!(
            line.ends_with(" -/300/- - q - - - - - - - - - - - -"),
            "{line}"
        );
        assert_eq!(parse_tick(&line), Ok(record));
    }

    #[test]
    fn a_bad_line_is_refused_naming_its_column() {
        let mut line = String::new();
        format_tick(&mut line, &decided());
        let bad = line.replacen(" 12 4 ", " 12 x ", 1);
        assert_eq!(
            parse_tick(&bad),
            Err("column unfinished: \"x\" is not a whole number".into())
        );
        let bad = line.replace(" h", " z");
        assert_eq!(
            parse_tick(&bad),
            Err("column next_tick: \"z\" is not n, f or h".into())
        );
        assert!(parse_tick("1 2 3").unwrap_err().contains("3 columns"));
        let bad = line.replace("iq@1000", "iz@1000");
        assert!(
            parse_tick(&bad)
                .unwrap_err()
                .starts_with("column tenants: ")
        );
    }

    #[test]
    fn the_header_names_the_format_the_tenant_and_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace");
        let tenant = TenantName::new("t1").unwrap();
        let mut trace = Trace::open(&path, &tenant).unwrap();
        trace.record(&decided());
        trace.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        assert!(
            first.starts_with("# gpuslice trace v3 pid=")
                && first.contains(" tenant=t1 columns: at_ns gpu "),
            "{first}"
        );
        assert_eq!(parse_tick(lines.next().unwrap()), Ok(decided()));
    }

    #[test]
    fn a_trace_that_cannot_be_opened_is_none() {
        let tenant = TenantName::new("t").unwrap();
        assert!(Trace::open(Path::new("/nonexistent/dir/trace"), &tenant).is_none());
    }
}
