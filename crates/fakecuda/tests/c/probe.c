/*
 * Drives the simulated driver from C the way real programs do: linked with -lcuda, or
 * through dlopen/dlsym when compiled with -DPROBE_DLOPEN. One command per run (argv[1]);
 * results on stdout as key=value lines; exit status 0 unless the probe itself failed.
 *
 *   init                   cuInit only: prints code=<CUresult>
 *   alloc <bytes>...       context, then cuMemAlloc_v2 of each size (kept): alloc=<bytes> code=<c>
 *   hold <bytes>           context + allocation, prints "held", frees when stdin closes
 *   hold-exit <bytes>      context + allocation, then exits normally without freeing
 *   hold-context           context only (no allocation), prints "held"; when stdin closes,
 *                          releases the context and prints "released"
 *   meminfo                cuMemGetInfo_v2 and NVML memory info of device 0
 *   procaddr               reads "symbol version flags expected" lines from stdin and checks
 *                          cuGetProcAddress[_v2] against dlsym of the expected name
 *   vmm <bytes>            cuMemCreate/AddressReserve/Map/SetAccess, writes and reads, frees
 *   vmm-refs <bytes>       two handles mapped side by side and released: what unmaps of part
 *                          of a mapping, of both, and a retained handle's release leave held
 *   edges                  return codes of edge cases: name=<CUresult> lines
 *   churn <threads> <n> <bytes>   threads each allocate, memset and free n times
 *   streams <ptx file>     two streams ordered by an event, host functions, stream queries,
 *                          the per-thread stream; kernels from the PTX's gpuslice_spin
 *   graphs <ptx file>      stream capture and graphs: what capture records and what it
 *                          refuses (return codes as name=<CUresult>), replays of a captured
 *                          graph (replay_ms)
 *   per-thread <ptx file>  the per-thread default stream (cuLaunchKernel_ptsz with NULL) of
 *                          one thread, seen from another thread and from the legacy stream
 *   procs                  NVML only (no cuInit): nvmlDeviceGetComputeRunningProcesses[_v2|_v3]
 *                          of device 0 with their size edge cases; one "v3|v2|v1 pid= used="
 *                          line per process
 *   modmem                 context, then module loads and unloads: cuMemGetInfo free and this
 *                          process's NVML usedGpuMemory after each step
 *   pools <ptx file>       stream-ordered allocation from memory pools, step by step: after
 *                          each, "<step> reserved= used= nvml= device_used=" (the pool's
 *                          reserved and used bytes, this process's NVML usedGpuMemory, the
 *                          device's used memory by NVML); frees queued behind 300 ms
 *                          kernels, synchronizations, the release threshold, trims,
 *                          watermarks, a destroyed pool
 *   pool-hold <bytes>      allocates from the default pool with a release threshold of
 *                          UINT64_MAX, frees, synchronizes (the pool keeps the memory),
 *                          prints "held"; at a line on stdin, trims the pool and prints
 *                          "trimmed"; exits when stdin closes
 *   slice <ptx file> <device> <kernel ns> <window ns> [<gap ns>]
 *                          a context on <device>, prints "ready", reads "go <start ns>"
 *                          (CLOCK_MONOTONIC) from stdin and sleeps until then; prints
 *                          "origin=<ns>" when it wakes (records an event there); from then on
 *                          keeps 32 gpuslice_spin kernels of <kernel ns> queued on the NULL
 *                          stream (so that a stall of this process cannot let its stream
 *                          run dry), printing "end=<ns>" (CLOCK_MONOTONIC, from the events
 *                          recorded after each) as each completes, until one ends past
 *                          start + window; then prints "stopped" and exits with the rest
 *                          still queued. With <gap ns>, launches one kernel at a time
 *                          instead, sleeping <gap ns> after each ends.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct {
    int type;
    int requestedHandleTypes;
    struct { int type; int id; } location;
    void *win32HandleMetaData;
    unsigned char allocFlags[8];
} CUmemAllocationProp;

typedef struct {
    struct { int type; int id; } location;
    int flags;
} CUmemAccessDesc;

typedef struct {
    int allocType;
    int handleTypes;
    struct { int type; int id; } location;
    void *win32SecurityAttributes;
    size_t maxSize;
    unsigned short usage;
    unsigned char reserved[54];
} CUmemPoolProps;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef void *nvmlDevice_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

#define CUDA_API(X)                                                                      \
    X(cuInit, (unsigned))                                                                \
    X(cuDeviceGet, (CUdevice *, int))                                                    \
    X(cuDevicePrimaryCtxRetain, (CUcontext *, CUdevice))                                 \
    X(cuCtxSetCurrent, (CUcontext))                                                      \
    X(cuMemAlloc_v2, (CUdeviceptr *, size_t))                                            \
    X(cuMemFree_v2, (CUdeviceptr))                                                       \
    X(cuMemGetInfo_v2, (size_t *, size_t *))                                             \
    X(cuMemcpyHtoD_v2, (CUdeviceptr, const void *, size_t))                              \
    X(cuMemcpyDtoH_v2, (void *, CUdeviceptr, size_t))                                    \
    X(cuMemCreate, (CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, \
                    unsigned long long))                                                 \
    X(cuMemRelease, (CUmemGenericAllocationHandle))                                      \
    X(cuMemRetainAllocationHandle, (CUmemGenericAllocationHandle *, void *))             \
    X(cuMemAddressReserve, (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long)) \
    X(cuMemAddressFree, (CUdeviceptr, size_t))                                           \
    X(cuMemMap, (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long)) \
    X(cuMemUnmap, (CUdeviceptr, size_t))                                                 \
    X(cuMemSetAccess, (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))            \
    X(cuGetProcAddress, (const char *, void **, int, unsigned long long))                \
    X(cuGetProcAddress_v2, (const char *, void **, int, unsigned long long, int *))     \
    X(cuCtxGetCurrent, (CUcontext *))                                                    \
    X(cuCtxPopCurrent_v2, (CUcontext *))                                                 \
    X(cuDevicePrimaryCtxRelease_v2, (CUdevice))                                          \
    X(cuMemAllocAsync, (CUdeviceptr *, size_t, void *))                                  \
    X(cuMemFreeAsync, (CUdeviceptr, void *))                                             \
    X(cuMemAllocPitch_v2, (CUdeviceptr *, size_t *, size_t, size_t, unsigned))           \
    X(cuMemAllocHost_v2, (void **, size_t))                                              \
    X(cuGetErrorString, (CUresult, const char **))                                       \
    X(cuModuleLoadData, (void **, const void *))                                         \
    X(cuModuleGetFunction, (void **, void *, const char *))                              \
    X(cuModuleUnload, (void *))                                                          \
    X(cuModuleLoad, (void **, const char *))                                             \
    X(cuModuleLoadDataEx, (void **, const void *, unsigned, void *, void **))            \
    X(cuLibraryLoadData, (void **, const void *, void *, void **, unsigned, void *, void **, \
                          unsigned))                                                     \
    X(cuLibraryUnload, (void *))                                                         \
    X(cuLaunchKernel, (void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, \
                       unsigned, void *, void **, void **))                              \
    X(cuEventCreate, (void **, unsigned))                                                \
    X(cuEventRecord, (void *, void *))                                                   \
    X(cuEventSynchronize, (void *))                                                      \
    X(cuEventElapsedTime, (float *, void *, void *))                                     \
    X(cuStreamQuery, (void *))                                                           \
    X(cuCtxSynchronize, (void))                                                          \
    X(cuMemsetD8_v2, (CUdeviceptr, unsigned char, size_t))                               \
    X(cuDeviceGetUuid_v2, (unsigned char *, CUdevice))                                   \
    X(cuStreamCreate, (void **, unsigned))                                               \
    X(cuStreamWaitEvent, (void *, void *, unsigned))                                     \
    X(cuStreamSynchronize, (void *))                                                     \
    X(cuLaunchHostFunc, (void *, void (*)(void *), void *))                               \
    X(cuDeviceGetDefaultMemPool, (void **, CUdevice))                                    \
    X(cuMemAllocFromPoolAsync, (CUdeviceptr *, size_t, void *, void *))                  \
    X(cuMemPoolCreate, (void **, const CUmemPoolProps *))                                \
    X(cuMemPoolDestroy, (void *))                                                        \
    X(cuMemPoolTrimTo, (void *, size_t))                                                 \
    X(cuMemPoolGetAttribute, (void *, int, void *))                                      \
    X(cuMemPoolSetAttribute, (void *, int, void *))                                      \
    X(cuEventQuery, (void *))                                                            \
    X(cuStreamBeginCapture_v2, (void *, unsigned))                                       \
    X(cuStreamEndCapture, (void *, void **))                                             \
    X(cuStreamIsCapturing, (void *, unsigned *))                                         \
    X(cuThreadExchangeStreamCaptureMode, (unsigned *))                                   \
    X(cuGraphInstantiate, (void **, void *, void **, char *, size_t))                    \
    X(cuGraphInstantiateWithFlags, (void **, void *, unsigned long long))                \
    X(cuGraphLaunch, (void *, void *))                                                   \
    X(cuGraphExecDestroy, (void *))                                                      \
    X(cuGraphDestroy, (void *))

#ifdef PROBE_DLOPEN
#define DECLARE(name, args) static CUresult(*p_##name) args;
#else
#define DECLARE(name, args) extern CUresult name args; static CUresult(*p_##name) args = name;
#endif
CUDA_API(DECLARE)

static void *libcuda;

static void die(const char *what) {
    fprintf(stderr, "probe: %s\n", what);
    exit(2);
}

static void load_cuda(void) {
#ifdef PROBE_DLOPEN
    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!libcuda) die(dlerror());
#define LOAD(name, args)                                  \
    p_##name = (CUresult(*) args)dlsym(libcuda, #name);   \
    if (!p_##name) die("dlsym " #name);
    CUDA_API(LOAD)
#else
    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!libcuda) die("libcuda.so.1 is not loaded");
#endif
}

static void check(CUresult r, const char *what) {
    if (r != 0) {
        fprintf(stderr, "probe: %s failed: %d\n", what, r);
        exit(3);
    }
}

static void context_on(int ordinal) {
    CUdevice dev;
    CUcontext ctx;
    check(p_cuInit(0), "cuInit");
    check(p_cuDeviceGet(&dev, ordinal), "cuDeviceGet");
    check(p_cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(p_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

static void context(void) { context_on(0); }

static CUdeviceptr alloc_or_die(size_t bytes) {
    CUdeviceptr ptr;
    check(p_cuMemAlloc_v2(&ptr, bytes), "cuMemAlloc_v2");
    return ptr;
}

static void meminfo(void) {
    size_t free_b, total_b;
    check(p_cuMemGetInfo_v2(&free_b, &total_b), "cuMemGetInfo_v2");
    printf("cuda_free=%zu cuda_total=%zu\n", free_b, total_b);

    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nvml) die(dlerror());
    int (*init)(void) = (int (*)(void))dlsym(nvml, "nvmlInit_v2");
    int (*by_index)(unsigned, nvmlDevice_t *) =
        (int (*)(unsigned, nvmlDevice_t *))dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    int (*info)(nvmlDevice_t, nvmlMemory_t *) =
        (int (*)(nvmlDevice_t, nvmlMemory_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo");
    int (*info2)(nvmlDevice_t, nvmlMemory_v2_t *) =
        (int (*)(nvmlDevice_t, nvmlMemory_v2_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo_v2");
    int (*uuid)(nvmlDevice_t, char *, unsigned) =
        (int (*)(nvmlDevice_t, char *, unsigned))dlsym(nvml, "nvmlDeviceGetUUID");
    if (!init || !by_index || !info || !info2 || !uuid) die("NVML symbols");
    nvmlDevice_t dev;
    nvmlMemory_t m;
    nvmlMemory_v2_t m2 = {0};
    char id[96];
    check(init(), "nvmlInit_v2");
    check(by_index(0, &dev), "nvmlDeviceGetHandleByIndex_v2");
    check(info(dev, &m), "nvmlDeviceGetMemoryInfo");
    printf("nvml_free=%llu nvml_total=%llu nvml_used=%llu\n", m.free, m.total, m.used);
    printf("nvml_v2_bad_version=%d\n", info2(dev, &m2));
    m2.version = (unsigned)sizeof(nvmlMemory_v2_t) | (2u << 24);
    check(info2(dev, &m2), "nvmlDeviceGetMemoryInfo_v2");
    printf("nvml2_free=%llu nvml2_total=%llu nvml2_used=%llu nvml2_reserved=%llu\n", m2.free,
           m2.total, m2.used, m2.reserved);
    check(uuid(dev, id, sizeof id), "nvmlDeviceGetUUID");
    printf("nvml_uuid=%s\n", id);
    unsigned char u[16];
    char cuda_id[64];
    check(p_cuDeviceGetUuid_v2(u, 0), "cuDeviceGetUuid_v2");
    snprintf(cuda_id, sizeof cuda_id,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    printf("uuids_agree=%d\n", strcmp(id, cuda_id) == 0);
}

static void procaddr(void) {
    char symbol[128], expected[128];
    int version;
    unsigned long long flags;
    while (scanf("%127s %d %llu %127s", symbol, &version, &flags, expected) == 4) {
        void *pfn = (void *)1, *pfn1 = (void *)1;
        int status = -1;
        int no_status = strcmp(expected, "nostatus") == 0;
        CUresult code = p_cuGetProcAddress_v2(symbol, &pfn, version, flags, no_status ? NULL : &status);
        CUresult code1 = p_cuGetProcAddress(symbol, &pfn1, version, flags);
        int none = strcmp(expected, "-") == 0 || no_status;
        void *want = none ? NULL : dlsym(libcuda, expected);
        void *global = none ? NULL : dlsym(RTLD_DEFAULT, expected);
        Dl_info info;
        const char *name = pfn && dladdr(pfn, &info) && info.dli_sname ? info.dli_sname : "-";
        printf("symbol=%s version=%d flags=%llu code=%d status=%d v1code=%d found=%d same=%d "
               "v1same=%d global_same=%d name=%s\n",
               symbol, version, flags, code, status, code1, want != NULL, pfn == want,
               pfn1 == want, pfn == global, name);
    }
}

static void vmm(size_t bytes) {
    CUmemAllocationProp prop = {0};
    prop.type = 1;          /* CU_MEM_ALLOCATION_TYPE_PINNED */
    prop.location.type = 1; /* CU_MEM_LOCATION_TYPE_DEVICE */
    prop.location.id = 0;
    CUmemAccessDesc access = {{1, 0}, 3}; /* read-write on device 0 */
    CUmemGenericAllocationHandle handle;
    CUdeviceptr va;
    size_t free0, free1, free2, free3, total;
    check(p_cuMemGetInfo_v2(&free0, &total), "cuMemGetInfo_v2");
    check(p_cuMemCreate(&handle, bytes, &prop, 0), "cuMemCreate");
    check(p_cuMemGetInfo_v2(&free1, &total), "cuMemGetInfo_v2");
    check(p_cuMemAddressReserve(&va, bytes, 0, 0, 0), "cuMemAddressReserve");
    check(p_cuMemMap(va, bytes, 0, handle, 0), "cuMemMap");
    check(p_cuMemSetAccess(va, bytes, &access, 1), "cuMemSetAccess");
    const char text[] = "through the VMM";
    char back[sizeof text] = {0};
    check(p_cuMemcpyHtoD_v2(va + bytes - sizeof text, text, sizeof text), "cuMemcpyHtoD_v2");
    check(p_cuMemcpyDtoH_v2(back, va + bytes - sizeof text, sizeof text), "cuMemcpyDtoH_v2");
    check(p_cuMemRelease(handle), "cuMemRelease");
    check(p_cuMemGetInfo_v2(&free2, &total), "cuMemGetInfo_v2");
    check(p_cuMemUnmap(va, bytes), "cuMemUnmap");
    check(p_cuMemAddressFree(va, bytes), "cuMemAddressFree");
    check(p_cuMemGetInfo_v2(&free3, &total), "cuMemGetInfo_v2");
    printf("created=%zu mapped_after_release=%zu released=%zu roundtrip=%d unaligned_create=%d\n",
           free0 - free1, free0 - free2, free0 - free3, strcmp(text, back) == 0,
           p_cuMemCreate(&handle, 12345, &prop, 0));
}

