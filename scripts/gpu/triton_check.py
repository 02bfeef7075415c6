#!/usr/bin/env python3
"""Triton under the gpuslice shim (run by scripts/gpu-check.sh).

  triton_check.py [--n 1048576] [--hold-ms 300]

Compiles and launches a vector-add kernel (Triton reaches the driver through dlopen + dlsym
and launches with cuLaunchKernelEx) and compares its result with PyTorch's x + y.

Prints key=value lines; exits 1 on a failed expectation (error=... says which).
"""

import argparse
import sys
import time

import torch
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(axis=0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x + y, mask=mask)


def say(key, value):
    print(f"{key}={value}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1 << 20)
    parser.add_argument("--hold-ms", type=int, default=300)
    args = parser.parse_args()

    say("triton", triton.__version__)
    say("torch", torch.__version__)
    n = args.n
    x = torch.rand(n, device="cuda", dtype=torch.float32)
    y = torch.rand(n, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    block = 1024
    add_kernel[(triton.cdiv(n, block),)](x, y, out, n, BLOCK=block)
    torch.cuda.synchronize()
    expected = x + y
    # Both sides do one float32 addition per element: the results must be identical.
    max_error = (out - expected).abs().max().item()
    say("n", n)
    say("max_abs_error", max_error)
    time.sleep(args.hold_ms / 1e3)  # so that the monitor sees the process
    if not torch.equal(out, expected):
        say("error", f"Triton's sum differs from torch's (max abs error {max_error})")
        sys.exit(1)
    say("ok", 1)


if __name__ == "__main__":
    main()
