//! Real processes on the simulated GPU: C programs that link `-lcuda` or use
//! `dlopen`/`dlsym`, sharing one device's memory.

mod common;

use common::{
    Running, Sim, all_fields, compile_c, fields, num, probe_dlopen, probe_linked, run, run_ok,
    share_cpu, timing_alone,
};

const MI: u64 = 1 << 20;

#[test]
fn memory_capacity_is_shared_between_processes() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    // A holds 64Mi (context) + 600Mi.
    let mut holder = Running::start(
        sim.command(&probe_linked())
            .args(["hold", &(600 * MI).to_string()]),
    );
    holder.expect_line("held");

    // B's context takes 64Mi more: 600Mi no longer fits, 250Mi does.
    let out = run_ok(sim.command(&probe_dlopen()).args([
        "alloc",
        &(600 * MI).to_string(),
        &(250 * MI).to_string(),
    ]));
    let lines: Vec<_> = out.lines().map(fields).collect();
    assert_eq!(
        lines[0]["code"], "2",
        "600Mi must not fit beside the holder: {out}"
    );
    assert_eq!(lines[1]["code"], "0", "250Mi must fit: {out}");

    // Once A frees and exits, 600Mi fits again.
    holder.expect_line_after_close("freed");
    let out = run_ok(
        sim.command(&probe_dlopen())
            .args(["alloc", &(600 * MI).to_string()]),
    );
    assert_eq!(fields(out.trim())["code"], "0", "{out}");
}

#[test]
fn sigkill_of_a_process_holding_memory_returns_it_to_the_device() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let holder = {
        let mut h = Running::start(
            sim.command(&probe_dlopen())
                .args(["hold", &(800 * MI).to_string()]),
        );
        h.expect_line("held");
        h
    };
    let before = all_fields(&run_ok(sim.command(&probe_linked()).arg("meminfo")));
    assert_eq!(num(&before, "cuda_free"), (1024 - 64 - 800 - 64) * MI);

    holder.kill_9();
    // The killed process could not give anything back itself...
    assert_eq!(sim.used_in_state_file(0), (64 + 800) * MI);
    // ...but the next scan (cuMemGetInfo) reclaims it.
    let after = all_fields(&run_ok(sim.command(&probe_linked()).arg("meminfo")));
    assert_eq!(num(&after, "cuda_free"), (1024 - 64) * MI);
    let out = run_ok(
        sim.command(&probe_dlopen())
            .args(["alloc", &(800 * MI).to_string()]),
    );
    assert_eq!(fields(out.trim())["code"], "0", "{out}");
}

#[test]
fn an_allocation_that_would_fail_reclaims_killed_processes_first() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let mut holder = Running::start(
        sim.command(&probe_dlopen())
            .args(["hold", &(900 * MI).to_string()]),
    );
    holder.expect_line("held");
    holder.kill_9();
    let out = run_ok(
        sim.command(&probe_linked())
            .args(["alloc", &(900 * MI).to_string()]),
    );
    assert_eq!(fields(out.trim())["code"], "0", "{out}");
}

#[test]
fn a_normal_exit_gives_all_memory_back_without_a_scan() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let out = run_ok(
        sim.command(&probe_linked())
            .args(["hold-exit", &(700 * MI).to_string()]),
    );
    assert_eq!(out.trim(), "held");
    assert_eq!(sim.used_in_state_file(0), 0);
}

#[test]
fn nvml_memory_info_agrees_with_cu_mem_get_info() {
    let _cpu = share_cpu();
    let sim = Sim::new("2Gi");
    let mut holder = Running::start(
        sim.command(&probe_linked())
            .args(["hold", &(300 * MI).to_string()]),
    );
    holder.expect_line("held");
    let f = all_fields(&run_ok(sim.command(&probe_dlopen()).arg("meminfo")));
    let (free, total) = (num(&f, "cuda_free"), num(&f, "cuda_total"));
    assert_eq!(total, 2048 * MI);
    assert_eq!(free, (2048 - 64 - 300 - 64) * MI);
    assert_eq!(
        (
            num(&f, "nvml_free"),
            num(&f, "nvml_total"),
            num(&f, "nvml_used")
        ),
        (free, total, total - free)
    );
    assert_eq!(
        (
            num(&f, "nvml2_free"),
            num(&f, "nvml2_total"),
            num(&f, "nvml2_used")
        ),
        (free, total, total - free)
    );
    assert_eq!(num(&f, "nvml2_reserved"), 0);
    // NVML_ERROR_FUNCTION_NOT_FOUND, as driver 580 says.
    assert_eq!(num(&f, "nvml_v2_bad_version"), 13);
    assert_eq!(f["nvml_uuid"], "GPU-fa4ec0da-0000-4000-8000-000000000000");
    holder.finish();
}

