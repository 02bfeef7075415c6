//! Which exported function `cuGetProcAddress` returns for a base name, a requested CUDA
//! version and per-thread-stream flags, following the versioned typedefs of `cudaTypedefs.h`:
//! `cuMemAlloc` asked for at 3020 or later is `cuMemAlloc_v2`; `cuCtxCreate` is `_v2` from
//! 3020, `_v3` from 11040, `_v4` from 12050; with `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`
//! a stream-ordered call is its `_ptsz` (or `_ptds`) variant.

/// One version of a driver entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The name callers ask for (`cuMemAlloc`).
    pub base: &'static str,
    /// The first CUDA version (`major * 1000 + minor * 10`) with this ABI.
    pub since: i32,
    /// The exported function with this ABI (`cuMemAlloc_v2`).
    pub symbol: &'static str,
    /// Its per-thread default stream variant, if it has one (`cuMemcpyHtoD_v2_ptds`).
    pub per_thread: Option<&'static str>,
}

/// The first version with per-thread default stream variants (`_ptsz` / `_ptds`): asked for
/// at an earlier version with the per-thread flag, such an entry point is too new.
pub const PER_THREAD_SINCE: i32 = 7000;

/// `CU_GET_PROC_ADDRESS_LEGACY_STREAM`.
pub const LEGACY_STREAM: u64 = 1 << 0;
/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
pub const PER_THREAD_DEFAULT_STREAM: u64 = 1 << 1;

/// What a lookup finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The exported function to return (`CU_GET_PROC_ADDRESS_SUCCESS`).
    Found(&'static str),
    /// The symbol exists only from a later version (`CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT`).
    VersionNotSufficient,
    /// No such symbol (`CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND`).
    NotFound,
}

macro_rules! entries {
    ($( $base:literal $since:literal => $symbol:literal $(| $pt:literal)? ;)*) => {
        &[$(Entry { base: $base, since: $since, symbol: $symbol, per_thread: entries!(@pt $($pt)?) }),*]
    };
    (@pt) => { None };
    (@pt $pt:literal) => { Some($pt) };
}

