/* A library that calls a function glibc added in 2.27, declared here as Rust's libc crate
 * declares it (glibc 2.17's headers have no memfd_create). Linked against glibc 2.17 the
 * reference is left without a version, which the glibc baseline check must refuse. */
int memfd_create(const char *name, unsigned flags);

int make_memfd(void) {
  return memfd_create("gpuslice-test", 0);
}