/* What the device holds beyond what it held at `before` (cuMemGetInfo). */
static size_t held_since(size_t before) {
    size_t free, total;
    check(p_cuMemGetInfo_v2(&free, &total), "cuMemGetInfo_v2");
    return before - free;
}

static void vmm_refs(size_t bytes) {
    CUmemAllocationProp prop = {0};
    prop.type = 1;          /* CU_MEM_ALLOCATION_TYPE_PINNED */
    prop.location.type = 1; /* CU_MEM_LOCATION_TYPE_DEVICE */
    CUmemAccessDesc access = {{1, 0}, 3};
    CUmemGenericAllocationHandle a, b, c, retained = 0;
    CUdeviceptr va;
    size_t before, total;
    check(p_cuMemGetInfo_v2(&before, &total), "cuMemGetInfo_v2");
    check(p_cuMemCreate(&a, bytes, &prop, 0), "cuMemCreate");
    check(p_cuMemCreate(&b, bytes, &prop, 0), "cuMemCreate");
    check(p_cuMemAddressReserve(&va, 2 * bytes, 0, 0, 0), "cuMemAddressReserve");
    check(p_cuMemMap(va, bytes, 0, a, 0), "cuMemMap");
    check(p_cuMemMap(va + bytes, bytes, 0, b, 0), "cuMemMap");
    check(p_cuMemSetAccess(va, 2 * bytes, &access, 1), "cuMemSetAccess");
    check(p_cuMemRelease(a), "cuMemRelease");
    check(p_cuMemRelease(b), "cuMemRelease");
    printf("released=%zu\n", held_since(before));
    /* One call a statement: the order of a call's arguments is unspecified in C. */
    int part = p_cuMemUnmap(va, bytes / 2);
    int across = p_cuMemUnmap(va + bytes / 2, bytes);
    printf("unmap_part=%d unmap_across=%d held=%zu\n", part, across, held_since(before));
    int rc = p_cuMemRetainAllocationHandle(&retained, (void *)(uintptr_t)(va + bytes + 4096));
    printf("retain=%d retained_is_b=%d\n", rc, retained == b);
    rc = p_cuMemUnmap(va, 2 * bytes);
    printf("unmap_both=%d held=%zu\n", rc, held_since(before));
    printf("retain_unmapped=%d\n", p_cuMemRetainAllocationHandle(&c, (void *)(uintptr_t)va));
    rc = p_cuMemRelease(retained);
    size_t held = held_since(before);
    printf("release_retained=%d held=%zu release_again=%d\n", rc, held, p_cuMemRelease(retained));
    check(p_cuMemCreate(&c, bytes, &prop, 0), "cuMemCreate");
    printf("map_at_offset=%d\n", p_cuMemMap(va, bytes / 2, bytes / 2, c, 0));
    check(p_cuMemRelease(c), "cuMemRelease");
    check(p_cuMemAddressFree(va, 2 * bytes), "cuMemAddressFree");
    printf("end held=%zu\n", held_since(before));
}

