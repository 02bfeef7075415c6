//! Stream-ordered memory: `cuMemAllocAsync[_ptsz]`, `cuMemAllocFromPoolAsync[_ptsz]`,
//! `cuMemFreeAsync[_ptsz]`, and the pools they draw from (`cuMemPoolCreate`,
//! `cuMemPoolDestroy`, `cuMemPoolTrimTo`).
//!
//! A pool is charged what it holds on its GPU (`policy::pools`), read from the driver after
//! each allocation from it: its growth is paid from the reservation made before the call
//! (so a pool never grows unreserved, beyond its own rounding), and whatever the pool gave
//! back since is released. A free changes nothing: the memory is the pool's until the
//! stream reaches the free, and the pool's until a synchronization or a trim after that.
//! When a reservation on a GPU would be refused, the pools there are first looked at again
//! and, if that is not enough, trimmed (`make_room`); a trim gives back only memory whose
//! frees have completed, never memory behind a queued free.
//!
//! No lock is held while the driver is asked or trims: each reading is taken under a ticket
//! (after the call that changed the pool returned) and applied only if no later reading
//! was, so that threads allocating from one pool at once never take its charge back to an
//! older state (`policy::pools`).

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use gpuslice_ledger::GpuIndex;

use crate::allocations::Held;
use crate::cuda::*;
use crate::exports::driver::real;
use crate::hooks::memory::reserve;
use crate::hooks::shim_or;
use crate::log::{Level, RateLimit, log};
use crate::policy::memory::{Charge, Gpu, Reservation};
use crate::policy::pools::{PoolCharge, PoolHome, Settled};
use crate::real::cuda as driver;
use crate::runtime::{self, Mode};
use crate::shim::Shim;

/// A stream-ordered allocation: reserve, call the driver, then settle the pool's charge
/// against what it holds now. `pool` is the explicit pool, if any (otherwise the driver
/// took the stream's device's current pool, which the pointer tells); `per_thread` says the
/// call is a `_ptsz` one (a NULL stream is the thread's own).
///
/// `cuMemAllocAsync`, `cuMemAllocFromPoolAsync` and their `_ptsz` twins.
///
/// # Safety
/// `driver` makes the real call with the caller's arguments; `dptr` is the out-pointer it
/// writes on success.
pub(crate) unsafe fn allocated(
    driver: impl Fn() -> CUresult,
    dptr: *mut CUdeviceptr,
    bytes: usize,
    stream: CUstream,
    pool: Option<CUmemoryPool>,
    per_thread: bool,
) -> CUresult {
    let shim = shim_or!(driver());
    if dptr.is_null() {
        return driver();
    }
    let gpu = match pool.and_then(|pool| shim.pools.home(pool as u64)) {
        Some(PoolHome::Host) => return driver(),
        Some(PoolHome::Gpu(gpu)) => gpu,
        // A device's pool (its default one, or one imported): the stream's device's.
        None => match shim.devices.of_stream(&shim.memory, stream) {
            Ok(gpu) => gpu,
            Err(status) => return status,
        },
    };
    if capturing(shim, stream, per_thread) {
        // A graph's allocation, made when the graph runs, from the graph's own pool:
        // charged by its size, as any allocation, until it is freed (no context's end
        // frees it).
        return crate::hooks::memory::charged(
            shim,
            &shim.allocations.device,
            &gpu,
            None,
            bytes as u64,
            || {
                let status = driver();
                // SAFETY: `dptr` is non-null and written by the driver when it succeeded.
                (status, Some(unsafe { *dptr }))
            },
        );
    }
    let Ok(reservation) = reserve(shim, &gpu, bytes as u64) else {
        return CUDA_ERROR_OUT_OF_MEMORY;
    };
    let status = driver();
    if status != CUDA_SUCCESS {
        return status;
    }
    // SAFETY: `dptr` is non-null and written by the driver on success.
    let address = unsafe { *dptr };
    if address == 0 {
        return status; // zero bytes: nothing taken, the reservation goes back
    }
    let pool = pool.map(|pool| pool as u64).or_else(|| pool_of(address));
    let unsettled = match pool {
        Some(pool) => settle(shim, pool, &gpu, reservation).err(),
        None => Some(reservation),
    };
    if let Some(reservation) = unsettled {
        // The driver would not say which pool, or what it holds: charged by size, as an
        // allocation of its own, until it is freed. The driver frees stream-ordered memory
        // with no context ("not associated with any CUDA context"), so none is recorded.
        let held = Held {
            charge: reservation.commit(),
            context: None,
        };
        if let Some(stale) = shim.allocations.device.insert(address, held) {
            shim.memory.release(stale);
        }
    }
    status
}

