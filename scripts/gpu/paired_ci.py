#!/usr/bin/env python3
"""Pools the rounds of several bench_paired runs (PAIRED_ROUNDS_FILE) into one figure per
metric: the median of the per-round shim/real ratios, with a 95% bootstrap interval.

  paired_ci.py ROUNDS_FILE...

scripts/isolation_report.py uses median_interval for the process pairs of
scripts/bench-overhead.sh.

A single run's median moves by more than its own spread from run to run (the driver's
launch time drifts), so a goal as tight as 1% is judged on the rounds of several runs.
"""

import random
import statistics
import sys

RESAMPLES = 2000


def median_interval(values, rng=None):
    """The median of VALUES with a 95% bootstrap interval: (median, low, high)."""
    rng = rng or random.Random(1)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(RESAMPLES)
    )
    low, high = medians[int(0.025 * RESAMPLES)], medians[int(0.975 * RESAMPLES) - 1]
    return statistics.median(values), low, high


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ratios = {}
    for path in sys.argv[1:]:
        try:
            with open(path) as rounds:
                lines = rounds.read().splitlines()
        except OSError as error:
            print(f"paired_ci: cannot read {path}: {error}", file=sys.stderr)
            return 1
        for line in lines:
            words = line.split()
            if len(words) < 4 or words[0] != "round":
                continue
            fields = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            try:
                real, shim = float(fields["real_ns"]), float(fields["shim_ns"])
            except (KeyError, ValueError):
                print(f"paired_ci: bad line in {path}: {line.strip()}", file=sys.stderr)
                return 1
            if real > 0:
                ratios.setdefault(words[1], []).append(shim / real)
    if not ratios:
        print("paired_ci: no rounds found", file=sys.stderr)
        return 1
    rng = random.Random(1)
    for metric, values in sorted(ratios.items()):
        _, low, high = median_interval(values, rng)
        print(
            f"{metric}: median ratio {statistics.median(values):.4f} "
            f"(95% interval {low:.4f} to {high:.4f}) over {len(values)} rounds "
            f"of {len(sys.argv) - 1} run(s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
