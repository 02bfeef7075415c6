//! Modules, libraries, launches and graphs: `cuModule*`, `cuFunc*`, `cuLibrary*`,
//! `cuKernelGetFunction`, `cuLaunchKernel[Ex]`, `cuLaunchCooperativeKernel`,
//! `cuGraphInstantiate*`, `cuGraphLaunch`, `cuGraphExecDestroy`, `cuGraphDestroy`.

use std::ffi::{CStr, c_char, c_int, c_void};

use super::{Out, c_str, cuda_api, put, put_if, write_c_string};
use crate::context::{self, Context};
use crate::driver;
use crate::error::{CuError, CuResult};
use crate::graph;
use crate::launch::{self, Dims};
use crate::module::{self, Kind};
use crate::stream;
use gpuslice_cuda_abi::CUlaunchConfig;

/// Loads a module from an image argument: NUL-terminated PTX text (cubins and fatbinaries
/// are refused by their magic bytes). It takes the module footprint on `ctx`'s device.
///
/// # Safety
///
/// `image` must be NULL or point to a NUL-terminated image.
unsafe fn load_image(image: *const c_void, kind: Kind, ctx: Option<&Context>) -> CuResult<usize> {
    if image.is_null() {
        return Err(CuError::InvalidValue);
    }
    // A binary image is not NUL-terminated, so look at its magic before scanning for a NUL,
    // reading no further than the first NUL (cubin and fatbinary magics contain none).
    let mut head = [0_u8; 4];
    for (i, byte) in head.iter_mut().enumerate() {
        // SAFETY: every byte up to the first NUL belongs to the image (caller).
        *byte = unsafe { *image.cast::<u8>().add(i) };
        if *byte == 0 {
            break;
        }
    }
    if head == *b"\x7fELF" || head == 0xba55_ed50_u32.to_le_bytes() {
        return Err(CuError::InvalidImage);
    }
    // SAFETY: PTX text is NUL-terminated (caller).
    let text = unsafe { CStr::from_ptr(image.cast::<c_char>()) };
    module::load_image(text.to_bytes(), kind, ctx)
}

