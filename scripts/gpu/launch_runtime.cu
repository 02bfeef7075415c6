/* launch_runtime: what gpuslice adds to CUDA runtime-API launches, run as a whole process
 * bare and under the shim by scripts/bench-overhead.sh (compiled there with nvcc).
 *
 * The runtime (cudart, linked statically by nvcc) reaches the driver through
 * cuGetProcAddress, so under LD_PRELOAD its launches go through the shim's hooks as a
 * framework's do.
 *
 * usage: launch_runtime [LAUNCHES [BATCHES]]     (defaults 20000 and 3)
 *
 * After CUDA is initialized and warmed up (none of which is timed), each measurement runs
 * BATCHES batches and reports the median:
 *   launch_ns           LAUNCHES empty-kernel launches (<<<1, 1>>>), then
 *                       cudaDeviceSynchronize: ns per launch, the loop's own time
 *   launch_enqueue_ns   the CPU time of the launch calls alone, in bursts of 256 (the
 *                       synchronization after each burst is not timed)
 * The last line is `launch_ns=<x> launch_enqueue_ns=<y> loop_ns=<z>`, z the time of all
 * the timed loops together.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { MAX_BATCHES = 64, BURST = 256 };

__global__ void noop(void) {}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void check(cudaError_t rc, const char *what) {
  if (rc != cudaSuccess) {
    fprintf(stderr, "launch_runtime: %s failed: %s\n", what, cudaGetErrorString(rc));
    exit(1);
  }
}

static long number(const char *text, const char *what) {
  char *end;
  long value = strtol(text, &end, 10);
  if (*end || value <= 0) {
    fprintf(stderr, "launch_runtime: %s %s: expected a positive whole number\n", what, text);
    exit(2);
  }
  return value;
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

static void launches(long n) {
  for (long i = 0; i < n; i++) noop<<<1, 1>>>();
  check(cudaGetLastError(), "launch");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

static double launch_enqueue(long bursts) {
  double total = 0;
  for (long b = 0; b < bursts; b++) {
    double start = now_ns();
    for (int i = 0; i < BURST; i++) noop<<<1, 1>>>();
    total += now_ns() - start;
    check(cudaGetLastError(), "launch");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  return total / (double)(bursts * BURST);
}

static void print_batches(const char *name, const double *values, int n) {
  printf("%s_batches=", name);
  for (int i = 0; i < n; i++) printf("%s%.1f", i ? "," : "", values[i]);
  printf("\n");
}

int main(int argc, char **argv) {
  long count = argc > 1 ? number(argv[1], "LAUNCHES") : 20000;
  long batches = argc > 2 ? number(argv[2], "BATCHES") : 3;
  if (argc > 3) {
    fprintf(stderr, "usage: launch_runtime [LAUNCHES [BATCHES]]\n");
    return 2;
  }
  if (batches > MAX_BATCHES) batches = MAX_BATCHES;

  check(cudaFree(0), "cudaFree(0) (context creation)");
  launches(1000); /* warm-up: the first launches load the module and set up queues */
  launch_enqueue(4);

  double launch_ns[MAX_BATCHES], enqueue_ns[MAX_BATCHES];
  double loop_start = now_ns();
  for (int b = 0; b < batches; b++) {
    double start = now_ns();
    launches(count);
    launch_ns[b] = (now_ns() - start) / (double)count;
  }
  for (int b = 0; b < batches; b++) enqueue_ns[b] = launch_enqueue(count / BURST + 1);
  double loop_ns = now_ns() - loop_start;

  print_batches("launch_ns", launch_ns, (int)batches);
  print_batches("launch_enqueue_ns", enqueue_ns, (int)batches);
  printf("settings launches=%ld batches=%ld\n", count, batches);
  printf("launch_ns=%.1f launch_enqueue_ns=%.1f loop_ns=%.0f\n", median(launch_ns, (int)batches),
         median(enqueue_ns, (int)batches), loop_ns);
  return 0;
}
