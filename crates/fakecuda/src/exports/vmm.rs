//! Virtual memory management: `cuMemCreate`, `cuMemRelease`, `cuMemRetainAllocationHandle`,
//! `cuMemAddressReserve`, `cuMemAddressFree`, `cuMemMap`, `cuMemUnmap`, `cuMemSetAccess`,
//! `cuMemGetAllocationGranularity`.

use super::{Out, addr, cuda_api, put};
use crate::driver;
use crate::error::CuError;
use crate::mapping::Access;
use crate::vmm::{self, GRANULARITY};
use gpuslice_cuda_abi::{
    CU_MEM_ALLOCATION_TYPE_PINNED, CU_MEM_LOCATION_TYPE_DEVICE, CUmemAccessDesc,
    CUmemAllocationProp,
};

cuda_api! {
    /// `cuMemCreate`: pinned device memory (a multiple of 2 MiB), charged at once.
    fn cuMemCreate(handle: Out<'_, u64>, bytes: usize, prop: Option<&CUmemAllocationProp>, flags: u64) {
        let (out, p) = (handle.ok_or(CuError::InvalidValue)?, prop.ok_or(CuError::InvalidValue)?);
        if flags != 0 || p.kind != CU_MEM_ALLOCATION_TYPE_PINNED || p.location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CuError::InvalidValue);
        }
        out.write(vmm::create(driver::device(p.location.id)?, bytes)?);
        Ok(())
    }

    /// `cuMemRelease`: one reference of the handle; the memory goes back to the device once
    /// the handle has none left and no mapping uses it.
    fn cuMemRelease(handle: u64) {
        driver::get()?;
        vmm::release(handle)
    }

    /// `cuMemRetainAllocationHandle`: the handle of the memory mapped at `addr`, with one more
    /// reference to release.
    fn cuMemRetainAllocationHandle(handle: Out<'_, u64>, addr: usize) {
        let out = handle.ok_or(CuError::InvalidValue)?;
        driver::get()?;
        out.write(vmm::retain(addr)?);
        Ok(())
    }

    /// `cuMemAddressReserve`: an inaccessible address range; the address hint is ignored.
    fn cuMemAddressReserve(ptr: Out<'_, u64>, bytes: usize, alignment: usize, hint: u64, flags: u64) {
        let _ = hint;
        let out = ptr.ok_or(CuError::InvalidValue)?;
        driver::get()?;
        if flags != 0 {
            return Err(CuError::InvalidValue);
        }
        out.write(vmm::reserve(bytes, alignment)? as u64);
        Ok(())
    }

    /// `cuMemAddressFree`: a whole reservation.
    fn cuMemAddressFree(ptr: u64, bytes: usize) {
        driver::get()?;
        vmm::free(addr(ptr)?, bytes)
    }

    /// `cuMemMap`: inaccessible until `cuMemSetAccess`.
    fn cuMemMap(ptr: u64, bytes: usize, offset: usize, handle: u64, flags: u64) {
        driver::get()?;
        if flags != 0 {
            return Err(CuError::InvalidValue);
        }
        vmm::map(addr(ptr)?, bytes, offset, handle)
    }

    /// `cuMemUnmap`.
    fn cuMemUnmap(ptr: u64, bytes: usize) {
        driver::get()?;
        vmm::unmap(addr(ptr)?, bytes)
    }

    /// `cuMemSetAccess`: the strongest access any descriptor grants.
    fn cuMemSetAccess(ptr: u64, bytes: usize, desc: *const CUmemAccessDesc, count: usize) {
        driver::get()?;
        if desc.is_null() || count == 0 {
            return Err(CuError::InvalidValue);
        }
        // SAFETY: the caller passes an array of count descriptors.
        let descs = unsafe { std::slice::from_raw_parts(desc, count) };
        let access = descs
            .iter()
            .map(|d| match d.flags {
                0 => Ok(Access::None),
                1 => Ok(Access::Read),
                3 => Ok(Access::ReadWrite),
                _ => Err(CuError::InvalidValue),
            })
            .try_fold(Access::None, |best, a| {
                a.map(|a| if a == Access::ReadWrite || best == Access::None { a } else { best })
            })?;
        vmm::set_access(addr(ptr)?, bytes, access)
    }

    /// `cuMemGetAllocationGranularity`: 2 MiB, minimum and recommended.
    fn cuMemGetAllocationGranularity(
        granularity: Out<'_, usize>,
        prop: Option<&CUmemAllocationProp>,
        option: u32,
    ) {
        let p = prop.ok_or(CuError::InvalidValue)?;
        if option > 1 || p.location.kind != CU_MEM_LOCATION_TYPE_DEVICE {
            return Err(CuError::InvalidValue);
        }
        driver::device(p.location.id)?;
        put(granularity, GRANULARITY)
    }
}
