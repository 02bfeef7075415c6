//! Contexts: each device's primary context, created ones, and each thread's stack of current
//! contexts. A live context holds the device's context footprint of memory, and owns its
//! streams (each thread's per-thread default stream among them) and the allocations made in
//! it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;

use crate::device::{ContextHold, Device};
use crate::error::{CuError, CuResult};
use crate::handles::{self, Table};
use crate::memory;
use crate::module;
use crate::pool;
use crate::stream::{self, Queue, Stream};

/// A context on a device.
#[derive(Debug)]
pub struct Context {
    /// The context's handle.
    pub handle: usize,
    /// The device.
    pub device: &'static Device,
    /// Whether this is the device's primary context.
    pub is_primary: bool,
    flags: AtomicU32,
    footprint: Mutex<Option<ContextHold>>,
    null_stream: Arc<Stream>,
    streams: Mutex<Vec<Arc<Stream>>>,
    limits: Mutex<BTreeMap<u32, usize>>,
    cache_config: AtomicU32,
    /// Handles of the contexts whose memory this one may access (`cuCtxEnablePeerAccess`).
    peers: Mutex<Vec<usize>>,
}

/// The primary context of a device: a fixed handle, a reference count and flags.
#[derive(Debug)]
pub struct PrimaryState {
    handle: usize,
    refcount: u32,
    flags: u32,
}

impl Default for PrimaryState {
    fn default() -> Self {
        Self::new()
    }
}

impl PrimaryState {
    /// An inactive primary context.
    pub fn new() -> Self {
        PrimaryState {
            handle: handles::fresh(),
            refcount: 0,
            flags: 0,
        }
    }
}

static CONTEXTS: Table<Context> = Table::new();

thread_local! {
    static STACK: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    static PER_THREAD: RefCell<PerThreadStreams> =
        const { RefCell::new(PerThreadStreams(Vec::new())) };
}

/// A thread's per-thread default streams, one for each context it used one in: blocking
/// streams of those contexts, ended (their queued work still runs) when the thread exits.
#[derive(Debug)]
struct PerThreadStreams(Vec<Arc<Stream>>);

impl Drop for PerThreadStreams {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            if let Some(ctx) = s.ctx.upgrade() {
                ctx.streams.lock().retain(|t| !Arc::ptr_eq(t, &s));
            }
            crate::capture::forget(&s);
            s.shutdown();
        }
    }
}

/// `CUlimit` defaults: stack size, printf FIFO, malloc heap, sync depth, pending launches,
/// L2 fetch granularity, persisting L2 size.
const DEFAULT_LIMITS: [usize; 7] = [1024, 1 << 20, 8 << 20, 2, 2048, 64, 0];

impl Context {
    fn create(
        device: &'static Device,
        handle: usize,
        flags: u32,
        is_primary: bool,
    ) -> CuResult<Arc<Context>> {
        let footprint = device.hold_context()?;
        let queue = stream::start_worker()?;
        let ctx = Arc::new_cyclic(|weak| Context {
            handle,
            device,
            is_primary,
            flags: AtomicU32::new(flags),
            footprint: Mutex::new(Some(footprint)),
            null_stream: Arc::new(Stream::new(queue, weak.clone(), handle, 0, 0, 0)),
            streams: Mutex::new(Vec::new()),
            limits: Mutex::new(BTreeMap::new()),
            cache_config: AtomicU32::new(0),
            peers: Mutex::new(Vec::new()),
        });
        CONTEXTS.insert_at(handle, Arc::clone(&ctx));
        Ok(ctx)
    }

    /// The context's NULL stream.
    pub fn null_stream(&self) -> Arc<Stream> {
        Arc::clone(&self.null_stream)
    }