/// (symbol, cudaVersion, flags, the exported name dlsym must give the same address for).
const PROC_ADDRESS_CASES: &[(&str, i32, u64, &str)] = &[
    ("cuInit", 2000, 0, "cuInit"),
    ("cuMemAlloc", 3020, 0, "cuMemAlloc_v2"),
    ("cuMemAlloc", 13000, 0, "cuMemAlloc_v2"),
    ("cuMemAlloc", 13000, 2, "cuMemAlloc_v2"),
    ("cuCtxCreate", 11000, 0, "cuCtxCreate_v2"),
    ("cuCtxCreate", 11040, 0, "cuCtxCreate_v3"),
    ("cuCtxCreate", 13000, 0, "cuCtxCreate_v4"),
    ("cuEventElapsedTime", 12000, 0, "cuEventElapsedTime"),
    ("cuEventElapsedTime", 12080, 0, "cuEventElapsedTime_v2"),
    (
        "cuDevicePrimaryCtxRelease",
        10000,
        0,
        "cuDevicePrimaryCtxRelease",
    ),
    (
        "cuDevicePrimaryCtxRelease",
        11000,
        0,
        "cuDevicePrimaryCtxRelease_v2",
    ),
    ("cuLaunchKernel", 12000, 0, "cuLaunchKernel"),
    ("cuLaunchKernel", 12000, 1, "cuLaunchKernel"),
    ("cuLaunchKernel", 12000, 2, "cuLaunchKernel_ptsz"),
    ("cuLaunchKernel", 7000, 2, "cuLaunchKernel_ptsz"),
    ("cuMemcpyHtoD", 12000, 2, "cuMemcpyHtoD_v2_ptds"),
    ("cuCtxGetDevice", 12090, 0, "cuCtxGetDevice"),
    ("cuCtxGetDevice", 13000, 0, "cuCtxGetDevice_v2"),
    ("cuCtxSynchronize", 13000, 2, "cuCtxSynchronize_v2"),
    ("cuMemAllocAsync", 12000, 2, "cuMemAllocAsync_ptsz"),
    ("cuStreamGetCtx", 13000, 2, "cuStreamGetCtx_v2_ptsz"),
    ("cuGetProcAddress", 11030, 0, "cuGetProcAddress"),
    ("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2"),
    ("cuGetProcAddress", 13000, 0, "cuGetProcAddress_v2"),
    ("cuStreamBeginCapture", 10000, 0, "cuStreamBeginCapture"),
    (
        "cuStreamBeginCapture",
        13000,
        2,
        "cuStreamBeginCapture_v2_ptsz",
    ),
    ("cuStreamEndCapture", 13000, 2, "cuStreamEndCapture_ptsz"),
    ("cuGraphInstantiate", 11000, 0, "cuGraphInstantiate_v2"),
    (
        "cuGraphInstantiate",
        12000,
        0,
        "cuGraphInstantiateWithFlags",
    ),
    ("cuGraphLaunch", 13000, 2, "cuGraphLaunch_ptsz"),
];

fn proc_address_queries(extra: &[(&str, i32, u64, &str)]) -> String {
    PROC_ADDRESS_CASES
        .iter()
        .chain(extra)
        .map(|(s, v, f, e)| format!("{s} {v} {f} {e}\n"))
        .collect()
}

fn query_proc_addresses(
    cmd: &mut std::process::Command,
    input: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let mut child = Running::start(cmd.arg("procaddr"));
    for line in input.lines() {
        child.send(line);
    }
    child.finish().iter().map(|l| fields(l)).collect()
}

