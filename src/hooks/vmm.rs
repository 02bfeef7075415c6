//! Virtual memory management (PyTorch's expandable segments, JAX, NCCL): `cuMemCreate` takes
//! device memory, and it is given back when the last reference to it goes, whether that is
//! the handle's `cuMemRelease` or the `cuMemUnmap` of its last mapping
//! ([`VmmCharges`](crate::policy::vmm::VmmCharges) counts them). Each hook pins what the
//! call may add a reference to before calling the driver, and lets go of references only
//! after the driver's call succeeded.

use std::ffi::c_void;

use crate::cuda::*;
use crate::hooks::memory::reserve;
use crate::hooks::shim_or;
use crate::policy::memory::Charge;
use crate::shim::Shim;

/// Gives back the charges of allocations nothing refers to any more.
fn give_back(shim: &Shim, freed: impl IntoIterator<Item = Charge>) {
    for charge in freed {
        shim.memory.release(charge);
    }
}

/// `cuMemCreate`. Only device-located allocations take device memory.
pub(crate) unsafe fn create(
    call: impl Fn() -> CUresult,
    handle: *mut CUmemGenericAllocationHandle,
    bytes: usize,
    prop: *const CUmemAllocationProp,
) -> CUresult {
    let shim = shim_or!(call());
    if handle.is_null() || prop.is_null() {
        return call();
    }
    // SAFETY: non-null, and the API requires it to point at a CUmemAllocationProp.
    let location = unsafe { (*prop).location };
    if location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
        return call();
    }
    let gpu = match shim.devices.by_ordinal(&shim.memory, location.id) {
        Ok(gpu) => gpu,
        Err(status) => return status,
    };
    let Ok(reservation) = reserve(shim, &gpu, bytes as u64) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    let status = call();
    if status == CUDA_SUCCESS {
        // SAFETY: `handle` is non-null and written by the driver when `call` succeeded.
        let created = unsafe { *handle };
        give_back(
            shim,
            shim.allocations.vmm.created(created, reservation.commit()),
        );
    }
    status
}

/// `cuMemRelease`: one reference to the allocation goes; its memory (and charge) only with
/// the last, which may be a mapping's.
pub(crate) unsafe fn release(
    call: impl Fn() -> CUresult,
    handle: CUmemGenericAllocationHandle,
) -> CUresult {
    let shim = shim_or!(call());
    let pin = shim.allocations.vmm.pin_handle(handle);
    let status = call();
    if let Some(pin) = pin {
        let freed = if status == CUDA_SUCCESS {
            shim.allocations.vmm.released(pin)
        } else {
            shim.allocations.vmm.unpin(pin)
        };
        give_back(shim, freed);
    }
    status
}

/// `cuMemMap`: each mapping is a reference that keeps the allocation's memory.
pub(crate) unsafe fn map(
    call: impl Fn() -> CUresult,
    ptr: CUdeviceptr,
    size: usize,
    handle: CUmemGenericAllocationHandle,
) -> CUresult {
    let shim = shim_or!(call());
    let pin = shim.allocations.vmm.pin_handle(handle);
    let status = call();
    if status == CUDA_SUCCESS {
        give_back(shim, shim.allocations.vmm.mapped(pin, ptr, size as u64));
    } else if let Some(pin) = pin {
        give_back(shim, shim.allocations.vmm.unpin(pin));
    }
    status
}

/// `cuMemUnmap`: every allocation mapped in the range loses that mapping.
pub(crate) unsafe fn unmap(call: impl Fn() -> CUresult, ptr: CUdeviceptr, size: usize) -> CUresult {
    let shim = shim_or!(call());
    let status = call();
    if status == CUDA_SUCCESS {
        give_back(shim, shim.allocations.vmm.unmapped(ptr, size as u64));
    }
    status
}

/// `cuMemRetainAllocationHandle`: the handle of the memory mapped at `addr`, with one more
/// reference that the program must release.
pub(crate) unsafe fn retain(
    call: impl Fn() -> CUresult,
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    let shim = shim_or!(call());
    if handle.is_null() {
        return call();
    }
    let pin = shim.allocations.vmm.pin_address(addr as u64);
    let status = call();
    if status == CUDA_SUCCESS {
        // SAFETY: `handle` is non-null and written by the driver when `call` succeeded.
        let retained = unsafe { *handle };
        give_back(shim, shim.allocations.vmm.retained(pin, retained));
    } else if let Some(pin) = pin {
        give_back(shim, shim.allocations.vmm.unpin(pin));
    }
    status
}