/// Settles `pool`'s charge after an allocation that reserved `reservation`; gives the
/// reservation back untouched if the driver cannot say what the pool holds, or the pool
/// was destroyed meanwhile.
fn settle<'a>(
    shim: &'a Shim,
    pool: u64,
    gpu: &Gpu,
    reservation: Reservation<'a>,
) -> Result<(), Reservation<'a>> {
    let charge = shim.pools.charge_of(pool, gpu);
    match look(shim, pool, &charge, Some(reservation)) {
        Looked::Settled(Settled::Destroyed(Some(reservation)))
        | Looked::Unread(Some(reservation)) => Err(reservation),
        _ => Ok(()),
    }
}

/// What a look at a pool came to.
enum Looked<'a> {
    /// The reading was handed to the charge.
    Settled(Settled<'a>),
    /// The driver would not say what the pool holds; the reservation, if any, is back.
    Unread(Option<Reservation<'a>>),
}

/// Reads what `pool` holds and settles its charge with it. The ticket is taken first (the
/// call that changed the pool has returned), the driver asked with no lock held, and the
/// reading applied only if no later one was (`policy::pools`).
fn look<'a>(
    shim: &'a Shim,
    pool: u64,
    charge: &PoolCharge,
    reservation: Option<Reservation<'a>>,
) -> Looked<'a> {
    let ticket = charge.ticket();
    match reserved_bytes(pool) {
        Some(reserved) => {
            Looked::Settled(charge.settle(ticket, reserved, reservation, &shim.memory))
        }
        None => Looked::Unread(reservation),
    }
}

/// A free in stream order. A pool's block stays the pool's: nothing to do. An allocation
/// charged by its size (`cuMemAlloc`, or one whose pool could not be asked) is released
/// when the stream reaches the free, not when it is queued. `cuMemFreeAsync` and its
/// `_ptsz`.
pub(crate) fn freed(
    driver: impl Fn() -> CUresult,
    dptr: CUdeviceptr,
    stream: CUstream,
    per_thread: bool,
) -> CUresult {
    let shim = shim_or!(driver());
    let Some(held) = shim.allocations.device.remove(dptr) else {
        return driver();
    };
    let status = driver();
    if status != CUDA_SUCCESS {
        shim.allocations.device.insert(dptr, held);
        return status;
    }
    release_when_reached(shim, stream, per_thread, held.charge);
    status
}

/// Releases `charge` when `stream` reaches the point where it is called: a host function
/// queued behind the free (it only touches the ledger, no CUDA). While the stream is being
/// captured, the free is a node of a graph and the charge goes at once, as it came (see
/// `allocated`). If the host function cannot be queued, the charge stays until the process
/// exits: counting too much is safe, too little is not.
fn release_when_reached(shim: &Shim, stream: CUstream, per_thread: bool, charge: Charge) {
    static NOT_QUEUED: RateLimit = RateLimit::new();
    if capturing(shim, stream, per_thread) {
        shim.memory.release(charge);
        return;
    }
    let launch = if per_thread {
        driver::cuLaunchHostFunc_ptsz().or_else(driver::cuLaunchHostFunc)
    } else {
        driver::cuLaunchHostFunc()
    };
    let data = Box::into_raw(Box::new(charge));
    let queued = launch.is_some_and(|launch| {
        // SAFETY: the caller's stream; `release_reached` takes ownership of `data` when
        // the stream calls it, once.
        unsafe { launch(stream, Some(release_reached), data.cast::<c_void>()) == CUDA_SUCCESS }
    });
    if !queued {
        // SAFETY: `data` came from Box::into_raw above and the driver did not take it.
        drop(unsafe { Box::from_raw(data) });
        if NOT_QUEUED.admit().is_some() {
            log!(
                Level::Warn,
                "cannot follow a cuMemFreeAsync in its stream; its memory stays charged until the process exits"
            );
        }
    }
}

