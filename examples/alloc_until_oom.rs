//! Allocates device memory in chunks until the device says `CUDA_ERROR_OUT_OF_MEMORY`, frees
//! it all, and checks that a chunk can be allocated again. Runs unchanged on a real GPU and on
//! fakecuda; under the gpuslice shim it shows the memory quota.
//!
//! ```text
//! alloc_until_oom [--chunk <quantity>] [--sync]
//! ```
//!
//! - `--chunk`: bytes per allocation, a quantity such as `64Mi` (the default), `1Gi` or
//!   `1048576`.
//! - By default chunks come from cudarc's `CudaStream::alloc` on the default stream, which
//!   calls `cuMemAllocAsync` (and `cuMemFreeAsync`) on every device with memory pools: an
//!   H100, and fakecuda. `--sync` allocates with `cuMemAlloc_v2` and frees with
//!   `cuMemFree_v2` instead, through cudarc's result API.
//!
//! Prints:
//!
//! ```text
//! mem_get_info free=<bytes> total=<bytes>
//! allocated=<bytes> chunks=<n> error=CUDA_ERROR_OUT_OF_MEMORY
//! realloc_after_free=ok
//! ```
//!
//! and exits 0; any other error is reported on stderr with exit status 1.

use std::process::ExitCode;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUresult};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DriverError, result};

const USAGE: &str = "usage: alloc_until_oom [--chunk <quantity, default 64Mi>] [--sync]";

struct Args {
    chunk: usize,
    sync: bool,
}

/// One allocation, freed on drop.
enum Chunk {
    /// From `CudaStream::alloc` (`cuMemAllocAsync` where pools are supported).
    Pooled(#[expect(dead_code, reason = "held only to be freed on drop")] CudaSlice<u8>),
    /// From `cuMemAlloc_v2`.
    Plain(CUdeviceptr),
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Chunk::Plain(ptr) = *self {
            // SAFETY: ptr came from cuMemAlloc_v2, is freed once, and nothing uses it.
            if let Err(e) = unsafe { result::free_sync(ptr) } {
                eprintln!("alloc_until_oom: cuMemFree_v2: {e}");
            }
        }
    }
}

fn allocate(stream: &Arc<CudaStream>, args: &Args) -> Result<Chunk, DriverError> {
    if args.sync {
        // SAFETY: the memory is never read; it is freed by Chunk's drop.
        unsafe { result::malloc_sync(args.chunk) }.map(Chunk::Plain)
    } else {
        // SAFETY: the memory is never read before being freed.
        unsafe { stream.alloc::<u8>(args.chunk) }.map(Chunk::Pooled)
    }
}

fn error_name(e: &DriverError) -> String {
    e.error_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0))
}

fn run(args: &Args) -> Result<(), String> {
    let ctx = CudaContext::new(0).map_err(|e| format!("creating a context on device 0: {e}"))?;
    let stream = ctx.default_stream();
    let (free, total) = ctx
        .mem_get_info()
        .map_err(|e| format!("cuMemGetInfo: {e}"))?;
    println!("mem_get_info free={free} total={total}");

    let mut chunks = Vec::new();
    let error = loop {
        match allocate(&stream, args) {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => break e,
        }
        if chunks.len().saturating_mul(args.chunk) > total.saturating_add(args.chunk) {
            return Err(format!(
                "allocated {} chunks, more than the {total} bytes total, without running out",
                chunks.len()
            ));
        }
    };
    if error.0 != CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Err(format!(
            "allocation {} failed with {} instead of CUDA_ERROR_OUT_OF_MEMORY: {error}",
            chunks.len() + 1,
            error_name(&error)
        ));
    }
    println!(
        "allocated={} chunks={} error={}",
        chunks.len() * args.chunk,
        chunks.len(),
        error_name(&error)
    );

    drop(chunks);
    stream
        .synchronize()
        .map_err(|e| format!("synchronizing after freeing: {e}"))?;
    let again = allocate(&stream, args)
        .map_err(|e| format!("allocating one chunk after freeing everything: {e}"))?;
    println!("realloc_after_free=ok");
    drop(again);
    stream
        .synchronize()
        .map_err(|e| format!("synchronizing at exit: {e}"))?;
    Ok(())
}

/// A byte quantity, as gpuslice reads them (`gpuslice_ledger::parse_quantity`).
fn parse_quantity(text: &str) -> Option<usize> {
    gpuslice_ledger::parse_quantity(text).and_then(|bytes| usize::try_from(bytes).ok())
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        chunk: 64 << 20,
        sync: false,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--chunk" => {
                let value = argv.next().ok_or(USAGE)?;
                args.chunk = parse_quantity(&value).filter(|&n| n > 0).ok_or_else(|| {
                    format!("--chunk {value:?}: expected a quantity such as 64Mi\n{USAGE}")
                })?;
            }
            "--sync" => args.sync = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("alloc_until_oom: {message}");
            ExitCode::FAILURE
        }
    }
}