    /// The context's `CU_CTX_*` flags.
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Relaxed)
    }

    /// Sets the context's flags.
    pub fn set_flags(&self, flags: u32) {
        self.flags.store(flags, Ordering::Relaxed);
    }

    /// Creates a stream in this context.
    pub fn create_stream(self: &Arc<Self>, flags: u32, priority: i32) -> CuResult<Arc<Stream>> {
        let (least, greatest) = stream::PRIORITY_RANGE;
        let priority = priority.clamp(greatest, least);
        let s = Stream::spawn(
            Arc::downgrade(self),
            self.handle,
            handles::fresh(),
            flags,
            priority,
        )?;
        self.streams.lock().push(Arc::clone(&s));
        stream::register(Arc::clone(&s));
        Ok(s)
    }

    /// The calling thread's per-thread default stream in this context (`CU_STREAM_PER_THREAD`),
    /// started at its first use.
    pub fn per_thread_stream(self: &Arc<Self>) -> CuResult<Arc<Stream>> {
        let found = PER_THREAD.try_with(|streams| -> CuResult<Arc<Stream>> {
            let mut streams = streams.borrow_mut();
            // Those of contexts that are gone were ended with them.
            streams.0.retain(|s| s.ctx.strong_count() > 0);
            let me = Arc::downgrade(self);
            if let Some(s) = streams.0.iter().find(|s| s.ctx.ptr_eq(&me)) {
                return Ok(Arc::clone(s));
            }
            let s = Stream::spawn(me, self.handle, stream::PER_THREAD, 0, 0)?;
            self.streams.lock().push(Arc::clone(&s));
            streams.0.push(Arc::clone(&s));
            Ok(s)
        });
        // The thread is exiting: its per-thread streams are gone.
        found.unwrap_or(Err(CuError::InvalidContext))
    }

    /// Destroys a created stream: its queued work still runs, then its worker exits.
    pub fn destroy_stream(&self, handle: usize) -> CuResult {
        let s = stream::unregister(handle).ok_or(CuError::InvalidHandle)?;
        self.streams.lock().retain(|t| t.handle != handle);
        crate::capture::forget(&s);
        s.shutdown();
        Ok(())
    }

    /// What work on `s` must wait for under the legacy NULL-stream rules: the NULL stream
    /// waits for the blocking streams, a blocking stream waits for the NULL stream.
    pub fn legacy_dependencies(&self, s: &Stream) -> Vec<(Arc<Queue>, u64)> {
        if s.is_null() {
            self.streams
                .lock()
                .iter()
                .filter(|t| t.is_blocking())
                .filter_map(|t| t.pending())
                .collect()
        } else if s.is_blocking() {
            self.null_stream.pending().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Blocks until all work on all of the context's streams has completed.
    pub fn synchronize(&self) {
        let streams = self.streams.lock().clone();
        for s in streams {
            s.synchronize();
        }
        self.null_stream.synchronize();
    }

    /// `cuCtxGetLimit`.
    pub fn limit(&self, limit: u32) -> CuResult<usize> {
        let default = *DEFAULT_LIMITS
            .get(usize::try_from(limit).map_err(|_| CuError::InvalidValue)?)
            .ok_or(CuError::InvalidValue)?;
        Ok(*self.limits.lock().get(&limit).unwrap_or(&default))
    }

    /// `cuCtxSetLimit`.
    pub fn set_limit(&self, limit: u32, value: usize) -> CuResult {
        self.limit(limit)?;
        self.limits.lock().insert(limit, value);
        Ok(())
    }

    /// `cuCtxGetCacheConfig`.
    pub fn cache_config(&self) -> u32 {
        self.cache_config.load(Ordering::Relaxed)
    }

    /// `cuCtxSetCacheConfig`.
    pub fn set_cache_config(&self, config: u32) {
        self.cache_config.store(config, Ordering::Relaxed);
    }

    /// `cuCtxEnablePeerAccess` from this context to `peer`'s memory: only a context of
    /// another device (`CUDA_ERROR_INVALID_DEVICE` for one of the same, as
    /// `cuDeviceCanAccessPeer` says), once (`CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED`). Only
    /// recorded: the simulated devices share the host's address space, so copies between
    /// them work with or without it.
    pub fn enable_peer_access(&self, peer: &Context) -> CuResult {
        if std::ptr::eq(self.device, peer.device) {
            return Err(CuError::InvalidDevice);
        }
        let mut peers = self.peers.lock();
        if peers.contains(&peer.handle) {
            return Err(CuError::PeerAccessAlreadyEnabled);
        }
        peers.push(peer.handle);
        Ok(())
    }

    /// `cuCtxDisablePeerAccess`: `CUDA_ERROR_PEER_ACCESS_NOT_ENABLED` unless enabled.
    pub fn disable_peer_access(&self, peer: usize) -> CuResult {
        let mut peers = self.peers.lock();
        let before = peers.len();
        peers.retain(|&p| p != peer);
        if peers.len() == before {
            return Err(CuError::PeerAccessNotEnabled);
        }
        Ok(())
    }
}

/// Ends a context: waits for its streams, stops them, frees its allocations (a pool's blocks
/// go back to their pools, whose idle memory above their release thresholds goes back to
/// the device), unloads its modules (and gives back its libraries' module memory) and gives
/// back its footprint. Threads that still have it current get `CUDA_ERROR_INVALID_CONTEXT`.
fn teardown(ctx: &Arc<Context>) {
    CONTEXTS.remove(ctx.handle);
    let streams = std::mem::take(&mut *ctx.streams.lock());
    for s in streams {
        if s.handle != stream::PER_THREAD {
            stream::unregister(s.handle);
        }
        crate::capture::forget(&s);
        s.synchronize();
        s.shutdown();
    }
    ctx.null_stream.synchronize();
    ctx.null_stream.shutdown();
    memory::free_context(ctx.handle);
    pool::context_ended(ctx.device.index);
    module::context_destroyed(ctx.handle);
    ctx.footprint.lock().take();
}

/// The context behind `handle`.
pub fn get(handle: usize) -> CuResult<Arc<Context>> {
    CONTEXTS.get(handle).ok_or(CuError::InvalidContext)
}

/// `cuDevicePrimaryCtxRetain`: the primary context, created (and its footprint taken) when
/// it is not live: at the first retain, and at the first retain after a reset, which ended
/// it but kept its references.
pub fn retain_primary(device: &'static Device) -> CuResult<usize> {
    let mut primary = device.primary.lock();
    if get(primary.handle).is_err() {
        Context::create(device, primary.handle, primary.flags, true)?;
    }
    primary.refcount += 1;
    Ok(primary.handle)
}

/// `cuDevicePrimaryCtxRelease`: ends the primary context when the last retain is released
/// (`CUDA_ERROR_INVALID_CONTEXT` when none is left to release).
pub fn release_primary(device: &'static Device) -> CuResult {
    let mut primary = device.primary.lock();
    if primary.refcount == 0 {
        return Err(CuError::InvalidContext);
    }
    primary.refcount -= 1;
    if primary.refcount == 0
        && let Ok(ctx) = get(primary.handle)
    {
        teardown(&ctx);
    }
    Ok(())
}

/// `cuDevicePrimaryCtxReset`: ends the primary context whatever its reference count, and,
/// as the driver's documentation says ("resetting the primary context does not release
/// it"), keeps that count: each holder still releases its retain, and the next retain makes
/// the context anew.
pub fn reset_primary(device: &'static Device) -> CuResult {
    let mut primary = device.primary.lock();
    if let Ok(ctx) = get(primary.handle) {
        teardown(&ctx);
    }
    primary.flags = 0;
    Ok(())
}

/// `cuDevicePrimaryCtxGetState`: (flags, active).
pub fn primary_state(device: &'static Device) -> (u32, bool) {
    let primary = device.primary.lock();
    (primary.flags, get(primary.handle).is_ok())
}

/// `cuDevicePrimaryCtxSetFlags`.
pub fn set_primary_flags(device: &'static Device, flags: u32) -> CuResult {
    let mut primary = device.primary.lock();
    primary.flags = flags;
    if let Ok(ctx) = get(primary.handle) {
        ctx.set_flags(flags);
    }
    Ok(())
}

/// `cuCtxCreate`: a new context, pushed onto this thread's stack.
pub fn create(device: &'static Device, flags: u32) -> CuResult<usize> {
    let ctx = Context::create(device, handles::fresh(), flags, false)?;
    STACK.with(|s| s.borrow_mut().push(ctx.handle));
    Ok(ctx.handle)
}

/// `cuCtxDestroy`: ends a created context and pops it from this thread's stack.
pub fn destroy(handle: usize) -> CuResult {
    let ctx = get(handle)?;
    if ctx.is_primary {
        return Err(CuError::InvalidContext);
    }
    teardown(&ctx);
    STACK.with(|s| s.borrow_mut().retain(|&h| h != handle));
    Ok(())
}

/// This thread's current context handle, if any (possibly of a destroyed context).
pub fn current_handle() -> Option<usize> {
    STACK.with(|s| s.borrow().last().copied())
}

/// This thread's current context (`CUDA_ERROR_NOT_INITIALIZED` before `cuInit`).
pub fn current() -> CuResult<Arc<Context>> {
    crate::driver::get()?;
    current_handle().map_or(Err(CuError::InvalidContext), get)
}

/// `cuCtxSetCurrent`: replaces the top of this thread's stack; `None` pops it.
pub fn set_current(handle: Option<usize>) -> CuResult {
    if let Some(h) = handle {
        get(h)?;
    }
    STACK.with(|s| {
        let mut stack = s.borrow_mut();
        stack.pop();
        stack.extend(handle);
    });
    Ok(())
}

/// `cuCtxPushCurrent`.
pub fn push(handle: usize) -> CuResult {
    get(handle)?;
    STACK.with(|s| s.borrow_mut().push(handle));
    Ok(())
}

/// `cuCtxPopCurrent`: the popped handle.
pub fn pop() -> CuResult<usize> {
    STACK
        .with(|s| s.borrow_mut().pop())
        .ok_or(CuError::InvalidContext)
}
