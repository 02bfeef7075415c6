//! Kernel launches. Every launch path of the driver is hooked here so that compute shares
//! can gate them; until they do (the compute issue), each passes straight through.

use std::ffi::c_void;

use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::real_or_missing;

/// `cuLaunchKernel`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel(
    f: CUfunction,
    grid_x: u32,
    grid_y: u32,
    grid_z: u32,
    block_x: u32,
    block_y: u32,
    block_z: u32,
    shared_bytes: u32,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchKernel);
    // SAFETY: the caller's arguments, unchanged.
    unsafe {
        real(
            f,
            grid_x,
            grid_y,
            grid_z,
            block_x,
            block_y,
            block_z,
            shared_bytes,
            stream,
            params,
            extra,
        )
    }
}

/// `cuLaunchKernel_ptsz`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_ptsz(
    f: CUfunction,
    grid_x: u32,
    grid_y: u32,
    grid_z: u32,
    block_x: u32,
    block_y: u32,
    block_z: u32,
    shared_bytes: u32,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchKernel_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    unsafe {
        real(
            f,
            grid_x,
            grid_y,
            grid_z,
            block_x,
            block_y,
            block_z,
            shared_bytes,
            stream,
            params,
            extra,
        )
    }
}

/// `cuLaunchKernelEx`.
pub(crate) unsafe fn kernel_ex(
    config: *const c_void,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchKernelEx);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(config, f, params, extra) }
}

/// `cuLaunchKernelEx_ptsz`.
pub(crate) unsafe fn kernel_ex_ptsz(
    config: *const c_void,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchKernelEx_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(config, f, params, extra) }
}

/// `cuLaunchCooperativeKernel`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn cooperative(
    f: CUfunction,
    grid_x: u32,
    grid_y: u32,
    grid_z: u32,
    block_x: u32,
    block_y: u32,
    block_z: u32,
    shared_bytes: u32,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchCooperativeKernel);
    // SAFETY: the caller's arguments, unchanged.
    unsafe {
        real(
            f,
            grid_x,
            grid_y,
            grid_z,
            block_x,
            block_y,
            block_z,
            shared_bytes,
            stream,
            params,
        )
    }
}

/// `cuLaunchCooperativeKernel_ptsz`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn cooperative_ptsz(
    f: CUfunction,
    grid_x: u32,
    grid_y: u32,
    grid_z: u32,
    block_x: u32,
    block_y: u32,
    block_z: u32,
    shared_bytes: u32,
    stream: CUstream,
    params: *mut *mut c_void,
) -> CUresult {
    let real = real_or_missing!(real::cuLaunchCooperativeKernel_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    unsafe {
        real(
            f,
            grid_x,
            grid_y,
            grid_z,
            block_x,
            block_y,
            block_z,
            shared_bytes,
            stream,
            params,
        )
    }
}

/// `cuGraphLaunch`.
pub(crate) unsafe fn graph(exec: CUgraphExec, stream: CUstream) -> CUresult {
    let real = real_or_missing!(real::cuGraphLaunch);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(exec, stream) }
}

/// `cuGraphLaunch_ptsz`.
pub(crate) unsafe fn graph_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    let real = real_or_missing!(real::cuGraphLaunch_ptsz);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real(exec, stream) }
}
