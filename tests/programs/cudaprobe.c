/* cudaprobe: drives the CUDA driver API the way programs do, for gpuslice's end-to-end tests.
 *
 * Built two ways. With -DDIRECT it is linked against libcuda (-lcuda) and calls the driver
 * by symbol: the "direct linking" path. Without, it dlopens libcuda.so.1 and takes every
 * function either from dlsym ("dlsym" path) or from cuGetProcAddress_v2, itself obtained
 * through cuGetProcAddress ("procaddr" path), as the CUDA runtime does.
 *
 * usage: cudaprobe [dlsym|procaddr] COMMAND [ARGS]... [COMMAND [ARGS]...]...
 * Each command prints one line; the exit status is 0 unless the program itself went wrong.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef uint64_t CUdeviceptr;
typedef void *CUcontext;
typedef void *CUstream;
typedef void *CUarray;
typedef void *CUmemoryPool;
typedef uint64_t CUmemHandle;
typedef struct { unsigned type, handle_types; struct { unsigned type; int id; } location; void *win32; unsigned char flags[8]; } CUmemAllocationProp;
typedef struct { unsigned alloc_type, handle_types; struct { unsigned type; int id; } location; void *win32; size_t max_size; unsigned short usage; unsigned char reserved[54]; } CUmemPoolProps;
typedef struct { struct { unsigned type; int id; } location; unsigned flags; } CUmemAccessDesc;
typedef struct { size_t width, height; unsigned format, channels; } ArrayDesc;
typedef struct { size_t width, height, depth; unsigned format, channels, flags; } Array3dDesc;
typedef struct { unsigned long long total, free, used; } NvmlMemory;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } NvmlMemoryV2;
typedef struct { char bytes[16]; } CUuuid;
typedef struct { char reserved[64]; } CUipcMemHandle;

#define FUNCTIONS(X) \
  X(cuInit, CUresult, (unsigned)) \
  X(cuDeviceGet, CUresult, (CUdevice *, int)) \
  X(cuDevicePrimaryCtxRetain, CUresult, (CUcontext *, CUdevice)) \
  X(cuDevicePrimaryCtxRelease_v2, CUresult, (CUdevice)) \
  X(cuDevicePrimaryCtxReset_v2, CUresult, (CUdevice)) \
  X(cuCtxSetCurrent, CUresult, (CUcontext)) \
  X(cuCtxCreate_v2, CUresult, (CUcontext *, unsigned, CUdevice)) \
  X(cuCtxDestroy_v2, CUresult, (CUcontext)) \
  X(cuMemGetInfo_v2, CUresult, (size_t *, size_t *)) \
  X(cuDeviceTotalMem_v2, CUresult, (size_t *, CUdevice)) \
  X(cuMemAlloc_v2, CUresult, (CUdeviceptr *, size_t)) \
  X(cuMemAllocManaged, CUresult, (CUdeviceptr *, size_t, unsigned)) \
  X(cuMemAllocPitch_v2, CUresult, (CUdeviceptr *, size_t *, size_t, size_t, unsigned)) \
  X(cuMemAllocAsync, CUresult, (CUdeviceptr *, size_t, CUstream)) \
  X(cuMemAllocFromPoolAsync, CUresult, (CUdeviceptr *, size_t, CUmemoryPool, CUstream)) \
  X(cuDeviceGetDefaultMemPool, CUresult, (CUmemoryPool *, CUdevice)) \
  X(cuMemFree_v2, CUresult, (CUdeviceptr)) \
  X(cuMemFreeAsync, CUresult, (CUdeviceptr, CUstream)) \
  X(cuStreamSynchronize, CUresult, (CUstream)) \
  X(cuMemCreate, CUresult, (CUmemHandle *, size_t, const CUmemAllocationProp *, unsigned long long)) \
  X(cuMemRelease, CUresult, (CUmemHandle)) \
  X(cuMemAddressReserve, CUresult, (CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long)) \
  X(cuMemAddressFree, CUresult, (CUdeviceptr, size_t)) \
  X(cuMemMap, CUresult, (CUdeviceptr, size_t, size_t, CUmemHandle, unsigned long long)) \
  X(cuMemUnmap, CUresult, (CUdeviceptr, size_t)) \
  X(cuMemSetAccess, CUresult, (CUdeviceptr, size_t, const CUmemAccessDesc *, size_t)) \
  X(cuMemRetainAllocationHandle, CUresult, (CUmemHandle *, void *)) \
  X(cuArrayCreate_v2, CUresult, (CUarray *, const ArrayDesc *)) \
  X(cuArray3DCreate_v2, CUresult, (CUarray *, const Array3dDesc *)) \
  X(cuArrayDestroy, CUresult, (CUarray)) \
  X(cuModuleLoadData, CUresult, (void **, const void *)) \
  X(cuModuleGetFunction, CUresult, (void **, void *, const char *)) \
  X(cuLaunchKernel, CUresult, (void *, unsigned, unsigned, unsigned, unsigned, unsigned, \
                               unsigned, unsigned, CUstream, void **, void **)) \
  X(cuCtxSynchronize, CUresult, (void)) \
  X(cuStreamCreate, CUresult, (CUstream *, unsigned)) \
  X(cuMemPoolCreate, CUresult, (CUmemoryPool *, const CUmemPoolProps *)) \
  X(cuMemPoolDestroy, CUresult, (CUmemoryPool)) \
  X(cuMemPoolTrimTo, CUresult, (CUmemoryPool, size_t)) \
  X(cuMemPoolSetAttribute, CUresult, (CUmemoryPool, int, void *)) \
  X(cuMemPoolGetAttribute, CUresult, (CUmemoryPool, int, void *)) \
  X(cuDeviceGetCount, CUresult, (int *)) \
  X(cuDeviceGetUuid_v2, CUresult, (CUuuid *, CUdevice)) \
  X(cuCtxGetDevice, CUresult, (CUdevice *)) \
  X(cuCtxGetCurrent, CUresult, (CUcontext *)) \
  X(cuDeviceCanAccessPeer, CUresult, (int *, CUdevice, CUdevice)) \
  X(cuCtxEnablePeerAccess, CUresult, (CUcontext, unsigned)) \
  X(cuMemcpyPeer, CUresult, (CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t)) \
  X(cuMemsetD32_v2, CUresult, (CUdeviceptr, unsigned, size_t)) \
  X(cuMemcpyDtoH_v2, CUresult, (void *, CUdeviceptr, size_t)) \
  X(cuIpcGetMemHandle, CUresult, (CUipcMemHandle *, CUdeviceptr)) \
  X(cuIpcOpenMemHandle_v2, CUresult, (CUdeviceptr *, CUipcMemHandle, unsigned)) \
  X(cuIpcCloseMemHandle, CUresult, (CUdeviceptr))

#ifdef DIRECT
#define DECLARE(name, ret, args) ret name args;
FUNCTIONS(DECLARE)
#define CALL(name) name
#else
#define POINTER(name, ret, args) static ret(*p_##name) args;
FUNCTIONS(POINTER)
#define CALL(name) p_##name
typedef CUresult (*GetProcAddress)(const char *, void **, int, unsigned long long, int *);
#endif

static CUdevice device;
/* The module "module" loaded last. */
static void *module;
enum { MAX_HELD = 4096 };
static struct { char kind; uint64_t handle; } held[MAX_HELD];
static int held_count;

