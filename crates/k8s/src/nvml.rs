//! The GPUs of this node, their health and their XID events, through NVML
//! (`libnvidia-ml.so.1`, loaded at run time by the `nvml-wrapper` crate, so that the command
//! starts, and says why it sees no GPU, on a machine without a driver).
//!
//! Everything gpuslice asks NVML goes through here: `--gpu`, `doctor`, the processes
//! outside gpuslice's limits, the device plugin's GPUs and health, the DRA driver's GPUs,
//! and the metrics' GPU labels. (The shim's own NVML hooks, in `src/`, are another matter.)

use std::fmt;
use std::time::Duration;

use gpuslice_ledger::GpuUuid;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError as WrapperError;

/// A process with a context on a GPU, as NVML lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    /// Its PID in the host's PID namespace (NVML's numbering, whoever asks).
    pub pid: u32,
    /// The device memory NVML says it holds (0 where NVML cannot tell).
    pub memory_bytes: u64,
}

/// A GPU of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index (what `nvidia-smi -L`, NVIDIA's CDI names by index and DCGM's `gpu`
    /// label use).
    pub index: u32,
    /// The GPU's UUID.
    pub uuid: GpuUuid,
    /// Its product name, as NVML reports it (DCGM's `modelName`).
    pub model: String,
    /// Its memory, as NVML reports the total.
    pub memory_bytes: u64,
}

/// NVML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// The library is missing (no NVIDIA driver on the node, or not mounted in).
    #[error("libnvidia-ml.so.1 cannot be loaded ({0}): no NVIDIA driver here?")]
    Load(String),
    /// A call failed.
    #[error("{call} failed: {source}")]
    Call {
        /// The NVML function.
        call: &'static str,
        /// What NVML (or the wrapper) said.
        source: WrapperError,
    },
    /// NVML named a GPU by something that is not a GPU UUID.
    #[error("nvmlDeviceGetUUID returned {0:?}, which is not a GPU UUID")]
    NotAUuid(String),
}

/// A function name for [`NvmlError::Call`].
fn failed(call: &'static str) -> impl FnOnce(WrapperError) -> NvmlError {
    move |source| NvmlError::Call { call, source }
}

/// A GPU NVML lists: described, or its index and why it cannot be read.
pub type Found = Result<Gpu, (u32, NvmlError)>;

/// NVML, loaded and initialized; shut down when dropped.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
}

impl fmt::Debug for Nvml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nvml")
    }
}

/// A critical XID error NVML reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidEvent {
    /// The GPU it happened on; `None` when NVML cannot say which (its UUID cannot be read).
    pub gpu: Option<GpuUuid>,
    /// The XID; `None` when NVML reports it as unknown.
    pub xid: Option<u64>,
}

/// The GPUs whose XIDs cannot be watched, each with why.
pub type Unwatched<'g> = Vec<(&'g Gpu, String)>;

/// An NVML event set with the XID critical errors of some GPUs registered in it.
pub struct XidWatch<'n> {
    set: nvml_wrapper::EventSet<'n>,
}

impl fmt::Debug for XidWatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XidWatch")
    }
}

