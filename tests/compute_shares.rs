//! Compute shares, end to end: tenants running spin kernels under the shim on the simulated
//! GPU, which time-slices between processes like the hardware. Each process reports when
//! each of its kernels finished (on the clock all processes share), and each tenant's share
//! is the GPU time its finished kernels stand for over a window in which all ran.
//!
//! These tests take seconds each and measure time, so they run one at a time.

mod util;

use std::process::Command;
use std::time::Duration;

use gpuslice_ledger::monotonic_ns;

use util::compute::*;
use util::*;

/// Kernel length: long against the watcher's tick and the simulation's heartbeat.
const KERNEL_NS: u64 = 2_000_000;
/// A spin load of `millis` as a process of `tenant` with compute settings `env`.
fn load(node: &Node, tenant: &str, env: &[(&str, &str)], millis: u64, extra: &[&str]) -> Running {
    spin_load(&mut tenant_spin(node, tenant, env), millis, extra)
}

/// `command` (spin, with or without the shim) running a load of `millis`.
fn spin_load(command: &mut Command, millis: u64, extra: &[&str]) -> Running {
    command.args([
        "--for",
        &millis.to_string(),
        "--ns",
        &KERNEL_NS.to_string(),
        "--depth",
        "4",
    ]);
    command.args(extra);
    Running::spawn(command)
}

/// Runs tenants with these shares side by side; returns each one's share.
fn shares(settings: &[&[(&str, &str)]], millis: u64) -> Vec<f64> {
    shares_on(&Node::new(), settings, millis)
}

/// Runs tenants with these shares side by side on `node`; returns each one's share.
fn shares_on(node: &Node, settings: &[&[(&str, &str)]], millis: u64) -> Vec<f64> {
    shares_of(
        settings
            .iter()
            .enumerate()
            .map(|(i, env)| load(node, &format!("t{i}"), env, millis, &[]))
            .collect(),
    )
}

/// Each run's share of the GPU over the window in which all of them ran.
fn shares_of(running: Vec<Running>) -> Vec<f64> {
    let reports: Vec<Report> = running.into_iter().map(finish).collect();
    let all: Vec<&Report> = reports.iter().collect();
    let (from, to) = common_window(&all, 300);
    reports.iter().map(|r| r.share(from, to)).collect()
}

#[test]
fn two_tenants_with_shares_25_and_75_get_25_and_75() {
    let _serial = serial();
    let got = shares(
        &[
            &[("GPUSLICE_COMPUTE_SHARE", "25")],
            &[("GPUSLICE_COMPUTE_SHARE", "75")],
        ],
        3000,
    );
    assert_near("the 25% tenant", got[0], 0.25);
    assert_near("the 75% tenant", got[1], 0.75);
}

/// A GPU loses time whenever it switches between processes (an H100 running two matmul
/// loops side by side gets through about 10% less than one alone). Tenants taking turns
/// hand the GPU over whole: the shares hold and next to nothing is lost, where two processes
/// without gpuslice lose what switching costs.
#[test]
fn tenants_taking_turns_lose_next_to_nothing_to_switching() {
    let _serial = serial();
    let mut node = Node::new();
    node.extra_env
        .push(("FAKECUDA_SWITCH_LOSS".to_owned(), "20".to_owned()));
    let bare = shares_of(
        (0..2)
            .map(|_| spin_load(&mut node.bare(example("spin")), 2000, &[]))
            .collect(),
    );
    let bare_total: f64 = bare.iter().sum();
    eprintln!("two processes without gpuslice: {:.1}%", bare_total * 100.0);
    assert!(bare_total < 0.85, "switching costs nothing: {bare_total}");

    let got = shares_on(
        &node,
        &[
            &[("GPUSLICE_COMPUTE_SHARE", "25")],
            &[("GPUSLICE_COMPUTE_SHARE", "75")],
        ],
        3000,
    );
    assert_near("the 25% tenant", got[0], 0.25);
    assert_near("the 75% tenant", got[1], 0.75);
    let total: f64 = got.iter().sum();
    eprintln!("the two tenants together: {:.1}%", total * 100.0);
    assert!(total >= 0.96, "turns lose to switching: {total}");
}

