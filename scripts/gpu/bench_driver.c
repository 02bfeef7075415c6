/* bench_driver: the driver-call costs that gpuslice adds to, measured by scripts/bench-gpu.sh
 * with and without the shim.
 *
 * It dlopens libcuda.so.1 and takes every function with dlsym, so under LD_PRELOAD the calls
 * go through the shim's dlsym path, as PyTorch's and Triton's do.
 *
 * usage: bench_driver PTX [--pairs N] [--launches N] [--spins N] [--spin-ns NS] [--batches B]
 *   PTX: examples/ptx/spin.ptx (entries gpuslice_noop and gpuslice_spin(u64 ns)).
 *
 * After a warm-up, each measurement runs B batches (default 5) and reports the median:
 *   alloc_free_pair_ns      one cuMemAlloc_v2 + cuMemFree_v2 of 2 MiB; N pairs a batch (20000)
 *   launch_ns               cuLaunchKernel of gpuslice_noop (1 block, 1 thread), N launches a
 *                           batch (100000) then cuCtxSynchronize: ns per launch
 *   launch_enqueue_ns       the CPU time of the cuLaunchKernel call itself: bursts of 256 noop
 *                           launches are timed, the sync after each burst is not (N / 256
 *                           bursts a batch). This is the cost a launch hook adds to.
 *   spin10us_per_kernel_ns  gpuslice_spin of NS ns (10000) N times a batch (2000), then
 *                           cuCtxSynchronize: ns per kernel; NS plus the gap between kernels
 *   launch_sync_ns          one noop launch then cuCtxSynchronize, N / 20 times a batch: a
 *                           synchronous loop of tiny kernels, where the launch, the wait and
 *                           whatever else the shim does beside them (its watcher's polls)
 *                           all count
 * The last line is `alloc_free_pair_ns=<x> launch_ns=<y> ... launch_sync_ns=<w>`; the
 * lines before it give the batches and what cuMemGetInfo reported (the quota, under the shim).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef uint64_t CUdeviceptr;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef void *CUstream;

static CUresult (*p_cuInit)(unsigned);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuMemGetInfo_v2)(size_t *, size_t *);
static CUresult (*p_cuMemAlloc_v2)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree_v2)(CUdeviceptr);
static CUresult (*p_cuModuleLoadData)(CUmodule *, const void *);
static CUresult (*p_cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
static CUresult (*p_cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, CUstream, void **, void **);

enum { MAX_BATCHES = 64 };
static const size_t PAIR_BYTES = 2u << 20;

static void check(CUresult rc, const char *what) {
  if (rc != 0) {
    fprintf(stderr, "bench_driver: %s failed: CUresult %d\n", what, rc);
    exit(1);
  }
}

static void *symbol(void *library, const char *name) {
  void *p = dlsym(library, name);
  if (!p) {
    fprintf(stderr, "bench_driver: dlsym %s: %s\n", name, dlerror());
    exit(1);
  }
  return p;
}

static void load_driver(void) {
  void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
  if (!cuda) {
    fprintf(stderr, "bench_driver: dlopen libcuda.so.1: %s\n", dlerror());
    exit(1);
  }
  /* Through a void * so that the function-pointer conversion is explicit, as POSIX allows. */
#define LOAD(name) *(void **)&p_##name = symbol(cuda, #name)
  LOAD(cuInit);
  LOAD(cuDeviceGet);
  LOAD(cuDevicePrimaryCtxRetain);
  LOAD(cuCtxSetCurrent);
  LOAD(cuCtxSynchronize);
  LOAD(cuMemGetInfo_v2);
  LOAD(cuMemAlloc_v2);
  LOAD(cuMemFree_v2);
  LOAD(cuModuleLoadData);
  LOAD(cuModuleGetFunction);
  LOAD(cuLaunchKernel);
#undef LOAD
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f || fseek(f, 0, SEEK_END) != 0) {
    perror(path);
    exit(1);
  }
  long size = ftell(f);
  rewind(f);
  char *text = size >= 0 ? malloc((size_t)size + 1) : NULL;
  if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "bench_driver: cannot read %s\n", path);
    exit(1);
  }
  fclose(f);
  text[size] = 0; /* cuModuleLoadData takes NUL-terminated PTX */
  return text;
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Sorts in place. */
static double median(double *values, int n) {
  qsort(values, (size_t)n, sizeof *values, by_value);
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

static void print_batches(const char *name, const double *values, int n) {
  printf("%s_batches=", name);
  for (int i = 0; i < n; i++) printf("%s%.1f", i ? "," : "", values[i]);
  printf("\n");
}

static void alloc_free_pairs(long n) {
  for (long i = 0; i < n; i++) {
    CUdeviceptr p;
    check(p_cuMemAlloc_v2(&p, PAIR_BYTES), "cuMemAlloc_v2");
    check(p_cuMemFree_v2(p), "cuMemFree_v2");
  }
}

static void launches(CUfunction f, long n, void **params) {
  for (long i = 0; i < n; i++) check(p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL), "cuLaunchKernel");
  check(p_cuCtxSynchronize(), "cuCtxSynchronize");
}

/* One launch and a synchronization, n times: ns per round. */
static double launch_sync(CUfunction f, long n) {
  double start = now_ns();
  for (long i = 0; i < n; i++) {
    check(p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), "cuLaunchKernel");
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
  }
  return (now_ns() - start) / (double)n;
}