impl Nvml {
    /// Loads `libnvidia-ml.so.1` and calls `nvmlInit_v2`.
    pub fn open() -> Result<Nvml, NvmlError> {
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Ok(Nvml { nvml }),
            Err(WrapperError::LibloadingError(e)) => Err(NvmlError::Load(e.to_string())),
            Err(e) => Err(failed("nvmlInit_v2")(e)),
        }
    }

    /// Every GPU NVML lists, in its order.
    pub fn gpus(&self) -> Result<Vec<Gpu>, NvmlError> {
        self.each_gpu()?
            .into_iter()
            .map(|found| found.map_err(|(_, e)| e))
            .collect()
    }

    /// Every GPU NVML lists, in its order: each described, or its index and why it cannot be
    /// read (the others are listed all the same). An error when NVML cannot count them.
    pub fn each_gpu(&self) -> Result<Vec<Found>, NvmlError> {
        let count = self
            .nvml
            .device_count()
            .map_err(failed("nvmlDeviceGetCount_v2"))?;
        Ok((0..count)
            .map(|index| {
                let describe = || {
                    let device = self
                        .nvml
                        .device_by_index(index)
                        .map_err(failed("nvmlDeviceGetHandleByIndex_v2"))?;
                    Ok(Gpu {
                        index,
                        uuid: uuid_of(&device)?,
                        model: device.name().map_err(failed("nvmlDeviceGetName"))?,
                        memory_bytes: device
                            .memory_info()
                            .map_err(failed("nvmlDeviceGetMemoryInfo_v2"))?
                            .total,
                    })
                };
                describe().map_err(|e| (index, e))
            })
            .collect())
    }

    /// The version of the NVIDIA driver (`nvmlSystemGetDriverVersion`).
    pub fn driver_version(&self) -> Result<String, NvmlError> {
        self.nvml
            .sys_driver_version()
            .map_err(failed("nvmlSystemGetDriverVersion"))
    }

    /// The CUDA compute capability (major, minor) of the GPU with this UUID.
    pub fn compute_capability(&self, uuid: &GpuUuid) -> Result<(u32, u32), NvmlError> {
        let capability = self
            .device(uuid)?
            .cuda_compute_capability()
            .map_err(failed("nvmlDeviceGetCudaComputeCapability"))?;
        Ok((
            u32::try_from(capability.major).unwrap_or(0),
            u32::try_from(capability.minor).unwrap_or(0),
        ))
    }

    /// The free memory of the GPU with this UUID.
    pub fn free_memory(&self, uuid: &GpuUuid) -> Result<u64, NvmlError> {
        Ok(self
            .device(uuid)?
            .memory_info()
            .map_err(failed("nvmlDeviceGetMemoryInfo_v2"))?
            .free)
    }

    /// The processes with a context on the GPU with this UUID.
    pub fn processes(&self, uuid: &GpuUuid) -> Result<Vec<GpuProcess>, NvmlError> {
        let device = self.device(uuid)?;
        // Processes come and go between the count and the list: a few tries.
        let mut tries = 0;
        let listed = loop {
            match device.running_compute_processes() {
                Err(WrapperError::InsufficientSize(_)) if tries < 3 => tries += 1,
                other => break other.map_err(failed("nvmlDeviceGetComputeRunningProcesses_v3"))?,
            }
        };
        Ok(listed
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                },
            })
            .collect())
    }

    /// The NVML device of the GPU with this UUID.
    fn device(&self, uuid: &GpuUuid) -> Result<nvml_wrapper::Device<'_>, NvmlError> {
        self.nvml
            .device_by_uuid(uuid.to_string())
            .map_err(failed("nvmlDeviceGetHandleByUUID"))
    }

    /// Whether the GPU answers: `None` when it does; otherwise what NVML said (it is gone,
    /// lost, or cannot report its memory).
    pub fn problem(&self, uuid: &GpuUuid) -> Option<String> {
        match self.free_memory(uuid) {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Watches the XID critical errors of `gpus`. Each GPU is tried alone first, since NVML
    /// frees a set whose registration fails: the GPUs that cannot be watched come back with
    /// why, the others are in the set.
    pub fn watch_xids<'g>(
        &self,
        gpus: &'g [Gpu],
    ) -> Result<(XidWatch<'_>, Unwatched<'g>), NvmlError> {
        let mut watched = Vec::new();
        let mut unwatched = Vec::new();
        for gpu in gpus {
            match self.register_xids(gpu, self.new_set()?) {
                Ok(_) => watched.push(gpu),
                Err(e) => unwatched.push((gpu, e.to_string())),
            }
        }
        let mut set = self.new_set()?;
        for gpu in watched {
            set = self.register_xids(gpu, set)?;
        }
        Ok((XidWatch { set }, unwatched))
    }

    /// A new, empty event set.
    fn new_set(&self) -> Result<nvml_wrapper::EventSet<'_>, NvmlError> {
        self.nvml
            .create_event_set()
            .map_err(failed("nvmlEventSetCreate"))
    }

    /// `set` with the XID critical errors of `gpu` registered (NVML frees it on failure).
    fn register_xids<'n>(
        &'n self,
        gpu: &Gpu,
        set: nvml_wrapper::EventSet<'n>,
    ) -> Result<nvml_wrapper::EventSet<'n>, NvmlError> {
        let device = self.device(&gpu.uuid)?;
        let supported = device
            .supported_event_types()
            .map_err(failed("nvmlDeviceGetSupportedEventTypes"))?;
        if !supported.contains(EventTypes::CRITICAL_XID_ERROR) {
            return Err(failed("nvmlDeviceGetSupportedEventTypes")(
                WrapperError::NotSupported,
            ));
        }
        device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| failed("nvmlDeviceRegisterEvents")(e.error))
    }
}

impl XidWatch<'_> {
    /// The next XID critical error, waiting up to `timeout`; `None` when none came.
    pub fn next(&self, timeout: Duration) -> Result<Option<XidEvent>, NvmlError> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        loop {
            let event = match self.set.wait(ms) {
                Ok(event) => event,
                Err(WrapperError::Timeout) => return Ok(None),
                Err(e) => return Err(failed("nvmlEventSetWait_v2")(e)),
            };
            let xid = match event.event_data {
                Some(XidError::Value(xid)) => Some(xid),
                Some(XidError::Unknown) => None,
                // Only XID events are registered; anything else is passed over.
                None => continue,
            };
            let gpu = event
                .device
                .uuid()
                .ok()
                .and_then(|text| GpuUuid::parse(&text).ok());
            return Ok(Some(XidEvent { gpu, xid }));
        }
    }
}

/// The UUID of a device.
fn uuid_of(device: &nvml_wrapper::Device<'_>) -> Result<GpuUuid, NvmlError> {
    let text = device.uuid().map_err(failed("nvmlDeviceGetUUID"))?;
    GpuUuid::parse(&text).map_err(|_| NvmlError::NotAUuid(text.clone()))
}
