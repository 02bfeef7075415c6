#!/usr/bin/env python3
"""CuPy under the gpuslice shim (run by scripts/gpu-check.sh).

  cupy_check.py --quota BYTES [--chunk-mib 256] [--hold-ms 300]

cudaMemGetInfo must report total == quota. Allocates chunks with cupy.empty until
cupy.cuda.memory.OutOfMemoryError: the bytes allocated must lie in [quota - 1 GiB, quota];
after freeing them (and the pool's cache) 1 GiB must be allocatable again.

Prints key=value lines; exits 1 on a failed expectation (error=... says which).
"""

import argparse
import sys
import time

GIB = 1 << 30
MIB = 1 << 20


def say(key, value):
    print(f"{key}={value}", flush=True)


def fail(message):
    say("error", message)
    sys.exit(1)


def first_line(text):
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quota", type=int, required=True, help="bytes")
    parser.add_argument("--chunk-mib", type=int, default=256)
    parser.add_argument("--hold-ms", type=int, default=300)
    args = parser.parse_args()
    quota, chunk = args.quota, args.chunk_mib * MIB

    import cupy

    say("cupy", cupy.__version__)
    free, total = cupy.cuda.runtime.memGetInfo()
    say("free", free)
    say("total", total)

    chunks = []
    message = None
    try:
        # Bounded, so that a shim that does not enforce fills quota + 1 GiB, not the GPU.
        while len(chunks) * chunk <= quota + GIB:
            chunks.append(cupy.empty((chunk,), dtype=cupy.uint8))
    except cupy.cuda.memory.OutOfMemoryError as error:
        message = str(error)
    allocated = len(chunks) * chunk
    say("chunks", len(chunks))
    say("allocated", allocated)
    say("allocated_mib", allocated // MIB)
    say("oom_first_line", first_line(message))
    time.sleep(args.hold_ms / 1e3)  # so that the monitor sees the peak

    if total != quota:
        fail(f"memGetInfo total {total} != quota {quota}")
    if message is None:
        fail(f"no OutOfMemoryError after {allocated} bytes (quota {quota})")
    if allocated > quota:
        fail(f"allocated {allocated} > quota {quota}")
    if allocated < quota - GIB:
        fail(f"allocated {allocated} < quota - 1 GiB ({quota - GIB})")

    del chunks
    cupy.get_default_memory_pool().free_all_blocks()
    say("after_free_free", cupy.cuda.runtime.memGetInfo()[0])
    try:
        again = cupy.empty((GIB,), dtype=cupy.uint8)
        again.fill(0)  # a memset: needs no kernel compiler
        cupy.cuda.runtime.deviceSynchronize()
        del again
    except cupy.cuda.memory.OutOfMemoryError as error:
        fail(f"1 GiB after freeing: {first_line(str(error))}")
    say("realloc_after_free", "ok")
    say("ok", 1)


if __name__ == "__main__":
    main()
