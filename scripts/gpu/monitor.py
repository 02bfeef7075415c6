#!/usr/bin/env python3
"""Host view of GPU memory while one gpu-check check runs.

Runs WITHOUT the gpuslice preload, so it sees what the driver really hands out, not what the
shim tells the tenant. It samples NVML until SIGTERM, then writes key=value lines to --out.

The number that matters is outside_max_bytes: the largest total, over one sample, of the
memory of the processes that appeared after the monitor started (a tenant's processes share
its quota, so children count together). When NVML gives no per-process numbers (some
containers), the device-level growth over the baseline stands in for it.

Sampling every 20 ms can miss a peak shorter than that: the checks hold their peak for a
moment (cudaprobe `sleep`, --hold-ms) so that it is seen.
"""

import argparse
import os
import signal
import sys
import time

MIB = 1 << 20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where the results go")
    parser.add_argument("--ready", required=True, help="file created once the baseline is taken")
    parser.add_argument("--limit", type=int, required=True, help="the quota, bytes")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between samples")
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()

    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(args.device)
    except Exception as error:  # no NVML: say so where the check will look
        write(args.out, {"error": f"NVML unavailable: {error!r}"})
        open(args.ready, "w").close()
        return 1

    # Newest first; a binding or driver without one (or a simulated GPU without any) moves
    # on to the next, and with none left only the device-level numbers remain.
    names = ["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
             "nvmlDeviceGetComputeRunningProcesses"]
    query = [getattr(pynvml, name) for name in names if hasattr(pynvml, name)]
    process_error = None

    def processes():
        nonlocal process_error
        while query:
            try:
                return query[0](handle)
            except Exception as error:  # pynvml's errors do not share one base class
                process_error = f"{query[0].__name__}: {type(error).__name__}"
                query.pop(0)
        return []

    def device_used():
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used

    baseline_pids = {p.pid for p in processes()}
    baseline_used = device_used()
    open(args.ready, "w").close()

    samples = 0
    pid_max = {}  # pid -> largest usedGpuMemory seen (None: NVML would not say)
    sum_max = 0
    used_max = baseline_used
    while not stopping:
        total = 0
        for p in processes():
            if p.pid in baseline_pids:
                continue
            used = p.usedGpuMemory
            if used is None:
                pid_max.setdefault(p.pid, None)
                continue
            total += used
            pid_max[p.pid] = max(used, pid_max.get(p.pid) or 0)
        sum_max = max(sum_max, total)
        used_max = max(used_max, device_used())
        samples += 1
        time.sleep(args.interval)

    delta_max = max(0, used_max - baseline_used)
    measured = [v for v in pid_max.values() if v is not None]
    if measured:
        source, outside = "per-process", sum_max
    elif delta_max > 0:
        source, outside = "device", delta_max
    else:
        source, outside = "none", 0
    write(args.out, {
        "samples": samples,
        "interval_ms": round(args.interval * 1e3, 1),
        "pids": ",".join(str(pid) for pid in sorted(pid_max)) or "-",
        "pid_max_mib": ",".join(f"{pid}:{'?' if v is None else round(v / MIB, 1)}"
                                for pid, v in sorted(pid_max.items())) or "-",
        "baseline_pids": len(baseline_pids),
        "process_query": query[0].__name__ if query else "-",
        "process_query_error": process_error or "-",
        "device_used_baseline_bytes": baseline_used,
        "device_used_max_bytes": used_max,
        "device_delta_max_bytes": delta_max,
        "outside_source": source,
        "outside_max_bytes": outside,
        "outside_max_mib": round(outside / MIB, 1),
        "limit_bytes": args.limit,
        "within_limit": int(outside <= args.limit),
    })
    return 0


def write(path, values):
    """Writes key=value lines whole, so the reader never sees half a result."""
    partial = path + ".partial"
    with open(partial, "w") as out:
        for key, value in values.items():
            out.write(f"{key}={value}\n")
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