/// The host function `release_when_reached` queues. The driver calls it on a thread of
/// its own: no panic may leave it.
unsafe extern "C" fn release_reached(data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `data` is the Box made in `release_when_reached`, handed to the driver
        // once, and the driver calls this once.
        let charge = unsafe { Box::from_raw(data.cast::<Charge>()) };
        if let Mode::Enforcing(shim) = runtime::current_mode() {
            shim.memory.release(*charge);
        }
    }));
}

/// Whether `stream` is being captured into a graph (asked of the driver only while some
/// capture of the process is open).
fn capturing(shim: &Shim, stream: CUstream, per_thread: bool) -> bool {
    if !shim.gates.capturing() {
        return false;
    }
    let query = if per_thread {
        driver::cuStreamIsCapturing_ptsz().or_else(driver::cuStreamIsCapturing)
    } else {
        driver::cuStreamIsCapturing()
    };
    let mut status = 0u32;
    query.is_some_and(|query| {
        // SAFETY: the caller's stream; `status` is a valid out-pointer.
        unsafe { query(stream, &mut status) == CUDA_SUCCESS }
    }) && status == CU_STREAM_CAPTURE_STATUS_ACTIVE
}

/// `cuMemPoolCreate`: where the pool keeps its memory is recorded, so that a pool of host
/// memory is not charged to a GPU.
pub(crate) unsafe fn create(
    call: impl Fn() -> CUresult,
    pool: *mut CUmemoryPool,
    props: *const CUmemPoolProps,
) -> CUresult {
    let shim = shim_or!(call());
    let status = call();
    if status != CUDA_SUCCESS || pool.is_null() || props.is_null() {
        return status;
    }
    // SAFETY: both non-null; the driver wrote the pool on success and read the props.
    let (handle, props) = unsafe { (*pool as u64, *props) };
    let location = props.location;
    let home = if location.kind == CU_MEM_LOCATION_TYPE_DEVICE {
        shim.devices
            .by_ordinal(&shim.memory, location.id)
            .ok()
            .map(PoolHome::Gpu)
    } else if props.alloc_type == CU_MEM_ALLOCATION_TYPE_PINNED
        && CU_MEM_LOCATION_TYPES_HOST.contains(&location.kind)
    {
        Some(PoolHome::Host)
    } else {
        // Managed memory, or a location this shim does not know: charged on the GPU of
        // the streams that allocate from it.
        None
    };
    if let Some(home) = home {
        shim.pools.created(handle, home);
    }
    status
}

/// `cuMemPoolDestroy`. The driver frees a destroyed pool's memory once its last
/// allocations are freed, and the pool can no longer be asked what it holds. So its idle
/// memory is trimmed first and the charge brought to what is left; that stays charged until
/// the process exits (the safe side: a program that destroys a pool with allocations still
/// outstanding keeps their memory counted).
///
/// No lock is held across the trim, the reading and the destroy, and nothing is lost to a
/// thread that looks at the pool meanwhile (`refresh_gpu`, `make_room`, an allocation the
/// program races with the destroy): once the driver destroyed the pool its charge is
/// closed under its lock (`PoolCharges::destroyed`), so a settle applied before that is in
/// what the pool keeps, and one that comes after changes nothing (an allocation's
/// reservation is then charged by size, as when the pool cannot be asked). A look that
/// started before the destroy may still trim the handle after it; a trim takes nothing in
/// use, and if the handle was given to a new pool meanwhile, that pool's next look sees it.
pub(crate) unsafe fn destroy(call: impl Fn() -> CUresult, pool: CUmemoryPool) -> CUresult {
    let shim = shim_or!(call());
    let key = pool as u64;
    if let Some(charge) = shim.pools.existing(key) {
        trim(shim, pool, &charge);
    }
    let status = call();
    if status == CUDA_SUCCESS {
        // No lock was held across the trim and the destroy: a look by another thread may
        // have settled the charge meanwhile (then what is kept is its newer reading), and
        // one that settles after this changes nothing (`PoolCharges::destroyed`).
        shim.pools.destroyed(key);
    }
    status
}

