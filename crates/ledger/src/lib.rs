/*!
The shared-memory ledger of gpuslice: who may use how much of each GPU, and who uses how much.

Several containers share one GPU. Each runs under gpuslice's shim, and each shim must know
its own quota and what its sibling processes already hold, with no daemon to ask. The ledger
is that shared knowledge: a directory of small memory-mapped files with a fixed, versioned
layout (`docs/architecture.md`; `include/gpuslice.h` for C readers). This crate knows nothing
about CUDA; it counts bytes and nanoseconds against limits.

# Tenants

A **tenant** is the unit that gets a quota: one container, or one `gpuslice run`. It may run
many processes, which share its quota. A tenant has a [`TenantName`] (it names a directory)
and two files:

```text
<dir>/tenants/<tenant>/quota   what it may use      written by its creator, read live by it
<dir>/tenants/<tenant>/usage   what it does use     written by its processes, read by anyone
```

A tenant writes only its own usage file; in Kubernetes the ledger directory is mounted
read-only and the tenant's usage file read-write on top of it.

# Quota versus usage

The **quota** ([`TenantQuota`], read back as a [`QuotaFile`]) holds [`Limits`]: a memory
limit, a compute share and limit, a priority; one set of defaults, and overrides for
particular GPUs, named by [`GpuUuid`] (never by ordinal: `CUDA_VISIBLE_DEVICES` renumbers
devices). The creator may change it at any time; a running tenant sees the change at its
next read, because the file is updated in place under a generation counter.

The **usage** ([`UsageFile`]) is what the tenant's processes hold, per GPU. It has no total:
*the memory a tenant uses on a GPU is the sum of `memory_bytes` over its occupied process
slots*. So a process that dies at any instruction leaves a consistent ledger behind: its slot
still says exactly what it held.

# Slots

Each process using a GPU takes one of the usage file's [`MAX_SLOTS`] **process slots**
([`UsageFile::claim_slot`]) and keeps it until it exits. Ownership is proven by an
open-file-description lock (`F_OFD_SETLK`) on the slot's byte of the file, held through a file
description only the [`ProcessSlot`] has. The kernel drops that lock when the process dies, in
any PID namespace, so PIDs are never trusted. A slot that still holds usage but whose lock
nobody holds belonged to a dead process: whoever takes the lock next
([`UsageFile::reclaim_dead`], or `claim_slot` itself) empties it and gives its memory back.
A bit per slot in the header, the **occupied bitmap**, says which slots to sum.

A forked child shares its parent's lock (it belongs to the file description, which `fork`
copies), so the child calls [`ProcessSlot::abandon_after_fork`] and claims a slot of its own.

# The reservation protocol

Before the shim lets the driver allocate, it reserves the bytes with
[`ProcessSlot::try_reserve`], lock-free and without a syscall:

1. add the request to the own slot's counter;
2. sum the counters of the occupied slots; if the sum is within the limit, done;
3. otherwise take the request back and sum again: if the others alone leave room, another
   reservation was in flight at the same moment, so retry (a bounded number of times);
   if not, refuse with [`OverLimit`].

Every step is sequentially consistent, and every reservation adds before it reads, so of two
reservations that race, the later one sees the earlier: the reservations that succeed never
add up to more than the limit, however many threads and processes race. If the driver then
fails, the shim gives the bytes back with [`ProcessSlot::release`].

```
# fn main() -> Result<(), Box<dyn std::error::Error>> {
use gpuslice_ledger::{GpuUuid, Ledger, Limits, TenantName, TenantQuota};

let dir = tempfile::tempdir()?;
let ledger = Ledger::open(dir.path())?;
let tenant = TenantName::new("team-a")?;
let gpu = GpuUuid::parse("GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d")?;

// The creator's side: a 4 GiB quota on every GPU.
let limits = Limits { memory_bytes: Some(4 << 30), ..Limits::default() };
ledger.write_quota(&tenant, &TenantQuota { defaults: limits, per_gpu: vec![] })?;

// A process of the tenant.
let quota = ledger.read_quota(&tenant)?.expect("just written");
let usage = ledger.open_usage(&tenant)?;
let slot = usage.claim_slot()?;
let index = usage.register_gpu(&gpu)?;
let limit = quota.limits_for(&gpu).memory_bytes.unwrap_or(u64::MAX);

slot.try_reserve(index, 3 << 30, limit)?;                 // 3 GiB: fits
assert!(slot.try_reserve(index, 2 << 30, limit).is_err()); // 3 + 2 > 4: refused
slot.release(index, 3 << 30);
assert_eq!(usage.memory_used(index), 0);
# Ok(())
# }
```

# Bad data

Every open validates the file: magic (a quota file is never taken for a usage file or the
reverse), layout version, header size, recorded and actual length, table geometry. A bad
file is refused with a [`LedgerError`] that names it and says what to do; the shim then fails
closed. Every index read from a file is bounds-checked. Observers of other tenants read with
[`Ledger::snapshot_usage`], a `pread` copy, so a tenant that truncates its own file cannot
crash them.
*/
#![deny(missing_docs)]

mod clock;
mod compute;
mod error;
mod files;
pub mod futex;
pub mod layout;
mod ledger;
mod limits;
mod locks;
mod names;
pub mod ofd;
mod quantity;
mod quota;
mod slot;
mod snapshot;
mod sys;
mod usage;
mod variables;

pub use clock::monotonic_ns;
pub use compute::{Activity, ComputeSettings, PERCENT_FORM, parse_percent, parse_priority};
pub use error::{FileError, LedgerError};
pub use ledger::Ledger;
pub use limits::{Limits, PERMILLE_MAX, Priority, TenantQuota};
pub use locks::{LockFile, LockHandle, LockKind};
pub use names::{GpuUuid, MAX_TENANT_NAME_LEN, TenantName};
pub use quantity::{QUANTITY_FORM, parse_quantity};
pub use quota::QuotaFile;
pub use slot::{OverLimit, ProcessSlot};
pub use snapshot::{SlotCompute, UsageReader, UsageSnapshot};
pub use usage::{GpuIndex, ReclaimReport, SlotInfo, UsageFile};
pub use variables::{DEFAULT_DIR, PINNED_TENANT_FILE, SHIM_VARIABLES};

/// How many GPUs a ledger file can describe (per-GPU limits in a quota file, GPU table
/// entries in a usage file).
pub const MAX_GPUS: usize = 16;
/// How many processes of one tenant can use GPUs at once (process slots in a usage file).
/// Far more than a tenant runs (a training job with a process per GPU and data-loader
/// workers, an inference server with a worker per model), at 672 bytes each: a tenant's usage
/// file is under 700 KB.
pub const MAX_SLOTS: usize = 1024;
/// The version of the on-disk layout; a file of another version is refused.
///
/// Version 2 moved every lock into the tenant's lock file (version 1 locked bytes of the
/// usage and quota files, which every tenant can open read-only and so read-lock), grew the
/// slots from 64 to 1024 with a bitmap of its own, and records each slot's PID namespace.
pub const LAYOUT_VERSION: u32 = 2;