#[test]
fn three_and_four_tenants_with_uneven_shares_get_them() {
    let _serial = serial();
    let got = shares(
        &[
            &[("GPUSLICE_COMPUTE_SHARE", "10")],
            &[("GPUSLICE_COMPUTE_SHARE", "30")],
            &[("GPUSLICE_COMPUTE_SHARE", "60")],
        ],
        3500,
    );
    for (got, want) in got.iter().zip([0.10, 0.30, 0.60]) {
        assert_near(
            &format!("the {:.0}% tenant of three", want * 100.0),
            *got,
            want,
        );
    }
    let got = shares(
        &[
            &[("GPUSLICE_COMPUTE_SHARE", "10")],
            &[("GPUSLICE_COMPUTE_SHARE", "20")],
            &[("GPUSLICE_COMPUTE_SHARE", "30")],
            &[("GPUSLICE_COMPUTE_SHARE", "40")],
        ],
        3500,
    );
    for (got, want) in got.iter().zip([0.10, 0.20, 0.30, 0.40]) {
        assert_near(
            &format!("the {:.0}% tenant of four", want * 100.0),
            *got,
            want,
        );
    }
}

#[test]
fn a_tenant_limited_to_30_percent_gets_30_percent_of_an_idle_gpu() {
    let _serial = serial();
    let got = shares(&[&[("GPUSLICE_COMPUTE_LIMIT", "30")]], 2500);
    assert_near("the 30%-limited tenant alone", got[0], 0.30);
}

#[test]
fn a_limit_holds_on_the_legacy_null_stream_too() {
    let _serial = serial();
    let node = Node::new();
    let report = finish(load(
        &node,
        "legacy",
        &[("GPUSLICE_COMPUTE_LIMIT", "30")],
        2500,
        &["--legacy"],
    ));
    let (from, to) = common_window(&[&report], 300);
    assert_near(
        "the 30%-limited tenant on the NULL stream",
        report.share(from, to),
        0.30,
    );
}

/// A process with a context on each of two GPUs, launching on the NULL stream of one, then
/// of the other, then of the first again: each GPU's launches are measured and held to the
/// limit on that GPU, whether the second context is the GPU's primary one or one created,
/// and through every way a program finds the driver's functions.
#[test]
fn null_stream_launches_of_two_contexts_are_limited_each_on_its_own_gpu() {
    let _serial = serial();
    const KERNELS: u64 = 40;
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ptx/spin.ptx");
    let spin = ["spin", &KERNELS.to_string(), &KERNEL_NS.to_string()].map(String::from);
    let node = Node::with_devices("80Gi,80Gi");
    for path in ALL_PATHS {
        for second in ["use-device", "new-context"] {
            let mut command = node.probe(path, "two", None, &[]);
            command.env("GPUSLICE_COMPUTE_LIMIT", "25");
            command.args(["module", ptx]).args(&spin);
            command.args([second, "1", "module", ptx]).args(&spin);
            command.args(["use-device", "0"]).args(&spin);
            let stdout = run_ok(&mut command);
            let phases: Vec<u64> = stdout
                .lines()
                .filter(|l| l.starts_with("spin "))
                .map(|l| {
                    assert_eq!(field(l, "rc"), 0, "{path:?} {second}: {stdout}");
                    field(l, "elapsed_ns")
                })
                .collect();
            assert_eq!(phases.len(), 3, "{path:?} {second}: {stdout}");
            // At 25% the kernels take four times their length, less what the bucket holds
            // at the start (about 35 ms, refilled on the first GPU while the second runs:
            // 2.7 times in all); a GPU whose launches went unmeasured runs them back to back.
            for (phase, elapsed) in phases.iter().enumerate() {
                assert!(
                    *elapsed as f64 >= 2.0 * (KERNELS * KERNEL_NS) as f64,
                    "{path:?} {second}: phase {phase} on GPU {} took {elapsed} ns, not held \
                     to 25%\n{stdout}",
                    [0, 1, 0][phase]
                );
            }
        }
    }
}

