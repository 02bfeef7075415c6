/* A second interposer, preloaded after gpuslice: its getppid finds the "next" getppid with
 * dlsym(RTLD_NEXT). If gpuslice's dlsym made glibc see gpuslice as the caller, "next" would
 * be this very function and the call would recurse until the stack overflows. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

pid_t getppid(void) {
  pid_t (*next)(void) = (pid_t (*)(void))dlsym(RTLD_NEXT, "getppid");
  return next ? next() : -1;
}