#[test]
fn get_proc_address_returns_what_dlsym_returns_for_the_versioned_name() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let unknown = [
        ("cuNoSuchFunction", 13000, 0, "-"),
        ("cuMemAllocAsync", 11000, 0, "-"),
        ("cuLaunchKernel", 6050, 2, "-"),
    ];
    let input = proc_address_queries(&unknown);
    for probe in [probe_dlopen(), probe_linked()] {
        let results = query_proc_addresses(&mut sim.command(&probe), &input);
        assert_eq!(results.len(), PROC_ADDRESS_CASES.len() + unknown.len());
        let (found, missing) = results.split_at(PROC_ADDRESS_CASES.len());
        for r in found {
            assert_eq!(
                (
                    r["code"].as_str(),
                    r["status"].as_str(),
                    r["v1code"].as_str()
                ),
                ("0", "0", "0"),
                "{r:?}"
            );
            assert_eq!(
                (
                    r["found"].as_str(),
                    r["same"].as_str(),
                    r["v1same"].as_str()
                ),
                ("1", "1", "1"),
                "{r:?}"
            );
        }
        // As from driver 580: cuGetProcAddress_v2 succeeds with a NULL function and says
        // SYMBOL_NOT_FOUND / VERSION_NOT_SUFFICIENT; the v1 ABI returns CUDA_ERROR_NOT_FOUND.
        for (r, status) in missing.iter().zip(["1", "2", "2"]) {
            assert_eq!(
                (r["code"].as_str(), r["status"].as_str()),
                ("0", status),
                "{r:?}"
            );
            assert_eq!(
                (r["v1code"].as_str(), r["name"].as_str()),
                ("500", "-"),
                "{r:?}"
            );
        }
    }
}

#[test]
fn get_proc_address_ignores_a_preloaded_library_with_the_same_names() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let interposer = compile_c(
        "interposer.so",
        include_str!("c/interposer.c"),
        &["-shared", "-fPIC"],
    );
    let cases = [
        ("cuMemAlloc", 13000, 0, "cuMemAlloc_v2"),
        ("cuLaunchKernel", 13000, 0, "cuLaunchKernel"),
        ("cuGetProcAddress", 13000, 0, "cuGetProcAddress_v2"),
    ];
    let input: String = cases
        .iter()
        .map(|(s, v, f, e)| format!("{s} {v} {f} {e}\n"))
        .collect();
    let results = query_proc_addresses(
        sim.command(&probe_dlopen()).env("LD_PRELOAD", &interposer),
        &input,
    );
    assert_eq!(results.len(), cases.len());
    for r in &results {
        assert_eq!(
            (r["code"].as_str(), r["same"].as_str()),
            ("0", "1"),
            "{r:?}"
        );
        // The preloaded definition is what the global scope resolves, and not what we return.
        assert_eq!(r["global_same"], "0", "{r:?}");
    }
}

#[test]
fn vmm_memory_is_charged_from_create_until_released_and_unmapped() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let bytes = 64 * MI;
    let f = all_fields(&run_ok(
        sim.command(&probe_dlopen())
            .args(["vmm", &bytes.to_string()]),
    ));
    assert_eq!(num(&f, "created"), bytes);
    assert_eq!(
        num(&f, "mapped_after_release"),
        bytes,
        "mapped memory stays charged"
    );
    assert_eq!(num(&f, "released"), 0);
    assert_eq!(num(&f, "roundtrip"), 1);
    assert_eq!(num(&f, "unaligned_create"), 1, "CUDA_ERROR_INVALID_VALUE");
}