/// Every entry point the simulator exports, by base name and version.
pub static TABLE: &[Entry] = entries! {
    "cuGetErrorString" 6000 => "cuGetErrorString";
    "cuGetErrorName" 6000 => "cuGetErrorName";
    "cuInit" 2000 => "cuInit";
    "cuDriverGetVersion" 2020 => "cuDriverGetVersion";
    "cuGetProcAddress" 11030 => "cuGetProcAddress";
    "cuGetProcAddress" 12000 => "cuGetProcAddress_v2";

    "cuDeviceGet" 2000 => "cuDeviceGet";
    "cuDeviceGetCount" 2000 => "cuDeviceGetCount";
    "cuDeviceGetName" 2000 => "cuDeviceGetName";
    "cuDeviceGetUuid" 9020 => "cuDeviceGetUuid";
    "cuDeviceGetUuid" 11040 => "cuDeviceGetUuid_v2";
    "cuDeviceTotalMem" 3020 => "cuDeviceTotalMem_v2";
    "cuDeviceGetAttribute" 2000 => "cuDeviceGetAttribute";
    "cuDeviceComputeCapability" 2000 => "cuDeviceComputeCapability";
    "cuDeviceCanAccessPeer" 4000 => "cuDeviceCanAccessPeer";
    "cuDeviceGetDefaultMemPool" 11020 => "cuDeviceGetDefaultMemPool";
    "cuDeviceGetMemPool" 11020 => "cuDeviceGetMemPool";
    "cuDeviceSetMemPool" 11020 => "cuDeviceSetMemPool";
    "cuDevicePrimaryCtxRetain" 7000 => "cuDevicePrimaryCtxRetain";
    "cuDevicePrimaryCtxRelease" 7000 => "cuDevicePrimaryCtxRelease";
    "cuDevicePrimaryCtxRelease" 11000 => "cuDevicePrimaryCtxRelease_v2";
    "cuDevicePrimaryCtxSetFlags" 7000 => "cuDevicePrimaryCtxSetFlags";
    "cuDevicePrimaryCtxSetFlags" 11000 => "cuDevicePrimaryCtxSetFlags_v2";
    "cuDevicePrimaryCtxGetState" 7000 => "cuDevicePrimaryCtxGetState";
    "cuDevicePrimaryCtxReset" 7000 => "cuDevicePrimaryCtxReset";
    "cuDevicePrimaryCtxReset" 11000 => "cuDevicePrimaryCtxReset_v2";

    "cuCtxCreate" 3020 => "cuCtxCreate_v2";
    "cuCtxCreate" 11040 => "cuCtxCreate_v3";
    "cuCtxCreate" 12050 => "cuCtxCreate_v4";
    "cuCtxDestroy" 4000 => "cuCtxDestroy_v2";
    "cuCtxEnablePeerAccess" 4000 => "cuCtxEnablePeerAccess";
    "cuCtxDisablePeerAccess" 4000 => "cuCtxDisablePeerAccess";
    "cuCtxPushCurrent" 4000 => "cuCtxPushCurrent_v2";
    "cuCtxPopCurrent" 4000 => "cuCtxPopCurrent_v2";
    "cuCtxSetCurrent" 4000 => "cuCtxSetCurrent";
    "cuCtxGetCurrent" 4000 => "cuCtxGetCurrent";
    "cuCtxGetDevice" 2000 => "cuCtxGetDevice";
    "cuCtxGetDevice" 13000 => "cuCtxGetDevice_v2";
    "cuCtxGetFlags" 7000 => "cuCtxGetFlags";
    "cuCtxSetFlags" 12010 => "cuCtxSetFlags";
    "cuCtxSynchronize" 2000 => "cuCtxSynchronize";
    "cuCtxSynchronize" 13000 => "cuCtxSynchronize_v2";
    "cuCtxGetLimit" 3010 => "cuCtxGetLimit";
    "cuCtxSetLimit" 3010 => "cuCtxSetLimit";
    "cuCtxGetCacheConfig" 3020 => "cuCtxGetCacheConfig";
    "cuCtxSetCacheConfig" 3020 => "cuCtxSetCacheConfig";
    "cuCtxGetApiVersion" 3020 => "cuCtxGetApiVersion";
    "cuCtxGetStreamPriorityRange" 5050 => "cuCtxGetStreamPriorityRange";

    "cuMemGetInfo" 3020 => "cuMemGetInfo_v2";
    "cuMemAlloc" 3020 => "cuMemAlloc_v2";
    "cuMemAllocPitch" 3020 => "cuMemAllocPitch_v2";
    "cuMemFree" 3020 => "cuMemFree_v2";
    "cuMemGetAddressRange" 3020 => "cuMemGetAddressRange_v2";
    "cuMemAllocHost" 3020 => "cuMemAllocHost_v2";
    "cuMemFreeHost" 2000 => "cuMemFreeHost";
    "cuMemHostAlloc" 2020 => "cuMemHostAlloc";
    "cuMemAllocManaged" 6000 => "cuMemAllocManaged";
    "cuPointerGetAttribute" 4000 => "cuPointerGetAttribute";
    "cuMemcpy" 4000 => "cuMemcpy" | "cuMemcpy_ptds";
    "cuMemcpyPeer" 4000 => "cuMemcpyPeer" | "cuMemcpyPeer_ptds";
    "cuIpcGetMemHandle" 4010 => "cuIpcGetMemHandle";
    "cuIpcOpenMemHandle" 4010 => "cuIpcOpenMemHandle";
    "cuIpcOpenMemHandle" 11000 => "cuIpcOpenMemHandle_v2";
    "cuIpcCloseMemHandle" 4010 => "cuIpcCloseMemHandle";
    "cuMemcpyHtoD" 3020 => "cuMemcpyHtoD_v2" | "cuMemcpyHtoD_v2_ptds";
    "cuMemcpyDtoH" 3020 => "cuMemcpyDtoH_v2" | "cuMemcpyDtoH_v2_ptds";
    "cuMemcpyDtoD" 3020 => "cuMemcpyDtoD_v2" | "cuMemcpyDtoD_v2_ptds";
    "cuMemcpyAsync" 4000 => "cuMemcpyAsync" | "cuMemcpyAsync_ptsz";
    "cuMemcpyPeerAsync" 4000 => "cuMemcpyPeerAsync" | "cuMemcpyPeerAsync_ptsz";
    "cuMemcpyHtoDAsync" 3020 => "cuMemcpyHtoDAsync_v2" | "cuMemcpyHtoDAsync_v2_ptsz";
    "cuMemcpyDtoHAsync" 3020 => "cuMemcpyDtoHAsync_v2" | "cuMemcpyDtoHAsync_v2_ptsz";
    "cuMemcpyDtoDAsync" 3020 => "cuMemcpyDtoDAsync_v2" | "cuMemcpyDtoDAsync_v2_ptsz";
    "cuMemsetD8" 3020 => "cuMemsetD8_v2" | "cuMemsetD8_v2_ptds";
    "cuMemsetD16" 3020 => "cuMemsetD16_v2" | "cuMemsetD16_v2_ptds";
    "cuMemsetD32" 3020 => "cuMemsetD32_v2" | "cuMemsetD32_v2_ptds";
    "cuMemsetD8Async" 3020 => "cuMemsetD8Async" | "cuMemsetD8Async_ptsz";
    "cuMemsetD16Async" 3020 => "cuMemsetD16Async" | "cuMemsetD16Async_ptsz";
    "cuMemsetD32Async" 3020 => "cuMemsetD32Async" | "cuMemsetD32Async_ptsz";
    "cuArrayCreate" 3020 => "cuArrayCreate_v2";
    "cuArray3DCreate" 3020 => "cuArray3DCreate_v2";
    "cuArrayDestroy" 2000 => "cuArrayDestroy";
    "cuMemAddressReserve" 10020 => "cuMemAddressReserve";
    "cuMemAddressFree" 10020 => "cuMemAddressFree";
    "cuMemCreate" 10020 => "cuMemCreate";
    "cuMemRelease" 10020 => "cuMemRelease";
    "cuMemRetainAllocationHandle" 11000 => "cuMemRetainAllocationHandle";
    "cuMemMap" 10020 => "cuMemMap";
    "cuMemUnmap" 10020 => "cuMemUnmap";
    "cuMemSetAccess" 10020 => "cuMemSetAccess";
    "cuMemGetAllocationGranularity" 10020 => "cuMemGetAllocationGranularity";
    "cuMemAllocAsync" 11020 => "cuMemAllocAsync" | "cuMemAllocAsync_ptsz";
    "cuMemFreeAsync" 11020 => "cuMemFreeAsync" | "cuMemFreeAsync_ptsz";
    "cuMemAllocFromPoolAsync" 11020 => "cuMemAllocFromPoolAsync" | "cuMemAllocFromPoolAsync_ptsz";
    "cuMemPoolCreate" 11020 => "cuMemPoolCreate";
    "cuMemPoolDestroy" 11020 => "cuMemPoolDestroy";
    "cuMemPoolTrimTo" 11020 => "cuMemPoolTrimTo";
    "cuMemPoolSetAttribute" 11020 => "cuMemPoolSetAttribute";
    "cuMemPoolGetAttribute" 11020 => "cuMemPoolGetAttribute";

    "cuStreamCreate" 2000 => "cuStreamCreate";
    "cuStreamCreateWithPriority" 5050 => "cuStreamCreateWithPriority";
    "cuStreamGetPriority" 5050 => "cuStreamGetPriority" | "cuStreamGetPriority_ptsz";
    "cuStreamGetFlags" 5050 => "cuStreamGetFlags" | "cuStreamGetFlags_ptsz";
    "cuStreamGetCtx" 9020 => "cuStreamGetCtx" | "cuStreamGetCtx_ptsz";
    "cuStreamGetCtx" 12050 => "cuStreamGetCtx_v2" | "cuStreamGetCtx_v2_ptsz";
    "cuStreamWaitEvent" 3020 => "cuStreamWaitEvent" | "cuStreamWaitEvent_ptsz";
    "cuStreamQuery" 2000 => "cuStreamQuery" | "cuStreamQuery_ptsz";
    "cuStreamSynchronize" 2000 => "cuStreamSynchronize" | "cuStreamSynchronize_ptsz";
    "cuStreamDestroy" 4000 => "cuStreamDestroy_v2";
    "cuStreamBeginCapture" 10000 => "cuStreamBeginCapture" | "cuStreamBeginCapture_ptsz";
    "cuStreamBeginCapture" 10010 => "cuStreamBeginCapture_v2" | "cuStreamBeginCapture_v2_ptsz";
    "cuStreamEndCapture" 10000 => "cuStreamEndCapture" | "cuStreamEndCapture_ptsz";
    "cuStreamIsCapturing" 10000 => "cuStreamIsCapturing" | "cuStreamIsCapturing_ptsz";
    "cuThreadExchangeStreamCaptureMode" 10010 => "cuThreadExchangeStreamCaptureMode";
    "cuLaunchHostFunc" 10000 => "cuLaunchHostFunc" | "cuLaunchHostFunc_ptsz";
    "cuEventCreate" 2000 => "cuEventCreate";
    "cuEventRecord" 2000 => "cuEventRecord" | "cuEventRecord_ptsz";
    "cuEventRecordWithFlags" 11010 => "cuEventRecordWithFlags" | "cuEventRecordWithFlags_ptsz";
    "cuEventQuery" 2000 => "cuEventQuery";
    "cuEventSynchronize" 2000 => "cuEventSynchronize";
    "cuEventDestroy" 4000 => "cuEventDestroy_v2";
    "cuEventElapsedTime" 2000 => "cuEventElapsedTime";
    "cuEventElapsedTime" 12080 => "cuEventElapsedTime_v2";

    "cuModuleLoad" 2000 => "cuModuleLoad";
    "cuModuleLoadData" 2000 => "cuModuleLoadData";
    "cuModuleLoadDataEx" 2010 => "cuModuleLoadDataEx";
    "cuModuleUnload" 2000 => "cuModuleUnload";
    "cuModuleGetFunction" 2000 => "cuModuleGetFunction";
    "cuModuleGetGlobal" 3020 => "cuModuleGetGlobal_v2";
    "cuFuncGetAttribute" 2020 => "cuFuncGetAttribute";
    "cuFuncSetAttribute" 9000 => "cuFuncSetAttribute";
    "cuFuncSetCacheConfig" 3000 => "cuFuncSetCacheConfig";
    "cuLibraryLoadData" 12000 => "cuLibraryLoadData";
    "cuLibraryUnload" 12000 => "cuLibraryUnload";
    "cuLibraryGetKernel" 12000 => "cuLibraryGetKernel";
    "cuLibraryGetModule" 12000 => "cuLibraryGetModule";
    "cuKernelGetFunction" 12000 => "cuKernelGetFunction";
    "cuLaunchKernel" 4000 => "cuLaunchKernel" | "cuLaunchKernel_ptsz";
    "cuLaunchKernelEx" 11060 => "cuLaunchKernelEx" | "cuLaunchKernelEx_ptsz";
    "cuLaunchCooperativeKernel" 9000 => "cuLaunchCooperativeKernel" | "cuLaunchCooperativeKernel_ptsz";
    "cuGraphInstantiate" 10000 => "cuGraphInstantiate";
    "cuGraphInstantiate" 11000 => "cuGraphInstantiate_v2";
    "cuGraphInstantiate" 12000 => "cuGraphInstantiateWithFlags";
    "cuGraphInstantiateWithFlags" 11040 => "cuGraphInstantiateWithFlags";
    "cuGraphLaunch" 10000 => "cuGraphLaunch" | "cuGraphLaunch_ptsz";
    "cuGraphExecDestroy" 10000 => "cuGraphExecDestroy";
    "cuGraphDestroy" 10000 => "cuGraphDestroy";
};

