#!/usr/bin/env bash
# One-off facts about the GPU machine for the design (run through the device tool).
set -x
nvidia-smi; nvidia-smi -q | grep -iE 'driver|cuda|product name|uuid' | head
lib=$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}'); echo "libcuda: $lib"; readlink -f "$lib"
nml=$(ldconfig -p | awk '/libnvidia-ml.so.1 /{print $NF; exit}'); echo "nvml: $nml"
ldd --version | head -1; gcc --version | head -1; which nvcc python3
nm -D --defined-only "$lib" | awk '{print $3}' | grep -E '^cu(Mem|Ctx|Launch|Graph|Array|Mipmapped|DevicePrimary|GetProcAddress|Init|DeviceTotalMem|DeviceGetUuid|GreenCtx)' | sort > $OUT/libcuda-symbols.txt
wc -l $OUT/libcuda-symbols.txt
nm -D --defined-only "$nml" | awk '{print $3}' | grep -E '^nvml(DeviceGetMemoryInfo|DeviceGetUUID|Init|DeviceGetHandle)' | sort
gcc -O1 -o /tmp/probe scripts/probe/procaddr_probe.c -ldl && /tmp/probe > $OUT/procaddr.txt; tail -3 $OUT/procaddr.txt
grep -c NO-MATCH $OUT/procaddr.txt; grep NO-MATCH $OUT/procaddr.txt | head -20
python3 -c 'import torch, jax, cupy, triton; print("torch", torch.__version__, "jax", jax.__version__, "cupy", cupy.__version__, "triton", triton.__version__)'
python3 - <<'PY'
import torch
torch.cuda.init(); f,t = torch.cuda.mem_get_info(); print("torch mem_get_info after init", f>>20, t>>20)
x = torch.empty(1, device="cuda"); f2,t2 = torch.cuda.mem_get_info(); print("after first tensor", f2>>20, "delta MiB", (f-f2)>>20)
a = torch.randn(2048,2048, device="cuda", dtype=torch.bfloat16); (a@a).sum().item(); f3,_ = torch.cuda.mem_get_info(); print("after matmul (cublas)", f3>>20, "delta MiB from init", (f-f3)>>20, "allocated", torch.cuda.memory_reserved()>>20)
PY
