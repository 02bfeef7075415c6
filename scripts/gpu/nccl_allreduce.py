#!/usr/bin/env python3
"""NCCL all-reduce bus bandwidth between the processes torchrun starts (one GPU each), as
nccl-tests computes it: busbw = 2 (n - 1) / n * bytes / time per all-reduce. Rank 0 prints
`busbw_gbps=<GB/s>` and `algbw_gbps=`. For `gpu-check.sh --multi` (multi-nccl-bandwidth),
run once bare and once under the shim, alternately.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    n = dist.get_world_size()
    x = torch.ones(args.bytes // 4, dtype=torch.float32, device="cuda")
    for _ in range(args.warmup):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.iters):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.iters
    algbw = args.bytes / seconds / 1e9
    if dist.get_rank() == 0:
        print(f"algbw_gbps={algbw:.2f}")
        print(f"busbw_gbps={algbw * 2 * (n - 1) / n:.2f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