/* CPU time per cuLaunchKernel call, in bursts short enough never to fill the launch queue. */
static double launch_enqueue(CUfunction f, long bursts) {
  enum { BURST = 256 };
  double total = 0;
  for (long b = 0; b < bursts; b++) {
    double start = now_ns();
    for (int i = 0; i < BURST; i++)
      check(p_cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), "cuLaunchKernel");
    total += now_ns() - start;
    check(p_cuCtxSynchronize(), "cuCtxSynchronize");
  }
  return total / (double)(bursts * BURST);
}

static long number(const char *flag, const char *text) {
  char *end;
  long value = strtol(text, &end, 10);
  if (*end || value <= 0) {
    fprintf(stderr, "bench_driver: %s %s: expected a positive whole number\n", flag, text);
    exit(2);
  }
  return value;
}

int main(int argc, char **argv) {
  long pairs = 20000, noops = 100000, spins = 2000, batches = 5;
  uint64_t spin_ns = 10000;
  if (argc < 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: bench_driver PTX [--pairs N] [--launches N] [--spins N] [--spin-ns NS] [--batches B]\n");
    return 2;
  }
  const char *ptx_path = argv[1];
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) {
      fprintf(stderr, "bench_driver: %s needs a value\n", argv[i]);
      return 2;
    }
    long value = number(argv[i], argv[i + 1]);
    if (!strcmp(argv[i], "--pairs")) pairs = value;
    else if (!strcmp(argv[i], "--launches")) noops = value;
    else if (!strcmp(argv[i], "--spins")) spins = value;
    else if (!strcmp(argv[i], "--spin-ns")) spin_ns = (uint64_t)value;
    else if (!strcmp(argv[i], "--batches")) batches = value;
    else {
      fprintf(stderr, "bench_driver: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (batches > MAX_BATCHES) batches = MAX_BATCHES;
  setvbuf(stdout, NULL, _IOLBF, 0);

  load_driver();
  char *ptx = read_file(ptx_path);
  CUdevice device;
  CUcontext ctx;
  check(p_cuInit(0), "cuInit");
  check(p_cuDeviceGet(&device, 0), "cuDeviceGet");
  check(p_cuDevicePrimaryCtxRetain(&ctx, device), "cuDevicePrimaryCtxRetain");
  check(p_cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  size_t mem_free = 0, mem_total = 0;
  check(p_cuMemGetInfo_v2(&mem_free, &mem_total), "cuMemGetInfo_v2");
  printf("mem_get_info free=%zu total=%zu\n", mem_free, mem_total);

  CUmodule module;
  CUfunction noop, spin;
  check(p_cuModuleLoadData(&module, ptx), "cuModuleLoadData");
  check(p_cuModuleGetFunction(&noop, module, "gpuslice_noop"), "cuModuleGetFunction gpuslice_noop");
  check(p_cuModuleGetFunction(&spin, module, "gpuslice_spin"), "cuModuleGetFunction gpuslice_spin");
  void *spin_params[] = {&spin_ns};

  /* Warm-up: the driver's first allocations and launches set up pools and queues. */
  alloc_free_pairs(1000);
  launches(noop, 1000, NULL);
  launches(spin, 100, spin_params);

  double pair_ns[MAX_BATCHES], launch_ns[MAX_BATCHES], enqueue_ns[MAX_BATCHES],
      spin_each_ns[MAX_BATCHES], sync_ns[MAX_BATCHES];
  for (int b = 0; b < batches; b++) {
    double start = now_ns();
    alloc_free_pairs(pairs);
    pair_ns[b] = (now_ns() - start) / (double)pairs;
  }
  for (int b = 0; b < batches; b++) {
    double start = now_ns();
    launches(noop, noops, NULL);
    launch_ns[b] = (now_ns() - start) / (double)noops;
  }
  for (int b = 0; b < batches; b++) enqueue_ns[b] = launch_enqueue(noop, noops / 256 + 1);
  for (int b = 0; b < batches; b++) {
    double start = now_ns();
    launches(spin, spins, spin_params);
    spin_each_ns[b] = (now_ns() - start) / (double)spins;
  }

  for (int b = 0; b < batches; b++) sync_ns[b] = launch_sync(noop, noops / 20 + 1);

  print_batches("alloc_free_pair_ns", pair_ns, (int)batches);
  print_batches("launch_ns", launch_ns, (int)batches);
  print_batches("launch_enqueue_ns", enqueue_ns, (int)batches);
  print_batches("spin10us_per_kernel_ns", spin_each_ns, (int)batches);
  print_batches("launch_sync_ns", sync_ns, (int)batches);
  printf("settings pairs=%ld launches=%ld spins=%ld spin_ns=%llu batches=%ld\n", pairs, noops,
         spins, (unsigned long long)spin_ns, batches);
  printf("alloc_free_pair_ns=%.1f launch_ns=%.1f launch_enqueue_ns=%.1f spin10us_per_kernel_ns=%.1f "
         "launch_sync_ns=%.1f\n",
         median(pair_ns, (int)batches), median(launch_ns, (int)batches),
         median(enqueue_ns, (int)batches), median(spin_each_ns, (int)batches),
         median(sync_ns, (int)batches));
  free(ptx);
  return 0;
}
