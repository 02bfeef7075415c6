//! GPU failures a test can switch on and off while programs run: a device that NVML reports
//! as lost (`NVML_ERROR_GPU_IS_LOST`), as a real GPU that fell off the bus or hit a fatal
//! error is reported.
//!
//! The file `lost-gpus` in the state directory (`FAKECUDA_STATE_DIR`) lists the lost devices,
//! one per line, by ordinal (`1`) or by UUID (`GPU-fa4ec0da-0000-4000-8000-000000000001`);
//! blank lines and lines starting with `#` are ignored. It is read again at every NVML call
//! that names a device, so a long-running program (a device plugin's health check) sees a
//! device fail and come back as the test writes and removes the file. Without the file, no
//! device is lost. The CUDA driver side is not affected.

use std::path::Path;

/// The file, in the state directory, that lists lost devices.
pub const LOST_GPUS_FILE: &str = "lost-gpus";

/// Whether device `index` (UUID `uuid`) is listed as lost in `state_dir`. An unreadable or
/// missing file lists nothing.
pub fn is_lost(state_dir: &Path, index: usize, uuid: &str) -> bool {
    std::fs::read_to_string(state_dir.join(LOST_GPUS_FILE))
        .is_ok_and(|text| lists(&text, index, uuid))
}

/// Whether the text of a `lost-gpus` file names the device.
fn lists(text: &str, index: usize, uuid: &str) -> bool {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .any(|line| {
            line.parse::<usize>().is_ok_and(|i| i == index) || line.eq_ignore_ascii_case(uuid)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "GPU-fa4ec0da-0000-4000-8000-000000000001";

    #[test]
    fn lost_devices_are_named_by_ordinal_or_uuid() {
        assert!(lists("1\n", 1, UUID));
        assert!(lists(
            "# comment\n\n  GPU-FA4EC0DA-0000-4000-8000-000000000001  \n",
            1,
            UUID
        ));
        assert!(!lists(
            "0\nGPU-fa4ec0da-0000-4000-8000-000000000002\n",
            1,
            UUID
        ));
        assert!(!lists("", 1, UUID));
        assert!(!lists("#1\n", 1, UUID));
    }

    #[test]
    fn the_file_is_read_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_lost(dir.path(), 1, UUID), "no file: nothing lost");
        std::fs::write(dir.path().join(LOST_GPUS_FILE), "1\n").unwrap();
        assert!(is_lost(dir.path(), 1, UUID));
        assert!(!is_lost(dir.path(), 0, "GPU-other"));
        std::fs::remove_file(dir.path().join(LOST_GPUS_FILE)).unwrap();
        assert!(!is_lost(dir.path(), 1, UUID), "removed: back");
    }
}
