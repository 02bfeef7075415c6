//! How many bytes a call takes that does not say so itself: a context (measured around its
//! creation), an array (from its dimensions and format), a pitched allocation (the padding
//! the driver chose). The hooks read the call's arguments and the driver's answers; what to
//! charge for them is decided here.

/// What a primary context took on an H100 80GB HBM3 (driver 580.159.04, CUDA 13.0) by the
/// whole device's used memory in NVML (the process's own figure is 518 MiB). Charged when
/// NVML cannot measure at all (no NVML on the machine) or measures nonsense: the larger
/// figure, so that a guess errs towards the quota.
pub const FALLBACK_CONTEXT_FOOTPRINT: u64 = 523 << 20;

/// A measurement above this is another process's allocation landing in the same instant,
/// not a context: the fallback is charged instead.
const MAX_PLAUSIBLE_FOOTPRINT: u64 = 4 << 30;

/// What NVML's process list says about this process on one GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Listed, with the device memory it uses.
    Listed(u64),
    /// The list was read and this process is not in it: it holds nothing there.
    NotListed,
}

/// NVML's readings just before and just after a context was created: this process's own
/// listing where NVML can see this process (`None` where it cannot), and the whole device's
/// used memory (`None` where NVML cannot say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextReadings {
    pub own_before: Option<Listing>,
    pub own_after: Option<Listing>,
    pub device_before: Option<u64>,
    pub device_after: Option<u64>,
}

/// What a new context took: this process's own growth where NVML lists it after (other
/// processes creating contexts or allocating in the same instant then cannot be mistaken
/// for ours); otherwise the whole device's growth, which they can skew; the fallback where
/// neither makes sense (negative, or more than any context takes).
pub fn context_footprint(readings: ContextReadings) -> u64 {
    if let (Some(before), Some(Listing::Listed(after))) = (readings.own_before, readings.own_after)
    {
        let before = match before {
            Listing::Listed(bytes) => bytes,
            Listing::NotListed => 0,
        };
        return plausible(after.checked_sub(before));
    }
    match (readings.device_before, readings.device_after) {
        (Some(before), Some(after)) => plausible(after.checked_sub(before)),
        _ => FALLBACK_CONTEXT_FOOTPRINT,
    }
}

fn plausible(measured: Option<u64>) -> u64 {
    measured
        .filter(|bytes| *bytes <= MAX_PLAUSIBLE_FOOTPRINT)
        .unwrap_or(FALLBACK_CONTEXT_FOOTPRINT)
}

/// The dimensions and element of an array (`CUDA_ARRAY_DESCRIPTOR`,
/// `CUDA_ARRAY3D_DESCRIPTOR`): a 1D array has height and depth 0, a 2D one depth 0.
/// `format_bytes`: the bytes of one channel of its format, `None` for a format the shim
/// does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrayShape {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format_bytes: Option<u64>,
    pub channels: u32,
}

/// The most bytes one element of any format takes (4 channels of 4 bytes): what an element
/// of an unknown format is charged, so that a guess errs towards the quota.
const MAX_ELEMENT_BYTES: u64 = 16;

impl ArrayShape {
    /// Bytes an array of this shape takes.
    pub fn bytes(&self) -> u64 {
        let elements = (self.width.max(1) as u64)
            .saturating_mul(self.height.max(1) as u64)
            .saturating_mul(self.depth.max(1) as u64);
        let element = match self.format_bytes {
            Some(bytes) => bytes.saturating_mul(u64::from(self.channels.max(1))),
            None => MAX_ELEMENT_BYTES,
        };
        elements.saturating_mul(element)
    }

    /// Bytes a mipmapped array of this shape takes: `levels` levels (at least one), each
    /// half the size of the one before in every dimension, down to 1.
    pub fn mipmapped_bytes(&self, levels: u32) -> u64 {
        let mut level = *self;
        let mut bytes = 0u64;
        for _ in 0..levels.max(1) {
            bytes = bytes.saturating_add(level.bytes());
            level.width = (level.width / 2).max(1);
            level.height = (level.height / 2).max(1);
            level.depth = (level.depth / 2).max(1);
        }
        bytes
    }
}

