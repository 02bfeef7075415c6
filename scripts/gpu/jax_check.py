#!/usr/bin/env python3
"""JAX under the gpuslice shim (run by scripts/gpu-check.sh).

  jax_check.py --quota BYTES [--fraction 0.75] [--tolerance 0.05] [--hold-ms 300]

With default preallocation XLA sizes its allocator as fraction x the total that cuMemGetInfo
reports, so bytes_limit must be within tolerance (relative) of fraction x quota. A small
computation must then give the right answer on the GPU.

Prints key=value lines; exits 1 on a failed expectation (error=... says which).
"""

import argparse
import os
import sys
import time


def say(key, value):
    print(f"{key}={value}", flush=True)


def fail(message):
    say("error", message)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quota", type=int, required=True, help="bytes")
    parser.add_argument("--fraction", type=float, default=0.75, help="XLA's default")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--hold-ms", type=int, default=300)
    args = parser.parse_args()

    for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                 "XLA_PYTHON_CLIENT_ALLOCATOR"):
        if name in os.environ:
            fail(f"{name} is set; this check needs XLA's defaults")
    # A GPU that fails to initialize must be an error, not a silent fallback to the CPU.
    os.environ.setdefault("JAX_PLATFORMS", "cuda")

    import jax
    import jax.numpy as jnp

    say("jax", jax.__version__)
    device = jax.devices()[0]
    say("device", str(device).replace(" ", "_"))
    say("platform", device.platform)
    if device.platform not in ("gpu", "cuda"):
        fail(f"first device is {device.platform}, not a CUDA GPU")

    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    if limit is None:
        fail(f"memory_stats() has no bytes_limit: {sorted(stats)}")
    expected = args.fraction * args.quota
    say("bytes_limit", limit)
    say("expected", int(expected))
    say("ratio_to_quota", f"{limit / args.quota:.4f}")
    off = abs(limit / expected - 1)
    say("relative_error", f"{off:.4f}")

    ones = jnp.ones((256, 256), dtype=jnp.float32)
    product = (ones @ ones).block_until_ready()
    total = float(product.sum())
    say("matmul_sum", total)
    time.sleep(args.hold_ms / 1e3)  # so that the monitor sees the preallocation

    if off > args.tolerance:
        fail(f"bytes_limit {limit} is {off:.1%} away from {args.fraction} x quota")
    if total != 256.0 * 256 * 256:
        fail(f"ones(256,256) @ ones(256,256) summed to {total}, not {256 ** 3}")
    say("ok", 1)


if __name__ == "__main__":
    main()
