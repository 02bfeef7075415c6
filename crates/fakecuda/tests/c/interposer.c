/* A library preloaded in front of libcuda.so.1 that exports some of its names, as the gpuslice
 * shim does. cuGetProcAddress must still return libcuda's own functions. */
int cuMemAlloc_v2(void) { return 999; }
int cuLaunchKernel(void) { return 999; }
int cuGetProcAddress_v2(void) { return 999; }
