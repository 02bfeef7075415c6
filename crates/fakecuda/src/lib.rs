//! A simulated NVIDIA GPU for tests: `libfakecuda.so` is a CUDA driver (`libcuda.so.1`) and
//! NVML (`libnvidia-ml.so.1`) that run on the CPU, so that programs using the CUDA driver API
//! (directly, through `dlopen`/`dlsym`, or through `cuGetProcAddress`) and the gpuslice shim
//! can be tested without a GPU.
//!
//! # Using it
//!
//! Make a directory with four symlinks to `libfakecuda.so` — `libcuda.so`, `libcuda.so.1`,
//! `libnvidia-ml.so`, `libnvidia-ml.so.1` — and put it first on `LD_LIBRARY_PATH`. Both names
//! load the same object (the dynamic loader recognizes the file), so CUDA and NVML share one
//! state. Give each test its own `FAKECUDA_STATE_DIR`.
//!
//! # What it simulates
//!
//! - **Devices** with a memory capacity each, UUID
//!   `GPU-fa4ec0da-0000-4000-8000-00000000000<i>`, name "gpuslice simulated GPU", compute
//!   capability 9.0 and H100-like attributes (`MEMORY_POOLS_SUPPORTED` = 1; attributes it
//!   does not model read 0). `<i>` is the device's physical index: its place in
//!   `FAKECUDA_DEVICES`, its NVML index, its PCI bus id (`0x18 + i`) and its state file.
//! - **`CUDA_VISIBLE_DEVICES`** as the real driver reads it (see `config::visible_devices`):
//!   CUDA enumerates only the listed devices, in the listed order (indices, or UUIDs and
//!   unique prefixes of them, `GPU-…`), so CUDA ordinal 0 under `CUDA_VISIBLE_DEVICES=1,0`
//!   is physical device 1: `cuDeviceGet`, `cuDeviceGetCount`, `cuCtxGetDevice`, the
//!   pointer attribute `DEVICE_ORDINAL` and every location id speak ordinals, while
//!   `cuDeviceGetUuid` names the physical device. The first entry that names no device ends
//!   the list; none visible makes `cuInit` return `CUDA_ERROR_NO_DEVICE`. NVML ignores the
//!   variable, as the real one does: its indices and handles are the physical devices'.
//! - **Peer access**: every two devices are peers (`cuDeviceCanAccessPeer` is 1, 0 for a
//!   device and itself); `cuCtxEnablePeerAccess` / `cuCtxDisablePeerAccess` are recorded
//!   per context with the driver's errors (`CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED`,
//!   `_NOT_ENABLED`, `CUDA_ERROR_INVALID_DEVICE` for the same device); `cuMemcpyPeer[Async]`
//!   copies whether or not it is enabled, as the real one does.
//! - **IPC handles** between processes of one state directory (see `ipc`):
//!   `cuIpcGetMemHandle` of a `cuMemAlloc` allocation moves its backing into a file of the
//!   state directory (same address, same contents), `cuIpcOpenMemHandle[_v2]` maps that
//!   file in another process (both see each other's writes; the same handle opened twice
//!   gives the same address), `cuIpcCloseMemHandle` unmaps it after as many closes. The
//!   memory stays charged to its owner's device and process only: opening takes nothing
//!   and is not in the opener's NVML figure.
//! - **Memory shared between processes**: every process using the same state directory
//!   sees the same devices and shares their capacity, counted in a per-device state file
//!   (see `ledger`). An allocation that would pass the capacity fails with
//!   `CUDA_ERROR_OUT_OF_MEMORY`. Each live context takes a footprint of device memory, and
//!   so does each loaded module (see `FAKECUDA_MODULE_FOOTPRINT`): memory the program never
//!   allocated, as a real driver takes for kernel code and its own buffers. A process gives
//!   its memory back when it exits; the memory of a killed process is reclaimed when another
//!   process scans for dead ones (when an allocation would fail, and on `cuMemGetInfo`,
//!   `nvmlDeviceGetMemoryInfo` and `nvmlDeviceGetComputeRunningProcesses`).
//! - **Device memory** is host memory mapped with `MAP_NORESERVE` at the device pointer's
//!   address, so copies and memsets work and untouched memory costs nothing (zeroing whole
//!   pages hands them back to the kernel). Every allocation path is charged: `cuMemAlloc`,
//!   pitched, managed, stream-ordered and pool allocations, VMM (`cuMemCreate`) and arrays.
//! - **Memory pools** as a real driver keeps them (see `pool`): stream-ordered
//!   allocations (`cuMemAllocAsync`, `cuMemAllocFromPoolAsync`) come from a pool, whose
//!   *reserved* memory is what is charged to the device (and so what NVML and other
//!   processes see). An allocation takes idle pool memory when there is enough, otherwise
//!   the pool grows (in 2 MiB steps). A block goes back to its pool at `cuMemFree`, or when
//!   the stream reaches `cuMemFreeAsync`; the pool gives idle memory back to the device only
//!   at `cuStreamSynchronize`, `cuEventSynchronize` or `cuCtxSynchronize` (all of the
//!   process's pools, down to each one's `CU_MEMPOOL_ATTR_RELEASE_THRESHOLD`, default 0),
//!   at `cuMemPoolTrimTo` (never memory behind a free the stream has not reached), and when
//!   the context is torn down. `cuMemPoolGetAttribute` / `cuMemPoolSetAttribute` know the
//!   release threshold, the reuse policies (recorded only), and `RESERVED_MEM_CURRENT` /
//!   `_HIGH`, `USED_MEM_CURRENT` / `_HIGH` (the high watermarks reset to 0 only). A
//!   destroyed pool gives back its idle memory at once and the rest as its allocations are
//!   freed. Pools count bytes, not blocks: they are never fragmented.
//! - **Streams and events**: each stream executes its work in order on a worker thread and
//!   keeps the device's clock; events record that clock. The legacy NULL stream synchronizes
//!   with the context's blocking streams; each thread has a per-thread default stream of its
//!   own in each context (`CU_STREAM_PER_THREAD`, and NULL in the `_ptsz` / `_ptds` entry
//!   points), a blocking stream ended with the thread.
//! - **Stream capture and graphs** (see `capture` and `graph`): while a stream captures
//!   (`cuStreamBeginCapture[_v2]` to `cuStreamEndCapture`), its kernel launches (and graph
//!   launches) are recorded, not run; the captured graph, instantiated
//!   (`cuGraphInstantiate[_v2|WithFlags]`), runs its kernels back to back on the stream it is
//!   launched on (`cuGraphLaunch`). What a capture refuses follows the driver: querying or
//!   synchronizing the capturing stream or its context, the legacy stream beside a blocking
//!   capture, queries of events recorded in a capture, and "potentially unsafe" calls
//!   (stream and event queries and synchronizations) from other threads during a global
//!   capture, each invalidating the capture; other work (copies, host functions) in a
//!   capture is not simulated and refused.
//! - **Kernels** from PTX text: `gpuslice_spin(.u64 ns)` runs for `ns` nanoseconds of GPU
//!   time, every other kernel (such as `gpuslice_noop`) takes no time.
//! - **Time-slicing between processes**, as the hardware does between contexts: a kernel
//!   progresses at `1/k` of wall time, `k` the number of processes (of any program sharing
//!   the state directory) executing a kernel on the same device at the time, itself
//!   included; idle processes do not count, nor do other devices. Two processes keeping
//!   5 ms kernels back to back each complete one every 10 ms; alone, every 5 ms. Kernels on
//!   several streams of one process share the process's part, as kernels that fill the GPU
//!   do (three streams each keeping 5 ms kernels complete one each every 15 ms). Stream
//!   clocks, and so `cuEventElapsedTime`, show the stretched time. A process killed
//!   mid-kernel stops counting within 5 to 7 ms (its mark in the state file is reclaimed
//!   through the same OFD lock as its memory). See `kernel.rs` for the model and its
//!   accuracy.
//! - **`cuGetProcAddress[_v2]`** returning the same addresses as `dlsym` on the library, with
//!   `_v2`/`_v3` and `_ptsz`/`_ptds` variants chosen by version and flags.
//! - **NVML** device enumeration, UUIDs, names and memory information, and the processes
//!   using a device: `nvmlDeviceGetComputeRunningProcesses[_v2|_v3]` list every live process
//!   (of any program sharing the state directory) with at least one context on the device,
//!   with its `getpid()` and all the device memory it holds (context footprints,
//!   allocations, module memory); instance ids are `0xFFFFFFFF`, as without MIG.
//! - **A lost GPU**: NVML calls on a device listed in `<FAKECUDA_STATE_DIR>/lost-gpus` fail
//!   with `NVML_ERROR_GPU_IS_LOST`, read afresh at every call (see `faults`).
//! - **XID events**: a line `<device> <xid>` appended to `<FAKECUDA_STATE_DIR>/xid-events`
//!   raises a critical XID error on the device, which NVML's event sets
//!   (`nvmlEventSetCreate`, `nvmlDeviceRegisterEvents`, `nvmlEventSetWait_v2`) deliver to
//!   the programs watching it (see `xid`).
//!
//! # Environment
//!
//! Read once, at the first `cuInit` or `nvmlInit`:
//!
//! - `FAKECUDA_DEVICES`: comma-separated capacities as byte quantities (`80Gi`, `512Mi`,
//!   `8G`, `1073741824`), one per device; default one device of `80Gi`. Devices may differ
//!   (`80Gi,40Gi`).
//! - `CUDA_VISIBLE_DEVICES`: which devices CUDA enumerates, in which order (above); unset,
//!   all of them in order. Never an error, as on a real GPU. Quantities here and
//!   in the footprints are gpuslice's (`gpuslice_ledger::parse_quantity`), blanks around
//!   each allowed.
//! - `FAKECUDA_STATE_DIR`: directory of the shared state files, created if missing; default
//!   `/tmp/fakecuda-<uid>`.
//! - `FAKECUDA_CONTEXT_FOOTPRINT`: device memory each live context takes; default `64Mi`.
//! - `FAKECUDA_MODULE_FOOTPRINT`: device memory each loaded module takes; default `0`.
//!   `cuModuleLoad`, `cuModuleLoadData` and `cuModuleLoadDataEx` take it on the current
//!   context's device, as does `cuLibraryLoadData` when a context is current (without one a
//!   library takes nothing). It is charged to the process like an allocation (it counts in
//!   `cuMemGetInfo`, NVML and the shared capacity; a load that does not fit fails with
//!   `CUDA_ERROR_OUT_OF_MEMORY`) and given back at `cuModuleUnload` / `cuLibraryUnload`,
//!   when the context it was loaded in is destroyed (which unloads its modules; a library
//!   stays loaded), and when the process exits or dies. (On an H100 with driver 580, a tiny
//!   PTX module moved neither `cuMemGetInfo` nor NVML's per-process figure, lazily or
//!   eagerly loaded: the driver's own chunks absorb it. Large kernel code such as cuBLAS's
//!   does show, which is what this models.)
//! - `FAKECUDA_TIMESLICE`: `on` (the default) or `off`. With `off`, every kernel of the
//!   process takes its duration of wall time whatever other processes execute, and the
//!   process is not counted by theirs (the behaviour before time-slicing), for tests that
//!   want fixed kernel times with several processes.
//! - `FAKECUDA_SWITCH_LOSS`: a whole percent from 0 (the default) to 90, taken off the
//!   progress of this process's kernels while other processes execute on the device too:
//!   what a real GPU loses switching between contexts (an H100 running two matmul loops
//!   side by side gets through about 10% less than one alone). Set it alike in every
//!   process of a test.
//! - `FAKECUDA_LAUNCH_NS`: whole nanoseconds from 0 (the default) to 1,000,000 that each
//!   kernel launch call (`cuLaunchKernel`, `cuLaunchKernelEx`, `cuLaunchCooperativeKernel`)
//!   takes, spinning, before it queues its kernel: what an H100's driver does, where a short
//!   kernel on an idle stream starts only as its launch call ends (about 8 µs from the event
//!   recorded before the call, in a 1024² PyTorch step). With 0, a kernel is queued as of
//!   the call's start, so that the simulator's own slowness in debug builds adds nothing.
//!
//! An invalid value makes `cuInit` return `CUDA_ERROR_INVALID_VALUE` (and `nvmlInit`
//! `NVML_ERROR_DRIVER_NOT_LOADED`) after printing one line naming the variable.
//!
//! # Running the examples on it
//!
//! ```text
//! cargo build --examples
//! mkdir -p /tmp/fake/lib
//! for n in libcuda.so libcuda.so.1 libnvidia-ml.so libnvidia-ml.so.1; do
//!     ln -sf "$PWD/target/debug/deps/libfakecuda.so" /tmp/fake/lib/$n
//! done
//! export LD_LIBRARY_PATH=/tmp/fake/lib FAKECUDA_STATE_DIR=/tmp/fake/state FAKECUDA_DEVICES=1Gi
//! target/debug/examples/alloc_until_oom          # allocated=1006632960 chunks=15 ...
//! target/debug/examples/spin --kernels 20 --ns 5000000   # elapsed_ms≈100 busy_fraction≈1
//! # two at once share the device: each elapsed_ms≈200 busy_fraction≈0.5 event_ms≈200
//! target/debug/examples/spin --kernels 20 --ns 5000000 & target/debug/examples/spin --kernels 20 --ns 5000000
//! ```
//!
//! `crates/fakecuda/scripts/test-examples.sh` builds them and runs `tests/examples.rs`.
//!
//! # Fidelity
//!
//! Return codes, `cuGetProcAddress` answers (every entry of `procaddr::TABLE`, at its own and
//! the latest version, with and without the per-thread flag) and the edge cases pinned in
//! `tests/processes.rs` (including NVML's process lists: sizes, NULL arguments, the v1
//! stride, instance ids, killed processes) were compared with driver 580 (CUDA 13.0) on an
//! H100 with the same C probe (the capture and graph entries since, and the peer and IPC
//! entries, which follow CUDA 13's `cudaTypedefs.h` and its documented return codes, were
//! not; `CUDA_VISIBLE_DEVICES` follows the CUDA programming guide's description). The real context footprint
//! there is about 518 MiB per process as NVML counts it; the default
//! `FAKECUDA_CONTEXT_FOOTPRINT` is smaller. Not simulated: graphs other than captured
//! kernels (nodes added by hand, copies or host functions in a graph, updates, capture
//! into an existing graph, several streams joined into one capture), cubins and
//! fatbinaries, array copies, 2D/3D copies, stream priorities, pre-3.2 (32-bit) entry
//! points; IPC event handles and pool exports (`cuIpcGetEventHandle`,
//! `cuMemPoolExportPointer`), pointer attributes of memory opened through IPC, peer access
//! as a condition of kernels touching another device's memory (kernels touch no memory
//! here), `CUDA_DEVICE_ORDER` (the simulated devices are alike, so fastest-first and PCI
//! order agree), MIG; what a real driver does when an exporter frees memory another
//! process still has open (undefined in CUDA's documentation; here the owner's charge goes
//! and the opener's mapping stays), and whether a real NVML counts opened memory in the
//! opener's per-process figure (`scripts/gpu-check.sh --multi` records it). A child forked
//! after `cuInit` gets `CUDA_ERROR_NOT_INITIALIZED`, as on a real GPU. The choices the
//! simulator makes where the driver's behaviour was not observed: an entry of
//! `CUDA_VISIBLE_DEVICES` naming a device listed already ends the list;
//! `cuIpcOpenMemHandle` of a handle the process exported itself is
//! `CUDA_ERROR_INVALID_CONTEXT`, of memory freed (or of an exporter gone)
//! `CUDA_ERROR_MAP_FAILED`.

#![deny(missing_docs)]

pub mod capture;
pub mod config;
pub mod context;
pub mod device;
pub mod driver;
pub mod error;
pub mod event;
pub mod exports;
pub mod faults;
pub mod graph;
pub mod handles;
pub mod ipc;
pub mod kernel;
pub mod launch;
pub mod ledger;
pub mod log;
pub mod mapping;
pub mod memory;
pub mod module;
pub mod nvml;
pub mod ordered;
pub mod pool;
pub mod procaddr;
pub mod stream;
pub mod vmm;
pub mod xid;
