//! CUDA IPC between the processes sharing a state directory: `cuIpcGetMemHandle` exports a
//! `cuMemAlloc` allocation, `cuIpcOpenMemHandle` maps it into another process, and
//! `cuIpcCloseMemHandle` unmaps it there.
//!
//! Exporting turns the allocation's private backing into a file of the state directory,
//! `ipc/<pid>-<serial>`: the file gets the allocation's contents (only the pages that are not
//! zero, so the file stays sparse), and is mapped shared over the allocation's own address
//! range, which keeps its address. An opener maps the same file, so both see each other's
//! writes, as two processes using one real allocation do. The handle names the file: the
//! exporter's pid and a serial number of its own, the physical device and the size.
//!
//! Memory is charged where a real GPU keeps it: to the exporter's allocation, on the
//! exporter's device. Opening takes no device memory and is not counted anywhere (NVML's
//! per-process figure of the opener does not include it, the device's shared capacity does
//! not change); whether a real NVML counts opened memory in the opener's figure is checked
//! on GPUs by `scripts/gpu-check.sh --multi`.
//!
//! The file is removed when the exporter frees the allocation (or destroys its context) and
//! when the exporter exits normally; an opener keeps its mapping until it closes it. Freeing
//! exported memory while another process has it open is undefined on a real GPU (CUDA's
//! documentation of `cuIpcOpenMemHandle`); here the exporter's charge goes and the opener's
//! mapping stays readable. A killed exporter's files stay behind in the state directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use gpuslice_cuda_abi::{CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, CUipcMemHandle};
use parking_lot::Mutex;

use crate::context;
use crate::driver;
use crate::error::{CuError, CuResult};
use crate::log;
use crate::mapping::{self, Access, Mapping};

/// The first bytes of every handle the simulator makes.
const MAGIC: [u8; 8] = *b"FAKEIPC1";

/// What a handle says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Named {
    /// The exporting process.
    pid: u32,
    /// The physical device of the allocation.
    device: u32,
    /// The exporter's number for the export.
    serial: u64,
    /// The allocation's size in bytes.
    size: u64,
}

impl Named {
    fn encode(&self) -> CUipcMemHandle {
        let mut bytes = [0u8; 64];
        bytes[..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&self.pid.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.device.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.serial.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.size.to_le_bytes());
        CUipcMemHandle { reserved: bytes }
    }

    /// A handle this simulator made, or `CUDA_ERROR_INVALID_VALUE`.
    fn decode(handle: &CUipcMemHandle) -> CuResult<Named> {
        let b = &handle.reserved;
        let u32_at = |at: usize| b[at..at + 4].try_into().map(u32::from_le_bytes);
        let u64_at = |at: usize| b[at..at + 8].try_into().map(u64::from_le_bytes);
        if b[..8] != MAGIC || b[32..].iter().any(|&x| x != 0) {
            return Err(CuError::InvalidValue);
        }
        let invalid = |_| CuError::InvalidValue;
        Ok(Named {
            pid: u32_at(8).map_err(invalid)?,
            device: u32_at(12).map_err(invalid)?,
            serial: u64_at(16).map_err(invalid)?,
            size: u64_at(24).map_err(invalid)?,
        })
    }

    fn path(&self, state_dir: &Path) -> PathBuf {
        state_dir
            .join("ipc")
            .join(format!("{}-{}", self.pid, self.serial))
    }
}

/// An exported allocation's file: removed when the allocation is freed.
#[derive(Debug)]
pub struct Export {
    path: PathBuf,
    /// The handle `cuIpcGetMemHandle` returns for it (the same each time).
    pub handle: CUipcMemHandle,
}

