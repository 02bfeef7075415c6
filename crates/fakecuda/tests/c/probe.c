/*
 * Drives the simulated driver from C the way real programs do: linked with -lcuda, or
 * through dlopen/dlsym when compiled with -DPROBE_DLOPEN. One command per run (argv[1]);
 * results on stdout as key=value lines; exit status 0 unless the probe itself failed.
 *
 *   init                   cuInit only: prints code=<CUresult>
 *   alloc <bytes>...       context, then cuMemAlloc_v2 of each size (kept): alloc=<bytes> code=<c>
 *   hold <bytes>           context + allocation, prints "held", frees when stdin closes
 *   hold-exit <bytes>      context + allocation, then exits normally without freeing
 *   meminfo                cuMemGetInfo_v2 and NVML memory info of device 0
 *   procaddr               reads "symbol version flags expected" lines from stdin and checks
 *                          cuGetProcAddress[_v2] against dlsym of the expected name
 *   vmm <bytes>            cuMemCreate/AddressReserve/Map/SetAccess, writes and reads, frees
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef void *nvmlDevice_t;

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
    X(cuMemAddressReserve, (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long)) \
    X(cuMemAddressFree, (CUdeviceptr, size_t))                                           \
    X(cuMemMap, (CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long)) \
    X(cuMemUnmap, (CUdeviceptr, size_t))                                                 \
    X(cuMemSetAccess, (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t))            \
    X(cuGetProcAddress, (const char *, void **, int, unsigned long long))                \
    X(cuGetProcAddress_v2, (const char *, void **, int, unsigned long long, int *))

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

static void context(void) {
    CUdevice dev;
    CUcontext ctx;
    check(p_cuInit(0), "cuInit");
    check(p_cuDeviceGet(&dev, 0), "cuDeviceGet");
    check(p_cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(p_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

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
}

static void procaddr(void) {
    char symbol[128], expected[128];
    int version;
    unsigned long long flags;
    while (scanf("%127s %d %llu %127s", symbol, &version, &flags, expected) == 4) {
        void *pfn = (void *)1, *pfn1 = (void *)1;
        int status = -1;
        CUresult code = p_cuGetProcAddress_v2(symbol, &pfn, version, flags, &status);
        CUresult code1 = p_cuGetProcAddress(symbol, &pfn1, version, flags);
        void *want = strcmp(expected, "-") == 0 ? NULL : dlsym(libcuda, expected);
        void *global = strcmp(expected, "-") == 0 ? NULL : dlsym(RTLD_DEFAULT, expected);
        printf("symbol=%s version=%d flags=%llu code=%d status=%d v1code=%d found=%d same=%d "
               "v1same=%d global_same=%d\n",
               symbol, version, flags, code, status, code1, want != NULL, pfn == want,
               pfn1 == want, pfn == global);
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
    } else if (strcmp(cmd, "vmm") == 0 && argc == 3) {
        context();
        vmm(strtoull(argv[2], 0, 10));
    } else {
        die("unknown command");
    }
    return 0;
}
