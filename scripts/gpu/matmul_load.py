"""A PyTorch workload for the compute-share benchmarks (scripts/bench-shares.sh).

load:     saturating bf16 matmuls of SIZE, synchronizing every SYNC_EVERY of them (as a
          training loop does at each step); prints `done at_ns=<t> iters=<n>` at each
          synchronization, t on CLOCK_MONOTONIC (shared by all processes), so that the
          throughput of several processes can be compared over one window.
latency:  small requests, one SIZE matmul + synchronize each, INTERVAL_MS apart; prints
          `request at_ns=<t> latency_ns=<l>` for each, then a summary line. With
          `--arrivals poisson` the pauses are drawn from an exponential distribution of mean
          INTERVAL_MS (fixed seed), as requests of independent clients come: periodic
          requests can lock in phase with a neighbour's kernels.
"""
import argparse
import random
import time

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "latency"])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--sync-every", type=int, default=4)
    p.add_argument("--interval-ms", type=float, default=2.0)
    p.add_argument("--arrivals", choices=["periodic", "poisson"], default="periodic")
    args = p.parse_args()

    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()

    lines = []
    deadline = time.monotonic_ns() + int(args.seconds * 1e9)
    if args.mode == "load":
        iters = 0
        while time.monotonic_ns() < deadline:
            for _ in range(args.sync_every):
                a @ b
            torch.cuda.synchronize()
            iters += args.sync_every
            lines.append(f"done at_ns={time.monotonic_ns()} iters={iters}")
        lines.append(f"summary iters={iters} size={args.size}")
    else:
        latencies = []
        pauses = random.Random(1)
        while time.monotonic_ns() < deadline:
            t0 = time.monotonic_ns()
            a @ b
            torch.cuda.synchronize()
            t1 = time.monotonic_ns()
            latencies.append(t1 - t0)
            lines.append(f"request at_ns={t1} latency_ns={t1 - t0}")
            pause_ms = args.interval_ms
            if args.arrivals == "poisson":
                pause_ms = pauses.expovariate(1.0 / args.interval_ms)
            time.sleep(pause_ms / 1e3)
        latencies.sort()
        n = len(latencies)
        lines.append(
            f"summary requests={n} p50_ns={latencies[n // 2]} p99_ns={latencies[min(n - 1, n * 99 // 100)]}"
        )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