static const char TINY_PTX[] = ".version 7.8\n.target sm_75\n.address_size 64\n"
                               ".visible .entry tiny() { ret; }\n";

static void edges(void) {
    CUdeviceptr p = 12345;
    CUdevice dev;
    CUcontext ctx = (CUcontext)1;
    printf("before_init_alloc=%d\n", p_cuMemAlloc_v2(&p, 1));
    check(p_cuInit(0), "cuInit");
    check(p_cuDeviceGet(&dev, 0), "cuDeviceGet");
    size_t f, t;
    printf("no_context_meminfo=%d\n", p_cuMemGetInfo_v2(&f, &t));
    printf("no_context_get_current=%d\n", p_cuCtxGetCurrent(&ctx));
    printf("no_context_pop=%d\n", p_cuCtxPopCurrent_v2(&ctx));
    printf("no_context_synchronize=%d\n", p_cuCtxSynchronize());
    printf("release_unretained=%d\n", p_cuDevicePrimaryCtxRelease_v2(dev));
    context();
    printf("alloc_zero=%d\n", p_cuMemAlloc_v2(&p, 0));
    p = 12345;
    CUresult async_zero = p_cuMemAllocAsync(&p, 0, NULL);
    printf("alloc_async_zero=%d async_null=%d\n", async_zero, p == 0);
    printf("free_async_null=%d\n", p_cuMemFreeAsync(0, NULL));
    printf("free_null=%d\n", p_cuMemFree_v2(0));
    size_t pitch = 0;
    printf("pitch_element_3=%d\n", p_cuMemAllocPitch_v2(&p, &pitch, 100, 10, 3));
    CUresult pitched = p_cuMemAllocPitch_v2(&p, &pitch, 100, 10, 4);
    printf("pitch_100x10=%d pitch=%zu\n", pitched, pitch);
    void *host = (void *)1;
    printf("host_zero=%d\n", p_cuMemAllocHost_v2(&host, 0));
    const char *text = "x";
    CUresult unknown = p_cuGetErrorString(12345, &text);
    printf("error_string_unknown=%d null=%d\n", unknown, text == NULL);
    void *module, *func;
    printf("load_garbage=%d\n", p_cuModuleLoadData(&module, "hello"));
    check(p_cuModuleLoadData(&module, TINY_PTX), "cuModuleLoadData");
    printf("get_missing_function=%d\n", p_cuModuleGetFunction(&func, module, "nope"));
    check(p_cuModuleGetFunction(&func, module, "tiny"), "cuModuleGetFunction");
    printf("launch_block_2048=%d\n", p_cuLaunchKernel(func, 1, 1, 1, 2048, 1, 1, 0, NULL, NULL, NULL));
    printf("launch_grid_0=%d\n", p_cuLaunchKernel(func, 0, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    printf("launch_ok=%d\n", p_cuLaunchKernel(func, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    void *a, *b, *c;
    float ms;
    check(p_cuEventCreate(&a, 0), "cuEventCreate");
    check(p_cuEventCreate(&b, 0), "cuEventCreate");
    check(p_cuEventCreate(&c, 2), "cuEventCreate");
    printf("elapsed_unrecorded=%d\n", p_cuEventElapsedTime(&ms, a, b));
    check(p_cuEventRecord(a, NULL), "cuEventRecord");
    printf("elapsed_one_unrecorded=%d\n", p_cuEventElapsedTime(&ms, a, b));
    check(p_cuEventRecord(c, NULL), "cuEventRecord");
    check(p_cuEventSynchronize(c), "cuEventSynchronize");
    printf("elapsed_disable_timing=%d\n", p_cuEventElapsedTime(&ms, a, c));
    printf("stream_query_null=%d\n", p_cuStreamQuery(NULL));
}

static CUcontext shared_ctx;
static size_t churn_n, churn_bytes;

static void *churn_thread(void *arg) {
    (void)arg;
    check(p_cuCtxSetCurrent(shared_ctx), "cuCtxSetCurrent");
    for (size_t i = 0; i < churn_n; i++) {
        CUdeviceptr p = alloc_or_die(churn_bytes + i % 7);
        check(p_cuMemsetD8_v2(p, (unsigned char)i, churn_bytes), "cuMemsetD8_v2");
        check(p_cuMemFree_v2(p), "cuMemFree_v2");
    }
    return NULL;
}

static void churn(int threads, size_t n, size_t bytes) {
    size_t free0, free1, total;
    pthread_t t[64];
    context();
    check(p_cuCtxGetCurrent(&shared_ctx), "cuCtxGetCurrent");
    check(p_cuMemGetInfo_v2(&free0, &total), "cuMemGetInfo_v2");
    churn_n = n;
    churn_bytes = bytes;
    for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, churn_thread, NULL);
    for (int i = 0; i < threads && i < 64; i++) pthread_join(t[i], NULL);
    check(p_cuMemGetInfo_v2(&free1, &total), "cuMemGetInfo_v2");
    printf("churn_leaked=%lld\n", (long long)free0 - (long long)free1);
}

static volatile int host_calls;
static void host_func(void *arg) {
    (void)arg;
    host_calls++;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const char *read_ptx(const char *ptx_path) {
    static char ptx[1 << 16];
    FILE *f = fopen(ptx_path, "rb");
    if (!f) die("cannot open the PTX file");
    ptx[fread(ptx, 1, sizeof ptx - 1, f)] = 0;
    fclose(f);
    return ptx;
}

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void slice(const char *ptx_path, int ordinal, unsigned long long ns, long long window,
                  long long gap) {
    enum { DEPTH = 32 };
    const long long depth = gap >= 0 ? 1 : DEPTH;
    const char *ptx = read_ptx(ptx_path);
    context_on(ordinal);
    void *module, *spin, *origin, *ev[DEPTH];
    check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
    check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction");
    check(p_cuEventCreate(&origin, 0), "cuEventCreate");
    for (int i = 0; i < DEPTH; i++) check(p_cuEventCreate(&ev[i], 0), "cuEventCreate");
    printf("ready\n");
    long long start;
    if (scanf(" go %lld", &start) != 1) die("expected go <start ns>");
    struct timespec at = {start / 1000000000LL, start % 1000000000LL};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) != 0) {
    }
    long long origin_ns = mono_ns();
    check(p_cuEventRecord(origin, NULL), "cuEventRecord");
    printf("origin=%lld\n", origin_ns);
    void *args[] = {&ns};
    long long launched = 0, done = 0;
    for (;;) {
        while (launched - done < depth) {
            check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL), "cuLaunchKernel");
            check(p_cuEventRecord(ev[launched % DEPTH], NULL), "cuEventRecord");
            launched++;
        }
        void *e = ev[done % DEPTH];
        float ms = 0;
        check(p_cuEventSynchronize(e), "cuEventSynchronize");
        check(p_cuEventElapsedTime(&ms, origin, e), "cuEventElapsedTime");
        long long end = origin_ns + (long long)((double)ms * 1e6);
        printf("end=%lld\n", end);
        done++;
        if (end > start + window) break;
        if (gap > 0) {
            struct timespec pause = {gap / 1000000000LL, gap % 1000000000LL};
            nanosleep(&pause, NULL);
        }
    }
    printf("stopped\n");
}

