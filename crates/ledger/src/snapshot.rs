//! Point-in-time copies of usage files for observers (the CLI, metrics, other tenants).
//!
//! Read with `pread`, never mapped: a tenant may truncate or replace its own usage file
//! (it can write it), and a mapping would then raise SIGBUS in the observer. A copy can
//! only fail to validate, which is an error like any other.

use std::mem::offset_of;
use std::path::{Path, PathBuf};

use crate::MAX_GPUS;
use crate::compute::{Activity, ComputeSettings};
use crate::error::LedgerError;
use crate::files::{self, Access};
use crate::layout::{
    BITMAP_WORDS, GPU_REGISTERED, SLOT_GPU_SIZE, SLOT_GPUS_OFFSET, Slot, SlotGpu,
    USAGE_BITMAP_OFFSET, USAGE_ENTRY_SIZE, USAGE_FILE_SIZE, USAGE_GEOMETRY, USAGE_SLOT_OFFSET,
    USAGE_SLOT_SIZE, USAGE_TABLE_OFFSET, UsageGpu, read_array, read_u32, read_u64, slot_lock_byte,
};
use crate::locks::LockFile;
use crate::names::GpuUuid;
use crate::usage::{GpuIndex, SlotInfo, slots_in};

/// One GPU table entry as copied.
#[derive(Debug, Clone, Copy, Default)]
struct GpuRecord {
    registered: bool,
    uuid: [u8; 16],
    oom_refusals: u64,
    retired_gpu_time_ns: u64,
    credit_ns: u64,
    throttled_ns: u64,
}

/// One occupied slot as copied.
#[derive(Debug, Clone)]
struct SlotRecord {
    info: SlotInfo,
    memory: [u64; MAX_GPUS],
    gpu_time: [u64; MAX_GPUS],
    activity: [u64; MAX_GPUS],
    compute: [u64; MAX_GPUS],
}

/// One occupied slot's compute records on one GPU, as copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotCompute {
    /// The slot's index.
    pub index: u32,
    /// The settings its process published; `None` if it published none.
    pub settings: Option<ComputeSettings>,
    /// What its process was last seen doing on the GPU.
    pub activity: Activity,
    /// The GPU time charged to it on the GPU.
    pub gpu_time_ns: u64,
}

/// An open usage file of another tenant, copied with `pread` on each read: what a watcher
/// reads many times a second without opening the file again.
#[derive(Debug)]
pub struct UsageReader {
    path: PathBuf,
    file: std::fs::File,
    bytes: Vec<u8>,
}