/// As the driver: one unmap may take several whole mappings but never part of one; a
/// retained handle is a reference of its own; the memory goes with the last reference.
#[test]
fn vmm_memory_goes_with_the_last_of_its_handle_references_and_mappings() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let bytes = 4 * MI;
    let out = run_ok(
        sim.command(&probe_dlopen())
            .args(["vmm-refs", &bytes.to_string()]),
    );
    let line = |prefix: &str| {
        fields(
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} line in {out}")),
        )
    };
    assert_eq!(num(&line("released="), "released"), 2 * bytes, "mapped");
    let refused = line("unmap_part=");
    assert_eq!(num(&refused, "unmap_part"), 1, "CUDA_ERROR_INVALID_VALUE");
    assert_eq!(num(&refused, "unmap_across"), 1, "cuts both mappings");
    assert_eq!(
        num(&refused, "held"),
        2 * bytes,
        "a refused unmap changes nothing"
    );
    let retain = line("retain=");
    assert_eq!(num(&retain, "retain"), 0);
    assert_eq!(num(&retain, "retained_is_b"), 1, "the handle used to map");
    let both = line("unmap_both=");
    assert_eq!(num(&both, "unmap_both"), 0);
    assert_eq!(num(&both, "held"), bytes, "the retained handle keeps b");
    assert_eq!(num(&line("retain_unmapped="), "retain_unmapped"), 1);
    let release = line("release_retained=");
    assert_eq!(num(&release, "release_retained"), 0);
    assert_eq!(num(&release, "held"), 0);
    assert_eq!(
        num(&release, "release_again"),
        400,
        "CUDA_ERROR_INVALID_HANDLE"
    );
    assert_eq!(
        num(&line("map_at_offset="), "map_at_offset"),
        1,
        "must be 0"
    );
    assert_eq!(num(&line("end "), "held"), 0);
}

#[test]
fn an_invalid_configuration_fails_cu_init_with_one_line_naming_the_variable() {
    let _cpu = share_cpu();
    let sim = Sim::new("lots");
    let output = run(sim.command(&probe_dlopen()).arg("init"));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "code=1");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("FAKECUDA_DEVICES") && stderr.contains("lots"),
        "{stderr}"
    );
}

#[test]
fn the_context_footprint_alone_can_fill_the_device() {
    let _cpu = share_cpu();
    let sim = Sim::new("32Mi");
    let output = run(sim.command(&probe_linked()).args(["alloc", "1"]));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cuDevicePrimaryCtxRetain failed: 2"),
        "{stderr}"
    );
}

/// Return codes of edge cases, as driver 580 (CUDA 13.0) gave them on an H100 to the same
/// probe (`probe edges`).
const DRIVER_580_EDGES: &[(&str, &str)] = &[
    ("before_init_alloc", "3"),
    ("no_context_meminfo", "201"),
    ("no_context_get_current", "0"),
    ("no_context_pop", "201"),
    ("no_context_synchronize", "201"),
    ("release_unretained", "201"),
    ("alloc_zero", "1"),
    ("alloc_async_zero", "0"),
    ("free_async_null", "0"),
    ("free_null", "0"),
    ("pitch_element_3", "1"),
    ("pitch_100x10", "0"),
    ("host_zero", "0"),
    ("error_string_unknown", "1"),
    ("load_garbage", "200"),
    ("get_missing_function", "500"),
    ("launch_block_2048", "1"),
    ("launch_grid_0", "1"),
    ("launch_ok", "0"),
    ("elapsed_unrecorded", "400"),
    ("elapsed_one_unrecorded", "400"),
    ("elapsed_disable_timing", "400"),
    ("stream_query_null", "0"),
];

#[test]
fn edge_cases_return_what_driver_580_returns() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let out = run_ok(sim.command(&probe_dlopen()).arg("edges"));
    let f = all_fields(&out);
    for (key, want) in DRIVER_580_EDGES {
        assert_eq!(
            f.get(*key).map(String::as_str),
            Some(*want),
            "{key} in:\n{out}"
        );
    }
    // A zero-byte stream-ordered allocation is NULL; an unknown code's string is NULL; rows
    // are padded to 512 bytes (all as on the H100).
    assert_eq!(
        (f["async_null"].as_str(), f["null"].as_str()),
        ("1", "1"),
        "{out}"
    );
    assert_eq!(num(&f, "pitch"), 512);
}

#[test]
fn threads_allocating_and_freeing_at_once_leave_exact_accounting() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let out = run_ok(
        sim.command(&probe_linked())
            .args(["churn", "8", "200", "1048576"]),
    );
    assert_eq!(num(&all_fields(&out), "churn_leaked"), 0, "{out}");
    assert_eq!(sim.used_in_state_file(0), 0);
}