/* VMM: the handles "vmm" created, in order (their size beside), the range "va-reserve" made
 * last, and the ranges "vmm-loop" mapped. */
enum { MAX_VMM = 256 };
static struct { CUmemHandle handle; size_t bytes; } created[MAX_VMM];
static int created_count;
static CUdeviceptr va;
static size_t va_bytes;
static struct { CUdeviceptr va; size_t bytes; } looped[MAX_VMM];
static int looped_count;

/* Streams by number: 0 is the NULL stream, 1 to 3 are created (non-blocking) on first use. */
static CUstream streams[4];
/* The pool "pool-create" made last (NULL: the device's default pool). */
static CUmemoryPool created_pool;

static CUstream stream_arg(const char *text) {
  int n = atoi(text);
  if (n < 0 || n > 3) { fprintf(stderr, "stream %s: 0 to 3\n", text); exit(2); }
  if (n > 0 && !streams[n] && CALL(cuStreamCreate)(&streams[n], 1) != 0) {
    fprintf(stderr, "cuStreamCreate failed\n"); exit(2);
  }
  return streams[n];
}

static CUmemoryPool pool_arg(void) {
  if (created_pool) return created_pool;
  CUmemoryPool pool = NULL;
  CALL(cuDeviceGetDefaultMemPool)(&pool, device);
  return pool;
}

/* IPC: the memory "ipc-open" opened last. */
static CUdeviceptr opened;

/* What IPC and peer copies write and check: the low half says who wrote it. */
#define PATTERN 0x600df00du

/* The UUID of a CUDA device as nvidia-smi prints it (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx). */
static void uuid_text(CUdevice dev, char out[64]) {
  CUuuid uuid;
  memset(&uuid, 0, sizeof uuid);
  if (CALL(cuDeviceGetUuid_v2)(&uuid, dev) != 0) { snprintf(out, 64, "?"); return; }
  const unsigned char *b = (const unsigned char *)uuid.bytes;
  snprintf(out, 64, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
           b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
           b[14], b[15]);
}

/* The last cuMemAlloc allocation still held (0: none). */
static CUdeviceptr last_device_allocation(void);

static void keep(char kind, uint64_t handle) {
  if (held_count < MAX_HELD) { held[held_count].kind = kind; held[held_count].handle = handle; held_count++; }
}

static size_t quantity(const char *text) {
  char *end;
  unsigned long long value = strtoull(text, &end, 10);
  if (*end == 'K') value <<= 10;
  else if (*end == 'M') value <<= 20;
  else if (*end == 'G') value <<= 30;
  return (size_t)value;
}

