#!/usr/bin/env python3
"""A workload for recording the compute watcher's trace against the real timeline
(scripts/trace-shapes.sh). Each step's GPU time is measured by CUDA events with timing
around it, so the trace (what gpuslice charged) can be set against what the GPU ran.

  trace_workload.py SHAPE --seconds S

SHAPE: sync8 (4096² bf16 matmuls, synchronize every 8), sync1-2048, sync1-1024 (one matmul
and a synchronize per step), graph (a CUDA graph of 16 4096² matmuls, replayed), jax (a
jitted chain of 4096² matmuls). Prints `step at_ns=<end, CLOCK_MONOTONIC> gpu_ns=<events'
elapsed> launches=<n>` per step (jax: no gpu_ns), then `summary steps=<n>`.
"""
import argparse
import os
import time


def torch_shape(shape, seconds):
    import torch

    size = {"sync8": 4096, "graph": 4096, "sync1-2048": 2048, "sync1-1024": 1024}[shape]
    per_step = {"sync8": 8, "graph": 16}.get(shape, 1)
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    c = a @ b
    step = None
    if shape == "graph":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                c = a @ b
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(per_step):
                c = a @ b
        step = graph.replay
    else:
        def step():
            for _ in range(per_step):
                torch.matmul(a, b, out=c)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    lines, steps = [], 0
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    while time.monotonic_ns() < deadline:
        start.record()
        step()
        end.record()
        end.synchronize()
        steps += 1
        gpu_ns = int(start.elapsed_time(end) * 1e6)
        lines.append(f"step at_ns={time.monotonic_ns()} gpu_ns={gpu_ns} launches={per_step}")
    lines.append(f"summary steps={steps}")
    print("\n".join(lines))


def jax_shape(seconds):
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    k = jax.random.PRNGKey(0)
    a = jax.random.normal(k, (4096, 4096), dtype=jnp.bfloat16)

    @jax.jit
    def chain(x):
        for _ in range(8):
            x = jnp.tanh(x @ a)
        return x

    x = chain(a).block_until_ready()
    lines, steps = [], 0
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    while time.monotonic_ns() < deadline:
        x = chain(x).block_until_ready()
        steps += 1
        lines.append(f"step at_ns={time.monotonic_ns()} launches=8")
    lines.append(f"summary steps={steps}")
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("shape", choices=["sync8", "sync1-2048", "sync1-1024", "graph", "jax"])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    if args.shape == "jax":
        jax_shape(args.seconds)
    else:
        torch_shape(args.shape, args.seconds)


if __name__ == "__main__":
    main()