#[test]
fn cuda_and_nvml_report_the_same_device_uuid() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi,2Gi");
    let f = all_fields(&run_ok(sim.command(&probe_dlopen()).arg("meminfo")));
    assert_eq!(num(&f, "uuids_agree"), 1);
}

#[test]
fn streams_order_work_through_events_host_functions_and_the_per_thread_stream() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ptx/spin.ptx");
    let out = run_ok(sim.command(&probe_dlopen()).args(["streams", ptx]));
    let f = all_fields(&out);
    let ms = |key: &str| -> f64 { f[key].parse().unwrap_or_else(|_| panic!("{key}: {out}")) };
    // Stream 2 waits for stream 1's 20 ms kernel, then runs 10 ms: 30 ms from start to end
    // (10 without the wait), plus any stall of the probe between its first two calls (this
    // VM stalls a thread for a few milliseconds now and then).
    assert!((29.9..36.0).contains(&ms("chain_ms")), "{out}");
    assert!((29.9..60.0).contains(&ms("host_ms")), "{out}");
    assert_eq!(
        num(&f, "query_busy"),
        600,
        "CUDA_ERROR_NOT_READY while queued: {out}"
    );
    assert_eq!(num(&f, "host_calls_before"), 0, "{out}");
    assert_eq!(num(&f, "host_calls"), 1, "{out}");
    assert_eq!(num(&f, "query_idle"), 0, "{out}");
    assert!((9.9..40.0).contains(&ms("per_thread_ms")), "{out}");
}

#[test]
fn captured_kernels_replay_as_a_graph_and_capture_refuses_what_it_must() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ptx/spin.ptx");
    for probe in [probe_dlopen(), probe_linked()] {
        let out = run_ok(sim.command(&probe).args(["graphs", ptx]));
        let f = all_fields(&out);
        let code = |key: &str| num(&f, key);
        let ms = |key: &str| -> f64 { f[key].parse().unwrap_or_else(|_| panic!("{key}: {out}")) };
        // CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: the legacy stream cannot capture.
        assert_eq!(code("begin_legacy"), 900, "{out}");
        // CUDA_ERROR_ILLEGAL_STATE: no capture to end, or one already begun.
        assert_eq!(code("end_not_capturing"), 401, "{out}");
        assert_eq!(code("begin_again"), 401, "{out}");
        assert_eq!(code("status_capturing"), 1, "ACTIVE: {out}");
        // CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: the legacy stream beside a blocking capture.
        assert_eq!(code("status_legacy"), 906, "{out}");
        // Four 5 ms kernels captured: nothing ran.
        assert!(ms("capture_ms") < 10.0, "{out}");
        // CUDA_ERROR_CAPTURED_EVENT.
        assert_eq!(code("query_captured_event"), 907, "{out}");
        assert_eq!(code("status_ended"), 0, "NONE: {out}");
        assert_eq!(code("instantiate_v1_error_node_null"), 1, "{out}");
        assert_eq!(code("log_empty"), 1, "{out}");
        // Two replays of the four kernels: 40 ms, back to back.
        assert!((39.9..60.0).contains(&ms("replay_ms")), "{out}");
        assert_eq!(code("launch_destroyed"), 400, "{out}");
        // Querying the capturing stream invalidates the capture.
        assert_eq!(code("query_capturing"), 900, "{out}");
        assert_eq!(code("status_invalidated"), 2, "INVALIDATED: {out}");
        assert_eq!(code("launch_invalidated"), 901, "{out}");
        assert_eq!(code("end_invalidated"), 901, "{out}");
        assert_eq!(code("graph_null"), 1, "{out}");
        assert_eq!(code("legacy_launch"), 906, "{out}");
        assert_eq!(code("end_after_legacy"), 901, "{out}");
        assert_eq!(code("ctx_sync"), 900, "{out}");
        assert_eq!(code("end_after_ctx_sync"), 901, "{out}");
        // Another thread's query during a global capture invalidates it; during a
        // thread-local one it is that thread's business.
        assert_eq!(code("other_thread_query_global"), 900, "{out}");
        assert_eq!(code("end_after_other_thread_global"), 901, "{out}");
        assert_eq!(code("other_thread_query_thread_local"), 0, "{out}");
        assert_eq!(code("end_after_other_thread_thread_local"), 0, "{out}");
        assert_eq!(code("previous_mode"), 0, "GLOBAL by default: {out}");
    }
}

