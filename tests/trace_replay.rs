//! The controller's regression test: traces the watcher recorded (`tests/traces/*.trace`,
//! made by `tests/traces/record.sh` on the simulated GPU) replayed against a fresh
//! controller, which must decide exactly what was recorded at every tick. A change to the
//! controller that changes a decision fails here, naming the trace, the line and the
//! decision; if the change is meant, record the traces again (and say why in the commit).
//!
//! `tests/traces/h100-*.trace` were recorded on an H100, not by `record.sh`: the first
//! ticks of processes of `scripts/bench-isolation.sh` run with `TRACE=1` (`head -n` of
//! the watcher's trace, so that a fresh controller replays them from the start). A meant
//! change to a decision they make can only be recorded again on a GPU
//! (`scripts/gpu-session.sh` packs the traces); until then the commit says why they fail.

use std::path::{Path, PathBuf};

use gpuslice::trace::COLUMNS;
use gpuslice::trace::replay::replay;

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces")
}

/// How many of `name`'s ticks have `column` equal to `value`.
fn ticks_with(name: &str, column: &str, value: impl Fn(&str) -> bool) -> usize {
    let index = COLUMNS
        .split_whitespace()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    std::fs::read_to_string(traces_dir().join(format!("{name}.trace")))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(' ').nth(index).is_some_and(&value))
        .count()
}

/// Replays `name`, and checks that it covered at least `decided` ticks decided, `closed`
/// of them with the gate closed.
fn replays(name: &str, decided: usize, closed: usize) {
    let replayed = replay(&traces_dir().join(format!("{name}.trace")))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(replayed.processes, 1, "{name}");
    assert!(replayed.decided >= decided, "{name}: {replayed:?}");
    let closed_ticks = ticks_with(name, "open", |v| v == "0");
    assert!(
        closed_ticks >= closed,
        "{name}: the gate closed at {closed_ticks} ticks only"
    );
}

#[test]
fn every_recorded_trace_replays_to_the_same_decisions() {
    let mut traces: Vec<PathBuf> = std::fs::read_dir(traces_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "trace"))
        .collect();
    traces.sort();
    assert!(traces.len() >= 6, "{traces:?}");
    for path in traces {
        if let Err(error) = replay(&path) {
            panic!("{error}");
        }
    }
}

/// A saturating loop under a 30% limit: closed most of the time.
#[test]
fn a_saturating_loop_limited_to_30_percent_replays() {
    replays("limit30-saturating", 200, 100);
}

/// Short kernels with a synchronization after each, under a 30% limit.
#[test]
fn a_synchronized_loop_of_short_kernels_limited_to_30_percent_replays() {
    replays("limit30-sync-short", 200, 100);
}

/// Two tenants with shares 25 and 75 taking turns.
#[test]
fn two_tenants_with_shares_replay_each_on_its_side() {
    replays("shares-25", 200, 50);
    replays("shares-75", 200, 10);
    assert!(ticks_with("shares-25", "tenants", |t| t.contains(';')) >= 200);
}

/// A high-priority tenant's requests beside a saturating neighbour, which yields: its
/// launches in flight are bounded, it ticks fast, and held while a launch waits on the
/// bound; the high tenant's trace has a quiet tick.
#[test]
fn a_neighbour_yielding_to_a_high_priority_tenant_replays() {
    replays("priority-low", 200, 50);
    assert!(ticks_with("priority-low", "cap", |c| c != "-") >= 200);
    assert!(ticks_with("priority-low", "next_tick", |t| t == "h") >= 1);
    replays("priority-high", 100, 0);
    assert!(ticks_with("priority-high", "next_tick", |t| t == "f") >= 50);
    assert!(ticks_with("priority-high", "step", |s| s == "q") >= 1);
}

/// A low tenant beside a high-priority tenant's regular requests: its gate closes while no
/// work of the high tenant is in flight (the next request is due), which only anticipation
/// does.
#[test]
fn a_neighbour_anticipating_regular_requests_replays() {
    replays("priority-regular-low", 200, 20);
    let anticipated = closed_before_a_request("priority-regular-low");
    assert!(
        anticipated >= 10,
        "the gate closed before a request only {anticipated} times"
    );
}

/// How many ticks of `name` have the gate closed while the tenant `high`'s record
/// (`high,...:<flags>@<ago>`) shows no work in flight (no `i`): holds only anticipation
/// makes.
fn closed_before_a_request(name: &str) -> usize {
    let column = |name: &str| COLUMNS.split_whitespace().position(|c| c == name).unwrap();
    let (tenants, open) = (column("tenants"), column("open"));
    std::fs::read_to_string(traces_dir().join(format!("{name}.trace")))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|c| c.get(open) == Some(&"0"))
        .filter(|c| {
            c.get(tenants).is_some_and(|t| {
                t.split(';').filter(|r| r.starts_with("high,")).any(|r| {
                    r.rsplit(':')
                        .next()
                        .and_then(|f| f.split('@').next())
                        .is_some_and(|flags| !flags.contains('i'))
                })
            })
        })
        .count()
}

/// Traces recorded on an H100 (scripts/bench-isolation.sh with TRACE=1 at 177795f,
/// 2026-12-07; the first ticks of each process, so that a fresh controller replays them):
/// the controller decides on the real GPU's timings as it did there.
mod h100 {
    use super::*;

    /// A 4096² loop yielding to a high-priority 2048² request every 2 ms: once the
    /// requests' gaps are regular it holds before each is due.
    #[test]
    fn a_neighbour_anticipating_requests_on_the_h100_replays() {
        replays("h100-requests-low", 2000, 100);
        assert!(closed_before_a_request("h100-requests-low") >= 100);
    }

    /// A 1024² matmul and a synchronization each step, limited to 30% but using less: no
    /// launch ever waits, and the gate is closed only at the first two ticks, before the
    /// tenant's credit was first refilled.
    #[test]
    fn a_launch_bound_step_under_its_limit_on_the_h100_replays_never_held() {
        replays("h100-step1024-limit30", 350, 0);
        assert_eq!(
            ticks_with("h100-step1024-limit30", "waiters", |v| v != "0"),
            0
        );
        assert_eq!(ticks_with("h100-step1024-limit30", "open", |v| v == "0"), 2);
    }

    /// 4096² matmuls on two streams at once, limited to 30%: closed most of the time.
    #[test]
    fn two_streams_limited_on_the_h100_replay() {
        replays("h100-streams4096-limit30", 350, 150);
    }
}
