//! The simulated machine's configuration, read once from the environment at `cuInit` /
//! `nvmlInit`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use gpuslice_ledger::QUANTITY_FORM;

/// Device capacities: comma-separated byte quantities, one per device.
pub const ENV_DEVICES: &str = "FAKECUDA_DEVICES";
/// Directory of the shared per-device state files.
pub const ENV_STATE_DIR: &str = "FAKECUDA_STATE_DIR";
/// Device memory each live context takes.
pub const ENV_CONTEXT_FOOTPRINT: &str = "FAKECUDA_CONTEXT_FOOTPRINT";
/// Device memory each loaded module takes.
pub const ENV_MODULE_FOOTPRINT: &str = "FAKECUDA_MODULE_FOOTPRINT";
/// `off` makes every kernel take its whole duration of wall time, whoever else executes.
pub const ENV_TIMESLICE: &str = "FAKECUDA_TIMESLICE";
/// Percent of the device's time lost to switching while it time-slices between processes.
pub const ENV_SWITCH_LOSS: &str = "FAKECUDA_SWITCH_LOSS";
/// Nanoseconds a kernel launch call takes before the kernel is queued.
pub const ENV_LAUNCH_NS: &str = "FAKECUDA_LAUNCH_NS";
/// The most `FAKECUDA_LAUNCH_NS` may be: a millisecond, far beyond any real driver's call.
pub const MAX_LAUNCH_NS: u64 = 1_000_000;
/// Which devices CUDA enumerates, in which order (NVML ignores it), as the real driver reads
/// it.
pub const ENV_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";
/// The most `FAKECUDA_SWITCH_LOSS` may be: some of the time must still go to work.
pub const MAX_SWITCH_LOSS: u32 = 90;

/// The most devices a simulated machine may have.
pub const MAX_DEVICES: usize = 16;
/// Capacity of the single device simulated when `FAKECUDA_DEVICES` is unset: 80 GiB.
pub const DEFAULT_CAPACITY: u64 = 80 << 30;
/// Default context footprint: 64 MiB.
pub const DEFAULT_CONTEXT_FOOTPRINT: u64 = 64 << 20;

/// The configuration of the simulated machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Memory capacity of each device, in bytes; the index is the physical device's (its
    /// NVML index).
    pub devices: Vec<u64>,
    /// The physical devices CUDA enumerates, in CUDA ordinal order (`CUDA_VISIBLE_DEVICES`;
    /// all of them, in order, when it is unset).
    pub visible: Vec<usize>,
    /// Directory holding the shared per-device state files.
    pub state_dir: PathBuf,
    /// Bytes of device memory each live context takes.
    pub context_footprint: u64,
    /// Bytes of device memory each loaded module (or library) takes.
    pub module_footprint: u64,
    /// Whether the processes executing kernels on a device share its time
    /// (`FAKECUDA_TIMESLICE`, `on` by default).
    pub timeslice: bool,
    /// Percent of the device's time lost while it time-slices between processes
    /// (`FAKECUDA_SWITCH_LOSS`, 0 by default).
    pub switch_loss_percent: u32,
    /// Nanoseconds each kernel launch call takes, the kernel queued at its end
    /// (`FAKECUDA_LAUNCH_NS`); 0 (the default) queues it as of the call's start.
    pub launch_ns: u64,
}