static void streams(const char *ptx_path) {
    const char *ptx = read_ptx(ptx_path);
    context();
    void *module, *spin, *s1, *s2, *start, *gate, *end;
    check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
    check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction");
    check(p_cuStreamCreate(&s1, 1), "cuStreamCreate");
    check(p_cuStreamCreate(&s2, 1), "cuStreamCreate");
    check(p_cuEventCreate(&start, 0), "cuEventCreate");
    check(p_cuEventCreate(&gate, 0), "cuEventCreate");
    check(p_cuEventCreate(&end, 0), "cuEventCreate");
    unsigned long long ns20 = 20000000, ns10 = 10000000;
    void *args20[] = {&ns20}, *args10[] = {&ns10};
    double t0 = now_ms();
    check(p_cuEventRecord(start, s1), "cuEventRecord");
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args20, NULL), "cuLaunchKernel");
    check(p_cuEventRecord(gate, s1), "cuEventRecord");
    check(p_cuStreamWaitEvent(s2, gate, 0), "cuStreamWaitEvent");
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s2, args10, NULL), "cuLaunchKernel");
    check(p_cuLaunchHostFunc(s2, host_func, NULL), "cuLaunchHostFunc");
    check(p_cuEventRecord(end, s2), "cuEventRecord");
    printf("query_busy=%d host_calls_before=%d\n", p_cuStreamQuery(s2), host_calls);
    check(p_cuStreamSynchronize(s2), "cuStreamSynchronize");
    float ms = 0;
    check(p_cuEventElapsedTime(&ms, start, end), "cuEventElapsedTime");
    printf("chain_ms=%.3f host_ms=%.3f host_calls=%d query_idle=%d\n", ms, now_ms() - t0,
           host_calls, p_cuStreamQuery(s2));
    /* The per-thread default stream (CU_STREAM_PER_THREAD) through cuLaunchKernel_ptsz. */
    void *launch_ptsz = NULL;
    int status = -1;
    check(p_cuGetProcAddress_v2("cuLaunchKernel", &launch_ptsz, 12000, 2, &status),
          "cuGetProcAddress_v2");
    CUresult (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                       unsigned, void *, void **, void **) = launch_ptsz;
    t0 = now_ms();
    check(launch(spin, 1, 1, 1, 1, 1, 1, 0, (void *)2, args10, NULL), "cuLaunchKernel_ptsz");
    check(p_cuStreamSynchronize((void *)2), "cuStreamSynchronize");
    printf("per_thread_ms=%.3f\n", now_ms() - t0);
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
}