#[test]
fn each_thread_has_a_per_thread_stream_the_legacy_stream_synchronizes_with() {
    let _alone = timing_alone();
    let sim = Sim::new("1Gi");
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ptx/spin.ptx");
    let out = run_ok(sim.command(&probe_dlopen()).args(["per-thread", ptx]));
    let f = all_fields(&out);
    let ms = |key: &str| -> f64 { f[key].parse().unwrap_or_else(|_| panic!("{key}: {out}")) };
    // Another thread's per-thread stream is empty, and the legacy stream has none of the
    // 100 ms kernel: neither waits for it.
    assert!(ms("other_thread_sync_ms") < 50.0, "{out}");
    assert_eq!(num(&f, "legacy_query"), 0, "{out}");
    // Work on the legacy stream does.
    assert!(ms("legacy_after_ms") >= 100.0, "{out}");
}

/// The `v3` / `v2` / `v1` process lines of a `probe procs` output, as (pid, used) pairs,
/// checking that v2 and v3 report no MIG instances.
fn listed(out: &str, version: &str) -> Vec<(u32, u64)> {
    out.lines()
        .filter_map(|line| line.strip_prefix(version)?.strip_prefix(' '))
        .map(|rest| {
            let f = fields(rest);
            if version != "v1" {
                assert_eq!(
                    (f["gi"].as_str(), f["ci"].as_str()),
                    ("4294967295", "4294967295")
                );
            }
            (f["pid"].parse().unwrap(), num(&f, "used"))
        })
        .collect()
}

#[test]
fn nvml_lists_each_live_process_with_its_pid_and_memory_until_it_is_killed() {
    let _cpu = share_cpu();
    let sim = Sim::new("2Gi");
    let mut small = Running::start(
        sim.command(&probe_linked())
            .args(["hold", &(100 * MI).to_string()]),
    );
    small.expect_line("held");
    let mut large = Running::start(
        sim.command(&probe_dlopen())
            .args(["hold", &(300 * MI).to_string()]),
    );
    large.expect_line("held");
    let (small_pid, large_pid) = (small.pid(), large.pid());

    // A bare NVML process (no context, so not listed itself) sees both.
    let out = run_ok(sim.command(&probe_dlopen()).arg("procs"));
    let mut want = vec![(small_pid, (64 + 100) * MI), (large_pid, (64 + 300) * MI)];
    want.sort_unstable();
    for version in ["v3", "v2", "v1"] {
        let mut got = listed(&out, version);
        got.sort_unstable();
        assert_eq!(got, want, "{version}:\n{out}");
    }
    let f = all_fields(&out);
    // The size edge cases, as driver 580.159.04 answers them on an H100 (same probe):
    // NVML_ERROR_INSUFFICIENT_SIZE with the number needed and nothing written; a NULL array
    // with room is NVML_ERROR_INVALID_ARGUMENT, the count still set; a NULL count too.
    assert_eq!((num(&f, "count0_code"), num(&f, "count0")), (7, 2), "{out}");
    assert_eq!(
        (num(&f, "short_code"), num(&f, "short_count")),
        (7, 2),
        "{out}"
    );
    assert_eq!(num(&f, "short_untouched"), 1, "{out}");
    assert_eq!(
        (num(&f, "null_infos_code"), num(&f, "null_infos_count")),
        (2, 2)
    );
    assert_eq!(num(&f, "null_count_code"), 2, "NVML_ERROR_INVALID_ARGUMENT");
    assert_eq!((num(&f, "count"), num(&f, "v1_count")), (2, 2));
    // 16-byte v1 entries: both written at that stride, nothing past the last.
    assert_eq!((num(&f, "v1_size"), num(&f, "v3_size")), (16, 24));
    assert_eq!(num(&f, "v1_after_last_untouched"), 1, "{out}");

    small.kill_9();
    let out = run_ok(sim.command(&probe_linked()).arg("procs"));
    assert_eq!(listed(&out, "v3"), [(large_pid, (64 + 300) * MI)], "{out}");
    assert_eq!(
        sim.used_in_state_file(0),
        (64 + 300) * MI,
        "listing reclaims the dead"
    );

    large.kill_9();
    let out = run_ok(sim.command(&probe_dlopen()).arg("procs"));
    let f = all_fields(&out);
    assert_eq!(listed(&out, "v3"), [], "{out}");
    // With no process, every size succeeds with 0 (also on the H100).
    assert_eq!((num(&f, "count0_code"), num(&f, "count0")), (0, 0), "{out}");
    assert_eq!(
        (num(&f, "null_infos_code"), num(&f, "null_infos_count")),
        (0, 0)
    );
    assert_eq!(num(&f, "count"), 0, "{out}");
    assert_eq!(sim.used_in_state_file(0), 0);
}

