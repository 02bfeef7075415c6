//! The on-disk layout of the ledger's two files, byte for byte as `docs/architecture.md` and
//! `include/gpuslice.h` describe it.
//!
//! The `#[repr(C)]` structs here are the files' layout, with every field an atomic so that a
//! shared mapping may be read and written by many processes at once. They stay private to
//! the crate; the byte offsets are public so that tools (and tests) can find the fields.
//!
//! All multi-byte fields are little-endian. The structs store them as native atomics, which
//! is only right on a little-endian machine; the crate refuses to build on any other.

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::error::LedgerError;
use crate::{LAYOUT_VERSION, MAX_GPUS, MAX_SLOTS};

#[cfg(not(target_endian = "little"))]
compile_error!("the gpuslice ledger layout is little-endian; big-endian targets are not supported");

/// The magic of a quota file, its first 8 bytes.
pub const QUOTA_MAGIC: [u8; 8] = *b"GPUSLQTA";
/// The magic of a usage file, its first 8 bytes.
pub const USAGE_MAGIC: [u8; 8] = *b"GPUSLUSE";
/// The magic of a tenant's lock file, its first 8 bytes.
pub const LOCK_MAGIC: [u8; 8] = *b"GPUSLLCK";

/// Size of the header that starts both files.
pub const HEADER_SIZE: usize = size_of::<Header>();
/// Size of one [`Limits`](crate::Limits) record on disk.
pub const LIMITS_SIZE: usize = size_of::<RawLimits>();

/// Offset of the default limits in a quota file.
pub const QUOTA_DEFAULTS_OFFSET: usize = offset_of!(QuotaLayout, defaults);
/// Offset of the per-GPU limits table in a quota file (its header's `table_offset`).
pub const QUOTA_TABLE_OFFSET: usize = offset_of!(QuotaLayout, gpus);
/// Size of one per-GPU entry of a quota file (its header's `entry_size`).
pub const QUOTA_ENTRY_SIZE: usize = size_of::<QuotaGpu>();
/// Length of a quota file.
pub const QUOTA_FILE_SIZE: usize = size_of::<QuotaLayout>();

/// Offset of the GPU table in a usage file (its header's `table_offset`).
pub const USAGE_TABLE_OFFSET: usize = offset_of!(UsageLayout, gpus);
/// Offset of the occupied-slot bitmap in a usage file: right after the GPU table,
/// `MAX_SLOTS / 64` little-endian u64 words, bit *i* of word *w* for slot `64 w + i`.
pub const USAGE_BITMAP_OFFSET: usize = offset_of!(UsageLayout, occupied);
/// How many u64 words the occupied-slot bitmap has.
pub const BITMAP_WORDS: usize = MAX_SLOTS / 64;
/// Size of one GPU table entry of a usage file (its header's `entry_size`).
pub const USAGE_ENTRY_SIZE: usize = size_of::<UsageGpu>();
/// Offset of the process slots in a usage file (its header's `slot_offset`).
pub const USAGE_SLOT_OFFSET: usize = offset_of!(UsageLayout, slots);
/// Size of one process slot (its header's `slot_size`).
pub const USAGE_SLOT_SIZE: usize = size_of::<Slot>();
/// Offset of the per-GPU records inside a slot.
pub const SLOT_GPUS_OFFSET: usize = offset_of!(Slot, gpus);
/// Size of one per-GPU record of a slot.
pub const SLOT_GPU_SIZE: usize = size_of::<SlotGpu>();
/// Length of a usage file.
pub const USAGE_FILE_SIZE: usize = size_of::<UsageLayout>();

/// Length of a tenant's lock file: its header alone. The locks are on byte ranges, which need
/// no bytes behind them.
pub const LOCK_FILE_SIZE: usize = HEADER_SIZE;