impl Drop for Export {
    fn drop(&mut self) {
        EXPORTED.lock().retain(|p| *p != self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The files of this process's exports, removed at exit.
static EXPORTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Makes the allocation `mapping` backs (`size` bytes on physical device `device`)
/// shareable: its contents go into a new file of the state directory, which then replaces
/// its private backing at the same address.
///
/// # Safety
///
/// `mapping` must be an allocation's private anonymous backing that no queued operation and
/// no other thread touches until this returns.
pub unsafe fn export(mapping: &Mapping, size: usize, device: usize) -> CuResult<Export> {
    let state_dir = &driver::get()?.config.state_dir;
    let named = Named {
        pid: std::process::id(),
        device: u32::try_from(device).map_err(|_| CuError::InvalidValue)?,
        serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        size: size as u64,
    };
    let path = named.path(state_dir);
    let system = |e: io::Error| {
        log::once(&format!("fakecuda: IPC export {}: {e}", path.display()));
        CuError::OperatingSystem
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(system)?;
    }
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(system)?;
    let export = Export {
        path: path.clone(),
        handle: named.encode(),
    };
    EXPORTED.lock().push(path.clone());
    file.set_len(mapping.len() as u64).map_err(system)?;
    let page = mapping::page_size();
    for offset in (0..mapping.len()).step_by(page) {
        // SAFETY: the page lies inside the live mapping, readable, and nothing writes it
        // meanwhile (the caller's promise).
        let bytes =
            unsafe { std::slice::from_raw_parts((mapping.addr() + offset) as *const u8, page) };
        if bytes.iter().any(|&b| b != 0) {
            file.write_all_at(bytes, offset as u64).map_err(system)?;
        }
    }
    // SAFETY: the range is the allocation's own mapping, which the caller owns and nothing
    // touches meanwhile; the file holds its contents, so replacing it changes nothing a
    // reader could see.
    unsafe {
        mapping::map_fixed_shared(
            mapping.addr(),
            mapping.len(),
            file.as_fd(),
            0,
            Access::ReadWrite,
        )
    }
    .map_err(system)?;
    Ok(export)
}

/// Removes this process's export files (at exit: the allocations are gone with it).
pub fn forget_exports() {
    for path in std::mem::take(&mut *EXPORTED.lock()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Another process's allocation, mapped here.
#[derive(Debug)]
struct Import {
    mapping: Mapping,
    size: usize,
    /// The exporter's pid and serial.
    key: (u32, u64),
    /// Opens not yet closed: opening one handle again returns the same address.
    opens: u32,
}

static IMPORTS: Mutex<BTreeMap<usize, Import>> = Mutex::new(BTreeMap::new());

/// `cuIpcOpenMemHandle`: maps another process's exported allocation into this one (the same
/// address again for a handle already open here). Needs a current context;
/// `CUDA_ERROR_INVALID_CONTEXT` for a handle this process exported itself, as on a real
/// GPU; `CUDA_ERROR_MAP_FAILED` once the memory is gone (freed, or its exporter exited).
pub fn open(handle: &CUipcMemHandle, flags: u32) -> CuResult<usize> {
    let state_dir = &driver::get()?.config.state_dir;
    if flags & !CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS != 0 {
        return Err(CuError::InvalidValue);
    }
    context::current()?;
    let named = Named::decode(handle)?;
    if named.pid == std::process::id() {
        return Err(CuError::InvalidContext);
    }
    let size = usize::try_from(named.size).map_err(|_| CuError::InvalidValue)?;
    let key = (named.pid, named.serial);
    let mut imports = IMPORTS.lock();
    if let Some(import) = imports.values_mut().find(|i| i.key == key) {
        import.opens += 1;
        return Ok(import.mapping.addr());
    }
    let file = File::options()
        .read(true)
        .write(true)
        .open(named.path(state_dir))
        .map_err(|_| CuError::MapFailed)?;
    let mapping = Mapping::shared_file(file.as_fd(), size).map_err(|_| CuError::MapFailed)?;
    let base = mapping.addr();
    imports.insert(
        base,
        Import {
            mapping,
            size,
            key,
            opens: 1,
        },
    );
    Ok(base)
}

/// `cuIpcCloseMemHandle`: one open of the memory at `base` ends; the last unmaps it here
/// (after queued copies that may touch it). The exporter's allocation is untouched.
pub fn close(base: usize) -> CuResult {
    driver::get()?;
    crate::memory::wait_for_memory_ops();
    let mut imports = IMPORTS.lock();
    let import = imports.get_mut(&base).ok_or(CuError::InvalidValue)?;
    import.opens -= 1;
    if import.opens == 0 {
        imports.remove(&base);
    }
    Ok(())
}

/// Whether `[ptr, ptr + len)` lies inside memory opened from another process.
pub fn is_open(ptr: usize, len: usize) -> bool {
    IMPORTS
        .lock()
        .range(..=ptr)
        .next_back()
        .is_some_and(|(&base, i)| ptr.checked_add(len).is_some_and(|end| end <= base + i.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_foreign_bytes_are_refused() {
        let named = Named {
            pid: 4242,
            device: 1,
            serial: 7,
            size: 1 << 30,
        };
        let handle = named.encode();
        assert_eq!(Named::decode(&handle), Ok(named));
        assert_eq!(named.path(Path::new("/s")), PathBuf::from("/s/ipc/4242-7"));
        let mut foreign = handle;
        foreign.reserved[0] ^= 1;
        assert_eq!(Named::decode(&foreign), Err(CuError::InvalidValue));
        let mut trailing = handle;
        trailing.reserved[63] = 1;
        assert_eq!(Named::decode(&trailing), Err(CuError::InvalidValue));
        assert_eq!(
            Named::decode(&CUipcMemHandle { reserved: [0; 64] }),
            Err(CuError::InvalidValue)
        );
    }
}
