//! The process-wide simulated driver: the configuration and the devices, created once by the
//! first `cuInit` or `nvmlInit`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Config, ENV_STATE_DIR};
use crate::device::{Device, Sizes};
use crate::error::{CuError, CuResult};

/// The simulated driver of this process.
#[derive(Debug)]
pub struct Driver {
    /// The configuration read at initialization.
    pub config: Config,
    /// Every device, by physical index (NVML's order, which `CUDA_VISIBLE_DEVICES` does
    /// not change).
    pub devices: Vec<Device>,
    pid: u32,
}

/// Why the driver could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// A `FAKECUDA_*` variable is invalid.
    Config,
    /// The state directory or a state file could not be used.
    System,
}

static DRIVER: OnceLock<Result<Driver, InitError>> = OnceLock::new();
static CUDA_INITIALIZED: AtomicBool = AtomicBool::new(false);

impl Driver {
    fn start() -> Result<Driver, InitError> {
        let config = Config::from_env().map_err(|e| {
            eprintln!("{e}");
            InitError::Config
        })?;
        let system = |e: std::io::Error| {
            eprintln!("fakecuda: {ENV_STATE_DIR}: {e}");
            InitError::System
        };
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            system(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", config.state_dir.display()),
            ))
        })?;
        let mut devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(index, &capacity)| {
                let sizes = Sizes {
                    capacity,
                    context_footprint: config.context_footprint,
                    module_footprint: config.module_footprint,
                };
                Device::open(
                    index,
                    sizes,
                    &config.state_dir,
                    config.timeslice,
                    config.switch_loss_percent,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(system)?;
        for device in &mut devices {
            device.ordinal = config.visible.iter().position(|&p| p == device.index);
        }
        Ok(Driver {
            config,
            devices,
            pid: std::process::id(),
        })
    }
}

impl InitError {
    /// The `CUresult` `cuInit` returns for this failure.
    pub fn cu_error(self) -> CuError {
        match self {
            InitError::Config => CuError::InvalidValue,
            InitError::System => CuError::OperatingSystem,
        }
    }
}

/// Starts the driver if it has not started (reading the configuration and printing one line
/// to stderr if it is invalid), for `cuInit` and `nvmlInit`.
pub fn load() -> Result<&'static Driver, InitError> {
    DRIVER.get_or_init(Driver::start).as_ref().map_err(|e| *e)
}

/// `cuInit`. In a child forked after the parent initialized CUDA, it fails as on a real GPU;
/// where `CUDA_VISIBLE_DEVICES` leaves no device, it is `CUDA_ERROR_NO_DEVICE`.
pub fn cu_init() -> CuResult {
    let driver = load().map_err(InitError::cu_error)?;
    if driver.pid != std::process::id() {
        return Err(CuError::NotInitialized);
    }
    if driver.config.visible.is_empty() {
        return Err(CuError::NoDevice);
    }
    CUDA_INITIALIZED.store(true, Ordering::Release);
    Ok(())
}

/// The driver, for every call that needs `cuInit` first.
pub fn get() -> CuResult<&'static Driver> {
    if !CUDA_INITIALIZED.load(Ordering::Acquire) {
        return Err(CuError::NotInitialized);
    }
    match DRIVER.get() {
        Some(Ok(driver)) if driver.pid == std::process::id() => Ok(driver),
        _ => Err(CuError::NotInitialized),
    }
}

/// The device with CUDA ordinal `ordinal`: the `ordinal`-th of `CUDA_VISIBLE_DEVICES`.
pub fn device(ordinal: i32) -> CuResult<&'static Device> {
    let driver = get()?;
    usize::try_from(ordinal)
        .ok()
        .and_then(|i| driver.config.visible.get(i))
        .and_then(|&physical| driver.devices.get(physical))
        .ok_or(CuError::InvalidDevice)
}

/// How many devices CUDA enumerates (`cuDeviceGetCount`).
pub fn visible_count() -> CuResult<usize> {
    Ok(get()?.config.visible.len())
}

/// Gives back all device memory this process holds. Runs when the library is unloaded or
/// the process exits normally; a killed process's memory is reclaimed by the others.
extern "C" fn release_at_exit() {
    crate::ipc::forget_exports();
    if let Some(Ok(driver)) = DRIVER.get() {
        for device in &driver.devices {
            device.release_all();
        }
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static RELEASE_AT_EXIT: extern "C" fn() = release_at_exit;
