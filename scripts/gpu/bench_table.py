#!/usr/bin/env python3
"""Summarizes bench-gpu.sh's raw lines: the median of each metric per mode and shim/bare.

  bench_table.py RAW_FILE

Each raw line is `mode=<bare|shim> round=<n> key=value ...` (bench_driver's summary line
prefixed with the mode and round). Prints a table; exits 1 if a mode or metric is missing.
"""

import statistics
import sys

METRICS = ["alloc_free_pair_ns", "launch_ns", "launch_enqueue_ns", "spin10us_per_kernel_ns"]
MODES = ["bare", "shim"]


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    values = {mode: {metric: [] for metric in METRICS} for mode in MODES}
    with open(sys.argv[1]) as raw:
        for line in raw:
            fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
            mode = fields.get("mode")
            if mode not in values:
                continue
            for metric in METRICS:
                if metric in fields:
                    values[mode][metric].append(float(fields[metric]))

    missing = [f"{mode}/{metric}" for mode in MODES for metric in METRICS
               if not values[mode][metric]]
    if missing:
        print(f"bench_table: no numbers for {', '.join(missing)}", file=sys.stderr)
        return 1

    header = f"{'metric':<26} {'bare median':>13} {'shim median':>13} {'shim/bare':>10}   rounds (bare | shim)"
    print(header)
    print("-" * len(header))
    for metric in METRICS:
        bare = statistics.median(values["bare"][metric])
        shim = statistics.median(values["shim"][metric])
        ratio = shim / bare if bare else float("nan")
        rounds = (" ".join(f"{v:.0f}" for v in values["bare"][metric]) + " | "
                  + " ".join(f"{v:.0f}" for v in values["shim"][metric]))
        print(f"{metric:<26} {bare:>13.1f} {shim:>13.1f} {ratio:>10.3f}   {rounds}")
    print()
    print("shim/bare per round pair (round i of each mode ran back to back):")
    for metric in METRICS:
        pairs = zip(values["bare"][metric], values["shim"][metric])
        print(f"  {metric:<26} " + " ".join(f"{s / b:.3f}" for b, s in pairs if b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