/// An environment variable with a value fakecuda cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// What the variable accepts.
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fakecuda: {}={:?} is invalid: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, ConfigError> {
        let text = |var: &'static str| -> Result<Option<String>, ConfigError> {
            match lookup(var) {
                None => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| ConfigError {
                    var,
                    value: v.to_string_lossy().into_owned(),
                    expected: "valid UTF-8".to_owned(),
                }),
            }
        };

        let devices = match text(ENV_DEVICES)? {
            None => vec![DEFAULT_CAPACITY],
            Some(value) => parse_devices(&value).ok_or_else(|| ConfigError {
                var: ENV_DEVICES,
                value: value.clone(),
                expected: format!(
                    "1 to {MAX_DEVICES} comma-separated non-zero capacities, each {QUANTITY_FORM}"
                ),
            })?,
        };

        let visible = match text(ENV_VISIBLE_DEVICES)? {
            None => (0..devices.len()).collect(),
            Some(value) => visible_devices(&value, devices.len()),
        };

        let quantity = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            match text(var)? {
                None => Ok(default),
                Some(value) => quantity_of(&value).ok_or_else(|| ConfigError {
                    var,
                    value: value.clone(),
                    expected: QUANTITY_FORM.to_owned(),
                }),
            }
        };
        let context_footprint = quantity(ENV_CONTEXT_FOOTPRINT, DEFAULT_CONTEXT_FOOTPRINT)?;
        let module_footprint = quantity(ENV_MODULE_FOOTPRINT, 0)?;

        let timeslice = match text(ENV_TIMESLICE)?.as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(value) => {
                return Err(ConfigError {
                    var: ENV_TIMESLICE,
                    value: value.to_owned(),
                    expected: "on or off".to_owned(),
                });
            }
        };

        // A whole number from 0 to `most`, 0 where unset; `unit` names it in the error.
        let whole = |var: &'static str, most: u64, unit: &str| -> Result<u64, ConfigError> {
            match text(var)? {
                None => Ok(0),
                Some(value) => value
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n <= most)
                    .ok_or_else(|| ConfigError {
                        var,
                        value: value.clone(),
                        expected: format!("{unit} from 0 to {most}"),
                    }),
            }
        };
        let switch_loss_percent = u32::try_from(whole(
            ENV_SWITCH_LOSS,
            u64::from(MAX_SWITCH_LOSS),
            "a whole percent",
        )?)
        .unwrap_or(MAX_SWITCH_LOSS);
        let launch_ns = whole(ENV_LAUNCH_NS, MAX_LAUNCH_NS, "whole nanoseconds")?;

        let state_dir = match lookup(ENV_STATE_DIR) {
            Some(dir) if dir.is_empty() => {
                return Err(ConfigError {
                    var: ENV_STATE_DIR,
                    value: String::new(),
                    expected: "a directory path".to_owned(),
                });
            }
            Some(dir) => PathBuf::from(dir),
            None => default_state_dir(),
        };

        Ok(Config {
            devices,
            visible,
            state_dir,
            context_footprint,
            module_footprint,
            timeslice,
            switch_loss_percent,
            launch_ns,
        })
    }
}

/// `/tmp/fakecuda-<uid>`: per user, so that users of one machine never share a device.
fn default_state_dir() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/fakecuda-{uid}"))
}

fn parse_devices(value: &str) -> Option<Vec<u64>> {
    let devices = value
        .split(',')
        .map(|part| quantity_of(part).filter(|&bytes| bytes > 0))
        .collect::<Option<Vec<u64>>>()?;
    (1..=MAX_DEVICES)
        .contains(&devices.len())
        .then_some(devices)
}

/// The physical devices `CUDA_VISIBLE_DEVICES` makes visible to CUDA, in its order, out of
/// `count`, as the real driver reads the variable: a comma-separated list of indices (the
/// physical order, which NVML's is too) or UUIDs as nvidia-smi prints them (`GPU-` and
/// enough of the UUID's beginning to name one device). Enumeration stops at the first entry
/// that names no device (`0,7,1` on two devices is `0`), so an empty value or a first entry
/// that names none leaves no device. The simulator also stops at an entry naming a device
/// listed already, and at `MIG-` entries (no MIG here). Never an error: the driver does not
/// refuse the variable, it only sees fewer devices.
pub fn visible_devices(value: &str, count: usize) -> Vec<usize> {
    let mut visible = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let device = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
            entry.parse::<usize>().ok().filter(|&i| i < count)
        } else if entry.len() > 4 && entry.starts_with("GPU-") {
            let prefix = entry.to_ascii_lowercase();
            let mut matching = (0..count).filter(|&i| {
                crate::device::uuid_string_of(i)
                    .to_ascii_lowercase()
                    .starts_with(&prefix)
            });
            match (matching.next(), matching.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        } else {
            None
        };
        match device {
            Some(device) if !visible.contains(&device) => visible.push(device),
            _ => break,
        }
    }
    visible
}