cuda_api! {
    /// `cuModuleLoad`: a PTX file, loaded in the current context (taking the module
    /// footprint).
    fn cuModuleLoad(out: Out<'_, usize>, path: *const c_char) {
        let out = out.ok_or(CuError::InvalidValue)?;
        let ctx = context::current()?;
        // SAFETY: the caller passes a NUL-terminated path.
        let path = unsafe { c_str(path) }?;
        let image = std::fs::read(path).map_err(|_| CuError::FileNotFound)?;
        out.write(module::load_image(&image, Kind::Module, Some(&ctx))?);
        Ok(())
    }

    /// `cuModuleLoadData`: PTX text; finds the `.entry` kernels. Loaded in the current
    /// context, taking the module footprint (`CUDA_ERROR_OUT_OF_MEMORY` if the device is
    /// full).
    fn cuModuleLoadData(out: Out<'_, usize>, image: *const c_void) {
        let out = out.ok_or(CuError::InvalidValue)?;
        let ctx = context::current()?;
        // SAFETY: the caller passes a NUL-terminated image.
        out.write(unsafe { load_image(image, Kind::Module, Some(&ctx)) }?);
        Ok(())
    }

    /// `cuModuleLoadDataEx`: as `cuModuleLoadData`; JIT options are ignored.
    fn cuModuleLoadDataEx(
        out: Out<'_, usize>,
        image: *const c_void,
        num_options: u32,
        options: *mut c_void,
        option_values: *mut *mut c_void,
    ) {
        let _ = (num_options, options, option_values);
        let out = out.ok_or(CuError::InvalidValue)?;
        let ctx = context::current()?;
        // SAFETY: the caller passes a NUL-terminated image.
        out.write(unsafe { load_image(image, Kind::Module, Some(&ctx)) }?);
        Ok(())
    }

    /// `cuModuleUnload`: gives back the module's memory.
    fn cuModuleUnload(handle: usize) {
        driver::get()?;
        module::unload(handle)
    }

    /// `cuModuleGetFunction`: `CUDA_ERROR_NOT_FOUND` for a name without `.entry`.
    fn cuModuleGetFunction(out: Out<'_, usize>, handle: usize, name: *const c_char) {
        let out = out.ok_or(CuError::InvalidValue)?;
        // SAFETY: the caller passes a NUL-terminated name.
        let name = unsafe { c_str(name) }?;
        out.write(module::get_function(handle, name)?);
        Ok(())
    }

    /// `cuModuleGetGlobal_v2`: modules have no globals here.
    fn cuModuleGetGlobal_v2(dptr: Out<'_, u64>, bytes: Out<'_, usize>, handle: usize, name: *const c_char) {
        let _ = (dptr, bytes);
        // SAFETY: the caller passes a NUL-terminated name.
        unsafe { c_str(name) }?;
        if module::exists(handle) {
            Err(CuError::NotFound)
        } else {
            Err(CuError::InvalidHandle)
        }
    }

    /// `cuFuncGetAttribute`: plausible values; set ones read back.
    fn cuFuncGetAttribute(value: Out<'_, c_int>, attribute: u32, func: usize) {
        put(value, module::function(func)?.attribute(attribute))
    }

    /// `cuFuncSetAttribute`: recorded.
    fn cuFuncSetAttribute(func: usize, attribute: u32, value: c_int) {
        module::function(func)?.set_attribute(attribute, value);
        Ok(())
    }

    /// `cuFuncSetCacheConfig`: accepted.
    fn cuFuncSetCacheConfig(func: usize, config: u32) {
        let _ = config;
        module::function(func).map(drop)
    }

    /// `cuLibraryLoadData`: as `cuModuleLoadData`, but needs no context; options are ignored.
    /// Loaded with a current context, it takes the module footprint there (until unloaded
    /// or that context is destroyed); loaded without one, it takes no device memory.
    fn cuLibraryLoadData(
        out: Out<'_, usize>,
        code: *const c_void,
        jit_options: *mut c_void,
        jit_option_values: *mut *mut c_void,
        num_jit_options: u32,
        library_options: *mut c_void,
        library_option_values: *mut *mut c_void,
        num_library_options: u32,
    ) {
        let _ = (jit_options, jit_option_values, num_jit_options);
        let _ = (library_options, library_option_values, num_library_options);
        let out = out.ok_or(CuError::InvalidValue)?;
        driver::get()?;
        let ctx = context::current_handle().and_then(|h| context::get(h).ok());
        // SAFETY: the caller passes a NUL-terminated image.
        out.write(unsafe { load_image(code, Kind::Library, ctx.as_deref()) }?);
        Ok(())
    }

    /// `cuLibraryUnload`: gives back the library's memory.
    fn cuLibraryUnload(library: usize) {
        driver::get()?;
        module::unload(library)
    }

    /// `cuLibraryGetKernel`: the kernel handle is also its function handle.
    fn cuLibraryGetKernel(out: Out<'_, usize>, library: usize, name: *const c_char) {
        let out = out.ok_or(CuError::InvalidValue)?;
        // SAFETY: the caller passes a NUL-terminated name.
        let name = unsafe { c_str(name) }?;
        out.write(module::get_function(library, name)?);
        Ok(())
    }

    /// `cuLibraryGetModule`: the library is its own module.
    fn cuLibraryGetModule(out: Out<'_, usize>, library: usize) {
        if !module::exists(library) {
            return Err(CuError::InvalidHandle);
        }
        put(out, library)
    }

    /// `cuKernelGetFunction`.
    fn cuKernelGetFunction(out: Out<'_, usize>, kernel: usize) {
        module::function(kernel)?;
        put(out, kernel)
    }

    /// `cuLaunchKernel`: `gpuslice_spin(ns)` occupies the stream for `ns` nanoseconds,
    /// every other kernel for no time.
    fn cuLaunchKernel | cuLaunchKernel_ptsz (
        func: usize,
        grid_x: u32, grid_y: u32, grid_z: u32,
        block_x: u32, block_y: u32, block_z: u32,
        shared_mem: u32,
        stream: usize,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        let dims = Dims { grid: [grid_x, grid_y, grid_z], block: [block_x, block_y, block_z], shared_mem };
        // SAFETY: the caller passes params / extra as cuLaunchKernel documents.
        unsafe { launch::launch(func, &dims, stream, params, extra) }
    }

    /// `cuLaunchKernelEx`: launch attributes are ignored.
    fn cuLaunchKernelEx | cuLaunchKernelEx_ptsz (
        config: Option<&CUlaunchConfig>,
        func: usize,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) {
        let c = config.ok_or(CuError::InvalidValue)?;
        let dims = Dims { grid: c.grid, block: c.block, shared_mem: c.shared_mem_bytes };
        // SAFETY: the caller passes params / extra as cuLaunchKernel documents.
        unsafe { launch::launch(func, &dims, c.stream as usize, params, extra) }
    }

    /// `cuLaunchCooperativeKernel`: as `cuLaunchKernel`.
    fn cuLaunchCooperativeKernel | cuLaunchCooperativeKernel_ptsz (
        func: usize,
        grid_x: u32, grid_y: u32, grid_z: u32,
        block_x: u32, block_y: u32, block_z: u32,
        shared_mem: u32,
        stream: usize,
        params: *mut *mut c_void,
    ) {
        let dims = Dims { grid: [grid_x, grid_y, grid_z], block: [block_x, block_y, block_z], shared_mem };
        // SAFETY: the caller passes params as cuLaunchKernel documents.
        unsafe { launch::launch(func, &dims, stream, params, std::ptr::null_mut()) }
    }

    /// `cuGraphInstantiateWithFlags`: an executable copy of a captured graph.
    fn cuGraphInstantiateWithFlags(exec: Out<'_, usize>, graph: usize, flags: u64) {
        let exec = exec.ok_or(CuError::InvalidValue)?;
        exec.write(graph::instantiate(graph, flags)?);
        Ok(())
    }

    /// `cuGraphInstantiate` (CUDA 10.0) and `cuGraphInstantiate_v2` (11.0): as
    /// `cuGraphInstantiateWithFlags` without flags; nothing fails, so the error node is NULL
    /// and the log empty.
    fn cuGraphInstantiate | cuGraphInstantiate_v2 (
        exec: Out<'_, usize>,
        graph: usize,
        error_node: Out<'_, usize>,
        log: *mut c_char,
        log_size: usize,
    ) {
        let exec = exec.ok_or(CuError::InvalidValue)?;
        exec.write(graph::instantiate(graph, 0)?);
        put_if(error_node, 0);
        if !log.is_null() && log_size > 0 {
            // SAFETY: the caller's log buffer holds log_size bytes.
            unsafe { write_c_string(log, log_size, b"") }?;
        }
        Ok(())
    }

    /// `cuGraphLaunch`: the graph's kernels, back to back on the stream (recorded instead,
    /// if the stream captures).
    fn cuGraphLaunch | cuGraphLaunch_ptsz (graph_exec: usize, stream: usize) {
        graph::launch(graph_exec, &*stream::resolve(stream)?).map(drop)
    }

    /// `cuGraphExecDestroy`: launches already queued still run.
    fn cuGraphExecDestroy(graph_exec: usize) {
        driver::get()?;
        graph::destroy_exec(graph_exec)
    }

    /// `cuGraphDestroy`: instances made from the graph stay usable.
    fn cuGraphDestroy(graph: usize) {
        driver::get()?;
        graph::destroy(graph)
    }
}
