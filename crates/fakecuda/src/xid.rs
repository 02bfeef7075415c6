//! XID events a test can raise while programs run, and NVML's event sets that deliver them
//! (`nvmlEventSetCreate`, `nvmlDeviceRegisterEvents`, `nvmlEventSetWait_v2`,
//! `nvmlEventSetFree`), as a device plugin watches a real GPU's critical errors.
//!
//! The file `xid-events` in the state directory (`FAKECUDA_STATE_DIR`) lists events, one per
//! line: the device, by ordinal (`1`) or by UUID, and the XID (`1 79`, `GPU-…-000000000001
//! 13`); blank lines, lines starting with `#` and lines that do not parse are skipped, and so
//! is a last line without its line feed (not written whole yet). A test appends a line to
//! raise an event. An event set delivers the events appended after it was created, each
//! once, in order, for the devices registered in it (for XID events): as NVML delivers only
//! what happens after a program started watching.

use std::path::Path;
use std::time::{Duration, Instant};

/// The file, in the state directory, that lists XID events.
pub const XID_EVENTS_FILE: &str = "xid-events";

/// `nvmlEventTypeSingleBitEccError`.
pub const EVENT_SINGLE_BIT_ECC: u64 = 0x1;
/// `nvmlEventTypeDoubleBitEccError`.
pub const EVENT_DOUBLE_BIT_ECC: u64 = 0x2;
/// `nvmlEventTypeXidCriticalError`.
pub const EVENT_XID_CRITICAL: u64 = 0x8;
/// The event types every simulated device supports.
pub const SUPPORTED_EVENTS: u64 = EVENT_SINGLE_BIT_ECC | EVENT_DOUBLE_BIT_ECC | EVENT_XID_CRITICAL;

/// How often a waiting event set looks at the file again.
const POLL: Duration = Duration::from_millis(10);

/// One XID event as the file lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidEvent {
    /// The device's ordinal.
    pub device: usize,
    /// The XID.
    pub xid: u64,
}

/// The complete lines of the file at `state_dir` (none if it is missing or unreadable).
fn lines(state_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(XID_EVENTS_FILE)) else {
        return Vec::new();
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

/// How many complete lines the file has now: where a new event set starts reading.
pub fn current_end(state_dir: &Path) -> usize {
    lines(state_dir).len()
}

/// The event a line raises, given the devices' UUIDs by ordinal; `None` for a line that
/// raises none.
fn parse(line: &str, uuids: &[String]) -> Option<XidEvent> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut words = line.split_whitespace();
    let (device, xid) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let device = match device.parse::<usize>() {
        Ok(index) => index,
        Err(_) => uuids.iter().position(|u| u.eq_ignore_ascii_case(device))?,
    };
    if device >= uuids.len() {
        return None;
    }
    Some(XidEvent {
        device,
        xid: xid.parse().ok()?,
    })
}

/// Waits up to `timeout` for the next event, after line `*seen`, on one of `devices`;
/// advances `*seen` past every line it read. `None` when none came in time.
pub fn wait(
    state_dir: &Path,
    uuids: &[String],
    devices: &[usize],
    seen: &mut usize,
    timeout: Duration,
) -> Option<XidEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = lines(state_dir);
        while let Some(line) = all.get(*seen) {
            *seen += 1;
            if let Some(event) = parse(line, uuids).filter(|e| devices.contains(&e.device)) {
                return Some(event);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuids() -> Vec<String> {
        (0..2)
            .map(|i| format!("GPU-fa4ec0da-0000-4000-8000-00000000000{i}"))
            .collect()
    }

    #[test]
    fn lines_name_the_device_by_ordinal_or_uuid_and_the_xid() {
        let u = uuids();
        assert_eq!(parse("1 79", &u), Some(XidEvent { device: 1, xid: 79 }));
        assert_eq!(
            parse("  gpu-FA4EC0DA-0000-4000-8000-000000000000   13 ", &u),
            Some(XidEvent { device: 0, xid: 13 })
        );
        for skipped in ["", "# 1 79", "2 79", "1", "1 x", "1 79 80", "GPU-nope 79"] {
            assert_eq!(parse(skipped, &u), None, "{skipped:?}");
        }
    }

    #[test]
    fn a_set_gets_only_what_was_appended_after_it_began_and_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(XID_EVENTS_FILE);
        let u = uuids();
        std::fs::write(&file, "0 48\n").unwrap();
        let mut seen = current_end(dir.path());
        let none = wait(dir.path(), &u, &[0, 1], &mut seen, Duration::ZERO);
        assert_eq!(none, None, "an event from before the set");

        std::fs::write(&file, "0 48\n1 79\n0 31\n1 9").unwrap();
        // Device 0 only: device 1's event is passed over; the unfinished line waits.
        let got = wait(dir.path(), &u, &[0], &mut seen, Duration::ZERO);
        assert_eq!(got, Some(XidEvent { device: 0, xid: 31 }));
        assert_eq!(wait(dir.path(), &u, &[0], &mut seen, Duration::ZERO), None);
        std::fs::write(&file, "0 48\n1 79\n0 31\n1 94\n").unwrap();
        let got = wait(dir.path(), &u, &[1], &mut seen, Duration::ZERO);
        assert_eq!(got, Some(XidEvent { device: 1, xid: 94 }));
    }
}