#[test]
fn a_tenant_with_only_a_share_gets_the_whole_gpu_when_alone() {
    let _serial = serial();
    let got = shares(&[&[("GPUSLICE_COMPUTE_SHARE", "25")]], 2500);
    assert!(
        got[0] >= 0.97,
        "alone with a 25% share: {:.1}%",
        got[0] * 100.0
    );
}

#[test]
fn an_idle_tenant_hands_its_time_over_and_gets_its_share_back_within_100_ms() {
    let _serial = serial();
    let node = Node::new();
    let steady = load(
        &node,
        "steady",
        &[("GPUSLICE_COMPUTE_SHARE", "25")],
        4500,
        &[],
    );
    let pausing = load(
        &node,
        "pausing",
        &[("GPUSLICE_COMPUTE_SHARE", "75")],
        4500,
        &["--idle-after", "1500", "--idle-for", "1500"],
    );
    let steady = finish(steady);
    let pausing = finish(pausing);
    let idle = pausing.idle_at.expect("the idle line");
    let resume = pausing.resume_at.expect("the resume line");
    let ms = 1_000_000;
    // Before: 25/75. While the other is idle (from 100 ms after it stopped): everything.
    // Back (from 100 ms after it resumed): 25/75 again.
    assert_near(
        "before the pause",
        steady.share(steady.first + 300 * ms, idle),
        0.25,
    );
    let alone = steady.share(idle + 100 * ms, resume);
    assert!(
        alone >= 0.97 - TOLERANCE,
        "while the other idles: {:.1}%",
        alone * 100.0
    );
    let back = resume + 100 * ms;
    let end = pausing.last.min(steady.last);
    assert_near("the returning tenant", pausing.share(back, end), 0.75);
    assert_near("the steady tenant after", steady.share(back, end), 0.25);
}

#[test]
fn kill_9_in_the_middle_of_a_slice_leaves_nothing_stuck() {
    let _serial = serial();
    let node = Node::new();
    let survivor = load(
        &node,
        "survivor",
        &[("GPUSLICE_COMPUTE_SHARE", "25")],
        4000,
        &[],
    );
    let mut victim = load(
        &node,
        "victim",
        &[("GPUSLICE_COMPUTE_SHARE", "75")],
        10_000,
        &[],
    );
    victim.wait_for_line("done ", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1000));
    victim.kill9();
    let killed_at = monotonic_ns();
    // A newcomer after the kill gets its share: nothing of the victim holds the GPU.
    std::thread::sleep(Duration::from_millis(1000));
    let newcomer = load(
        &node,
        "victim",
        &[("GPUSLICE_COMPUTE_SHARE", "75")],
        2000,
        &[],
    );
    let survivor = finish(survivor);
    let newcomer = finish(newcomer);
    let ms = 1_000_000;
    let alone = survivor.share(killed_at + 100 * ms, newcomer.first);
    assert!(
        alone >= 0.97 - TOLERANCE,
        "after the kill: {:.1}%",
        alone * 100.0
    );
    let (from, to) = common_window(&[&survivor, &newcomer], 300);
    assert_near(
        "the survivor beside the newcomer",
        survivor.share(from, to),
        0.25,
    );
    assert_near("the newcomer", newcomer.share(from, to), 0.75);
}

/// Requests under the shim as a process of `tenant`: one `REQUEST_NS` kernel and a
/// synchronization, then a pause of `REQUEST_EVERY_MS`, for `millis`.
fn requests(node: &Node, tenant: &str, env: &[(&str, &str)], millis: u64) -> Running {
    requests_every(node, tenant, env, millis, &REQUEST_EVERY_MS.to_string())
}

/// The same with pauses of `every` milliseconds (`LO-HI`: drawn at random each time).
fn requests_every(
    node: &Node,
    tenant: &str,
    env: &[(&str, &str)],
    millis: u64,
    every: &str,
) -> Running {
    let mut command = tenant_spin(node, tenant, env);
    command.args([
        "--for",
        &millis.to_string(),
        "--requests-every",
        every,
        "--ns",
        &REQUEST_NS.to_string(),
    ]);
    Running::spawn(&mut command)
}