/// A pitched allocation: `height` rows of `width` bytes asked for (charged before the
/// call), rows of `pitch` bytes given. What the rows' padding adds, charged after the call.
pub fn pitch_padding(width: usize, height: usize, pitch: usize) -> u64 {
    (pitch as u64)
        .saturating_mul(height as u64)
        .saturating_sub((width as u64).saturating_mul(height as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn shape(
        width: usize,
        height: usize,
        depth: usize,
        format_bytes: Option<u64>,
        channels: u32,
    ) -> ArrayShape {
        ArrayShape {
            width,
            height,
            depth,
            format_bytes,
            channels,
        }
    }

    #[test]
    fn arrays_are_charged_by_dimensions_and_format() {
        // 1024 x 768 RGBA float: 4 channels x 4 bytes.
        assert_eq!(shape(1024, 768, 0, Some(4), 4).bytes(), 1024 * 768 * 16);
        // 1D arrays have height and depth 0.
        assert_eq!(shape(4096, 0, 0, Some(1), 1).bytes(), 4096);
        // An unknown format is charged the most any format takes.
        assert_eq!(shape(10, 10, 10, None, 1).bytes(), 1000 * 16);
        // Dimensions past what fits are charged everything, not wrapped around.
        assert_eq!(
            shape(usize::MAX, usize::MAX, 2, Some(4), 4).bytes(),
            u64::MAX
        );
    }

    #[test]
    fn mipmapped_arrays_are_charged_every_level_down_to_one_element() {
        let base = shape(8, 8, 0, Some(1), 1);
        // 64 + 16 + 4 + 1 + 1: the levels past 1x1 still take an element each.
        assert_eq!(base.mipmapped_bytes(5), 64 + 16 + 4 + 1 + 1);
        // Zero levels is charged as one.
        assert_eq!(base.mipmapped_bytes(0), 64);
    }

    #[test]
    fn a_pitched_allocation_is_charged_its_rows_padding() {
        assert_eq!(pitch_padding(1000, 10, 1024), 240);
        assert_eq!(pitch_padding(1024, 10, 1024), 0);
        // A pitch narrower than asked (the driver never does that) adds nothing.
        assert_eq!(pitch_padding(1024, 10, 512), 0);
    }

    #[test]
    fn a_context_is_charged_this_processes_growth_where_nvml_lists_it() {
        let readings = ContextReadings {
            own_before: Some(Listing::NotListed),
            own_after: Some(Listing::Listed(518 * MIB)),
            // Another process allocated meanwhile: not ours.
            device_before: Some(1000 * MIB),
            device_after: Some(3000 * MIB),
        };
        assert_eq!(context_footprint(readings), 518 * MIB);
        let second = ContextReadings {
            own_before: Some(Listing::Listed(518 * MIB)),
            own_after: Some(Listing::Listed(1036 * MIB)),
            ..readings
        };
        assert_eq!(context_footprint(second), 518 * MIB);
    }

    #[test]
    fn a_context_is_charged_the_devices_growth_where_nvml_cannot_see_this_process() {
        let readings = ContextReadings {
            device_before: Some(1000 * MIB),
            device_after: Some(1523 * MIB),
            ..ContextReadings::default()
        };
        assert_eq!(context_footprint(readings), 523 * MIB);
        // Listed before but not after (NVML lost us): the device's growth.
        let lost = ContextReadings {
            own_before: Some(Listing::NotListed),
            own_after: Some(Listing::NotListed),
            ..readings
        };
        assert_eq!(context_footprint(lost), 523 * MIB);
    }

    #[test]
    fn a_context_measured_as_nonsense_is_charged_the_fallback() {
        // No NVML at all.
        assert_eq!(
            context_footprint(ContextReadings::default()),
            FALLBACK_CONTEXT_FOOTPRINT
        );
        // The device's memory shrank meanwhile (another process freed).
        let shrank = ContextReadings {
            device_before: Some(3000 * MIB),
            device_after: Some(1000 * MIB),
            ..ContextReadings::default()
        };
        assert_eq!(context_footprint(shrank), FALLBACK_CONTEXT_FOOTPRINT);
        // More than any context takes: someone's allocation landed in the same instant.
        let huge = ContextReadings {
            own_before: Some(Listing::NotListed),
            own_after: Some(Listing::Listed(6 << 30)),
            ..ContextReadings::default()
        };
        assert_eq!(context_footprint(huge), FALLBACK_CONTEXT_FOOTPRINT);
    }
}
