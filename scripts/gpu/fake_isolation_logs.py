#!/usr/bin/env python3
"""Writes synthetic logs in the layout of scripts/bench-isolation.sh and bench-overhead.sh,
with known figures, to test scripts/isolation_report.py without a GPU
(scripts/gpu/test_isolation_report.py). Never a measurement.

usage: fake_isolation_logs.py OUT

The figures it plants (the test checks that the report finds them):
  limit 30%: torch4096 31% (met), jax4096 35% (missed), the others 30%, each at 40% of
             its bare throughput; light2048 15% bare and limited, 99% of bare (met)
  shares:    s25 at 26% of solo (met), s75 at 70% (missed); NVML per process 26% and 97%
  priority:  requests: solo p50 100 µs, p99 400 µs; high 180 / 700 µs, neighbour 60%
             (met); llama: solo 20 / 30 ms, high 25 / 40 ms, neighbour 30% (missed)
  overhead:  driver-none launch_ns 1.004 ± 0.002 (met), alloc_free_pair_ns 1.05 (missed)
"""

import os
import random
import sys

S = 1_000_000_000
SAMPLE_NS = 50_000_000
RUN_NS = 4 * S
GAP_NS = 3 * S
WALL_OFFSET_NS = 1_700_000_000 * S  # what time.time_ns() - time.monotonic_ns() would be


class Section:
    """One section's folder: its logs and the NVML sampler's files."""

    def __init__(self, directory, clock):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.clock = clock
        self.device = []  # (t, util, clock, power)
        self.proc = []  # (query t, pid, sample t, util)
        self.next_pid = 1000

    def run(self, procs):
        """PROCS: [(log name, kind, params)] that ran together; returns the start time."""
        start = self.clock + GAP_NS
        end = start + RUN_NS
        device_util = 0.0
        for name, kind, p in procs:
            pid = self.next_pid
            self.next_pid += 1
            lines = [f"start pid={pid} at_ns={start} shim={p.get('shim', 0)} mode={kind}"]
            if kind == "loop":
                t, n = start, 0
                while True:
                    t += p["step_ns"]
                    if t > end:
                        break
                    n += 8
                    lines.append(f"done at_ns={t} iters={n}")
            else:
                rng = random.Random(pid)
                t = start
                while True:
                    latency = p["p50"] if rng.random() < 0.9 else p["p99"]
                    t += latency + 2_000_000
                    if t > end:
                        break
                    lines.append(f"request at_ns={t} latency_ns={latency}")
            lines.append(f"end at_ns={end}")
            lines.append(f"summary mode={kind}")
            with open(os.path.join(self.dir, name), "w") as f:
                f.write("\n".join(lines) + "\n")
            device_util += p["util"]
            t = start + SAMPLE_NS
            while t <= end:
                self.proc.append((t, pid, t, p["util"]))
                t += 4 * SAMPLE_NS
        t = start - S
        while t <= end + S:
            inside = start <= t <= end
            self.device.append((t, min(100.0, device_util) if inside else 0.0,
                                1400 if inside and device_util > 90 else 1980, 300.0))
            t += SAMPLE_NS
        self.clock = end
        return start

    def close(self):
        """The NVML sampler's log (scripts/gpu/nvml_sampler.py), in time order."""
        lines = [(0, "info gpu=Synthetic_GPU driver=580.00")]
        for t, util, clock, power in self.device:
            lines.append((t, f"dev at_ns={t} util={util:.0f} sm_mhz={clock} power_w={power}"))
        for t, pid, sample, util in self.proc:
            lines.append((t, f"proc at_ns={t} pid={pid} ts_us={(sample + WALL_OFFSET_NS) // 1000} "
                             f"sm={util:.0f} sample_ns={sample}"))
        lines.sort(key=lambda pair: pair[0])
        with open(os.path.join(self.dir, "nvml.log"), "w") as f:
            f.write("\n".join(text for _, text in lines) + "\n")