/// Each request's (answered at, latency) from a finished `requests` run.
fn latencies(running: Running) -> Vec<(u64, u64)> {
    let stdout = succeeded(running);
    let all: Vec<(u64, u64)> = stdout
        .lines()
        .filter(|l| l.starts_with("request "))
        .map(|l| (field(l, "at_ns"), field(l, "latency_ns")))
        .collect();
    assert!(all.len() >= 40, "too few requests: {stdout}");
    all
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// How a high-priority tenant's requests fared.
struct Beside {
    /// Their median latency, leaving out the first 200 ms (while the others learn that a
    /// high tenant is active).
    p50: u64,
    /// When the requests counted were answered: from the first to the last.
    from: u64,
    to: u64,
}

/// What a finished `requests` run says of its requests.
fn requests_beside(running: Running) -> Beside {
    let all = latencies(running);
    let from = all[0].0 + 200_000_000;
    let to = all[all.len() - 1].0;
    let p50 = median(
        all.iter()
            .filter(|&&(at, _)| at > from)
            .map(|&(_, l)| l)
            .collect(),
    );
    Beside { p50, from, to }
}

/// The GPU time the shim has charged to `tenant` on the node's GPU.
fn charged_ns(node: &Node, tenant: &str) -> u64 {
    let name = gpuslice_ledger::TenantName::new(tenant).expect("a valid tenant name");
    node.ledger()
        .snapshot_usage(&name)
        .expect("the tenant's usage file")
        .gpu_time_ns(gpuslice_ledger::GpuIndex(0))
}

/// A request of the high-priority tenant, and how far apart they come.
const REQUEST_NS: u64 = 1_000_000;
const REQUEST_EVERY_MS: u64 = 8;
/// The neighbour's kernels: longer than what it may queue beside a high-priority tenant
/// (one at a time), short against a request.
const NEIGHBOUR_NS: u64 = 500_000;

/// How requests fared beside a busy neighbour.
struct BesideBusy {
    /// The requests' median alone, and beside the neighbour.
    solo_p50: u64,
    p50: u64,
    /// The share of the GPU the neighbour kept meanwhile.
    kept: f64,
}

/// Requests of priority `priority`, paused `every` ms between them, beside a low tenant
/// that keeps eight kernels in flight.
fn requests_beside_a_busy_neighbour(priority: &str, every: &str) -> BesideBusy {
    let node = Node::new();
    let env = [("GPUSLICE_PRIORITY", priority)];
    let solo = latencies(requests_every(&node, "req", &env, 1000, every));
    let solo_p50 = median(solo.iter().map(|&(_, l)| l).collect());

    let mut neighbour = load(
        &node,
        "lo",
        &[("GPUSLICE_PRIORITY", "low")],
        4000,
        &["--ns", &NEIGHBOUR_NS.to_string(), "--depth", "8"],
    );
    neighbour.wait_for_line("done ", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let beside = requests_beside(requests_every(&node, "req", &env, 2500, every));
    let neighbour = finish(neighbour);
    let kept = neighbour.share_of(NEIGHBOUR_NS, beside.from, beside.to);
    eprintln!(
        "{priority} requests every {every} ms: alone p50 {solo_p50} ns, beside the neighbour \
         {} ns; the neighbour keeps {:.1}% of the GPU",
        beside.p50,
        kept * 100.0
    );
    BesideBusy {
        solo_p50,
        p50: beside.p50,
        kept,
    }
}

/// Requests that come at random (pauses of 4 to 12 ms) cannot be anticipated: the bound on
/// the neighbour's queue is what keeps them short. Without priority a request shares the
/// GPU with the neighbour's eight queued kernels throughout (2.0-2.2x its solo median on
/// the 2-core machine); with it, only with what remains of one (1.3-1.5x, 1.74x once).
#[test]
fn a_high_priority_tenant_waits_little_beside_a_busy_neighbour_that_keeps_working() {
    let _serial = serial();
    let normal = requests_beside_a_busy_neighbour("normal", "4-12");
    let high = requests_beside_a_busy_neighbour("high", "4-12");
    assert!(
        high.p50 as f64 <= 0.85 * normal.p50 as f64
            && high.p50 as f64 <= 1.8 * high.solo_p50 as f64,
        "p50 {} ns beside the neighbour with priority high ({} ns alone), {} ns without",
        high.p50,
        high.solo_p50,
        normal.p50
    );
    assert!(
        high.kept >= 0.5,
        "the neighbour keeps only {:.1}% of the GPU",
        high.kept * 100.0
    );
}

/// Requests that come at regular intervals (a camera's frames, a control loop) are
/// anticipated (`policy::arrivals`): the neighbour has nothing in flight when one comes,
/// and starts nothing beside it. Before, they waited for what remained of a neighbour
/// kernel as random ones do (1.43x); now 1.01-1.09x, the neighbour keeping 50-55% of the
/// GPU (60% before) on the 2-core machine.
#[test]
fn a_regular_high_priority_request_finds_nothing_of_its_neighbour_in_flight() {
    let _serial = serial();
    let high = requests_beside_a_busy_neighbour("high", &REQUEST_EVERY_MS.to_string());
    assert!(
        high.p50 as f64 <= 1.2 * high.solo_p50 as f64,
        "p50 {} ns beside the neighbour, {} ns alone",
        high.p50,
        high.solo_p50
    );
    // Its guaranteed share is half the GPU's time, and the hold before each request takes
    // it down to about that (50-55% of the work on the 2-core machine, where one kernel at
    // a time leaves the GPU idle a slow tick after each): what priority may take, and no
    // more, less the simulated GPU's gap between time charged and work done (see
    // `priority_never_takes_a_normal_tenant_below_its_share`).
    assert!(
        high.kept >= 0.45,
        "the neighbour keeps only {:.1}% of the GPU",
        high.kept * 100.0
    );
}

/// The device plugin writes a tenant's compute settings into the quota's entry for each GPU
/// it allocated (the defaults, for every other GPU, give nothing). The shim used to read
/// only the defaults, so in Kubernetes a pod's share and cap were not applied at all and its
/// own environment decided them; and where the quota set no share or priority, the
/// environment could claim one. Now the quota's entry for the GPU is the ceiling.
#[test]
fn per_gpu_compute_quota_holds_whatever_the_environment_claims() {
    let _serial = serial();
    let node = Node::new();
    let gpu = gpuslice_ledger::GpuUuid::parse("GPU-fa4ec0da-0000-4000-8000-000000000000").unwrap();
    let limits = gpuslice_ledger::Limits {
        memory_bytes: Some(GIB),
        compute_share_permille: Some(300),
        compute_limit_permille: Some(300),
        priority: None,
    };
    node.ledger()
        .write_quota(
            &gpuslice_ledger::TenantName::new("pod").unwrap(),
            &gpuslice_ledger::TenantQuota {
                defaults: gpuslice_ledger::Limits {
                    memory_bytes: Some(0),
                    ..gpuslice_ledger::Limits::default()
                },
                per_gpu: vec![(gpu, limits)],
            },
        )
        .unwrap();
    let running = load(
        &node,
        "pod",
        &[
            ("GPUSLICE_COMPUTE_LIMIT", "100"),
            ("GPUSLICE_COMPUTE_SHARE", "100"),
            ("GPUSLICE_PRIORITY", "high"),
        ],
        2500,
        &[],
    );
    // While it runs: what it publishes is what the quota allows, not what it asked for.
    std::thread::sleep(Duration::from_millis(500));
    let usage = node
        .ledger()
        .snapshot_usage(&gpuslice_ledger::TenantName::new("pod").unwrap())
        .unwrap();
    let index = usage.gpu_index(&gpu).unwrap();
    let published: Vec<_> = usage
        .compute_slots(index)
        .into_iter()
        .filter_map(|s| s.settings)
        .collect();
    assert_eq!(
        published,
        vec![gpuslice_ledger::ComputeSettings {
            share_permille: Some(300),
            limit_permille: Some(300),
            priority: Some(gpuslice_ledger::Priority::Normal),
        }]
    );
    let report = finish(running);
    let (from, to) = common_window(&[&report], 300);
    assert_near(
        "the pod capped at 30% by its quota's entry",
        report.share(from, to),
        0.30,
    );
}

/// A share is a guarantee: priority buys a high tenant latency, never another tenant's
/// guaranteed GPU time. The bound on a neighbour's queue beside a high tenant costs the
/// neighbour GPU time (the GPU waits for the neighbour's watcher between its launches, and
/// at the end of each burst of the high tenant's work); a 70% tenant beside a busy
/// high-priority 30% tenant received 59-62% of the GPU, the GPU idle 8-11%. What the bound
/// costs it is now counted, and queued on top of the bound.
#[test]
fn priority_never_takes_a_normal_tenant_below_its_share() {
    let _serial = serial();
    let normal = [("GPUSLICE_COMPUTE_SHARE", "70")];
    let high = [
        ("GPUSLICE_PRIORITY", "high"),
        ("GPUSLICE_COMPUTE_SHARE", "30"),
    ];

    // Beside a high tenant that wants all its share gives it: both get their shares, and
    // the GPU is not left idle (within the share tests' 3 points: 68-70% and 98-100% on
    // the 2-core machine).
    let got = shares(&[&normal, &high], 3000);
    eprintln!(
        "beside a busy high tenant: the 70% tenant {:.1}%, the high one {:.1}%",
        got[0] * 100.0,
        got[1] * 100.0
    );
    assert!(
        got[0] >= 0.70 - TOLERANCE,
        "the 70% tenant beside a busy high-priority 30% tenant: {:.1}%",
        got[0] * 100.0
    );
    assert_near("the busy high-priority 30% tenant", got[1], 0.30);
    let total = got[0] + got[1];
    eprintln!("the two together: {:.1}%", total * 100.0);
    assert!(
        total >= 1.0 - TOLERANCE,
        "the GPU idles beside a tenant below its share: {:.1}% used",
        total * 100.0
    );

    // Beside the high tenant's requests, the 70% tenant also gets its share, and the
    // requests keep the advantage the priority test asserts (1.40-1.55x solo there).
    let node = Node::new();
    let solo = requests_beside(requests(&node, "hi", &high, 1000));
    let mut neighbour = load(
        &node,
        "normal",
        &normal,
        4000,
        &["--ns", &NEIGHBOUR_NS.to_string(), "--depth", "8"],
    );
    neighbour.wait_for_line("done ", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let running = requests(&node, "hi", &high, 2500);
    std::thread::sleep(Duration::from_millis(700));
    let (charged_from, charged_at_from) = (monotonic_ns(), charged_ns(&node, "normal"));
    std::thread::sleep(Duration::from_millis(1500));
    let (charged_to, charged_at_to) = (monotonic_ns(), charged_ns(&node, "normal"));
    let beside = requests_beside(running);
    let neighbour = finish(neighbour);
    let kept = neighbour.share_of(NEIGHBOUR_NS, beside.from, beside.to);
    let charged = (charged_at_to - charged_at_from) as f64 / (charged_to - charged_from) as f64;
    eprintln!(
        "requests alone p50 {} ns, beside the 70% tenant {} ns; it keeps {:.1}% of the GPU \
         ({:.1}% as the shim charges it)",
        solo.p50,
        beside.p50,
        kept * 100.0,
        charged * 100.0
    );
    assert!(
        beside.p50 as f64 <= 1.6 * solo.p50 as f64,
        "p50 {} ns beside the 70% tenant, {} ns alone",
        beside.p50,
        solo.p50
    );
    assert!(
        charged >= 0.70 - TOLERANCE,
        "the 70% tenant is charged {:.1}% of the GPU beside the requests",
        charged * 100.0
    );
    // Its kernels, one or two in flight at a time, are charged more GPU time than they
    // take on the simulated GPU, with or without relief: 70% charged and 63-65% finished
    // on the 2-core machine (before: 63-64% and 59%). So the bound on what they take is
    // its share less that gap, with a margin.
    assert!(
        kept >= 0.60,
        "the 70% tenant keeps only {:.1}% of the GPU beside the requests",
        kept * 100.0
    );
}
