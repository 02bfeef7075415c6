/* One-off probe of the real driver: does cuGetProcAddress return the addresses that dlsym
 * gives for the versioned exports (pointer identity), and what does a context cost? */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef int (*gpa2_t)(const char *, void **, int, uint64_t, int *);
typedef int (*init_t)(unsigned);
typedef int (*retain_t)(void **, int);
typedef int (*setcur_t)(void *);
typedef int (*meminfo_t)(size_t *, size_t *);
typedef int (*alloc_t)(uint64_t *, size_t);
typedef int (*free_t)(uint64_t);
typedef struct { unsigned long long total, free, used; } nvml_mem;
typedef int (*nvml_init_t)(void);
typedef int (*nvml_h_t)(unsigned, void **);
typedef int (*nvml_mi_t)(void *, nvml_mem *);

static void *cuda;
static const char *match(void *p, const char *base) {
  static char buf[128];
  const char *suf[] = {"", "_v2", "_v3", "_v4", "_ptsz", "_ptds", "_v2_ptsz", "_v2_ptds", "_v3_ptds", 0};
  for (int i = 0; suf[i]; i++) {
    snprintf(buf, sizeof buf, "%s%s", base, suf[i]);
    void *q = dlsym(cuda, buf);
    if (q && q == p) return buf;
  }
  return "NO-MATCH";
}

int main(void) {
  cuda = dlopen("libcuda.so.1", RTLD_NOW);
  void *nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW);
  gpa2_t gpa2 = (gpa2_t)dlsym(cuda, "cuGetProcAddress_v2");
  init_t cuInit = (init_t)dlsym(cuda, "cuInit");
  printf("cuInit=%d\n", cuInit(0));
  const char *names[] = {"cuGetProcAddress", "cuMemAlloc", "cuMemFree", "cuMemGetInfo",
    "cuMemAllocPitch", "cuMemAllocManaged", "cuMemAllocAsync", "cuMemAllocFromPoolAsync",
    "cuMemFreeAsync", "cuMemCreate", "cuMemRelease", "cuArrayCreate", "cuArray3DCreate",
    "cuDeviceTotalMem", "cuCtxCreate", "cuCtxDestroy", "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease", "cuLaunchKernel", "cuLaunchKernelEx",
    "cuLaunchCooperativeKernel", "cuGraphLaunch", "cuInit", "cuMemcpyHtoD", 0};
  int versions[] = {2000, 3020, 11030, 12000, 13000};
  uint64_t flags[] = {0, 1, 2};
  for (int n = 0; names[n]; n++)
    for (int v = 0; v < 5; v++)
      for (int f = 0; f < 3; f++) {
        void *p = 0; int st = -1;
        int rc = gpa2(names[n], &p, versions[v], flags[f], &st);
        printf("gpa %-26s ver=%5d flags=%lu rc=%d st=%d -> %s\n", names[n], versions[v],
               (unsigned long)flags[f], rc, st, rc == 0 ? match(p, names[n]) : "-");
      }
  nvml_init_t ni = (nvml_init_t)dlsym(nvml, "nvmlInit_v2");
  nvml_h_t nh = (nvml_h_t)dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
  nvml_mi_t nm = (nvml_mi_t)dlsym(nvml, "nvmlDeviceGetMemoryInfo");
  void *dev; nvml_mem m0, m1, m2, m3;
  ni(); nh(0, &dev); nm(dev, &m0);
  void *ctx;
  ((retain_t)dlsym(cuda, "cuDevicePrimaryCtxRetain"))(&ctx, 0);
  ((setcur_t)dlsym(cuda, "cuCtxSetCurrent"))(ctx);
  nm(dev, &m1);
  size_t fr, tot; ((meminfo_t)dlsym(cuda, "cuMemGetInfo_v2"))(&fr, &tot);
  uint64_t d; ((alloc_t)dlsym(cuda, "cuMemAlloc_v2"))(&d, 1);
  nm(dev, &m2);
  ((free_t)dlsym(cuda, "cuMemFree_v2"))(d);
  nm(dev, &m3);
  printf("nvml used before ctx=%llu after ctx=%llu (delta %llu MiB) after 1B alloc=%llu after free=%llu\n",
         m0.used, m1.used, (m1.used - m0.used) >> 20, m2.used, m3.used);
  printf("cuMemGetInfo free=%zu total=%zu nvml total=%llu free=%llu\n", fr, tot, m1.total, m1.free);
  return 0;
}