#[test]
fn nvml_lists_a_process_whose_contexts_take_no_memory() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let mut holder = Running::start(
        sim.command(&probe_linked())
            .env("FAKECUDA_CONTEXT_FOOTPRINT", "0")
            .arg("hold-context"),
    );
    holder.expect_line("held");
    let out = run_ok(sim.command(&probe_dlopen()).arg("procs"));
    assert_eq!(listed(&out, "v3"), [(holder.pid(), 0)], "{out}");
    holder.expect_line_after_close("released");
    assert_eq!(
        listed(&run_ok(sim.command(&probe_dlopen()).arg("procs")), "v3"),
        []
    );
}

#[test]
fn module_loads_take_the_module_footprint_until_unloaded() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let out = run_ok(
        sim.command(&probe_dlopen())
            .env("FAKECUDA_MODULE_FOOTPRINT", "32Mi")
            .arg("modmem"),
    );
    let f = all_fields(&out);
    let step = |name: &str| {
        (
            num(&f, &format!("{name}_free")),
            num(&f, &format!("{name}_used")),
            num(&f, &format!("{name}_listed")),
        )
    };
    let (free, used, listed) = step("before");
    assert_eq!(
        (free, used, listed),
        ((1024 - 64) * MI, 64 * MI, 1),
        "{out}"
    );
    assert_eq!(num(&f, "load_code"), 0, "{out}");
    assert_eq!(step("loaded"), (free - 32 * MI, used + 32 * MI, 1), "{out}");
    assert_eq!(
        step("library"),
        (free - 64 * MI, used + 64 * MI, 1),
        "{out}"
    );
    assert_eq!(
        step("library_unloaded"),
        (free - 32 * MI, used + 32 * MI, 1)
    );
    // cuModuleLoadDataEx and cuModuleLoad take it too.
    assert_eq!(step("ex_and_file"), (free - 96 * MI, used + 96 * MI, 1));
    assert_eq!(
        step("ex_and_file_unloaded"),
        (free - 32 * MI, used + 32 * MI, 1)
    );
    assert_eq!(step("unloaded"), (free, used, 1), "{out}");
    // Destroying the context gives back its footprint and its module's memory, and unloads
    // the module; the process is no longer listed.
    assert_eq!(
        num(&f, "ctx_live_nvml_used") - num(&f, "ctx_destroyed_nvml_used"),
        (64 + 32) * MI,
        "{out}"
    );
    assert_eq!(
        (
            num(&f, "ctx_destroyed_used"),
            num(&f, "ctx_destroyed_listed")
        ),
        (0, 0),
        "{out}"
    );
    assert_eq!(num(&f, "ctx_destroyed_get_function"), 400, "{out}");
    assert_eq!(sim.used_in_state_file(0), 0);
}

#[test]
fn modules_take_no_memory_by_default() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let f = all_fields(&run_ok(sim.command(&probe_linked()).arg("modmem")));
    assert_eq!(num(&f, "loaded_free"), num(&f, "before_free"));
    assert_eq!(num(&f, "library_used"), 64 * MI);
}

#[test]
fn a_module_load_that_does_not_fit_fails_with_out_of_memory() {
    let _cpu = share_cpu();
    let sim = Sim::new("96Mi");
    let out = run_ok(
        sim.command(&probe_linked())
            .env("FAKECUDA_MODULE_FOOTPRINT", "64Mi")
            .arg("modmem"),
    );
    let f = all_fields(&out);
    assert_eq!(num(&f, "load_code"), 2, "CUDA_ERROR_OUT_OF_MEMORY: {out}");
    assert_eq!(num(&f, "before_free"), 32 * MI, "{out}");
    assert_eq!(sim.used_in_state_file(0), 0);
}

