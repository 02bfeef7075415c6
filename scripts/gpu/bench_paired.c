/* bench_paired: the shim's own cost, measured inside one process.
 *
 * Under LD_PRELOAD=libgpuslice.so, dlsym hands out the shim's hooks, while glibc's own dlsym
 * (looked up in libc's handle, which the shim does not interpose) reaches the driver's real
 * functions. Both are called in the same process, on the same context, in small batches
 * that alternate (the order flips every round), so that drifts of the GPU, the driver's
 * allocator and the machine fall on both alike. Per round, hooked/real is one ratio; the
 * median over the rounds is the figure.
 *
 * usage: bench_paired PTX [ROUNDS]
 * Prints `paired <metric> real_ns=.. shim_ns=.. ratio=.. ratio_p25=.. ratio_p75=..` lines.
 * With PAIRED_ROUNDS_FILE set, also appends each round there as `round <metric> real_ns=..
 * shim_ns=..`, so that scripts/gpu/paired_ci.py can pool the rounds of several runs.
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
typedef void *CUcontext, *CUmodule, *CUfunction, *CUstream;

struct driver {
  CUresult (*cuMemAlloc_v2)(CUdeviceptr *, size_t);
  CUresult (*cuMemFree_v2)(CUdeviceptr);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, CUstream, void **, void **);
  CUresult (*cuCtxSynchronize)(void);
};

typedef void *(*dlsym_fn)(void *, const char *);

enum { MAX_ROUNDS = 400, PAIRS = 500, BURSTS = 8, BURST = 256 };
static const size_t PAIR_BYTES = 2u << 20;

static void check(CUresult rc, const char *what) {
  if (rc != 0) {
    fprintf(stderr, "bench_paired: %s failed: CUresult %d\n", what, rc);
    exit(1);
  }
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

static double quantile(double *values, int n, double q) {
  qsort(values, (size_t)n, sizeof *values, by_value);
  return values[(int)(q * (n - 1) + 0.5)];
}

static void load(struct driver *d, dlsym_fn lookup, void *cuda) {
#define LOAD(name)                                                     \
  do {                                                                 \
    *(void **)&d->name = lookup(cuda, #name);                          \
    if (!d->name) {                                                    \
      fprintf(stderr, "bench_paired: no %s\n", #name);                 \
      exit(1);                                                         \
    }                                                                  \
  } while (0)
  LOAD(cuMemAlloc_v2);
  LOAD(cuMemFree_v2);
  LOAD(cuLaunchKernel);
  LOAD(cuCtxSynchronize);
#undef LOAD
}

static double alloc_free(const struct driver *d) {
  double start = now_ns();
  for (int i = 0; i < PAIRS; i++) {
    CUdeviceptr p;
    check(d->cuMemAlloc_v2(&p, PAIR_BYTES), "cuMemAlloc_v2");
    check(d->cuMemFree_v2(p), "cuMemFree_v2");
  }
  return (now_ns() - start) / PAIRS;
}

/* CPU time of the launch calls only; the sync after each burst is not timed. */
static double launch_enqueue(const struct driver *d, CUfunction f) {
  double total = 0;
  for (int b = 0; b < BURSTS; b++) {
    double start = now_ns();
    for (int i = 0; i < BURST; i++)
      check(d->cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL), "cuLaunchKernel");
    total += now_ns() - start;
    check(d->cuCtxSynchronize(), "cuCtxSynchronize");
  }
  return total / (BURSTS * BURST);
}