/* Stream capture and graphs. Capture modes: 0 global, 1 thread-local, 2 relaxed. */
static void *graphs_other_stream;
static void *query_from_other_thread(void *arg) {
    int *rc = arg;
    *rc = p_cuStreamQuery(graphs_other_stream);
    return NULL;
}

static int other_thread_query(void) {
    pthread_t t;
    int rc = -1;
    pthread_create(&t, NULL, query_from_other_thread, &rc);
    pthread_join(t, NULL);
    return rc;
}

static void graphs(const char *ptx_path) {
    const char *ptx = read_ptx(ptx_path);
    context();
    void *module, *spin, *s, *ev, *graph = NULL, *exec = NULL;
    check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
    check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction");
    check(p_cuStreamCreate(&s, 0), "cuStreamCreate");
    check(p_cuStreamCreate(&graphs_other_stream, 0), "cuStreamCreate");
    check(p_cuEventCreate(&ev, 0), "cuEventCreate");
    unsigned long long ns5 = 5000000;
    void *args[] = {&ns5};
    unsigned status = 99;
#define LAUNCH(stream) p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL)

    printf("begin_legacy=%d\n", p_cuStreamBeginCapture_v2(NULL, 0));
    printf("end_not_capturing=%d\n", p_cuStreamEndCapture(s, &graph));

    /* Four 5 ms kernels captured: recorded, not run. */
    check(p_cuStreamBeginCapture_v2(s, 0), "cuStreamBeginCapture_v2");
    printf("begin_again=%d\n", p_cuStreamBeginCapture_v2(s, 0));
    check(p_cuStreamIsCapturing(s, &status), "cuStreamIsCapturing");
    printf("status_capturing=%u\n", status);
    printf("status_legacy=%d\n", p_cuStreamIsCapturing(NULL, &status));
    double t0 = now_ms();
    for (int i = 0; i < 4; i++) check(LAUNCH(s), "cuLaunchKernel (captured)");
    check(p_cuEventRecord(ev, s), "cuEventRecord (captured)");
    printf("capture_ms=%.3f\n", now_ms() - t0);
    printf("query_captured_event=%d\n", p_cuEventQuery(ev));
    check(p_cuStreamEndCapture(s, &graph), "cuStreamEndCapture");
    check(p_cuStreamIsCapturing(s, &status), "cuStreamIsCapturing");
    printf("status_ended=%u\n", status);
    check(p_cuGraphInstantiateWithFlags(&exec, graph, 0), "cuGraphInstantiateWithFlags");
    void *exec_v1 = NULL, *error_node = (void *)1;
    char log[8] = "x";
    check(p_cuGraphInstantiate(&exec_v1, graph, &error_node, log, sizeof log),
          "cuGraphInstantiate");
    printf("instantiate_v1_error_node_null=%d log_empty=%d\n", error_node == NULL, log[0] == 0);
    check(p_cuGraphDestroy(graph), "cuGraphDestroy");

    /* Two replays: eight 5 ms kernels back to back. */
    t0 = now_ms();
    check(p_cuGraphLaunch(exec, s), "cuGraphLaunch");
    check(p_cuGraphLaunch(exec_v1, s), "cuGraphLaunch");
    check(p_cuStreamSynchronize(s), "cuStreamSynchronize");
    printf("replay_ms=%.3f\n", now_ms() - t0);
    check(p_cuGraphExecDestroy(exec_v1), "cuGraphExecDestroy");
    printf("launch_destroyed=%d\n", p_cuGraphLaunch(exec_v1, s));

    /* What invalidates a capture. */
    check(p_cuStreamBeginCapture_v2(s, 2), "cuStreamBeginCapture_v2");
    check(LAUNCH(s), "cuLaunchKernel (captured)");
    printf("query_capturing=%d\n", p_cuStreamQuery(s));
    check(p_cuStreamIsCapturing(s, &status), "cuStreamIsCapturing");
    printf("status_invalidated=%u\n", status);
    printf("launch_invalidated=%d\n", LAUNCH(s));
    graph = (void *)1;
    CUresult ended = p_cuStreamEndCapture(s, &graph);
    printf("end_invalidated=%d graph_null=%d\n", ended, graph == NULL);

    check(p_cuStreamBeginCapture_v2(s, 2), "cuStreamBeginCapture_v2");
    printf("legacy_launch=%d\n", LAUNCH(NULL));
    printf("end_after_legacy=%d\n", p_cuStreamEndCapture(s, &graph));

    check(p_cuStreamBeginCapture_v2(s, 2), "cuStreamBeginCapture_v2");
    printf("ctx_sync=%d\n", p_cuCtxSynchronize());
    printf("end_after_ctx_sync=%d\n", p_cuStreamEndCapture(s, &graph));

    check(p_cuStreamBeginCapture_v2(s, 0), "cuStreamBeginCapture_v2");
    printf("other_thread_query_global=%d\n", other_thread_query());
    printf("end_after_other_thread_global=%d\n", p_cuStreamEndCapture(s, &graph));

    check(p_cuStreamBeginCapture_v2(s, 1), "cuStreamBeginCapture_v2");
    printf("other_thread_query_thread_local=%d\n", other_thread_query());
    printf("end_after_other_thread_thread_local=%d\n", p_cuStreamEndCapture(s, &graph));

    unsigned mode = 2;
    check(p_cuThreadExchangeStreamCaptureMode(&mode), "cuThreadExchangeStreamCaptureMode");
    printf("previous_mode=%u\n", mode);

    check(p_cuGraphExecDestroy(exec), "cuGraphExecDestroy");
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
#undef LAUNCH
}