/// The bytes of a tenant's lock file (`<dir>/locks/<tenant>`) whose OFD locks coordinate
/// the tenant's processes and its creator. Only the tenant's own processes and its creator
/// can open the file (it is not in the directory other tenants see), so nobody else can
/// hold, block or fake any of these locks.
pub mod lock_bytes {
    /// Write lock: held by a quota writer, where it can take it, for the whole of an in-place
    /// update; what tells readers a writer is alive (writers never wait for it).
    pub const QUOTA_UPDATE: u64 = 0;
    /// Write lock: held while a GPU is added to the usage file's GPU table.
    pub const GPU_TABLE: u64 = 1;
    /// Write lock: held by `gpuslice run` while it enters or leaves the tenant.
    pub const RUN_ENTRY: u64 = 2;
    /// Read lock: held by every `gpuslice run` in the tenant for as long as it is in it.
    pub const RUN_MEMBERS: u64 = 3;
    /// Write lock on `SLOTS + i`: held by the process that owns slot *i*, for its life.
    pub const SLOTS: u64 = 64;
}
/// `state` of a GPU table entry that holds no GPU.
pub(crate) const GPU_EMPTY: u32 = 0;
/// `state` of a GPU table entry that holds a GPU.
pub(crate) const GPU_REGISTERED: u32 = 1;
/// `state` of a free slot.
pub(crate) const SLOT_FREE: u32 = 0;
/// `state` of a slot owned by a live process.
pub(crate) const SLOT_LIVE: u32 = 1;
/// `memory_limit_bytes` of a limit that sets none.
pub(crate) const MEMORY_UNLIMITED: u64 = u64::MAX;

/// Byte offsets of the header's fields (the same in both files).
pub mod header {
    use super::Header;
    use std::mem::offset_of;

    /// `u8[8]`: [`QUOTA_MAGIC`](super::QUOTA_MAGIC) or [`USAGE_MAGIC`](super::USAGE_MAGIC).
    pub const MAGIC: usize = offset_of!(Header, magic);
    /// `u32`: [`LAYOUT_VERSION`](crate::LAYOUT_VERSION).
    pub const LAYOUT_VERSION: usize = offset_of!(Header, layout_version);
    /// `u32`: 64.
    pub const HEADER_SIZE: usize = offset_of!(Header, header_size);
    /// `u64`: the file's length in bytes.
    pub const FILE_SIZE: usize = offset_of!(Header, file_size);
    /// `u32`: [`MAX_GPUS`](crate::MAX_GPUS).
    pub const MAX_GPUS: usize = offset_of!(Header, max_gpus);
    /// `u32`: [`MAX_SLOTS`](crate::MAX_SLOTS) in a usage file, 0 in a quota file.
    pub const MAX_SLOTS: usize = offset_of!(Header, max_slots);
    /// `u64`: offset of the per-GPU table.
    pub const TABLE_OFFSET: usize = offset_of!(Header, table_offset);
    /// `u64`: offset of the process slots (usage), 0 (quota).
    pub const SLOT_OFFSET: usize = offset_of!(Header, slot_offset);
    /// `u32`: size of one per-GPU table entry.
    pub const ENTRY_SIZE: usize = offset_of!(Header, entry_size);
    /// `u32`: size of one process slot (usage), 0 (quota).
    pub const SLOT_SIZE: usize = offset_of!(Header, slot_size);
    /// `u64`: usage: the occupied-slot bitmap; quota: the generation.
    pub const WORD: usize = offset_of!(Header, word);
}

/// The 64-byte header that starts both files.
#[repr(C)]
pub(crate) struct Header {
    /// The 8 magic bytes, read as a little-endian u64.
    pub(crate) magic: AtomicU64,
    pub(crate) layout_version: AtomicU32,
    pub(crate) header_size: AtomicU32,
    pub(crate) file_size: AtomicU64,
    pub(crate) max_gpus: AtomicU32,
    pub(crate) max_slots: AtomicU32,
    pub(crate) table_offset: AtomicU64,
    pub(crate) slot_offset: AtomicU64,
    pub(crate) entry_size: AtomicU32,
    pub(crate) slot_size: AtomicU32,
    /// Quota: the generation (odd while an update is being written). Usage and lock files:
    /// 0 (the usage file's occupied bitmap has its own place, after the GPU table).
    pub(crate) word: AtomicU64,
}