static void report(const char *metric, double *real, double *shim, int rounds) {
  const char *rounds_file = getenv("PAIRED_ROUNDS_FILE");
  if (rounds_file && *rounds_file) {
    FILE *out = fopen(rounds_file, "a");
    if (!out) {
      fprintf(stderr, "bench_paired: cannot append to %s\n", rounds_file);
      exit(1);
    }
    for (int r = 0; r < rounds; r++)
      fprintf(out, "round %s real_ns=%.2f shim_ns=%.2f\n", metric, real[r], shim[r]);
    fclose(out);
  }
  double ratio[MAX_ROUNDS];
  for (int r = 0; r < rounds; r++) ratio[r] = shim[r] / real[r];
  double p25 = quantile(ratio, rounds, 0.25), p50 = quantile(ratio, rounds, 0.5),
         p75 = quantile(ratio, rounds, 0.75);
  printf("paired %s real_ns=%.1f shim_ns=%.1f ratio=%.4f ratio_p25=%.4f ratio_p75=%.4f rounds=%d\n",
         metric, quantile(real, rounds, 0.5), quantile(shim, rounds, 0.5), p50, p25, p75, rounds);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: bench_paired PTX [ROUNDS]\n");
    return 2;
  }
  int rounds = argc > 2 ? atoi(argv[2]) : 60;
  if (rounds < 3 || rounds > MAX_ROUNDS) rounds = 60;

  void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
  void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (!cuda || !libc) {
    fprintf(stderr, "bench_paired: dlopen: %s\n", dlerror());
    return 1;
  }
  dlsym_fn glibc_dlsym = (dlsym_fn)dlvsym(libc, "dlsym", "GLIBC_2.34");
  if (!glibc_dlsym) glibc_dlsym = (dlsym_fn)dlvsym(libc, "dlsym", "GLIBC_2.2.5");
  if (!glibc_dlsym) {
    fprintf(stderr, "bench_paired: glibc's dlsym not found\n");
    return 1;
  }
  struct driver shim, real;
  load(&shim, dlsym, cuda);
  load(&real, glibc_dlsym, cuda);
  if ((void *)shim.cuMemAlloc_v2 == (void *)real.cuMemAlloc_v2 ||
      (void *)shim.cuLaunchKernel == (void *)real.cuLaunchKernel) {
    fprintf(stderr, "bench_paired: dlsym gave the driver's own functions: run it under the shim\n");
    return 1;
  }

  /* Set-up through the hooked functions, as a program under the shim does it. */
  CUresult (*cuInit)(unsigned) = dlsym(cuda, "cuInit");
  CUresult (*cuDeviceGet)(CUdevice *, int) = dlsym(cuda, "cuDeviceGet");
  CUresult (*retain)(CUcontext *, CUdevice) = dlsym(cuda, "cuDevicePrimaryCtxRetain");
  CUresult (*set_current)(CUcontext) = dlsym(cuda, "cuCtxSetCurrent");
  CUresult (*load_data)(CUmodule *, const void *) = dlsym(cuda, "cuModuleLoadData");
  CUresult (*get_function)(CUfunction *, CUmodule, const char *) = dlsym(cuda, "cuModuleGetFunction");
  CUdevice device;
  CUcontext ctx;
  CUmodule module;
  CUfunction noop;
  check(cuInit(0), "cuInit");
  check(cuDeviceGet(&device, 0), "cuDeviceGet");
  check(retain(&ctx, device), "cuDevicePrimaryCtxRetain");
  check(set_current(ctx), "cuCtxSetCurrent");
  FILE *file = fopen(argv[1], "rb");
  if (!file) {
    fprintf(stderr, "bench_paired: cannot read %s\n", argv[1]);
    return 1;
  }
  static char ptx[1 << 16];
  size_t length = fread(ptx, 1, sizeof ptx - 1, file);
  fclose(file);
  ptx[length] = 0;
  check(load_data(&module, ptx), "cuModuleLoadData");
  check(get_function(&noop, module, "gpuslice_noop"), "cuModuleGetFunction");

  for (int warm = 0; warm < 3; warm++) {
    alloc_free(&real);
    alloc_free(&shim);
    launch_enqueue(&real, noop);
    launch_enqueue(&shim, noop);
  }
  static double alloc_real[MAX_ROUNDS], alloc_shim[MAX_ROUNDS], launch_real[MAX_ROUNDS],
      launch_shim[MAX_ROUNDS];
  for (int r = 0; r < rounds; r++) {
    if (r % 2) {
      alloc_real[r] = alloc_free(&real);
      alloc_shim[r] = alloc_free(&shim);
      launch_real[r] = launch_enqueue(&real, noop);
      launch_shim[r] = launch_enqueue(&shim, noop);
    } else {
      alloc_shim[r] = alloc_free(&shim);
      alloc_real[r] = alloc_free(&real);
      launch_shim[r] = launch_enqueue(&shim, noop);
      launch_real[r] = launch_enqueue(&real, noop);
    }
  }
  report("alloc_free_pair", alloc_real, alloc_shim, rounds);
  report("launch_enqueue", launch_real, launch_shim, rounds);
  return 0;
}