/// A byte quantity in gpuslice's one grammar (`gpuslice_ledger::parse_quantity`); blanks
/// around it are the simulated GPU's own leniency, so that a list may read `80Gi, 40Gi`.
fn quantity_of(text: &str) -> Option<u64> {
    gpuslice_ledger::parse_quantity(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn quantities_are_gpuslices_with_blanks_around_them_allowed() {
        // The grammar itself is tested where it lives, in crates/ledger.
        assert_eq!(quantity_of("80Gi"), Some(80 << 30));
        assert_eq!(quantity_of(" 1Ti "), Some(1 << 40));
        assert_eq!(quantity_of("1.5Gi"), Some(3 << 29));
        for bad in ["", " ", "Gi", "1.5GB", "1 Gi", "99999999999Ei"] {
            assert_eq!(quantity_of(bad), None, "{bad:?}");
        }
        let c = config(&[
            (ENV_DEVICES, "80Gi, 512Mi"),
            (ENV_CONTEXT_FOOTPRINT, " 1Mi"),
        ])
        .unwrap();
        assert_eq!(c.devices, vec![80 << 30, 512 << 20]);
        assert_eq!(c.context_footprint, 1 << 20);
    }

    #[test]
    fn defaults_are_one_80gi_device_and_64mi_footprint() {
        let c = config(&[]).unwrap();
        assert_eq!(c.devices, vec![80 << 30]);
        assert_eq!(c.context_footprint, 64 << 20);
        assert_eq!(c.module_footprint, 0);
        assert!(c.timeslice);
        assert!(c.state_dir.to_string_lossy().starts_with("/tmp/fakecuda-"));
    }

    #[test]
    fn devices_list_sets_count_and_capacities() {
        let c = config(&[
            (ENV_DEVICES, "80Gi,512Mi,1073741824"),
            (ENV_STATE_DIR, "/x/y"),
            (ENV_CONTEXT_FOOTPRINT, "0"),
            (ENV_MODULE_FOOTPRINT, "32Mi"),
            (ENV_TIMESLICE, "off"),
            (ENV_SWITCH_LOSS, "10"),
            (ENV_LAUNCH_NS, "8000"),
        ])
        .unwrap();
        assert!(!c.timeslice);
        assert_eq!(c.switch_loss_percent, 10);
        assert_eq!(c.launch_ns, 8000);
        assert_eq!(config(&[]).unwrap().switch_loss_percent, 0);
        assert_eq!(config(&[]).unwrap().launch_ns, 0);
        assert!(config(&[(ENV_TIMESLICE, "on")]).unwrap().timeslice);
        assert_eq!(c.devices, vec![80 << 30, 512 << 20, 1 << 30]);
        assert_eq!(c.state_dir, PathBuf::from("/x/y"));
        assert_eq!(c.context_footprint, 0);
        assert_eq!(c.module_footprint, 32 << 20);
    }

    #[test]
    fn visible_devices_reorder_and_subset_by_index_or_uuid() {
        assert_eq!(visible_devices("1,0", 2), [1, 0]);
        assert_eq!(visible_devices("1", 2), [1]);
        assert_eq!(visible_devices(" 2 , 0", 3), [2, 0]);
        assert_eq!(
            visible_devices("GPU-fa4ec0da-0000-4000-8000-000000000001,0", 2),
            [1, 0]
        );
        // Enough of the beginning to name one device, in either case.
        assert_eq!(
            visible_devices("GPU-FA4EC0DA-0000-4000-8000-000000000002", 3),
            [2]
        );
        // The first entry that names no device ends the list.
        assert_eq!(visible_devices("0,7,1", 2), [0]);
        assert_eq!(visible_devices("1,-1,0", 2), [1]);
        assert_eq!(visible_devices("1,0,1", 2), [1, 0]);
        assert_eq!(
            visible_devices("0,GPU-fa4ec0da", 2),
            [0],
            "a prefix naming two"
        );
        assert_eq!(visible_devices("0,GPU-", 2), [0]);
        assert_eq!(visible_devices("MIG-1,0", 2), [] as [usize; 0]);
        assert_eq!(visible_devices("", 2), [] as [usize; 0]);
        assert_eq!(visible_devices("2", 2), [] as [usize; 0]);

        let two = |visible: Option<&str>| {
            let mut vars = vec![(ENV_DEVICES, "1Gi,2Gi")];
            vars.extend(visible.map(|v| (ENV_VISIBLE_DEVICES, v)));
            config(&vars).unwrap().visible
        };
        assert_eq!(two(None), [0, 1], "unset: every device, in order");
        assert_eq!(two(Some("1,0")), [1, 0]);
        assert_eq!(two(Some("")), [] as [usize; 0]);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (var, value) in [
            (ENV_DEVICES, "lots"),
            (ENV_DEVICES, ""),
            (ENV_DEVICES, "1Gi,,2Gi"),
            (ENV_DEVICES, "0"),
            (ENV_CONTEXT_FOOTPRINT, "64MB"),
            (ENV_MODULE_FOOTPRINT, "1.5MB"),
            (ENV_STATE_DIR, ""),
            (ENV_TIMESLICE, "OFF"),
            (ENV_TIMESLICE, "0"),
            (ENV_SWITCH_LOSS, "91"),
            (ENV_SWITCH_LOSS, "10%"),
            (ENV_SWITCH_LOSS, "-1"),
            (ENV_LAUNCH_NS, "1000001"),
            (ENV_LAUNCH_NS, "8us"),
            (ENV_LAUNCH_NS, "-1"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let line = err.to_string();
            assert!(line.contains(var) && !line.contains('\n'), "{line}");
        }
        let too_many = vec!["1Gi"; MAX_DEVICES + 1].join(",");
        assert_eq!(
            config(&[(ENV_DEVICES, &too_many)]).unwrap_err().var,
            ENV_DEVICES
        );
    }
}