static CUresult (*per_thread_sync)(void *);
static void *per_thread_ctx;
static void *other_thread_view(void *arg) {
    double *out = arg;
    check(p_cuCtxSetCurrent(per_thread_ctx), "cuCtxSetCurrent");
    double t0 = now_ms();
    check(per_thread_sync(NULL), "cuStreamSynchronize_ptsz");
    out[0] = now_ms() - t0;
    out[1] = p_cuStreamQuery(NULL);
    return NULL;
}

static void per_thread(const char *ptx_path) {
    const char *ptx = read_ptx(ptx_path);
    context();
    void *module, *spin, *launch_ptsz = NULL, *sync_ptsz = NULL;
    int status = -1;
    check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
    check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction");
    check(p_cuGetProcAddress_v2("cuLaunchKernel", &launch_ptsz, 12000, 2, &status),
          "cuGetProcAddress_v2");
    check(p_cuGetProcAddress_v2("cuStreamSynchronize", &sync_ptsz, 12000, 2, &status),
          "cuGetProcAddress_v2");
    CUresult (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                       unsigned, void *, void **, void **) = launch_ptsz;
    per_thread_sync = sync_ptsz;
    check(p_cuCtxGetCurrent(&per_thread_ctx), "cuCtxGetCurrent");
    unsigned long long ns100 = 100000000, ns1 = 1000000;
    void *args100[] = {&ns100}, *args1[] = {&ns1};
    double t0 = now_ms();
    /* 100 ms on this thread's per-thread stream (NULL in a _ptsz call). */
    check(launch(spin, 1, 1, 1, 1, 1, 1, 0, NULL, args100, NULL), "cuLaunchKernel_ptsz");
    double other[2] = {-1, -1};
    pthread_t t;
    pthread_create(&t, NULL, other_thread_view, other);
    pthread_join(t, NULL);
    printf("other_thread_sync_ms=%.3f legacy_query=%d\n", other[0], (int)other[1]);
    /* Work on the legacy stream waits for it. */
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, NULL, args1, NULL), "cuLaunchKernel");
    check(p_cuStreamSynchronize(NULL), "cuStreamSynchronize");
    printf("legacy_after_ms=%.3f\n", now_ms() - t0);
    check(per_thread_sync(NULL), "cuStreamSynchronize_ptsz");
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
}

typedef int (*nvml_procs_fn)(nvmlDevice_t, unsigned *, void *);
static nvml_procs_fn nvml_procs_v3, nvml_procs_v2, nvml_procs_v1;
static int (*nvml_info)(nvmlDevice_t, nvmlMemory_t *);
static nvmlDevice_t nvml_dev;

/* nvmlInit and device 0's handle; the process functions. */
static void nvml_open(void) {
    void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!nvml) die(dlerror());
    int (*init)(void) = (int (*)(void))dlsym(nvml, "nvmlInit_v2");
    int (*by_index)(unsigned, nvmlDevice_t *) =
        (int (*)(unsigned, nvmlDevice_t *))dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
    nvml_info = (int (*)(nvmlDevice_t, nvmlMemory_t *))dlsym(nvml, "nvmlDeviceGetMemoryInfo");
    nvml_procs_v3 = (nvml_procs_fn)dlsym(nvml, "nvmlDeviceGetComputeRunningProcesses_v3");
    nvml_procs_v2 = (nvml_procs_fn)dlsym(nvml, "nvmlDeviceGetComputeRunningProcesses_v2");
    nvml_procs_v1 = (nvml_procs_fn)dlsym(nvml, "nvmlDeviceGetComputeRunningProcesses");
    if (!init || !by_index || !nvml_info || !nvml_procs_v3 || !nvml_procs_v2 || !nvml_procs_v1)
        die("NVML symbols");
    check(init(), "nvmlInit_v2");
    check(by_index(0, &nvml_dev), "nvmlDeviceGetHandleByIndex_v2");
}

#define MAX_PROCS 64

/* NVML's usedGpuMemory for this process (0 if it is not listed). */
static unsigned long long nvml_own_usage(int *listed) {
    nvmlProcessInfo_t infos[MAX_PROCS];
    unsigned n = MAX_PROCS;
    check(nvml_procs_v3(nvml_dev, &n, infos), "nvmlDeviceGetComputeRunningProcesses_v3");
    *listed = 0;
    for (unsigned i = 0; i < n; i++) {
        if (infos[i].pid == (unsigned)getpid()) {
            *listed = 1;
            return infos[i].usedGpuMemory;
        }
    }
    return 0;
}

static void procs(void) {
    nvml_open();
    unsigned n = 0;
    int code = nvml_procs_v3(nvml_dev, &n, NULL);
    printf("count0_code=%d count0=%u\n", code, n);
    printf("null_count_code=%d\n", nvml_procs_v3(nvml_dev, NULL, NULL));
    unsigned big = 5;
    code = nvml_procs_v3(nvml_dev, &big, NULL);
    printf("null_infos_code=%d null_infos_count=%u\n", code, big);

    nvmlProcessInfo_t infos[MAX_PROCS];
    memset(infos, 0xab, sizeof infos);
    if (n > 0) {
        unsigned shortn = n - 1;
        code = nvml_procs_v3(nvml_dev, &shortn, infos);
        printf("short_code=%d short_count=%u short_untouched=%d\n", code, shortn,
               infos[0].pid == 0xabababab);
    }
    unsigned full = MAX_PROCS;
    check(nvml_procs_v3(nvml_dev, &full, infos), "nvmlDeviceGetComputeRunningProcesses_v3");
    printf("count=%u\n", full);
    for (unsigned i = 0; i < full; i++)
        printf("v3 pid=%u used=%llu gi=%u ci=%u\n", infos[i].pid, infos[i].usedGpuMemory,
               infos[i].gpuInstanceId, infos[i].computeInstanceId);

    memset(infos, 0xab, sizeof infos);
    unsigned full2 = MAX_PROCS;
    check(nvml_procs_v2(nvml_dev, &full2, infos), "nvmlDeviceGetComputeRunningProcesses_v2");
    for (unsigned i = 0; i < full2; i++)
        printf("v2 pid=%u used=%llu gi=%u ci=%u\n", infos[i].pid, infos[i].usedGpuMemory,
               infos[i].gpuInstanceId, infos[i].computeInstanceId);

    /* v1: 16-byte entries; the entry after the last must stay untouched. */
    nvmlProcessInfo_v1_t v1[MAX_PROCS + 1];
    memset(v1, 0xab, sizeof v1);
    unsigned full1 = MAX_PROCS;
    check(nvml_procs_v1(nvml_dev, &full1, v1), "nvmlDeviceGetComputeRunningProcesses");
    for (unsigned i = 0; i < full1; i++)
        printf("v1 pid=%u used=%llu\n", v1[i].pid, v1[i].usedGpuMemory);
    printf("v1_count=%u v1_size=%zu v3_size=%zu v1_after_last_untouched=%d\n", full1,
           sizeof(nvmlProcessInfo_v1_t), sizeof(nvmlProcessInfo_t),
           v1[full1].pid == 0xabababab && v1[full1].usedGpuMemory == 0xababababababababull);
}

