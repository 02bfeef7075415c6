//! Link flags of libfakecuda.so.

fn main() {
    // Bind the library's references to its own functions at link time. cuGetProcAddress
    // returns the addresses of our exports; without this they would be resolved through the
    // GOT, and an LD_PRELOADed library exporting the same names (the gpuslice shim) would
    // make cuGetProcAddress return the preloaded functions instead of what dlsym on a
    // libcuda.so.1 handle returns. -Bsymbolic rather than -Bsymbolic-functions, which zig's
    // linker lacks (the old-glibc build, scripts/glibc-baseline.sh, links with it); the
    // library exports only functions, so the two bind the same references.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-Bsymbolic");
    // Programs linked with -lcuda against it record libcuda.so.1, as with the real driver.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rerun-if-changed=build.rs");
}