/// [`Limits`](crate::Limits) as stored.
#[repr(C)]
pub(crate) struct RawLimits {
    /// `u64::MAX` = unlimited.
    pub(crate) memory_limit_bytes: AtomicU64,
    /// 0 = unset.
    pub(crate) compute_share_permille: AtomicU32,
    /// 0 = unset.
    pub(crate) compute_limit_permille: AtomicU32,
    /// 0 unset, 1 low, 2 normal, 3 high.
    pub(crate) priority: AtomicU32,
    pub(crate) reserved: [AtomicU32; 3],
}

/// One per-GPU entry of a quota file.
#[repr(C)]
pub(crate) struct QuotaGpu {
    /// The 16 UUID bytes as two little-endian u64s (atomic, because they change in place).
    pub(crate) uuid: [AtomicU64; 2],
    /// 1 = entry valid.
    pub(crate) in_use: AtomicU32,
    pub(crate) reserved: [AtomicU32; 3],
    pub(crate) limits: RawLimits,
}

/// A whole quota file.
#[repr(C)]
pub(crate) struct QuotaLayout {
    pub(crate) header: Header,
    pub(crate) defaults: RawLimits,
    pub(crate) gpus: [QuotaGpu; MAX_GPUS],
}

/// One entry of a usage file's GPU table.
#[repr(C)]
pub(crate) struct UsageGpu {
    /// The 16 UUID bytes as two little-endian u64s.
    pub(crate) uuid: [AtomicU64; 2],
    /// 0 empty, 1 registered (stored last, with release ordering).
    pub(crate) state: AtomicU32,
    pub(crate) reserved0: AtomicU32,
    pub(crate) oom_refusals: AtomicU64,
    pub(crate) retired_gpu_time_ns: AtomicU64,
    /// The tenant's compute credit on this GPU, in nanoseconds of GPU time (cumulative).
    pub(crate) credit_ns: AtomicU64,
    /// When the credit was last refilled (`CLOCK_MONOTONIC` ns); the refill's claim.
    pub(crate) refilled_at_ns: AtomicU64,
    /// Wall time the tenant's launches spent waiting for credit (summed over threads).
    pub(crate) throttled_ns: AtomicU64,
}

/// One per-GPU record inside a process slot.
#[repr(C)]
pub(crate) struct SlotGpu {
    /// Bytes this process holds (committed reservations). What observers sum.
    pub(crate) memory_bytes: AtomicU64,
    pub(crate) gpu_time_ns: AtomicU64,
    /// Bytes of reservations being checked right now, not yet granted or refused. Counted
    /// by reservations (so clashing ones see each other), never by observers.
    pub(crate) pending_bytes: AtomicU64,
    /// What the process is doing on the GPU: [`Activity`](crate::Activity), packed.
    pub(crate) activity: AtomicU64,
    /// The compute settings the process enforces on the GPU:
    /// [`ComputeSettings`](crate::ComputeSettings), packed.
    pub(crate) compute: AtomicU64,
}

/// One process slot.
#[repr(C)]
pub(crate) struct Slot {
    /// 0 free, 1 live.
    pub(crate) state: AtomicU32,
    /// The process's PID in its own PID namespace. Informational only (reports match it
    /// with the host's view of GPU processes); never trusted to prove anything.
    pub(crate) pid: AtomicU32,
    pub(crate) claimed_unix_ms: AtomicU64,
    pub(crate) reserved: AtomicU64,
    /// The inode of the process's PID namespace (`/proc/self/ns/pid`), 0 if unknown:
    /// with `pid`, what names the process from any namespace. Informational only.
    pub(crate) pid_namespace: AtomicU64,
    pub(crate) gpus: [SlotGpu; MAX_GPUS],
}