/// The "<step> reserved= used= nvml= device_used=" line of a `probe pools` output, in MiB:
/// (the pool's reserved, its used, this process's NVML figure less its context).
fn pool_step(out: &str, step: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find_map(|line| line.strip_prefix(step)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {step} line in {out}"));
    let f = fields(line);
    assert_eq!(
        num(&f, "nvml"),
        num(&f, "device_used"),
        "one process: NVML's per-process and device figures agree: {line}"
    );
    (
        num(&f, "reserved") / MI,
        num(&f, "used") / MI,
        (num(&f, "nvml") - 64 * MI) / MI,
    )
}

/// Memory pools keep what they reserve on the device, as a real driver's do: a queued free
/// gives its block back only when the stream reaches it, and the pool gives idle memory
/// back to the device only at a synchronization (above its release threshold) or a trim.
/// NVML counts what the pool holds, not what the program uses.
#[test]
fn memory_pools_hold_their_memory_until_a_synchronization_or_a_trim() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let ptx = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ptx/spin.ptx");
    let out = run_ok(sim.command(&probe_dlopen()).args(["pools", ptx]));
    let step = |name| pool_step(&out, name);
    assert_eq!(step("start"), (0, 0, 0));
    assert_eq!(step("allocated"), (100, 100, 100));
    assert_eq!(
        step("queued"),
        (100, 100, 100),
        "a free queued behind a kernel still holds its block"
    );
    assert_eq!(
        step("other_stream"),
        (150, 150, 150),
        "so another stream's allocation grows the pool"
    );
    assert_eq!(
        step("synchronized"),
        (50, 50, 50),
        "the stream reached the free; the synchronization released the idle block"
    );
    assert_eq!(num(&all_fields(&out), "threshold"), 1 << 30);
    assert_eq!(
        step("kept"),
        (50, 0, 50),
        "idle under the release threshold stays"
    );
    assert_eq!(step("reused"), (50, 30, 50), "idle memory serves what fits");
    assert_eq!(step("trimmed"), (0, 0, 0));
    let high = fields(
        out.lines()
            .find_map(|l| l.strip_prefix("high "))
            .unwrap_or_else(|| panic!("{out}")),
    );
    assert_eq!(
        (num(&high, "reserved"), num(&high, "used")),
        (150 * MI, 150 * MI)
    );
    assert_eq!(
        step("trim_queued"),
        (20, 20, 20),
        "a trim cannot take memory behind a queued free"
    );
    assert_eq!(step("context_synchronized"), (0, 0, 0));
    assert_eq!(step("event_synchronized"), (0, 0, 0));
    assert_eq!(
        step("created"),
        (50, 40, 50),
        "a created pool's memory counts too"
    );
    assert_eq!(
        step("destroyed").2,
        40,
        "destroying a pool releases its idle memory at once"
    );
    assert_eq!(
        step("destroyed_queued").2,
        40,
        "the rest waits for its free"
    );
    assert_eq!(step("destroyed_freed").2, 0);
}

/// What a pool keeps is taken from the device for every process, as any allocation is.
#[test]
fn other_processes_see_the_memory_a_pool_keeps() {
    let _cpu = share_cpu();
    let sim = Sim::new("1Gi");
    let mut holder = Running::start(
        sim.command(&probe_linked())
            .args(["pool-hold", &(200 * MI).to_string()]),
    );
    holder.expect_line("held");
    let free = |out: &str| num(&all_fields(out), "cuda_free");
    let before = run_ok(sim.command(&probe_dlopen()).arg("meminfo"));
    assert_eq!(free(&before), (1024 - 64 - 200 - 64) * MI, "{before}");
    holder.send("trim");
    holder.expect_line("trimmed");
    let after = run_ok(sim.command(&probe_dlopen()).arg("meminfo"));
    assert_eq!(free(&after), (1024 - 64 - 64) * MI, "{after}");
    holder.finish();
}