/* cuMemGetInfo's free and NVML's usedGpuMemory of this process, as "<step>_free=..." etc. */
static void modmem_report(const char *step) {
    size_t free_b, total_b;
    int listed;
    check(p_cuMemGetInfo_v2(&free_b, &total_b), "cuMemGetInfo_v2");
    unsigned long long used = nvml_own_usage(&listed);
    printf("%s_free=%zu %s_used=%llu %s_listed=%d\n", step, free_b, step, used, step, listed);
}

static void modmem(void) {
    context();
    nvml_open();
    printf("pid=%d\n", (int)getpid());
    modmem_report("before");
    void *module, *library, *func;
    CUresult code = p_cuModuleLoadData(&module, TINY_PTX);
    printf("load_code=%d\n", code);
    if (code != 0) return;
    modmem_report("loaded");
    check(p_cuLibraryLoadData(&library, TINY_PTX, NULL, NULL, 0, NULL, NULL, 0),
          "cuLibraryLoadData");
    modmem_report("library");
    check(p_cuLibraryUnload(library), "cuLibraryUnload");
    modmem_report("library_unloaded");
    void *ex, *file_module;
    check(p_cuModuleLoadDataEx(&ex, TINY_PTX, 0, NULL, NULL), "cuModuleLoadDataEx");
    char path[] = "/tmp/probe-ptx-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, TINY_PTX, sizeof TINY_PTX - 1) != (ssize_t)(sizeof TINY_PTX - 1))
        die("writing the PTX file");
    close(fd);
    check(p_cuModuleLoad(&file_module, path), "cuModuleLoad");
    unlink(path);
    modmem_report("ex_and_file");
    check(p_cuModuleUnload(ex), "cuModuleUnload");
    check(p_cuModuleUnload(file_module), "cuModuleUnload");
    modmem_report("ex_and_file_unloaded");
    check(p_cuModuleUnload(module), "cuModuleUnload");
    modmem_report("unloaded");

    /* A module of a context that is destroyed: given back with the context. */
    check(p_cuModuleLoadData(&module, TINY_PTX), "cuModuleLoadData");
    nvmlMemory_t m;
    int listed;
    check(nvml_info(nvml_dev, &m), "nvmlDeviceGetMemoryInfo");
    printf("ctx_live_nvml_used=%llu\n", m.used);
    CUdevice dev;
    check(p_cuDeviceGet(&dev, 0), "cuDeviceGet");
    check(p_cuDevicePrimaryCtxRelease_v2(dev), "cuDevicePrimaryCtxRelease_v2");
    check(nvml_info(nvml_dev, &m), "nvmlDeviceGetMemoryInfo");
    unsigned long long used = nvml_own_usage(&listed);
    printf("ctx_destroyed_nvml_used=%llu ctx_destroyed_used=%llu ctx_destroyed_listed=%d\n", m.used,
           used, listed);
    printf("ctx_destroyed_get_function=%d\n", p_cuModuleGetFunction(&func, module, "tiny"));
}

enum {
    POOL_RELEASE_THRESHOLD = 4,
    POOL_RESERVED_CURRENT = 5,
    POOL_RESERVED_HIGH = 6,
    POOL_USED_CURRENT = 7,
    POOL_USED_HIGH = 8,
};

static unsigned long long pool_attribute(void *pool, int attribute) {
    unsigned long long value = 0;
    check(p_cuMemPoolGetAttribute(pool, attribute, &value), "cuMemPoolGetAttribute");
    return value;
}

static void pool_report(const char *step, void *pool) {
    int listed;
    unsigned long long nvml = nvml_own_usage(&listed);
    nvmlMemory_t m;
    check(nvml_info(nvml_dev, &m), "nvmlDeviceGetMemoryInfo");
    printf("%s reserved=%llu used=%llu nvml=%llu device_used=%llu\n", step,
           pool_attribute(pool, POOL_RESERVED_CURRENT), pool_attribute(pool, POOL_USED_CURRENT),
           nvml, m.used);
}