/// A whole usage file.
#[repr(C)]
pub(crate) struct UsageLayout {
    pub(crate) header: Header,
    pub(crate) gpus: [UsageGpu; MAX_GPUS],
    /// Bit *i* of word *w* set: slot `64 w + i` may hold usage.
    pub(crate) occupied: [AtomicU64; BITMAP_WORDS],
    pub(crate) slots: [Slot; MAX_SLOTS],
}

/// A whole lock file: only the header (the locks are on byte ranges, see [`lock_bytes`]).
#[repr(C)]
pub(crate) struct LockLayout {
    pub(crate) header: Header,
}

/// `GpuUuid` bytes as the two little-endian words they are stored as.
pub(crate) fn uuid_words(bytes: &[u8; 16]) -> [u64; 2] {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&bytes[..8]);
    hi.copy_from_slice(&bytes[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

/// The inverse of [`uuid_words`].
pub(crate) fn uuid_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&words[0].to_le_bytes());
    out[8..].copy_from_slice(&words[1].to_le_bytes());
    out
}

/// The byte of the lock file a process locks to own slot `index`.
pub(crate) fn slot_lock_byte(index: u32) -> u64 {
    lock_bytes::SLOTS + u64::from(index)
}

/// Which of the three files.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FileKind {
    Quota,
    Usage,
    Lock,
}

/// What a valid header of one kind of file holds.
#[derive(Debug)]
pub(crate) struct Geometry {
    pub(crate) kind: FileKind,
    pub(crate) magic: [u8; 8],
    pub(crate) file_size: u64,
    pub(crate) max_slots: u32,
    pub(crate) table_offset: u64,
    pub(crate) slot_offset: u64,
    pub(crate) entry_size: u32,
    pub(crate) slot_size: u32,
}

/// Header constants as the integer types of their fields. Every value is a small layout
/// constant (checked by the `layout` tests), so these conversions cannot truncate.
#[allow(clippy::cast_possible_truncation)]
mod consts {
    use super::*;
    pub(super) const HEADER_SIZE_U32: u32 = HEADER_SIZE as u32;
    pub(super) const MAX_GPUS_U32: u32 = MAX_GPUS as u32;
    pub(super) const MAX_SLOTS_U32: u32 = MAX_SLOTS as u32;
    pub(super) const QUOTA_ENTRY_SIZE_U32: u32 = QUOTA_ENTRY_SIZE as u32;
    pub(super) const USAGE_ENTRY_SIZE_U32: u32 = USAGE_ENTRY_SIZE as u32;
    pub(super) const USAGE_SLOT_SIZE_U32: u32 = USAGE_SLOT_SIZE as u32;
}
use consts::*;

/// A valid quota file's header.
pub(crate) const QUOTA_GEOMETRY: Geometry = Geometry {
    kind: FileKind::Quota,
    magic: QUOTA_MAGIC,
    file_size: QUOTA_FILE_SIZE as u64,
    max_slots: 0,
    table_offset: QUOTA_TABLE_OFFSET as u64,
    slot_offset: 0,
    entry_size: QUOTA_ENTRY_SIZE_U32,
    slot_size: 0,
};

/// A valid lock file's header.
pub(crate) const LOCK_GEOMETRY: Geometry = Geometry {
    kind: FileKind::Lock,
    magic: LOCK_MAGIC,
    file_size: LOCK_FILE_SIZE as u64,
    max_slots: MAX_SLOTS_U32,
    table_offset: 0,
    slot_offset: 0,
    entry_size: 0,
    slot_size: 0,
};