/// `cuMemPoolTrimTo`: what the pool gave back is released at once.
pub(crate) unsafe fn trim_to(call: impl Fn() -> CUresult, pool: CUmemoryPool) -> CUresult {
    let shim = shim_or!(call());
    let status = call();
    if status == CUDA_SUCCESS
        && let Some(charge) = shim.pools.existing(pool as u64)
    {
        refresh(shim, pool as u64, &charge);
    }
    status
}

/// Brings the charge of every pool on `gpu` to what it holds now (a synchronization may
/// have given memory back since it was last charged). Returns whether any charge went down.
pub(crate) fn refresh_gpu(shim: &Shim, gpu: GpuIndex) -> bool {
    let mut released = false;
    for (pool, charge) in shim.pools.on_gpu(gpu) {
        released |= refresh(shim, pool, &charge);
    }
    released
}

/// On the way to refusing `bytes` on `gpu`: looks again at what the process's pools there
/// hold, and if that leaves no room for `bytes`, trims them (their idle memory goes back to
/// the GPU; memory behind queued frees stays). Returns whether any charge went down, so
/// that the reservation is worth trying again.
pub(crate) fn make_room(shim: &Shim, gpu: &Gpu, bytes: u64) -> bool {
    let pools = shim.pools.on_gpu(gpu.index);
    if pools.is_empty() {
        return false;
    }
    let mut released = false;
    for (pool, charge) in &pools {
        released |= refresh(shim, *pool, charge);
    }
    // A trim while a stream is captured could break the capture (the driver may count it
    // as a call that synchronizes); looking costs nothing of the kind.
    if shim.memory.would_fit(gpu, bytes) || shim.gates.capturing() {
        return released;
    }
    for (pool, charge) in &pools {
        released |= trim(shim, *pool as CUmemoryPool, charge);
    }
    if released {
        log!(
            Level::Debug,
            "gave back idle memory of this process's pools on {} to make room for {} bytes",
            gpu.uuid,
            bytes
        );
    }
    released
}

/// Brings `pool`'s charge to what it holds now; whether it went down.
fn refresh(shim: &Shim, pool: u64, charge: &PoolCharge) -> bool {
    matches!(
        look(shim, pool, charge, None),
        Looked::Settled(Settled::Applied { went_down: true })
    )
}

/// Trims `pool` to nothing (what the driver can give back: memory whose frees completed)
/// and settles its charge; whether it went down. A pool destroyed meanwhile is left alone.
fn trim(shim: &Shim, pool: CUmemoryPool, charge: &PoolCharge) -> bool {
    if charge.is_destroyed() {
        return false;
    }
    if let Some(trim_to) = real::cuMemPoolTrimTo() {
        // SAFETY: a pool handle the program allocated from; trimming never touches memory
        // in use.
        unsafe { trim_to(pool, 0) };
    }
    refresh(shim, pool as u64, charge)
}

/// What `pool` holds on its device (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`), if the driver
/// says.
fn reserved_bytes(pool: u64) -> Option<u64> {
    let get = driver::cuMemPoolGetAttribute()?;
    let mut reserved: u64 = 0;
    // SAFETY: the attribute's value is a cuuint64_t, written to `reserved`.
    let status = unsafe {
        get(
            pool as CUmemoryPool,
            CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            (&raw mut reserved).cast::<c_void>(),
        )
    };
    (status == CUDA_SUCCESS).then_some(reserved)
}

/// The pool an allocation came from (`CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE`), if the driver
/// says.
fn pool_of(address: CUdeviceptr) -> Option<u64> {
    let get = driver::cuPointerGetAttribute()?;
    let mut pool: CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the attribute's value is a CUmemoryPool, written to `pool`.
    let status = unsafe {
        get(
            (&raw mut pool).cast::<c_void>(),
            CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE,
            address,
        )
    };
    (status == CUDA_SUCCESS && !pool.is_null()).then_some(pool as u64)
}
