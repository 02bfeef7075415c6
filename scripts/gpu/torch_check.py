#!/usr/bin/env python3
"""PyTorch under the gpuslice shim (run by scripts/gpu-check.sh).

  torch_check.py mem-get-info --quota BYTES
      torch.cuda.mem_get_info() must report total == quota and free <= total.
  torch_check.py oom --quota BYTES [--chunk-mib 256] [--hold-ms 300]
      Loads cuBLAS (one matmul), then allocates chunks until torch.OutOfMemoryError: the
      bytes allocated must lie in [quota - 1 GiB, quota], the error must name the quota as
      the GPU's capacity, and after freeing everything 1 GiB must be allocatable again.
      Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for the VMM (cuMemCreate) path.

Prints key=value lines; exits 1 on a failed expectation (error=... says which).
"""

import argparse
import gc
import os
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


def torch_size(size):
    """The size as PyTorch's allocator writes it in its messages (format_size in c10)."""
    if size <= 1024:
        return f"{size} bytes"
    if size <= MIB:
        return f"{size / 1024:.2f} KiB"
    if size <= GIB:
        return f"{size / MIB:.2f} MiB"
    return f"{size / GIB:.2f} GiB"


def mem_get_info(torch, quota, hold_ms):
    free, total = torch.cuda.mem_get_info()
    say("free", free)
    say("total", total)
    say("free_mib", round(free / MIB, 1))
    # Informational: cudaGetDeviceProperties is a separate road to the total.
    say("props_total", torch.cuda.get_device_properties(0).total_memory)
    time.sleep(hold_ms / 1e3)  # so that the monitor sees the context
    if total != quota:
        fail(f"total {total} != quota {quota}")
    if free > total:
        fail(f"free {free} > total {total}")


def oom(torch, quota, chunk_mib, hold_ms):
    say("alloc_conf", os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "-"))
    chunk = chunk_mib * MIB

    # cuBLAS's handle and workspace, and its kernels, are real-world memory beside the tensors.
    a = torch.randn(1024, 1024, device="cuda")
    product = a @ a
    torch.cuda.synchronize()
    if not torch.isfinite(product).all().item():
        fail("matmul gave non-finite values")
    del a, product
    free, total = torch.cuda.mem_get_info()
    say("after_matmul_free", free)
    say("after_matmul_total", total)

    chunks = []
    message = None
    try:
        # Bounded, so that a shim that does not enforce fills quota + 1 GiB, not the GPU.
        while len(chunks) * chunk <= quota + GIB:
            chunks.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError as error:
        message = str(error)
    allocated = len(chunks) * chunk
    say("chunks", len(chunks))
    say("allocated", allocated)
    say("allocated_mib", allocated // MIB)
    say("oom_first_line", first_line(message))
    time.sleep(hold_ms / 1e3)  # so that the monitor sees the peak

    if message is None:
        fail(f"no OutOfMemoryError after {allocated} bytes (quota {quota})")
    if allocated > quota:
        fail(f"allocated {allocated} > quota {quota}")
    if allocated < quota - GIB:
        fail(f"allocated {allocated} < quota - 1 GiB ({quota - GIB})")
    capacity = f"total capacity of {torch_size(quota)}"
    say("message_names_quota", int(capacity in message))
    if capacity not in message:
        fail(f"the OOM message does not say '{capacity}'")

    del chunks
    gc.collect()
    torch.cuda.empty_cache()
    say("after_free_free", torch.cuda.mem_get_info()[0])
    try:
        again = torch.empty(GIB, dtype=torch.uint8, device="cuda")
        again.fill_(1)
        torch.cuda.synchronize()
        del again
    except torch.cuda.OutOfMemoryError as error:
        fail(f"1 GiB after freeing: {first_line(str(error))}")
    say("realloc_after_free", "ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["mem-get-info", "oom"])
    parser.add_argument("--quota", type=int, required=True, help="bytes")
    parser.add_argument("--chunk-mib", type=int, default=256)
    parser.add_argument("--hold-ms", type=int, default=300)
    args = parser.parse_args()

    import torch

    say("torch", torch.__version__)
    if not torch.cuda.is_available():
        fail("torch.cuda.is_available() is False")
    if args.mode == "mem-get-info":
        mem_get_info(torch, args.quota, args.hold_ms)
    else:
        oom(torch, args.quota, args.chunk_mib, args.hold_ms)
    say("ok", 1)


if __name__ == "__main__":
    main()