/// A valid usage file's header.
pub(crate) const USAGE_GEOMETRY: Geometry = Geometry {
    kind: FileKind::Usage,
    magic: USAGE_MAGIC,
    file_size: USAGE_FILE_SIZE as u64,
    max_slots: MAX_SLOTS_U32,
    table_offset: USAGE_TABLE_OFFSET as u64,
    slot_offset: USAGE_SLOT_OFFSET as u64,
    entry_size: USAGE_ENTRY_SIZE_U32,
    slot_size: USAGE_SLOT_SIZE_U32,
};

impl Geometry {
    /// Writes a fresh header of this geometry (used on a new file nobody else sees yet).
    pub(crate) fn init_header(&self, h: &Header) {
        use std::sync::atomic::Ordering::Relaxed;
        h.magic.store(u64::from_le_bytes(self.magic), Relaxed);
        h.layout_version.store(LAYOUT_VERSION, Relaxed);
        h.header_size.store(HEADER_SIZE_U32, Relaxed);
        h.file_size.store(self.file_size, Relaxed);
        h.max_gpus.store(MAX_GPUS_U32, Relaxed);
        h.max_slots.store(self.max_slots, Relaxed);
        h.table_offset.store(self.table_offset, Relaxed);
        h.slot_offset.store(self.slot_offset, Relaxed);
        h.entry_size.store(self.entry_size, Relaxed);
        h.slot_size.store(self.slot_size, Relaxed);
        h.word.store(0, Relaxed);
    }

    /// Checks a header read from `path` (whose length on disk is `actual_len`) against this
    /// geometry, saying precisely what is wrong.
    pub(crate) fn validate(
        &self,
        path: &Path,
        bytes: &[u8],
        actual_len: u64,
    ) -> Result<(), LedgerError> {
        let bad = |reason: String| Err(LedgerError::corrupt(path, reason));
        if actual_len < HEADER_SIZE as u64 || bytes.len() < HEADER_SIZE {
            return bad(format!(
                "it is {actual_len} bytes long, shorter than the {HEADER_SIZE}-byte header (truncated?)"
            ));
        }
        let magic = read_array::<8>(bytes, header::MAGIC);
        if magic != self.magic {
            let other = [FileKind::Quota, FileKind::Usage, FileKind::Lock]
                .into_iter()
                .find(|k| k.magic() == magic);
            return if let Some(other) = other {
                bad(format!(
                    "it is a gpuslice {} file (magic {}), not a {} file",
                    other.name(),
                    String::from_utf8_lossy(&magic),
                    self.kind.name()
                ))
            } else {
                bad(format!(
                    "bad magic {}, expected {}",
                    magic.escape_ascii(),
                    String::from_utf8_lossy(&self.magic)
                ))
            };
        }
        let version = read_u32(bytes, header::LAYOUT_VERSION);
        if version != LAYOUT_VERSION {
            return bad(format!(
                "unknown layout_version {version} (this gpuslice reads version {LAYOUT_VERSION}; \
                 a different gpuslice release created it)"
            ));
        }
        let header_size = read_u32(bytes, header::HEADER_SIZE);
        if header_size != HEADER_SIZE_U32 {
            return bad(format!(
                "header_size is {header_size}, expected {HEADER_SIZE}"
            ));
        }
        let recorded = read_u64(bytes, header::FILE_SIZE);
        if recorded != self.file_size {
            return bad(format!(
                "its header records file_size {recorded}, expected {}",
                self.file_size
            ));
        }
        if actual_len != recorded {
            return bad(format!(
                "it is {actual_len} bytes long but its header records {recorded} \
                 (truncated or extended)"
            ));
        }
        let fields: [(&str, u64, u64); 6] = [
            (
                "max_gpus",
                read_u32(bytes, header::MAX_GPUS).into(),
                MAX_GPUS as u64,
            ),
            (
                "max_slots",
                read_u32(bytes, header::MAX_SLOTS).into(),
                self.max_slots.into(),
            ),
            (
                "table_offset",
                read_u64(bytes, header::TABLE_OFFSET),
                self.table_offset,
            ),
            (
                "slot_offset",
                read_u64(bytes, header::SLOT_OFFSET),
                self.slot_offset,
            ),
            (
                "entry_size",
                read_u32(bytes, header::ENTRY_SIZE).into(),
                self.entry_size.into(),
            ),
            (
                "slot_size",
                read_u32(bytes, header::SLOT_SIZE).into(),
                self.slot_size.into(),
            ),
        ];
        for (name, found, expected) in fields {
            if found != expected {
                return bad(format!("{name} is {found}, expected {expected}"));
            }
        }
        Ok(())
    }
}