impl UsageReader {
    /// Opens the usage file at `path` for reading; `None` if there is none.
    pub(crate) fn open(path: &Path) -> Result<Option<UsageReader>, LedgerError> {
        let Some(file) = files::open_existing(path, Access::ReadOnly)? else {
            return Ok(None);
        };
        files::validate(&file, path, &USAGE_GEOMETRY)?;
        Ok(Some(UsageReader {
            path: path.to_path_buf(),
            file,
            bytes: vec![0u8; USAGE_FILE_SIZE],
        }))
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the file now. Slots are not checked for a live owner (that takes a
    /// system call per slot, and the lock file is the tenant's own); their activity times
    /// say how current they are.
    pub fn read(&mut self) -> Result<UsageSnapshot, LedgerError> {
        UsageSnapshot::parse(&self.file, &self.path, &mut self.bytes, Liveness::Unchecked)
    }
}

/// A copy of a tenant's usage file, taken at one moment (each 8-byte field is read whole,
/// but different fields may come from slightly different moments).
///
/// It has the same read accessors as [`UsageFile`](crate::UsageFile).
#[derive(Debug, Clone)]
pub struct UsageSnapshot {
    path: PathBuf,
    gpus: [GpuRecord; MAX_GPUS],
    slots: Vec<SlotRecord>,
}

/// Whether a copy asks who holds each occupied slot's lock.
enum Liveness<'a> {
    /// No: every slot reads as live.
    Unchecked,
    /// Yes, in this lock file; `None` where it cannot be opened (then every slot reads as
    /// live: a process is never called dead on a guess).
    Checked(Option<&'a LockFile>),
}

impl UsageSnapshot {
    /// Copies and validates the usage file at `path`, asking the tenant's lock file `locks`
    /// (where this process can open it) which slots are live.
    pub(crate) fn read(
        path: &Path,
        locks: Option<&LockFile>,
    ) -> Result<UsageSnapshot, LedgerError> {
        let file = files::open_existing(path, Access::ReadOnly)?.ok_or_else(|| {
            LedgerError::io(
                path,
                "open",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        files::validate(&file, path, &USAGE_GEOMETRY)?;
        let mut bytes = vec![0u8; USAGE_FILE_SIZE];
        UsageSnapshot::parse(&file, path, &mut bytes, Liveness::Checked(locks))
    }

    /// Copies what matters of `file` into `bytes` (the header, the GPU table, the bitmap and
    /// the slots up to the last occupied one: slots are taken lowest first, so that is a
    /// small part of the file) and reads it.
    fn parse(
        file: &std::fs::File,
        path: &Path,
        bytes: &mut [u8],
        liveness: Liveness<'_>,
    ) -> Result<UsageSnapshot, LedgerError> {
        let shrank = |got: usize, wanted: usize| {
            LedgerError::corrupt(
                path,
                format!(
                    "it shrank to {got} of the {wanted} bytes being read (its header records \
                     {USAGE_FILE_SIZE})"
                ),
            )
        };
        let head = bytes
            .get_mut(..USAGE_SLOT_OFFSET)
            .ok_or_else(|| shrank(0, USAGE_SLOT_OFFSET))?;
        let got =
            files::read_at_most(file, head, 0).map_err(|e| LedgerError::io(path, "read", e))?;
        if got != USAGE_SLOT_OFFSET {
            return Err(shrank(got, USAGE_SLOT_OFFSET));
        }
        let bitmap: [u64; BITMAP_WORDS] =
            std::array::from_fn(|w| read_u64(bytes, USAGE_BITMAP_OFFSET + 8 * w));
        if let Some(last) = slots_in(bitmap).last() {
            let end = USAGE_SLOT_OFFSET + (last as usize + 1) * USAGE_SLOT_SIZE;
            let slots = bytes
                .get_mut(USAGE_SLOT_OFFSET..end)
                .ok_or_else(|| shrank(0, end))?;
            let got = files::read_at_most(file, slots, USAGE_SLOT_OFFSET as u64)
                .map_err(|e| LedgerError::io(path, "read", e))?;
            if got != end - USAGE_SLOT_OFFSET {
                return Err(shrank(USAGE_SLOT_OFFSET + got, end));
            }
        }

        let mut gpus = [GpuRecord::default(); MAX_GPUS];
        for (i, rec) in gpus.iter_mut().enumerate() {
            let at = USAGE_TABLE_OFFSET + i * USAGE_ENTRY_SIZE;
            *rec = GpuRecord {
                registered: read_u32(bytes, at + offset_of!(UsageGpu, state)) == GPU_REGISTERED,
                uuid: read_array(bytes, at + offset_of!(UsageGpu, uuid)),
                oom_refusals: read_u64(bytes, at + offset_of!(UsageGpu, oom_refusals)),
                retired_gpu_time_ns: read_u64(
                    bytes,
                    at + offset_of!(UsageGpu, retired_gpu_time_ns),
                ),
                credit_ns: read_u64(bytes, at + offset_of!(UsageGpu, credit_ns)),
                throttled_ns: read_u64(bytes, at + offset_of!(UsageGpu, throttled_ns)),
            };
        }

        let mut slots = Vec::new();
        for index in slots_in(bitmap) {
            let at = USAGE_SLOT_OFFSET + index as usize * USAGE_SLOT_SIZE;
            let mut memory = [0u64; MAX_GPUS];
            let mut gpu_time = [0u64; MAX_GPUS];
            let mut activity = [0u64; MAX_GPUS];
            let mut compute = [0u64; MAX_GPUS];
            for g in 0..MAX_GPUS {
                let rec = at + SLOT_GPUS_OFFSET + g * SLOT_GPU_SIZE;
                memory[g] = read_u64(bytes, rec + offset_of!(SlotGpu, memory_bytes));
                gpu_time[g] = read_u64(bytes, rec + offset_of!(SlotGpu, gpu_time_ns));
                activity[g] = read_u64(bytes, rec + offset_of!(SlotGpu, activity));
                compute[g] = read_u64(bytes, rec + offset_of!(SlotGpu, compute));
            }
            let live = match liveness {
                Liveness::Checked(Some(locks)) => locks.is_locked(slot_lock_byte(index)),
                Liveness::Checked(None) | Liveness::Unchecked => true,
            };
            slots.push(SlotRecord {
                info: SlotInfo {
                    index,
                    pid: read_u32(bytes, at + offset_of!(Slot, pid)),
                    pid_namespace: read_u64(bytes, at + offset_of!(Slot, pid_namespace)),
                    claimed_unix_ms: read_u64(bytes, at + offset_of!(Slot, claimed_unix_ms)),
                    live,
                    memory_bytes: (0u32..)
                        .zip(memory)
                        .filter(|&(_, b)| b != 0)
                        .map(|(g, b)| (GpuIndex(g), b))
                        .collect(),
                },
                memory,
                gpu_time,
                activity,
                compute,
            });
        }
        Ok(UsageSnapshot {
            path: path.to_path_buf(),
            gpus,
            slots,
        })
    }

    /// The file this was copied from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registered GPUs.
    pub fn gpus(&self) -> Vec<(GpuIndex, GpuUuid)> {
        (0u32..)
            .zip(&self.gpus)
            .filter(|(_, g)| g.registered)
            .map(|(i, g)| (GpuIndex(i), GpuUuid(g.uuid)))
            .collect()
    }

    /// Where `uuid` sits in the GPU table, if it was registered.
    pub fn gpu_index(&self, uuid: &GpuUuid) -> Option<GpuIndex> {
        self.gpus()
            .into_iter()
            .find(|(_, u)| u == uuid)
            .map(|(i, _)| i)
    }

    /// The table entry of `gpu`, if it is inside the table.
    fn gpu(&self, gpu: GpuIndex) -> Option<(usize, &GpuRecord)> {
        let g = usize::try_from(gpu.0).ok()?;
        Some((g, self.gpus.get(g)?))
    }

    /// The tenant's memory on `gpu`: the sum over the occupied slots (dead ones included).
    pub fn memory_used(&self, gpu: GpuIndex) -> u64 {
        let Some((g, _)) = self.gpu(gpu) else {
            return 0;
        };
        self.slots
            .iter()
            .filter_map(|s| s.memory.get(g))
            .fold(0u64, |t, &b| t.saturating_add(b))
    }

    /// The tenant's GPU time on `gpu`, in nanoseconds (departed processes included).
    pub fn gpu_time_ns(&self, gpu: GpuIndex) -> u64 {
        let Some((g, rec)) = self.gpu(gpu) else {
            return 0;
        };
        self.slots
            .iter()
            .filter_map(|s| s.gpu_time.get(g))
            .fold(rec.retired_gpu_time_ns, |t, &n| t.saturating_add(n))
    }

    /// How many allocations were refused for being over quota on `gpu`.
    pub fn oom_refusals(&self, gpu: GpuIndex) -> u64 {
        self.gpu(gpu).map_or(0, |(_, g)| g.oom_refusals)
    }

    /// Nanoseconds of GPU time the tenant has been credited on `gpu` (its token bucket).
    pub fn credit_ns(&self, gpu: GpuIndex) -> u64 {
        self.gpu(gpu).map_or(0, |(_, g)| g.credit_ns)
    }

    /// Wall time the tenant's launches waited for credit on `gpu`, in nanoseconds.
    pub fn throttled_ns(&self, gpu: GpuIndex) -> u64 {
        self.gpu(gpu).map_or(0, |(_, g)| g.throttled_ns)
    }

    /// The compute records of the occupied slots on `gpu`.
    pub fn compute_slots(&self, gpu: GpuIndex) -> Vec<SlotCompute> {
        let Some((g, _)) = self.gpu(gpu) else {
            return Vec::new();
        };
        self.slots
            .iter()
            .map(|s| SlotCompute {
                index: s.info.index,
                settings: ComputeSettings::unpack(s.compute[g]),
                activity: Activity::unpack(s.activity[g]),
                gpu_time_ns: s.gpu_time[g],
            })
            .collect()
    }

    /// The occupied slots, with whether a process held each one's lock when copied.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.slots.iter().map(|s| s.info.clone()).collect()
    }
}