static void pools(const char *ptx_path) {
    const size_t MI = 1 << 20;
    const char *ptx = read_ptx(ptx_path);
    context();
    nvml_open();
    void *module, *spin, *s1, *s2, *pool, *event;
    check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
    check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction");
    check(p_cuStreamCreate(&s1, 1), "cuStreamCreate");
    check(p_cuStreamCreate(&s2, 1), "cuStreamCreate");
    check(p_cuEventCreate(&event, 0), "cuEventCreate");
    check(p_cuDeviceGetDefaultMemPool(&pool, 0), "cuDeviceGetDefaultMemPool");
    unsigned long long long_kernel = 300000000;
    void *args[] = {&long_kernel};
    CUdeviceptr a, b, c;
    pool_report("start", pool);

    check(p_cuMemAllocAsync(&a, 100 * MI, s1), "cuMemAllocAsync");
    pool_report("allocated", pool);
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args, NULL), "cuLaunchKernel");
    check(p_cuMemFreeAsync(a, s1), "cuMemFreeAsync");
    pool_report("queued", pool);
    check(p_cuMemAllocAsync(&b, 50 * MI, s2), "cuMemAllocAsync");
    pool_report("other_stream", pool);
    check(p_cuStreamSynchronize(s1), "cuStreamSynchronize");
    pool_report("synchronized", pool);

    unsigned long long threshold = 1ull << 30;
    check(p_cuMemPoolSetAttribute(pool, POOL_RELEASE_THRESHOLD, &threshold), "cuMemPoolSetAttribute");
    printf("threshold=%llu\n", pool_attribute(pool, POOL_RELEASE_THRESHOLD));
    check(p_cuMemFreeAsync(b, s2), "cuMemFreeAsync");
    check(p_cuStreamSynchronize(s2), "cuStreamSynchronize");
    pool_report("kept", pool);
    check(p_cuMemAllocAsync(&c, 30 * MI, s2), "cuMemAllocAsync");
    pool_report("reused", pool);
    check(p_cuMemFreeAsync(c, s2), "cuMemFreeAsync");
    check(p_cuStreamSynchronize(s2), "cuStreamSynchronize");
    check(p_cuMemPoolTrimTo(pool, 0), "cuMemPoolTrimTo");
    pool_report("trimmed", pool);
    printf("high reserved=%llu used=%llu\n", pool_attribute(pool, POOL_RESERVED_HIGH),
           pool_attribute(pool, POOL_USED_HIGH));

    threshold = 0;
    check(p_cuMemPoolSetAttribute(pool, POOL_RELEASE_THRESHOLD, &threshold), "cuMemPoolSetAttribute");
    check(p_cuMemAllocAsync(&a, 20 * MI, s1), "cuMemAllocAsync");
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args, NULL), "cuLaunchKernel");
    check(p_cuMemFreeAsync(a, s1), "cuMemFreeAsync");
    check(p_cuMemPoolTrimTo(pool, 0), "cuMemPoolTrimTo");
    pool_report("trim_queued", pool);
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
    pool_report("context_synchronized", pool);
    check(p_cuMemAllocAsync(&a, 10 * MI, s1), "cuMemAllocAsync");
    check(p_cuMemFreeAsync(a, s1), "cuMemFreeAsync");
    check(p_cuEventRecord(event, s1), "cuEventRecord");
    check(p_cuEventSynchronize(event), "cuEventSynchronize");
    pool_report("event_synchronized", pool);

    /* A created pool destroyed while one of its allocations is still to be freed. */
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = 1;     /* CU_MEM_ALLOCATION_TYPE_PINNED */
    props.location.type = 1; /* CU_MEM_LOCATION_TYPE_DEVICE */
    void *created;
    check(p_cuMemPoolCreate(&created, &props), "cuMemPoolCreate");
    check(p_cuMemPoolSetAttribute(created, POOL_RELEASE_THRESHOLD, &(unsigned long long){1ull << 30}),
          "cuMemPoolSetAttribute");
    check(p_cuMemAllocFromPoolAsync(&a, 40 * MI, created, s1), "cuMemAllocFromPoolAsync");
    check(p_cuMemAllocFromPoolAsync(&b, 10 * MI, created, s1), "cuMemAllocFromPoolAsync");
    check(p_cuMemFreeAsync(b, s1), "cuMemFreeAsync");
    check(p_cuStreamSynchronize(s1), "cuStreamSynchronize");
    pool_report("created", created);
    check(p_cuMemPoolDestroy(created), "cuMemPoolDestroy");
    pool_report("destroyed", pool);
    check(p_cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args, NULL), "cuLaunchKernel");
    check(p_cuMemFreeAsync(a, s1), "cuMemFreeAsync");
    pool_report("destroyed_queued", pool);
    check(p_cuStreamSynchronize(s1), "cuStreamSynchronize");
    pool_report("destroyed_freed", pool);
}

static void pool_hold(size_t bytes) {
    context();
    void *pool, *stream;
    check(p_cuStreamCreate(&stream, 1), "cuStreamCreate");
    check(p_cuDeviceGetDefaultMemPool(&pool, 0), "cuDeviceGetDefaultMemPool");
    unsigned long long threshold = ~0ull;
    check(p_cuMemPoolSetAttribute(pool, POOL_RELEASE_THRESHOLD, &threshold), "cuMemPoolSetAttribute");
    CUdeviceptr p;
    check(p_cuMemAllocAsync(&p, bytes, stream), "cuMemAllocAsync");
    check(p_cuMemFreeAsync(p, stream), "cuMemFreeAsync");
    check(p_cuStreamSynchronize(stream), "cuStreamSynchronize");
    printf("held\n");
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return;
    check(p_cuMemPoolTrimTo(pool, 0), "cuMemPoolTrimTo");
    printf("trimmed\n");
    while (getchar() != EOF) {
    }
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: probe <command> [args]");
    const char *cmd = argv[1];
    load_cuda();
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(cmd, "init") == 0) {
        printf("code=%d\n", p_cuInit(0));
    } else if (strcmp(cmd, "alloc") == 0) {
        context();
        for (int i = 2; i < argc; i++) {
            CUdeviceptr ptr;
            printf("alloc=%s code=%d\n", argv[i], p_cuMemAlloc_v2(&ptr, strtoull(argv[i], 0, 10)));
        }
    } else if (strcmp(cmd, "hold") == 0 && argc == 3) {
        context();
        CUdeviceptr ptr = alloc_or_die(strtoull(argv[2], 0, 10));
        printf("held\n");
        while (getchar() != EOF) {
        }
        check(p_cuMemFree_v2(ptr), "cuMemFree_v2");
        printf("freed\n");
    } else if (strcmp(cmd, "hold-exit") == 0 && argc == 3) {
        context();
        alloc_or_die(strtoull(argv[2], 0, 10));
        printf("held\n");
    } else if (strcmp(cmd, "meminfo") == 0) {
        context();
        meminfo();
    } else if (strcmp(cmd, "procaddr") == 0) {
        procaddr();
    } else if (strcmp(cmd, "churn") == 0 && argc == 5) {
        churn(atoi(argv[2]), strtoull(argv[3], 0, 10), strtoull(argv[4], 0, 10));
    } else if (strcmp(cmd, "streams") == 0 && argc == 3) {
        streams(argv[2]);
    } else if (strcmp(cmd, "graphs") == 0 && argc == 3) {
        graphs(argv[2]);
    } else if (strcmp(cmd, "per-thread") == 0 && argc == 3) {
        per_thread(argv[2]);
    } else if (strcmp(cmd, "edges") == 0) {
        edges();
    } else if (strcmp(cmd, "hold-context") == 0) {
        context();
        printf("held\n");
        while (getchar() != EOF) {
        }
        CUdevice dev;
        check(p_cuDeviceGet(&dev, 0), "cuDeviceGet");
        check(p_cuDevicePrimaryCtxRelease_v2(dev), "cuDevicePrimaryCtxRelease_v2");
        printf("released\n");
    } else if (strcmp(cmd, "procs") == 0) {
        procs();
    } else if (strcmp(cmd, "modmem") == 0) {
        modmem();
    } else if (strcmp(cmd, "slice") == 0 && (argc == 6 || argc == 7)) {
        slice(argv[2], atoi(argv[3]), strtoull(argv[4], 0, 10), strtoll(argv[5], 0, 10),
              argc == 7 ? strtoll(argv[6], 0, 10) : -1);
    } else if (strcmp(cmd, "pools") == 0 && argc == 3) {
        pools(argv[2]);
    } else if (strcmp(cmd, "pool-hold") == 0 && argc == 3) {
        pool_hold(strtoull(argv[2], 0, 10));
    } else if (strcmp(cmd, "vmm") == 0 && argc == 3) {
        context();
        vmm(strtoull(argv[2], 0, 10));
    } else if (strcmp(cmd, "vmm-refs") == 0 && argc == 3) {
        context();
        vmm_refs(strtoull(argv[2], 0, 10));
    } else {
        die("unknown command");
    }
    return 0;
}
