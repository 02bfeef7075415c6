#!/usr/bin/env python3
"""How two matmul loads (scripts/gpu/matmul_load.py `load`) split a GPU: the throughput of
each over the window in which both ran (their first second left out), as a fraction of the
two together. Prints `first_permille=<n> rates=<a>,<b>` (matmuls per second), or
`first_permille=none` when a log has no window.

usage: python3 scripts/gpu/share_split.py FIRST.log SECOND.log
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from shares_report import done, rate, window  # noqa: E402


def main():
    runs = [done(path) for path in sys.argv[1:3]]
    if len(runs) != 2 or not all(runs):
        print("first_permille=none")
        return
    start, end = window(runs)
    if end <= start:
        print("first_permille=none")
        return
    rates = [rate(run, start, end) for run in runs]
    total = sum(rates)
    permille = round(1000 * rates[0] / total) if total > 0 else "none"
    print(f"first_permille={permille} rates={rates[0]:.1f},{rates[1]:.1f}")


if __name__ == "__main__":
    main()