/// The exported function for `base` at `version`: the entry with the latest `since` not after
/// `version`, or its per-thread variant when `per_thread` is set and it has one (which needs
/// `version` 7000 or later). This is what driver 580 (CUDA 13.0) answers, checked on an H100.
pub fn select(base: &str, version: i32, per_thread: bool) -> Lookup {
    let mut known = false;
    let best = TABLE
        .iter()
        .filter(|e| e.base == base)
        .inspect(|_| known = true)
        .filter(|e| e.since <= version)
        .max_by_key(|e| e.since);
    match best {
        Some(e) => match (per_thread, e.per_thread) {
            (true, Some(_)) if version < PER_THREAD_SINCE => Lookup::VersionNotSufficient,
            (true, Some(pt)) => Lookup::Found(pt),
            _ => Lookup::Found(e.symbol),
        },
        None if known => Lookup::VersionNotSufficient,
        None => Lookup::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_abi_not_after_the_requested_version_is_chosen() {
        assert_eq!(
            select("cuMemAlloc", 13000, false),
            Lookup::Found("cuMemAlloc_v2")
        );
        assert_eq!(
            select("cuCtxCreate", 3020, false),
            Lookup::Found("cuCtxCreate_v2")
        );
        assert_eq!(
            select("cuCtxCreate", 11040, false),
            Lookup::Found("cuCtxCreate_v3")
        );
        assert_eq!(
            select("cuCtxCreate", 12040, false),
            Lookup::Found("cuCtxCreate_v3")
        );
        assert_eq!(
            select("cuCtxCreate", 13000, false),
            Lookup::Found("cuCtxCreate_v4")
        );
        assert_eq!(
            select("cuEventElapsedTime", 12000, false),
            Lookup::Found("cuEventElapsedTime")
        );
        assert_eq!(
            select("cuEventElapsedTime", 12080, false),
            Lookup::Found("cuEventElapsedTime_v2")
        );
        assert_eq!(
            select("cuDeviceGetUuid", 11000, false),
            Lookup::Found("cuDeviceGetUuid")
        );
        assert_eq!(
            select("cuDeviceGetUuid", 12000, false),
            Lookup::Found("cuDeviceGetUuid_v2")
        );
        let found = |base, version, per_thread| match select(base, version, per_thread) {
            Lookup::Found(symbol) => symbol,
            other => panic!("{base} at {version}: {other:?}"),
        };
        assert_eq!(
            found("cuGraphInstantiate", 11040, false),
            "cuGraphInstantiate_v2"
        );
        assert_eq!(
            found("cuGraphInstantiate", 12000, false),
            "cuGraphInstantiateWithFlags"
        );
        assert_eq!(
            found("cuStreamBeginCapture", 13000, true),
            "cuStreamBeginCapture_v2_ptsz"
        );
        assert_eq!(found("cuCtxGetDevice", 12090, false), "cuCtxGetDevice");
        assert_eq!(found("cuCtxGetDevice", 13000, false), "cuCtxGetDevice_v2");
        assert_eq!(
            found("cuCtxSynchronize", 13000, true),
            "cuCtxSynchronize_v2"
        );
    }

    #[test]
    fn per_thread_variants_are_too_new_before_7000() {
        let too_new = Lookup::VersionNotSufficient;
        assert_eq!(select("cuLaunchKernel", 6050, true), too_new);
        assert_eq!(select("cuMemcpy", 4000, true), too_new);
        assert_eq!(select("cuMemAlloc", 0, false), too_new);
        let ptsz = Lookup::Found("cuLaunchKernel_ptsz");
        assert_eq!(select("cuLaunchKernel", 7000, true), ptsz);
        assert_eq!(
            select("cuLaunchKernel", 4000, false),
            Lookup::Found("cuLaunchKernel")
        );
        assert_eq!(select("cuInit", 2000, true), Lookup::Found("cuInit"));
    }

    #[test]
    fn get_proc_address_itself_is_v2_from_12000() {
        assert_eq!(
            select("cuGetProcAddress", 11030, false),
            Lookup::Found("cuGetProcAddress")
        );
        assert_eq!(
            select("cuGetProcAddress", 11080, false),
            Lookup::Found("cuGetProcAddress")
        );
        assert_eq!(
            select("cuGetProcAddress", 12000, false),
            Lookup::Found("cuGetProcAddress_v2")
        );
        assert_eq!(
            select("cuGetProcAddress", 13000, true),
            Lookup::Found("cuGetProcAddress_v2")
        );
    }

    #[test]
    fn per_thread_flag_picks_ptsz_and_ptds_variants_where_they_exist() {
        assert_eq!(
            select("cuLaunchKernel", 12000, true),
            Lookup::Found("cuLaunchKernel_ptsz")
        );
        assert_eq!(
            select("cuLaunchKernel", 12000, false),
            Lookup::Found("cuLaunchKernel")
        );
        assert_eq!(
            select("cuMemcpyHtoD", 12000, true),
            Lookup::Found("cuMemcpyHtoD_v2_ptds")
        );
        assert_eq!(
            select("cuMemAllocAsync", 11020, true),
            Lookup::Found("cuMemAllocAsync_ptsz")
        );
        assert_eq!(
            select("cuStreamGetCtx", 12050, true),
            Lookup::Found("cuStreamGetCtx_v2_ptsz")
        );
        assert_eq!(
            select("cuMemAlloc", 12000, true),
            Lookup::Found("cuMemAlloc_v2")
        );
    }

    #[test]
    fn unknown_and_too_new_symbols_are_told_apart() {
        assert_eq!(select("cuNoSuchThing", 13000, false), Lookup::NotFound);
        assert_eq!(select("cuMemAlloc_v2", 13000, false), Lookup::NotFound);
        assert_eq!(
            select("cuMemAllocAsync", 11000, false),
            Lookup::VersionNotSufficient
        );
        assert_eq!(
            select("cuLaunchKernelEx", 11040, true),
            Lookup::VersionNotSufficient
        );
    }

    #[test]
    fn symbols_are_unique_per_entry() {
        // CUDA 12 gave cuGraphInstantiate the ABI of cuGraphInstantiateWithFlags: the one
        // symbol serves both names.
        let shared = ("cuGraphInstantiate", "cuGraphInstantiateWithFlags");
        let mut symbols: Vec<&str> = TABLE
            .iter()
            .filter(|e| (e.base, e.symbol) != shared)
            .flat_map(|e| std::iter::once(e.symbol).chain(e.per_thread))
            .collect();
        let n = symbols.len();
        symbols.sort_unstable();
        symbols.dedup();
        assert_eq!(symbols.len(), n);
    }
}