static void load_functions(const char *path) {
#ifdef DIRECT
  (void)path;
#else
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
  if (!cuda) { fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror()); exit(2); }
  if (strcmp(path, "dlsym") == 0) {
#define BY_DLSYM(name, ret, args) p_##name = (ret(*) args)dlsym(cuda, #name);
    FUNCTIONS(BY_DLSYM)
  } else if (strcmp(path, "procaddr") == 0) {
    GetProcAddress first = (GetProcAddress)dlsym(cuda, "cuGetProcAddress_v2"), gpa = NULL;
    int status = -1;
    if (!first || first("cuGetProcAddress", (void **)&gpa, 12000, 0, &status) != 0 || !gpa) {
      fprintf(stderr, "cuGetProcAddress through itself failed\n"); exit(2);
    }
    /* Names without their _v2 suffix, as the runtime asks: the version picks the ABI. */
#define BY_PROCADDR(name, ret, args) { \
      char base[64]; snprintf(base, sizeof base, "%s", #name); \
      char *suffix = strstr(base, "_v2"); if (suffix && suffix[3] == 0) *suffix = 0; \
      if (gpa(base, (void **)&p_##name, 12000, 0, &status) != 0) p_##name = NULL; }
    FUNCTIONS(BY_PROCADDR)
  } else {
    fprintf(stderr, "unknown path %s\n", path); exit(2);
  }
#define CHECK(name, ret, args) if (!p_##name) { fprintf(stderr, "missing %s\n", #name); exit(2); }
  FUNCTIONS(CHECK)
#endif
}

static void *nvml_symbol(const char *name) {
  static void *nvml;
  if (!nvml) {
    nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!nvml) { fprintf(stderr, "dlopen libnvidia-ml.so.1: %s\n", dlerror()); exit(2); }
    int (*init)(void) = (int (*)(void))dlsym(nvml, "nvmlInit_v2");
    if (!init || init() != 0) { fprintf(stderr, "nvmlInit_v2 failed\n"); exit(2); }
  }
  return dlsym(nvml, name);
}

struct stress {
  long iterations; size_t bytes; long ok, refused, other, violations;
  /* stress-primary: what cuMemGetInfo said was used (total - free), lowest and highest. */
  long samples; size_t used_min, used_max;
};

/* The witness: a counter in a file every stressing process maps, holding the bytes that are
 * granted and not yet freed across all of them (PROBE_WITNESS). A grant that takes it past
 * PROBE_BUDGET means the processes together hold more than the quota allows. */
static long *witness;
static long witness_budget, witness_max, witness_hold_us;

static void *stress_thread(void *arg) {
  struct stress *s = arg;
  CALL(cuCtxSetCurrent)(NULL);
  CUcontext ctx;
  CALL(cuDevicePrimaryCtxRetain)(&ctx, device);
  CALL(cuCtxSetCurrent)(ctx);
  for (long i = 0; i < s->iterations; i++) {
    CUdeviceptr p;
    CUresult rc = CALL(cuMemAlloc_v2)(&p, s->bytes);
    if (rc == 0) {
      s->ok++;
      if (witness) {
        long held = __atomic_add_fetch(witness, (long)s->bytes, __ATOMIC_SEQ_CST);
        if (held > witness_budget) s->violations++;
        long seen = __atomic_load_n(&witness_max, __ATOMIC_RELAXED);
        while (held > seen && !__atomic_compare_exchange_n(&witness_max, &seen, held, 0,
                                                           __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
        /* Hold the block a moment, as a program does, so grants overlap in the witness. */
        if (witness_hold_us) usleep((useconds_t)witness_hold_us);
        __atomic_sub_fetch(witness, (long)s->bytes, __ATOMIC_SEQ_CST);
      }
      if (CALL(cuMemFree_v2)(p) != 0) s->other++;
    }
    else if (rc == 2) s->refused++;
    else s->other++;
  }
  return NULL;
}

/* Stream-ordered churn: each thread allocates on a stream of its own, frees in stream order
 * and synchronizes, so that the pool grows and shrinks under all of them at once. */
static void *stress_async_thread(void *arg) {
  struct stress *s = arg;
  CALL(cuCtxSetCurrent)(NULL);
  CUcontext ctx;
  CALL(cuDevicePrimaryCtxRetain)(&ctx, device);
  CALL(cuCtxSetCurrent)(ctx);
  CUstream stream;
  if (CALL(cuStreamCreate)(&stream, 1) != 0) { s->other++; return NULL; }
  for (long i = 0; i < s->iterations; i++) {
    CUdeviceptr p;
    CUresult rc = CALL(cuMemAllocAsync)(&p, s->bytes, stream);
    if (rc == 0) {
      s->ok++;
      if (CALL(cuMemFreeAsync)(p, stream) != 0) s->other++;
      if (i % 4 == 3 && CALL(cuStreamSynchronize)(stream) != 0) s->other++;
    }
    else if (rc == 2) s->refused++;
    else s->other++;
  }
  if (CALL(cuStreamSynchronize)(stream) != 0) s->other++;
  return NULL;
}

/* Primary-context churn: each thread retains the device's primary context, reads what
 * cuMemGetInfo says is used while it holds it, and releases it again, all threads at once,
 * so that the context is made and ended many times under them. */
static void *stress_primary_thread(void *arg) {
  struct stress *s = arg;
  for (long i = 0; i < s->iterations; i++) {
    CUcontext ctx;
    if (CALL(cuDevicePrimaryCtxRetain)(&ctx, device) != 0) { s->other++; continue; }
    s->ok++;
    size_t free = 0, total = 0;
    if (CALL(cuCtxSetCurrent)(ctx) == 0 && CALL(cuMemGetInfo_v2)(&free, &total) == 0) {
      size_t used = total - free;
      if (s->samples == 0 || used < s->used_min) s->used_min = used;
      if (s->samples == 0 || used > s->used_max) s->used_max = used;
      s->samples++;
    } else {
      s->other++;
    }
    CALL(cuCtxSetCurrent)(NULL);
    if (CALL(cuDevicePrimaryCtxRelease_v2)(device) != 0) s->other++;
  }
  return NULL;
}

static int vmm_index(const char *text) {
  int i = atoi(text);
  if (i < 0 || i >= created_count) { fprintf(stderr, "no VMM handle #%s\n", text); exit(2); }
  return i;
}

static CUmemAllocationProp device_prop(void) {
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = 1;           /* CU_MEM_ALLOCATION_TYPE_PINNED */
  prop.location.type = 1;  /* CU_MEM_LOCATION_TYPE_DEVICE */
  prop.location.id = device;
  return prop;
}

/* Read-write access for this process's device to [ptr, ptr + bytes). */
static CUresult grant_access(CUdeviceptr ptr, size_t bytes) {
  CUmemAccessDesc access;
  memset(&access, 0, sizeof access);
  access.location.type = 1;
  access.location.id = device;
  access.flags = 3;  /* CU_MEM_ACCESS_FLAGS_PROT_READWRITE */
  return CALL(cuMemSetAccess)(ptr, bytes, &access, 1);
}

static CUdeviceptr last_device_allocation(void) {
  for (int i = held_count - 1; i >= 0; i--)
    if (held[i].kind == 'd') return held[i].handle;
  return 0;
}

static void free_all(void) {
  for (int i = 0; i < held_count; i++) {
    switch (held[i].kind) {
    case 'd': CALL(cuMemFree_v2)(held[i].handle); break;
    case 'a': CALL(cuMemFreeAsync)(held[i].handle, NULL); break;
    case 'v': CALL(cuMemRelease)(held[i].handle); break;
    case 'r': CALL(cuArrayDestroy)((CUarray)(uintptr_t)held[i].handle); break;
    }
  }
  CALL(cuStreamSynchronize)(NULL);
  held_count = 0;
}

int main(int argc, char **argv) {
  int arg = 1;
#ifndef DIRECT
  if (argc < 2) { fprintf(stderr, "usage: cudaprobe dlsym|procaddr COMMAND...\n"); return 2; }
  load_functions(argv[arg++]);
#else
  load_functions(NULL);
#endif
  setvbuf(stdout, NULL, _IOLBF, 0);
  CUresult rc = CALL(cuInit)(0);
  printf("init rc=%d\n", rc);
  if (rc != 0) return 0;
  /* PROBE_START_FILE: create the context only once this file exists, so that a test can
   * have several processes create theirs at the same moment. */
  const char *start_file = getenv("PROBE_START_FILE");
  if (start_file) {
    printf("ready\n");
    fflush(stdout);
    while (access(start_file, F_OK) != 0) usleep(200);
  }
  const char *ordinal = getenv("PROBE_DEVICE");
  CALL(cuDeviceGet)(&device, ordinal ? atoi(ordinal) : 0);
  CUcontext ctx = NULL;
  /* PROBE_NO_CONTEXT=1: no context at all, for NVML-only commands that must not take GPU
   * memory themselves (a watcher's view from outside). */
  if (!getenv("PROBE_NO_CONTEXT")) {
    rc = CALL(cuDevicePrimaryCtxRetain)(&ctx, device);
    printf("context rc=%d\n", rc);
    if (rc != 0) return 0;
    CALL(cuCtxSetCurrent)(ctx);
  }

  while (arg < argc) {
    const char *cmd = argv[arg++];
#define NEXT() (arg < argc ? argv[arg++] : (fprintf(stderr, "%s: missing argument\n", cmd), exit(2), ""))
    if (!strcmp(cmd, "info")) {
      size_t free = 0, total = 0, device_total = 0;
      rc = CALL(cuMemGetInfo_v2)(&free, &total);
      CALL(cuDeviceTotalMem_v2)(&device_total, device);
      printf("info rc=%d free=%zu total=%zu device_total=%zu\n", rc, free, total, device_total);
    } else if (!strcmp(cmd, "alloc") || !strcmp(cmd, "managed") || !strcmp(cmd, "async") ||
               !strcmp(cmd, "pool")) {
      size_t bytes = quantity(NEXT());
      CUdeviceptr p = 0;
      char kind = 'd';
      if (!strcmp(cmd, "alloc")) rc = CALL(cuMemAlloc_v2)(&p, bytes);
      else if (!strcmp(cmd, "managed")) rc = CALL(cuMemAllocManaged)(&p, bytes, 1);
      else if (!strcmp(cmd, "async")) { rc = CALL(cuMemAllocAsync)(&p, bytes, NULL); kind = 'a'; }
      else {
        CUmemoryPool pool;
        CALL(cuDeviceGetDefaultMemPool)(&pool, device);
        rc = CALL(cuMemAllocFromPoolAsync)(&p, bytes, pool, NULL);
        kind = 'a';
      }
      if (rc == 0) keep(kind, p);
      printf("%s %zu rc=%d at=%llu\n", cmd, bytes, rc, (unsigned long long)p);
    } else if (!strcmp(cmd, "async-on") || !strcmp(cmd, "pool-alloc-on")) {
      /* A stream-ordered allocation on stream S: from the device's current pool, or from
       * the pool "pool-create" made (or the default pool). */
      CUstream stream = stream_arg(NEXT());
      size_t bytes = quantity(NEXT());
      CUdeviceptr p = 0;
      if (!strcmp(cmd, "async-on")) rc = CALL(cuMemAllocAsync)(&p, bytes, stream);
      else rc = CALL(cuMemAllocFromPoolAsync)(&p, bytes, pool_arg(), stream);
      if (rc == 0) keep('a', p);
      printf("%s %zu rc=%d\n", cmd, bytes, rc);
    } else if (!strcmp(cmd, "async-fill-on")) {
      /* Stream-ordered allocations of CHUNK on stream S until one is refused. */
      CUstream stream = stream_arg(NEXT());
      size_t chunk = quantity(NEXT());
      unsigned long long total = 0;
      int chunks = 0;
      CUdeviceptr p;
      while ((rc = CALL(cuMemAllocAsync)(&p, chunk, stream)) == 0) { keep('a', p); total += chunk; chunks++; }
      printf("async-fill chunks=%d bytes=%llu rc=%d\n", chunks, total, rc);
    } else if (!strcmp(cmd, "free-async-on")) {
      /* Every allocation held so far (stream-ordered or not) freed with cuMemFreeAsync on
       * stream S. */
      CUstream stream = stream_arg(NEXT());
      int failed = 0;
      for (int i = 0; i < held_count; i++) {
        if (held[i].kind == 'a' || held[i].kind == 'd')
          failed += CALL(cuMemFreeAsync)(held[i].handle, stream) != 0;
      }
      held_count = 0;
      printf("free-async-on failed=%d\n", failed);
    } else if (!strcmp(cmd, "spin-on")) {
      /* One gpuslice_spin kernel of NS nanoseconds (spin.ptx, loaded by "module") queued on
       * stream S, not waited for. */
      CUstream stream = stream_arg(NEXT());
      unsigned long long ns = strtoull(NEXT(), NULL, 10);
      void *spin = NULL;
      rc = CALL(cuModuleGetFunction)(&spin, module, "gpuslice_spin");
      void *params[] = { &ns };
      if (rc == 0) rc = CALL(cuLaunchKernel)(spin, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
      printf("spin-on rc=%d\n", rc);
    } else if (!strcmp(cmd, "streams-fill") || !strcmp(cmd, "spin-on-new")) {
      /* streams-fill N: N more streams created and kept, each given one 1 µs kernel (a
       * stream's first launch makes gpuslice follow it); spin-on-new NS: one kernel of NS
       * nanoseconds on a stream created for it. Prints how many launches failed, and the
       * last failure. */
      int fill = !strcmp(cmd, "streams-fill");
      long count = fill ? atol(NEXT()) : 1;
      unsigned long long ns = fill ? 1000 : strtoull(NEXT(), NULL, 10);
      void *spin = NULL;
      rc = CALL(cuModuleGetFunction)(&spin, module, "gpuslice_spin");
      void *params[] = { &ns };
      long failed = 0;
      int last = 0;
      for (long i = 0; i < count && rc == 0; i++) {
        CUstream stream = NULL;
        if (CALL(cuStreamCreate)(&stream, 1) != 0) { fprintf(stderr, "cuStreamCreate failed\n"); exit(2); }
        int launched = CALL(cuLaunchKernel)(spin, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        if (launched != 0) { failed++; last = launched; }
      }
      printf("%s rc=%d failed=%ld last=%d\n", cmd, rc, failed, last);
    } else if (!strcmp(cmd, "sync")) {
      rc = CALL(cuStreamSynchronize)(stream_arg(NEXT()));
      printf("sync rc=%d\n", rc);
    } else if (!strcmp(cmd, "pool-threshold")) {
      /* The release threshold of the pool "pool-create" made, or of the default pool. */
      unsigned long long threshold = quantity(NEXT());
      rc = CALL(cuMemPoolSetAttribute)(pool_arg(), 4 /* RELEASE_THRESHOLD */, &threshold);
      printf("pool-threshold rc=%d\n", rc);
    } else if (!strcmp(cmd, "pool-trim")) {
      rc = CALL(cuMemPoolTrimTo)(pool_arg(), 0);
      printf("pool-trim rc=%d\n", rc);
    } else if (!strcmp(cmd, "pool-reserved")) {
      unsigned long long reserved = 0, used = 0;
      rc = CALL(cuMemPoolGetAttribute)(pool_arg(), 5 /* RESERVED_MEM_CURRENT */, &reserved);
      if (rc == 0) rc = CALL(cuMemPoolGetAttribute)(pool_arg(), 7 /* USED_MEM_CURRENT */, &used);
      printf("pool-reserved rc=%d reserved=%llu used=%llu\n", rc, reserved, used);
    } else if (!strcmp(cmd, "pool-create")) {
      CUmemPoolProps props;
      memset(&props, 0, sizeof props);
      props.alloc_type = 1;     /* CU_MEM_ALLOCATION_TYPE_PINNED */
      props.location.type = 1;  /* CU_MEM_LOCATION_TYPE_DEVICE */
      props.location.id = device;
      rc = CALL(cuMemPoolCreate)(&created_pool, &props);
      printf("pool-create rc=%d\n", rc);
    } else if (!strcmp(cmd, "pool-destroy")) {
      rc = CALL(cuMemPoolDestroy)(created_pool);
      created_pool = NULL;
      printf("pool-destroy rc=%d\n", rc);
    } else if (!strcmp(cmd, "pitch")) {
      size_t width = quantity(NEXT()), height = quantity(NEXT()), pitch = 0;
      CUdeviceptr p = 0;
      rc = CALL(cuMemAllocPitch_v2)(&p, &pitch, width, height, 4);
      if (rc == 0) keep('d', p);
      printf("pitch %zux%zu rc=%d pitch=%zu\n", width, height, rc, pitch);
    } else if (!strcmp(cmd, "vmm")) {
      size_t bytes = quantity(NEXT());
      CUmemAllocationProp prop = device_prop();
      CUmemHandle handle = 0;
      rc = CALL(cuMemCreate)(&handle, bytes, &prop, 0);
      if (rc == 0) {
        keep('v', handle);
        if (created_count < MAX_VMM) {
          created[created_count].handle = handle;
          created[created_count].bytes = bytes;
          created_count++;
        }
      }
      printf("vmm %zu rc=%d\n", bytes, rc);
    } else if (!strcmp(cmd, "va-reserve")) {
      /* An address range for "vmm-map", "vmm-unmap" and "vmm-retain" (offsets into it). */
      va_bytes = quantity(NEXT());
      rc = CALL(cuMemAddressReserve)(&va, va_bytes, 0, 0, 0);
      printf("va-reserve rc=%d\n", rc);
    } else if (!strcmp(cmd, "vmm-map")) {
      /* Maps all of handle #I (in the order "vmm" created them) at OFFSET of the range, and
       * makes it readable and writable. */
      int i = vmm_index(NEXT());
      size_t offset = quantity(NEXT());
      rc = CALL(cuMemMap)(va + offset, created[i].bytes, 0, created[i].handle, 0);
      CUresult access = rc == 0 ? grant_access(va + offset, created[i].bytes) : -1;
      printf("vmm-map rc=%d access=%d\n", rc, access);
    } else if (!strcmp(cmd, "vmm-unmap")) {
      size_t offset = quantity(NEXT());
      size_t bytes = quantity(NEXT());
      rc = CALL(cuMemUnmap)(va + offset, bytes);
      printf("vmm-unmap rc=%d\n", rc);
    } else if (!strcmp(cmd, "vmm-release")) {
      /* Releases handle #I once more (free-all no longer does). */
      int i = vmm_index(NEXT());
      rc = CALL(cuMemRelease)(created[i].handle);
      for (int h = 0; h < held_count; h++)
        if (held[h].kind == 'v' && held[h].handle == created[i].handle) held[h].kind = 0;
      printf("vmm-release rc=%d\n", rc);
    } else if (!strcmp(cmd, "vmm-retain")) {
      /* cuMemRetainAllocationHandle at OFFSET of the range: which handle # it returned. */
      size_t offset = quantity(NEXT());
      CUmemHandle handle = 0;
      rc = CALL(cuMemRetainAllocationHandle)(&handle, (void *)(uintptr_t)(va + offset));
      int index = -1;
      for (int i = 0; i < created_count; i++)
        if (rc == 0 && created[i].handle == handle) index = i;
      printf("vmm-retain rc=%d index=%d\n", rc, index);
    } else if (!strcmp(cmd, "vmm-loop")) {
      /* The documented VMM pattern N times: create, reserve, map, grant access, release the
       * handle at once (the mapping keeps the memory). */
      int rounds = atoi(NEXT());
      size_t bytes = quantity(NEXT());
      int mapped = 0, refused = 0, other = 0;
      for (int r = 0; r < rounds; r++) {
        CUmemAllocationProp prop = device_prop();
        CUmemHandle handle = 0;
        CUdeviceptr range = 0;
        rc = CALL(cuMemCreate)(&handle, bytes, &prop, 0);
        if (rc == 2) { refused++; continue; }
        if (rc != 0) { other++; continue; }
        int ok = CALL(cuMemAddressReserve)(&range, bytes, 0, 0, 0) == 0;
        ok = ok && CALL(cuMemMap)(range, bytes, 0, handle, 0) == 0;
        ok = ok && grant_access(range, bytes) == 0;
        ok = CALL(cuMemRelease)(handle) == 0 && ok;
        if (ok && looped_count < MAX_VMM) {
          looped[looped_count].va = range;
          looped[looped_count].bytes = bytes;
          looped_count++;
          mapped++;
        } else {
          other++;
        }
      }
      printf("vmm-loop mapped=%d refused=%d other=%d\n", mapped, refused, other);
    } else if (!strcmp(cmd, "vmm-unmap-loop")) {
      /* Unmaps what "vmm-loop" mapped and frees its ranges. */
      int failed = 0;
      for (int i = 0; i < looped_count; i++) {
        failed += CALL(cuMemUnmap)(looped[i].va, looped[i].bytes) != 0;
        failed += CALL(cuMemAddressFree)(looped[i].va, looped[i].bytes) != 0;
      }
      looped_count = 0;
      printf("vmm-unmap-loop failed=%d\n", failed);
    } else if (!strcmp(cmd, "array")) {
      /* One argument a statement: the order of an initializer list's expressions is
       * unspecified in C. */
      size_t width = quantity(NEXT());
      size_t height = quantity(NEXT());
      ArrayDesc desc = { width, height, 0x20 /* FLOAT */, 4 };
      CUarray array = NULL;
      rc = CALL(cuArrayCreate_v2)(&array, &desc);
      if (rc == 0) keep('r', (uint64_t)(uintptr_t)array);
      printf("array rc=%d\n", rc);
    } else if (!strcmp(cmd, "array3d")) {
      size_t width = quantity(NEXT());
      size_t height = quantity(NEXT());
      size_t depth = quantity(NEXT());
      Array3dDesc desc = { width, height, depth, 0x01 /* UINT8 */, 1, 0 };
      CUarray array = NULL;
      rc = CALL(cuArray3DCreate_v2)(&array, &desc);
      if (rc == 0) keep('r', (uint64_t)(uintptr_t)array);
      printf("array3d rc=%d\n", rc);
    } else if (!strcmp(cmd, "module")) {
      /* Loading code takes device memory that no allocation call asked for. */
      const char *path = NEXT();
      FILE *file = fopen(path, "rb");
      if (!file) { fprintf(stderr, "cannot read %s\n", path); return 2; }
      static char image[1 << 16];
      size_t length = fread(image, 1, sizeof image - 1, file);
      fclose(file);
      image[length] = 0;
      rc = CALL(cuModuleLoadData)(&module, image);
      printf("module rc=%d\n", rc);
    } else if (!strcmp(cmd, "fill")) {
      size_t chunk = quantity(NEXT());
      unsigned long long total = 0;
      int chunks = 0;
      CUdeviceptr p;
      while ((rc = CALL(cuMemAlloc_v2)(&p, chunk)) == 0) { keep('d', p); total += chunk; chunks++; }
      printf("fill chunks=%d bytes=%llu rc=%d\n", chunks, total, rc);
    } else if (!strcmp(cmd, "free-all")) {
      free_all();
      printf("free-all ok\n");
    } else if (!strcmp(cmd, "ctx-create")) {
      CUcontext extra;
      rc = CALL(cuCtxCreate_v2)(&extra, 0, device);
      printf("ctx-create rc=%d\n", rc);
      if (rc == 0) {
        rc = CALL(cuCtxDestroy_v2)(extra);
        printf("ctx-destroy rc=%d\n", rc);
        CALL(cuCtxSetCurrent)(ctx);
      }
    } else if (!strcmp(cmd, "ctx-alloc-destroy")) {
      /* Creates a context (current), allocates SIZE in it, destroys it (which frees the
       * allocation), and makes the primary context current again. */
      size_t bytes = quantity(NEXT());
      CUcontext extra = NULL;
      CUdeviceptr p = 0;
      int rc_alloc = -1, rc_destroy = -1;
      rc = CALL(cuCtxCreate_v2)(&extra, 0, device);
      if (rc == 0) {
        rc_alloc = CALL(cuMemAlloc_v2)(&p, bytes);
        rc_destroy = CALL(cuCtxDestroy_v2)(extra);
        CALL(cuCtxSetCurrent)(ctx);
      }
      printf("ctx-alloc-destroy rc=%d alloc=%d destroy=%d\n", rc, rc_alloc, rc_destroy);
    } else if (!strcmp(cmd, "use-device")) {
      /* Makes another GPU's primary context current: a process with two contexts. */
      int ordinal = atoi(NEXT());
      CUcontext other = NULL;
      rc = CALL(cuDeviceGet)(&device, ordinal);
      if (rc == 0) rc = CALL(cuDevicePrimaryCtxRetain)(&other, device);
      if (rc == 0) rc = CALL(cuCtxSetCurrent)(other);
      printf("use-device %d rc=%d\n", ordinal, rc);
    } else if (!strcmp(cmd, "new-context")) {
      /* Creates a context on another GPU, which becomes current. */
      int ordinal = atoi(NEXT());
      CUcontext created = NULL;
      rc = CALL(cuDeviceGet)(&device, ordinal);
      if (rc == 0) rc = CALL(cuCtxCreate_v2)(&created, 0, device);
      printf("new-context %d rc=%d\n", ordinal, rc);
    } else if (!strcmp(cmd, "spin")) {
      /* N kernels of NS nanoseconds each (gpuslice_spin of spin.ptx, loaded in this
       * context by "module") on the NULL stream, one at a time. */
      long kernels = atol(NEXT());
      unsigned long long ns = strtoull(NEXT(), NULL, 10);
      void *spin = NULL;
      rc = CALL(cuModuleGetFunction)(&spin, module, "gpuslice_spin");
      struct timespec start, end;
      clock_gettime(CLOCK_MONOTONIC, &start);
      void *params[] = { &ns };
      for (long k = 0; k < kernels && rc == 0; k++) {
        rc = CALL(cuLaunchKernel)(spin, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL);
        if (rc == 0) rc = CALL(cuCtxSynchronize)();
      }
      clock_gettime(CLOCK_MONOTONIC, &end);
      long long elapsed = (end.tv_sec - start.tv_sec) * 1000000000LL + (end.tv_nsec - start.tv_nsec);
      printf("spin rc=%d elapsed_ns=%lld\n", rc, elapsed);
    } else if (!strcmp(cmd, "release-primary")) {
      rc = CALL(cuDevicePrimaryCtxRelease_v2)(device);
      printf("release-primary rc=%d\n", rc);
    } else if (!strcmp(cmd, "retain-primary")) {
      /* One more retain of the device's primary context (made anew if a reset ended it). */
      CUcontext primary = NULL;
      rc = CALL(cuDevicePrimaryCtxRetain)(&primary, device);
      printf("retain-primary rc=%d same=%d\n", rc, primary == ctx);
    } else if (!strcmp(cmd, "reset-primary")) {
      /* Ends the primary context; its retains stay to be released. */
      rc = CALL(cuDevicePrimaryCtxReset_v2)(device);
      printf("reset-primary rc=%d\n", rc);
    } else if (!strcmp(cmd, "nvml")) {
      void *nvml_device = NULL;
      int (*by_index)(unsigned, void **) = (int (*)(unsigned, void **))nvml_symbol("nvmlDeviceGetHandleByIndex_v2");
      int (*info)(void *, NvmlMemory *) = (int (*)(void *, NvmlMemory *))nvml_symbol("nvmlDeviceGetMemoryInfo");
      int (*info2)(void *, NvmlMemoryV2 *) = (int (*)(void *, NvmlMemoryV2 *))nvml_symbol("nvmlDeviceGetMemoryInfo_v2");
      by_index(ordinal ? (unsigned)atoi(ordinal) : 0, &nvml_device);
      NvmlMemory m = {0};
      NvmlMemoryV2 m2 = {0};
      m2.version = (unsigned)sizeof m2 | (2u << 24);
      int r1 = info(nvml_device, &m), r2 = info2(nvml_device, &m2);
      printf("nvml rc=%d total=%llu free=%llu used=%llu\n", r1, m.total, m.free, m.used);
      printf("nvml_v2 rc=%d total=%llu reserved=%llu free=%llu used=%llu\n", r2, m2.total, m2.reserved, m2.free, m2.used);
    } else if (!strcmp(cmd, "pid")) {
      printf("pid pid=%d\n", (int)getpid());
    } else if (!strcmp(cmd, "where")) {
      /* The current context's device: its CUDA ordinal and its UUID. */
      CUdevice current = -1;
      char uuid[64];
      rc = CALL(cuCtxGetDevice)(&current);
      uuid_text(current, uuid);
      printf("where rc=%d ordinal=%d uuid=%s\n", rc, current, uuid);
    } else if (!strcmp(cmd, "devices")) {
      /* What CUDA enumerates, in ordinal order. */
      int count = 0;
      rc = CALL(cuDeviceGetCount)(&count);
      printf("devices rc=%d count=%d", rc, count);
      for (int i = 0; i < count; i++) {
        char uuid[64];
        uuid_text(i, uuid);
        printf(" %d=%s", i, uuid);
      }
      printf("\n");
    } else if (!strcmp(cmd, "nvml-index") || !strcmp(cmd, "nvml-same")) {
      /* NVML's memory view of the GPU with NVML index I ("nvml-index I"), or of the current
       * context's GPU, found by its UUID ("nvml-same"), with the UUID NVML gives it. */
      void *nvml_device = NULL;
      int found;
      if (!strcmp(cmd, "nvml-index")) {
        int (*by_index)(unsigned, void **) = (int (*)(unsigned, void **))nvml_symbol("nvmlDeviceGetHandleByIndex_v2");
        found = by_index((unsigned)atoi(NEXT()), &nvml_device);
      } else {
        CUdevice current = -1;
        char uuid[64];
        CALL(cuCtxGetDevice)(&current);
        uuid_text(current, uuid);
        int (*by_uuid)(const char *, void **) = (int (*)(const char *, void **))nvml_symbol("nvmlDeviceGetHandleByUUID");
        found = by_uuid(uuid, &nvml_device);
      }
      int (*info)(void *, NvmlMemory *) = (int (*)(void *, NvmlMemory *))nvml_symbol("nvmlDeviceGetMemoryInfo");
      int (*get_uuid)(void *, char *, unsigned) = (int (*)(void *, char *, unsigned))nvml_symbol("nvmlDeviceGetUUID");
      int (*get_index)(void *, unsigned *) = (int (*)(void *, unsigned *))nvml_symbol("nvmlDeviceGetIndex");
      NvmlMemory m = {0};
      char uuid[96] = "?";
      unsigned index = 0;
      int r = found == 0 ? info(nvml_device, &m) : found;
      if (found == 0) { get_uuid(nvml_device, uuid, sizeof uuid); get_index(nvml_device, &index); }
      printf("%s rc=%d index=%u uuid=%s total=%llu free=%llu used=%llu\n", cmd, r, index, uuid,
             m.total, m.free, m.used);
    } else if (!strcmp(cmd, "nvml-procs")) {
      /* The processes NVML lists on the GPU with NVML index I, with the memory of each:
       * `pids=PID:BYTES,...`. */
      unsigned index = (unsigned)atoi(NEXT());
      void *nvml_device = NULL;
      int (*by_index)(unsigned, void **) = (int (*)(unsigned, void **))nvml_symbol("nvmlDeviceGetHandleByIndex_v2");
      typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } ProcessInfo;
      int (*list)(void *, unsigned *, ProcessInfo *) = (int (*)(void *, unsigned *, ProcessInfo *))nvml_symbol("nvmlDeviceGetComputeRunningProcesses_v3");
      static ProcessInfo procs[256];
      unsigned count = 256;
      int r = by_index(index, &nvml_device);
      if (r == 0) r = list(nvml_device, &count, procs);
      if (r != 0) count = 0;
      printf("nvml-procs rc=%d index=%u count=%u pids=", r, index, count);
      for (unsigned i = 0; i < count; i++) printf("%s%u:%llu", i ? "," : "", procs[i].pid, procs[i].used);
      printf("\n");
    } else if (!strcmp(cmd, "peer-copy")) {
      /* Peer-to-peer from the current GPU to ordinal ORD: peer access enabled (twice: the
       * second must say it already is), BYTES allocated on each GPU (kept, each charged to its
       * own), the pattern written here, cuMemcpyPeer to the other, read back there. */
      int ordinal = atoi(NEXT());
      size_t bytes = quantity(NEXT());
      CUcontext here = NULL, there = NULL;
      CUdevice peer = -1;
      int can = -1;
      CUdeviceptr src = 0, dst = 0;
      CALL(cuCtxGetCurrent)(&here);
      rc = CALL(cuDeviceGet)(&peer, ordinal);
      if (rc == 0) rc = CALL(cuDeviceCanAccessPeer)(&can, device, peer);
      if (rc == 0) rc = CALL(cuDevicePrimaryCtxRetain)(&there, peer);
      int enable = rc == 0 ? CALL(cuCtxEnablePeerAccess)(there, 0) : -1;
      int again = rc == 0 ? CALL(cuCtxEnablePeerAccess)(there, 0) : -1;
      int src_rc = CALL(cuMemAlloc_v2)(&src, bytes);
      if (src_rc == 0) keep('d', src);
      CALL(cuCtxSetCurrent)(there);
      int dst_rc = CALL(cuMemAlloc_v2)(&dst, bytes);
      if (dst_rc == 0) keep('d', dst);
      CALL(cuCtxSetCurrent)(here);
      int copy = -1, match = 0;
      if (src_rc == 0 && dst_rc == 0) {
        CALL(cuMemsetD32_v2)(src, PATTERN, bytes / 4);
        copy = CALL(cuMemcpyPeer)(dst, there, src, here, bytes);
        unsigned first = 0, last = 0;
        CALL(cuCtxSetCurrent)(there);
        CALL(cuMemcpyDtoH_v2)(&first, dst, 4);
        CALL(cuMemcpyDtoH_v2)(&last, dst + bytes - 4, 4);
        CALL(cuCtxSetCurrent)(here);
        match = first == PATTERN && last == PATTERN;
      }
      printf("peer-copy rc=%d can=%d enable=%d again=%d src=%d dst=%d copy=%d match=%d\n", rc, can,
             enable, again, src_rc, dst_rc, copy, match);
    } else if (!strcmp(cmd, "ipc-export")) {
      /* The last cuMemAlloc allocation, filled with the pattern, exported: its handle written
       * to FILE (whole, by a rename). */
      const char *path = NEXT();
      CUdeviceptr p = last_device_allocation();
      CUipcMemHandle handle, again;
      memset(&handle, 0, sizeof handle);
      memset(&again, 0, sizeof again);
      CALL(cuMemsetD32_v2)(p, PATTERN, 1024);
      rc = CALL(cuIpcGetMemHandle)(&handle, p);
      int same = CALL(cuIpcGetMemHandle)(&again, p) == 0 && !memcmp(&handle, &again, sizeof handle);
      if (rc == 0) {
        char partial[4200];
        snprintf(partial, sizeof partial, "%s.partial", path);
        FILE *file = fopen(partial, "wb");
        if (!file || fwrite(&handle, sizeof handle, 1, file) != 1 || fclose(file) != 0 ||
            rename(partial, path) != 0) {
          fprintf(stderr, "cannot write %s\n", path); return 2;
        }
      }
      printf("ipc-export rc=%d same=%d\n", rc, same);
    } else if (!strcmp(cmd, "ipc-open") || !strcmp(cmd, "ipc-open-self")) {
      /* Opens the handle in FILE (waiting for it to appear) and reads the first word there;
       * "ipc-open-self" opens the handle of this process's own last export. */
      CUipcMemHandle handle;
      memset(&handle, 0, sizeof handle);
      if (!strcmp(cmd, "ipc-open")) {
        const char *path = NEXT();
        while (access(path, F_OK) != 0) usleep(1000);
        FILE *file = fopen(path, "rb");
        if (!file || fread(&handle, sizeof handle, 1, file) != 1) { fprintf(stderr, "cannot read %s\n", path); return 2; }
        fclose(file);
      } else {
        CALL(cuIpcGetMemHandle)(&handle, last_device_allocation());
      }
      CUdeviceptr p = 0;
      rc = CALL(cuIpcOpenMemHandle_v2)(&p, handle, 1 /* LAZY_ENABLE_PEER_ACCESS */);
      unsigned value = 0;
      int same = rc == 0 && opened != 0 && p == opened;
      if (rc == 0) { CALL(cuMemcpyDtoH_v2)(&value, p, 4); opened = p; }
      printf("%s rc=%d value=%u pattern=%d same=%d\n", cmd, rc, value, value == PATTERN, same);
    } else if (!strcmp(cmd, "ipc-close")) {
      rc = CALL(cuIpcCloseMemHandle)(opened);
      printf("ipc-close rc=%d\n", rc);
    } else if (!strcmp(cmd, "stress-async")) {
      int threads = atoi(NEXT());
      long iterations = atol(NEXT());
      size_t bytes = quantity(NEXT());
      pthread_t *ids = calloc((size_t)threads, sizeof *ids);
      struct stress *work = calloc((size_t)threads, sizeof *work);
      for (int t = 0; t < threads; t++) {
        work[t].iterations = iterations; work[t].bytes = bytes;
        pthread_create(&ids[t], NULL, stress_async_thread, &work[t]);
      }
      long ok = 0, refused = 0, other = 0;
      for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        ok += work[t].ok; refused += work[t].refused; other += work[t].other;
      }
      printf("stress-async ok=%ld refused=%ld other=%ld\n", ok, refused, other);
    } else if (!strcmp(cmd, "stress-primary")) {
      int threads = atoi(NEXT());
      long iterations = atol(NEXT());
      pthread_t *ids = calloc((size_t)threads, sizeof *ids);
      struct stress *work = calloc((size_t)threads, sizeof *work);
      for (int t = 0; t < threads; t++) {
        work[t].iterations = iterations;
        pthread_create(&ids[t], NULL, stress_primary_thread, &work[t]);
      }
      long ok = 0, other = 0, samples = 0;
      size_t used_min = 0, used_max = 0;
      for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        ok += work[t].ok; other += work[t].other;
        if (work[t].samples > 0) {
          if (samples == 0 || work[t].used_min < used_min) used_min = work[t].used_min;
          if (samples == 0 || work[t].used_max > used_max) used_max = work[t].used_max;
          samples += work[t].samples;
        }
      }
      printf("stress-primary ok=%ld other=%ld samples=%ld used_min=%zu used_max=%zu\n", ok, other,
             samples, used_min, used_max);
    } else if (!strcmp(cmd, "stress")) {
      int threads = atoi(NEXT());
      long iterations = atol(NEXT());
      size_t bytes = quantity(NEXT());
      const char *witness_path = getenv("PROBE_WITNESS");
      if (witness_path) {
        int fd = open(witness_path, O_RDWR);
        if (fd < 0) { fprintf(stderr, "cannot open %s\n", witness_path); return 2; }
        witness = mmap(NULL, sizeof *witness, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (witness == MAP_FAILED) { fprintf(stderr, "cannot map %s\n", witness_path); return 2; }
        witness_budget = atol(getenv("PROBE_BUDGET") ? getenv("PROBE_BUDGET") : "0");
        witness_hold_us = atol(getenv("PROBE_HOLD_US") ? getenv("PROBE_HOLD_US") : "0");
      }
      pthread_t *ids = calloc((size_t)threads, sizeof *ids);
      struct stress *work = calloc((size_t)threads, sizeof *work);
      for (int t = 0; t < threads; t++) {
        work[t].iterations = iterations; work[t].bytes = bytes;
        pthread_create(&ids[t], NULL, stress_thread, &work[t]);
      }
      long ok = 0, refused = 0, other = 0, violations = 0;
      for (int t = 0; t < threads; t++) {
        pthread_join(ids[t], NULL);
        ok += work[t].ok; refused += work[t].refused; other += work[t].other;
        violations += work[t].violations;
      }
      printf("stress ok=%ld refused=%ld other=%ld violations=%ld witness_max=%ld\n", ok, refused,
             other, violations, witness_max);
    } else if (!strcmp(cmd, "fork-exit")) {
      /* A child that exits through exit() (atexit handlers run) must not give back the
       * parent's memory. */
      pid_t child = fork();
      if (child == 0) exit(0);
      int status = 0;
      waitpid(child, &status, 0);
      printf("fork-exit child_status=%d\n", WEXITSTATUS(status));
    } else if (!strcmp(cmd, "fork-exec")) {
      /* CUDA cannot be used in a child forked after the parent initialized it (the driver
       * refuses), so children that want the GPU exec a program: this one again, running the
       * next N commands. It inherits the environment, so it joins the same tenant. */
      int count = atoi(NEXT());
      char **child_argv = calloc((size_t)count + 3, sizeof *child_argv);
      int n = 0;
      child_argv[n++] = argv[0];
#ifndef DIRECT
      child_argv[n++] = argv[1];
#endif
      for (int i = 0; i < count && arg < argc; i++) child_argv[n++] = argv[arg++];
      pid_t child = fork();
      if (child == 0) {
        execv("/proc/self/exe", child_argv);
        _exit(127);
      }
      int status = 0;
      waitpid(child, &status, 0);
      free(child_argv);
      printf("fork-exec child_status=%d\n", WEXITSTATUS(status));
    } else if (!strcmp(cmd, "fork-hold") || !strcmp(cmd, "fork-hold-unlocked")) {
      /* A child that keeps everything it inherited (the driver's descriptors with the
       * parent's memory behind them) and does nothing, until it is killed. The unlocked
       * one (a hostile tenant's) first closes its copies of gpuslice's lock file, so that
       * the parent's slot looks dead when the parent dies. */
      int unlocked = !strcmp(cmd, "fork-hold-unlocked");
      fflush(stdout);
      pid_t child = fork();
      if (child == 0) {
        if (unlocked) {
          for (int fd = 3; fd < 1024; fd++) {
            char link[64], target[4096];
            snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
            ssize_t n = readlink(link, target, sizeof target - 1);
            if (n <= 0) continue;
            target[n] = 0;
            if (strstr(target, "/locks/")) close(fd);
          }
        }
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        dup2(devnull, 2);
        for (;;) pause();
      }
      printf("%s child_pid=%d\n", cmd, (int)child);
    } else if (!strcmp(cmd, "hold")) {
      printf("holding\n");
      fflush(stdout);
      for (;;) pause();
    } else if (!strcmp(cmd, "wait-file")) {
      /* Lets a test start several processes' work at the same moment. */
      const char *path = NEXT();
      printf("waiting\n");
      fflush(stdout);
      while (access(path, F_OK) != 0) usleep(1000);
    } else if (!strcmp(cmd, "sleep")) {
      usleep((useconds_t)atoi(NEXT()) * 1000);
    } else {
      fprintf(stderr, "unknown command %s\n", cmd);
      return 2;
    }
  }
  return 0;
}
