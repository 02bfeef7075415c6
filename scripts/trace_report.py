#!/usr/bin/env python3
"""Reads the logs of scripts/trace-shapes.sh and writes, per shape, NVML's utilization bare
and limited (mean over the run less its first second), the SM clock, throughput against
bare, and what the watcher charged; with --plot, the utilization over time of each shape.

  trace_report.py --run RUN_DIR LABEL [--run RUN_DIR LABEL ...] [--plot FILE.png]

RUN_DIR is the `traces` folder trace-shapes.sh wrote. Several runs (say before and after a
change) are set side by side: the table has one row per shape and run, the plot one panel
per shape with the limited runs' utilization over the bare one's.
"""
import argparse
import statistics
import sys

SHAPES = ["sync8", "sync1-2048", "sync1-1024", "graph", "jax"]
NAMES = {
    "sync8": "PyTorch 4096² bf16 matmuls, sync every 8",
    "sync1-2048": "PyTorch 2048² matmul + sync every step",
    "sync1-1024": "PyTorch 1024² matmul + sync every step (launch-bound)",
    "graph": "PyTorch CUDA graph replay (16 matmuls a graph)",
    "jax": "JAX jitted chain of 4096² matmuls",
}


def fields(line):
    return dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)


def read_run(folder, shape, mode):
    with open(f"{folder}/{shape}.{mode}.log") as f:
        steps = [fields(l) for l in f if l.startswith("step ")]
    with open(f"{folder}/{shape}.{mode}.nvml") as f:
        dev = [fields(l) for l in f if l.startswith("dev ")]
    if len(steps) < 2:
        raise ValueError(f"{folder}/{shape}.{mode}.log has no steps")
    first, last = int(steps[0]["at_ns"]), int(steps[-1]["at_ns"])
    settle = first + 1_000_000_000
    window = [d for d in dev if settle <= int(d["at_ns"]) <= last]
    counted = [s for s in steps if int(s["at_ns"]) >= settle]
    span = (int(counted[-1]["at_ns"]) - int(counted[0]["at_ns"])) / 1e9
    return {
        "util": statistics.mean(int(d["util"]) for d in window),
        "mhz": statistics.mean(int(d["sm_mhz"]) for d in window),
        "steps_per_s": (len(counted) - 1) / span,
        "series": [((int(d["at_ns"]) - first) / 1e9, int(d["util"])) for d in dev],
    }


def charged(folder, shape):
    """The GPU time the watcher charged over the ticks it followed, as a fraction of them.
    Reads the columns by the names in each process's header line: `columns:` in formats v2 and v3
    (quiet ticks, which charge nothing and are written only at the start of a quiet run,
    left out), `fields:` before it."""
    try:
        with open(f"{folder}/{shape}.limit30.trace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    elapsed = total = 0
    names = None
    for line in lines:
        if line.startswith("#"):
            words = line.split()
            for marker in ("columns:", "fields:"):
                if marker in words:
                    names = words[words.index(marker) + 1:]
            continue
        if names is None:
            continue
        row = dict(zip(names, line.split()))
        if row.get("step") == "q":
            continue
        elapsed += int(row["elapsed_ns"])
        total += int(row["charged_ns"])
    return total / elapsed if elapsed else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", nargs=2, action="append", required=True, metavar=("DIR", "LABEL"))
    p.add_argument("--plot")
    args = p.parse_args()
    runs = [run for run, _ in args.run]
    labels = [label for _, label in args.run]
    print("| workload (limit 30%, alone) | run | NVML utilization, bare → limited | SM MHz, bare → limited | throughput vs bare | charged by the watcher |")
    print("|---|---|---|---|---|---|")
    data = {}
    for shape in SHAPES:
        for run, label in zip(runs, labels):
            try:
                bare, limited = read_run(run, shape, "bare"), read_run(run, shape, "limit30")
            except (OSError, ValueError, statistics.StatisticsError) as error:
                print(f"trace_report: {shape} in {run}: {error}", file=sys.stderr)
                continue
            data[(shape, label)] = (bare, limited)
            share = charged(run, shape)
            share = f"{100 * share:.1f}%" if share is not None else "-"
            print(f"| {NAMES[shape]} | {label} | {bare['util']:.1f}% → **{limited['util']:.1f}%** "
                  f"| {bare['mhz']:.0f} → {limited['mhz']:.0f} "
                  f"| {limited['steps_per_s'] / bare['steps_per_s']:.3f} | {share} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(SHAPES), 1, figsize=(8, 2.2 * len(SHAPES)), sharex=True)
        for ax, shape in zip(axes, SHAPES):
            drawn_bare = False
            for label in labels:
                if (shape, label) not in data:
                    continue
                bare, limited = data[(shape, label)]
                if not drawn_bare:
                    ax.plot(*zip(*bare["series"]), color="0.6", label="bare")
                    drawn_bare = True
                ax.plot(*zip(*limited["series"]), label=f"limit 30%, {label}")
            ax.axhline(30, color="k", linestyle=":", linewidth=1)
            ax.set_ylim(0, 105)
            ax.set_xlim(left=-0.5)
            ax.set_ylabel("NVML util %")
            ax.set_title(NAMES[shape], fontsize=9)
            ax.legend(fontsize=7, loc="upper right")
        axes[-1].set_xlabel("seconds since the first step")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"trace_report: wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
