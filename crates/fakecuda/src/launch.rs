//! Kernel launches: checking the launch configuration, reading the kernel's argument, and
//! queuing the kernel on its stream.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use crate::error::{CuError, CuResult};
use crate::module;
use crate::stream::{self, Op};

/// `CU_LAUNCH_PARAM_END`.
const PARAM_END: usize = 0x00;
/// `CU_LAUNCH_PARAM_BUFFER_POINTER`.
const PARAM_BUFFER_POINTER: usize = 0x01;
/// `CU_LAUNCH_PARAM_BUFFER_SIZE`.
const PARAM_BUFFER_SIZE: usize = 0x02;
/// Most dynamic shared memory a block may ask for (an H100's opt-in maximum).
const MAX_SHARED_MEM: u32 = 232_448;

/// A launch configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Grid dimensions in blocks.
    pub grid: [u32; 3],
    /// Block dimensions in threads.
    pub block: [u32; 3],
    /// Dynamic shared memory per block.
    pub shared_mem: u32,
}

impl Dims {
    /// Checks the configuration against the simulated device's limits.
    pub fn check(&self) -> CuResult {
        let [gx, gy, gz] = self.grid;
        let [bx, by, bz] = self.block;
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        let grid_ok = gx >= 1
            && gx <= i32::MAX as u32
            && (1..=65535).contains(&gy)
            && (1..=65535).contains(&gz);
        let block_ok = bx >= 1
            && by >= 1
            && bz >= 1
            && bx <= 1024
            && by <= 1024
            && bz <= 64
            && threads <= 1024;
        if grid_ok && block_ok && self.shared_mem <= MAX_SHARED_MEM {
            Ok(())
        } else {
            Err(CuError::InvalidValue)
        }
    }
}

/// The kernel's first argument as a `u64`, from `kernelParams` or from the `extra` buffer.
///
/// # Safety
///
/// `params` and `extra` must be as `cuLaunchKernel` documents: NULL, or an array of pointers
/// to the arguments / a `CU_LAUNCH_PARAM_END`-terminated list of key-value pairs.
unsafe fn first_u64(params: *mut *mut c_void, extra: *mut *mut c_void) -> Option<u64> {
    // SAFETY: guaranteed by the caller (whole body); a kernel that takes a .u64 first
    // argument has at least 8 readable bytes behind its first parameter pointer.
    unsafe {
        if !params.is_null() {
            let first = *params;
            return (!first.is_null()).then(|| first.cast::<u64>().read_unaligned());
        }
        if extra.is_null() {
            return None;
        }
        let (mut buffer, mut size) = (None, None);
        for i in (0..64).step_by(2) {
            let key = *extra.add(i) as usize;
            if key == PARAM_END {
                break;
            }
            let value = *extra.add(i + 1);
            match key {
                PARAM_BUFFER_POINTER => buffer = Some(value),
                PARAM_BUFFER_SIZE if !value.is_null() => size = Some(*value.cast::<usize>()),
                _ => {}
            }
        }
        match (buffer, size) {
            (Some(b), Some(n)) if !b.is_null() && n >= 8 => Some(b.cast::<u64>().read_unaligned()),
            _ => None,
        }
    }
}

/// Launches the function (or library kernel) `func` on `stream`.
///
/// # Safety
///
/// As `first_u64`.
pub unsafe fn launch(
    func: usize,
    dims: &Dims,
    stream: usize,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let called = Instant::now();
    let f = module::function(func)?;
    dims.check()?;
    let s = stream::resolve(stream)?;
    let argument = if f.kernel.needs_u64_argument() {
        // SAFETY: forwarded from the caller.
        unsafe { first_u64(params, extra) }
    } else {
        None
    };
    let device = s.ctx.upgrade().map(|ctx| ctx.device);
    let op = Op::Kernel(f.kernel.duration(argument)?, device);
    s.submit_at(op, queued_at(called)).map(drop)
}

/// When a launch called at `called` queues its kernel: as of the call's start, or, with
/// `FAKECUDA_LAUNCH_NS`, that long after it, the call returning no earlier (spinning, as a
/// driver's call is CPU work), as on an H100 where a short kernel starts at the end of its
/// launch call. A call preempted on the way has submitted its kernel all the same.
fn queued_at(called: Instant) -> Instant {
    let took = match crate::driver::load() {
        Ok(driver) if driver.config.launch_ns > 0 => Duration::from_nanos(driver.config.launch_ns),
        _ => return called,
    };
    let queued = called + took;
    while Instant::now() < queued {
        std::hint::spin_loop();
    }
    queued
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_dimensions_follow_the_device_limits() {
        let ok = Dims {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_mem: 0,
        };
        assert_eq!(ok.check(), Ok(()));
        for bad in [
            Dims {
                grid: [0, 1, 1],
                ..ok
            },
            Dims {
                block: [1025, 1, 1],
                ..ok
            },
            Dims {
                block: [32, 32, 2],
                ..ok
            },
            Dims {
                block: [1, 1, 65],
                ..ok
            },
            Dims {
                grid: [1, 65536, 1],
                ..ok
            },
            Dims {
                shared_mem: MAX_SHARED_MEM + 1,
                ..ok
            },
        ] {
            assert_eq!(bad.check(), Err(CuError::InvalidValue), "{bad:?}");
        }
    }

    #[test]
    fn the_first_argument_comes_from_params_or_the_extra_buffer() {
        let mut ns: u64 = 5_000_000;
        let mut params = [(&raw mut ns).cast::<c_void>()];
        // SAFETY: params points to one valid argument pointer.
        let from_params = unsafe { first_u64(params.as_mut_ptr(), std::ptr::null_mut()) };
        assert_eq!(from_params, Some(ns));

        let mut buffer = 7_u64.to_ne_bytes();
        let mut len: usize = buffer.len();
        let mut extra = [
            PARAM_BUFFER_POINTER as *mut c_void,
            buffer.as_mut_ptr().cast(),
            PARAM_BUFFER_SIZE as *mut c_void,
            (&raw mut len).cast(),
            PARAM_END as *mut c_void,
        ];
        // SAFETY: extra is a well-formed CU_LAUNCH_PARAM list over live buffers.
        let from_extra = unsafe { first_u64(std::ptr::null_mut(), extra.as_mut_ptr()) };
        assert_eq!(from_extra, Some(7));
        // SAFETY: both NULL.
        let from_nothing = unsafe { first_u64(std::ptr::null_mut(), std::ptr::null_mut()) };
        assert_eq!(from_nothing, None);
    }
}
