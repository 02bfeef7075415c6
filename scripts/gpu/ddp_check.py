#!/usr/bin/env python3
"""One rank of `gpu-check.sh --multi`'s torchrun check (multi-torchrun-ddp).

Run by torchrun with two processes, one GPU each, under the shim with a memory quota per
GPU. Each rank writes key=value lines to OUT_DIR/rank-<rank>.txt (never to a shared
stream): the GPU's UUID, what cuMemGetInfo says (`total`, the quota), whether an all-reduce
gives the right sum, whether a DDP step leaves both ranks with the same parameters, how much
it could allocate before torch.OutOfMemoryError (rank 0 fills first, then rank 1, so that
each GPU's refusal is its own quota's, not the other's), and whether NCCL still works after
the refusals. `error=...` says what went wrong.
"""
import argparse
import os
import traceback

import torch
import torch.distributed as dist

MIB = 1 << 20
# torch.OutOfMemoryError since 2.1; torch.cuda.OutOfMemoryError before.
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quota", type=int, required=True, help="the quota per GPU, bytes")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--chunk-mib", type=int, default=256)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    local = int(os.environ["LOCAL_RANK"])
    result = {}
    try:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local)
        props = torch.cuda.get_device_properties(local)
        result["uuid"] = str(getattr(props, "uuid", ""))
        free, total = torch.cuda.mem_get_info(local)
        result["total"] = total
        result["free"] = free

        x = torch.full((1 << 20,), float(rank + 1), device=device)
        dist.all_reduce(x)
        result["allreduce_ok"] = int(bool(torch.all(x == 3.0).item()))

        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)
        ).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local])
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(rank)  # different data on each rank
        data = torch.randn(64, 1024, device=device)
        loss = ddp(data).square().mean()
        loss.backward()
        optimizer.step()
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        both = [torch.zeros_like(checksum) for _ in range(2)]
        dist.all_gather(both, checksum)
        result["ddp_ok"] = int(bool(torch.isfinite(loss).item()) and both[0].item() == both[1].item())
        torch.cuda.synchronize()

        # Turns are taken with an all-reduce of a tensor made beforehand: at the quota, a
        # barrier's own allocation could be refused.
        token = torch.zeros(1, device=device)
        held = []
        result["oom"] = 0
        for turn in range(2):
            dist.all_reduce(token)
            torch.cuda.synchronize()
            if turn != rank:
                continue
            try:
                while True:
                    held.append(torch.empty(args.chunk_mib * MIB, dtype=torch.uint8, device=device))
            except OUT_OF_MEMORY:
                result["oom"] = 1
            result["allocated"] = len(held) * args.chunk_mib * MIB
        dist.all_reduce(token)
        torch.cuda.synchronize()
        del held
        torch.cuda.empty_cache()
        y = torch.ones(1 << 20, device=device)
        dist.all_reduce(y)
        result["after_oom_ok"] = int(bool(torch.all(y == 2.0).item()))
        dist.destroy_process_group()
    except Exception as error:  # reported where the check looks
        result["error"] = repr(error).replace("\n", " ")[:300]
        traceback.print_exc()
    with open(os.path.join(args.out_dir, f"rank-{rank}.txt"), "w") as out:
        for key, value in result.items():
            out.write(f"{key}={value}\n")


if __name__ == "__main__":
    main()