impl FileKind {
    /// "quota", "usage" or "lock".
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileKind::Quota => "quota",
            FileKind::Usage => "usage",
            FileKind::Lock => "lock",
        }
    }

    /// The magic its files start with.
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Quota => QUOTA_MAGIC,
            FileKind::Usage => USAGE_MAGIC,
            FileKind::Lock => LOCK_MAGIC,
        }
    }
}

/// `N` bytes at `offset`, zeros where `bytes` is too short (callers check lengths first).
pub(crate) fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = offset.checked_add(N).and_then(|end| bytes.get(offset..end)) {
        out.copy_from_slice(src);
    }
    out
}

/// The little-endian u32 at `offset` (0 where `bytes` is too short).
pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(read_array(bytes, offset))
}

/// The little-endian u64 at `offset` (0 where `bytes` is too short).
pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(read_array(bytes, offset))
}

/// `include/gpuslice.h` checked against this layout.
#[cfg(test)]
mod c_header;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_at_documented_offsets() {
        assert_eq!(HEADER_SIZE, 64);
        assert_eq!(header::MAGIC, 0);
        assert_eq!(header::LAYOUT_VERSION, 8);
        assert_eq!(header::HEADER_SIZE, 12);
        assert_eq!(header::FILE_SIZE, 16);
        assert_eq!(header::MAX_GPUS, 24);
        assert_eq!(header::MAX_SLOTS, 28);
        assert_eq!(header::TABLE_OFFSET, 32);
        assert_eq!(header::SLOT_OFFSET, 40);
        assert_eq!(header::ENTRY_SIZE, 48);
        assert_eq!(header::SLOT_SIZE, 52);
        assert_eq!(header::WORD, 56);
    }

    #[test]
    fn limits_record_is_32_bytes_with_documented_offsets() {
        assert_eq!(LIMITS_SIZE, 32);
        assert_eq!(offset_of!(RawLimits, memory_limit_bytes), 0);
        assert_eq!(offset_of!(RawLimits, compute_share_permille), 8);
        assert_eq!(offset_of!(RawLimits, compute_limit_permille), 12);
        assert_eq!(offset_of!(RawLimits, priority), 16);
        assert_eq!(offset_of!(RawLimits, reserved), 20);
    }

    #[test]
    fn quota_file_layout_matches_architecture_doc() {
        assert_eq!(QUOTA_DEFAULTS_OFFSET, 64);
        assert_eq!(QUOTA_TABLE_OFFSET, 96);
        assert_eq!(QUOTA_ENTRY_SIZE, 64);
        assert_eq!(offset_of!(QuotaGpu, uuid), 0);
        assert_eq!(offset_of!(QuotaGpu, in_use), 16);
        assert_eq!(offset_of!(QuotaGpu, reserved), 20);
        assert_eq!(offset_of!(QuotaGpu, limits), 32);
        assert_eq!(QUOTA_FILE_SIZE, 96 + 16 * 64);
        assert_eq!(QUOTA_FILE_SIZE, 1120);
    }

    #[test]
    fn usage_file_layout_matches_architecture_doc() {
        assert_eq!(USAGE_TABLE_OFFSET, 64);
        assert_eq!(USAGE_ENTRY_SIZE, 64);
        assert_eq!(offset_of!(UsageGpu, uuid), 0);
        assert_eq!(offset_of!(UsageGpu, state), 16);
        assert_eq!(offset_of!(UsageGpu, reserved0), 20);
        assert_eq!(offset_of!(UsageGpu, oom_refusals), 24);
        assert_eq!(offset_of!(UsageGpu, retired_gpu_time_ns), 32);
        assert_eq!(offset_of!(UsageGpu, credit_ns), 40);
        assert_eq!(offset_of!(UsageGpu, refilled_at_ns), 48);
        assert_eq!(offset_of!(UsageGpu, throttled_ns), 56);

        assert_eq!(USAGE_BITMAP_OFFSET, 1088);
        assert_eq!(BITMAP_WORDS, 16);
        assert_eq!(USAGE_SLOT_OFFSET, 1216);
        assert_eq!(USAGE_SLOT_SIZE, 672);
        assert_eq!(offset_of!(Slot, state), 0);
        assert_eq!(offset_of!(Slot, pid), 4);
        assert_eq!(offset_of!(Slot, claimed_unix_ms), 8);
        assert_eq!(offset_of!(Slot, reserved), 16);
        assert_eq!(offset_of!(Slot, pid_namespace), 24);
        assert_eq!(SLOT_GPUS_OFFSET, 32);
        assert_eq!(SLOT_GPU_SIZE, 40);
        assert_eq!(offset_of!(SlotGpu, memory_bytes), 0);
        assert_eq!(offset_of!(SlotGpu, gpu_time_ns), 8);
        assert_eq!(offset_of!(SlotGpu, pending_bytes), 16);
        assert_eq!(offset_of!(SlotGpu, activity), 24);
        assert_eq!(offset_of!(SlotGpu, compute), 32);

        assert_eq!(MAX_SLOTS, 1024);
        assert_eq!(USAGE_FILE_SIZE, 1216 + 1024 * 672);
        assert_eq!(USAGE_FILE_SIZE, 689_344);
    }

    #[test]
    fn every_atomic_is_naturally_aligned() {
        // Mappings are page-aligned, so field offsets decide alignment.
        assert_eq!(std::mem::align_of::<UsageLayout>(), 8);
        assert_eq!(std::mem::align_of::<QuotaLayout>(), 8);
        assert_eq!(USAGE_SLOT_SIZE % 8, 0);
        assert_eq!(USAGE_ENTRY_SIZE % 8, 0);
        assert_eq!(QUOTA_ENTRY_SIZE % 8, 0);
        assert_eq!(USAGE_BITMAP_OFFSET % 8, 0);
        assert_eq!(USAGE_SLOT_OFFSET % 64, 0);
    }

    #[test]
    fn lock_bytes_are_distinct() {
        let mut seen = vec![
            lock_bytes::QUOTA_UPDATE,
            lock_bytes::GPU_TABLE,
            lock_bytes::RUN_ENTRY,
            lock_bytes::RUN_MEMBERS,
        ];
        for i in 0..u32::try_from(MAX_SLOTS).unwrap() {
            let b = slot_lock_byte(i);
            assert!(!seen.contains(&b));
            seen.push(b);
        }
        assert_eq!(slot_lock_byte(0), 64);
        assert_eq!(slot_lock_byte(1023), 64 + 1023);
        assert_eq!(LOCK_FILE_SIZE, 64);
    }

    #[test]
    fn magics_are_the_documented_ascii() {
        assert_eq!(&QUOTA_MAGIC, b"GPUSLQTA");
        assert_eq!(&USAGE_MAGIC, b"GPUSLUSE");
        assert_eq!(&LOCK_MAGIC, b"GPUSLLCK");
    }

    #[test]
    fn uuid_words_round_trip_in_file_byte_order() {
        let bytes: [u8; 16] = std::array::from_fn(|i| u8::try_from(i * 17).unwrap());
        let words = uuid_words(&bytes);
        assert_eq!(words[0].to_le_bytes()[0], bytes[0]);
        assert_eq!(uuid_bytes(words), bytes);
    }
}
