//! Link flags of libfakecuda.so.

fn main() {
    // Bind the library's references to its own functions at link time. cuGetProcAddress
    // returns the addresses of our exports; without this they would be resolved through the
    // GOT, and an LD_PRELOADed library exporting the same names (the gpuslice shim) would
    // make cuGetProcAddress return the preloaded functions instead of what dlsym on a
    // libcuda.so.1 handle returns.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-Bsymbolic-functions");
    // Programs linked with -lcuda against it record libcuda.so.1, as with the real driver.
    println!("cargo::rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
    println!("cargo::rerun-if-changed=build.rs");
}