def loop(util, step_ns, shim=0):
    return {"util": util, "step_ns": step_ns, "shim": shim}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    iso = os.path.join(out, "isolation")
    os.makedirs(iso, exist_ok=True)
    with open(os.path.join(iso, "info.txt"), "w") as f:
        f.write("date=2026-12-07T00:00:00Z\ngpu=Synthetic GPU, 580.00, 700.00 W\n"
                "limit=30\ndist_commit=0123456789abcdef\nversions=synthetic\n")

    base = 10 * S
    limit = Section(os.path.join(iso, "limit"), base)
    bare_step = 10_000_000  # 8 items per 10 ms: 800/s
    limited = {"torch4096": 31, "jax4096": 35}
    for name in ["torch4096", "jax4096", "graph4096", "step2048", "step1024", "streams4096"]:
        limit.run([(f"{name}_bare.log", "loop", loop(99, bare_step))])
        limit.run([(f"{name}_limit.log", "loop", loop(limited.get(name, 30), 25_000_000, shim=1))])
    limit.run([("procs4096_bare_a.log", "loop", loop(50, 2 * bare_step)),
               ("procs4096_bare_b.log", "loop", loop(50, 2 * bare_step))])
    limit.run([("procs4096_limit_a.log", "loop", loop(15, 50_000_000, shim=1)),
               ("procs4096_limit_b.log", "loop", loop(15, 50_000_000, shim=1))])
    limit.run([("light2048_bare.log", "loop", loop(15, 10_000_000))])
    limit.run([("light2048_limit.log", "loop", loop(15, 10_101_000, shim=1))])
    limit.close()

    shares = Section(os.path.join(iso, "shares"), limit.clock)
    shares.run([("solo.log", "loop", loop(99, bare_step))])
    shares.run([("s25.log", "loop", loop(26, 38_461_538, shim=1)),
                ("s75.log", "loop", loop(97, 14_285_714, shim=1))])
    shares.run([("bare_a.log", "loop", loop(50, 2 * bare_step)),
                ("bare_b.log", "loop", loop(50, 2 * bare_step))])
    shares.close()

    prio = Section(os.path.join(iso, "priority"), shares.clock)
    prio.run([("neighbour_solo.log", "loop", loop(99, bare_step))])
    for name, solo, high, share in [
        ("requests", (100_000, 400_000), (180_000, 700_000), 0.60),
        ("llama", (20_000_000, 30_000_000), (25_000_000, 40_000_000), 0.30),
    ]:
        prio.run([(f"{name}_solo.log", "requests", {"util": 10, "p50": solo[0], "p99": solo[1]})])
        prio.run([(f"{name}_bare.log", "requests", {"util": 10, "p50": 2 * solo[0], "p99": 2 * solo[1]}),
                  (f"{name}_bare_neighbour.log", "loop", loop(85, int(bare_step / 0.9)))])
        prio.run([(f"{name}_high.log", "requests", {"util": 10, "p50": high[0], "p99": high[1], "shim": 1}),
                  (f"{name}_low_neighbour.log", "loop", loop(60, int(bare_step / share), shim=1))])
    prio.close()

    overhead = os.path.join(out, "overhead")
    os.makedirs(overhead, exist_ok=True)
    with open(os.path.join(overhead, "info.txt"), "w") as f:
        f.write("date=2026-12-07T00:10:00Z\ngpu=Synthetic GPU\npairs=10\n")
    with open(os.path.join(overhead, "raw.txt"), "w") as f:
        rng = random.Random(7)
        for pair in range(1, 11):
            launch = 3000 + rng.uniform(-100, 100)
            alloc = 57000 + rng.uniform(-500, 500)
            f.write(f"pair={pair} case=driver-none mode=bare rc=0 alloc_free_pair_ns={alloc:.1f} "
                    f"launch_ns={launch:.1f} launch_enqueue_ns=2500.0 spin10us_per_kernel_ns=11700.0\n")
            f.write(f"pair={pair} case=driver-none mode=shim rc=0 alloc_free_pair_ns={alloc * 1.05:.1f} "
                    f"launch_ns={launch * (1.004 + rng.uniform(-0.002, 0.002)):.1f} "
                    f"launch_enqueue_ns=2510.0 spin10us_per_kernel_ns=11710.0\n")
        f.write("pair=1 case=hf-share50 mode=bare rc=0 request_ns=50000000 p50_ns=50000000 loop_ns=1000000000 count=20\n")
        f.write("pair=1 case=hf-share50 mode=shim rc=124\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
