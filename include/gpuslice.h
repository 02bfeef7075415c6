/*
 * gpuslice.h - the C interface of gpuslice.
 *
 * gpuslice lets several containers share one NVIDIA GPU: an LD_PRELOAD shim (libgpuslice.so)
 * gives each tenant a memory quota and a share of kernel time. This header documents what a
 * C program can rely on: the environment variables the shim reads, and the on-disk ABI of the
 * ledger, the shared-memory directory through which the shim's processes coordinate.
 *
 * C11, no dependencies beyond <stdint.h> and <stddef.h>.
 */
#ifndef GPUSLICE_H
#define GPUSLICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Environment variables ----
 *
 * The shim reads these at the first CUDA or NVML call of a process (never before, so a
 * program that does not use the GPU is unaffected by them). With neither GPUSLICE_TENANT nor
 * GPUSLICE_MEMORY_LIMIT set, the shim passes every call through unchanged.
 *
 *   GPUSLICE_TENANT        the tenant the process belongs to: 1 to 63 characters of
 *                          [A-Za-z0-9._-] that start and end with a letter or a digit.
 *                          Every process of a tenant shares its quota. Required when a
 *                          limit is set.
 *   GPUSLICE_MEMORY_LIMIT  the memory quota on each GPU, as a Kubernetes quantity: plain
 *                          bytes, Ki Mi Gi Ti Pi Ei, k M G T P E, a decimal fraction
 *                          (1.5Gi, rounded up to whole bytes) or an exponent (1e9). The
 *                          tenant's quota file, when present, is the ceiling: the effective
 *                          limit is the lower of the two.
 *   GPUSLICE_COMPUTE_SHARE the tenant's guaranteed part of each GPU's kernel time while others
 *                          want it too, and its weight among the active tenants: a percentage
 *                          from 0.1 to 100 with at most one decimal ("30", "12.5", "30%").
 *   GPUSLICE_COMPUTE_LIMIT a hard cap on the tenant's kernel time on each GPU, even when the
 *                          GPU is otherwise idle; same form. Default: none.
 *   GPUSLICE_PRIORITY      high, normal (default) or low: while a high tenant is active, the
 *                          others keep at most 100 us of work queued (at least one launch),
 *                          and start none while more than 100 us of its work is queued,
 *                          never at the cost of their guaranteed share: one that this keeps
 *                          below its share queues the GPU time it is owed on top.
 *                          The quota file's compute settings are the ceiling: the lower share,
 *                          the lower limit and the lower priority apply.
 *   GPUSLICE_DIR           the ledger directory, an absolute path (taken byte for byte);
 *                          default /run/gpuslice. It must exist: the shim never creates it
 *                          (a mistyped path would be a fresh ledger without the tenant's
 *                          quota); inside an existing, empty one it creates what it needs.
 *   GPUSLICE_LOG           off, error, warn (default), info, debug or trace; to stderr,
 *                          lines prefixed "gpuslice[<pid>]: ".
 *   GPUSLICE_TRACE         an absolute path: the compute watcher appends one line per GPU
 *                          per tick (what it saw, charged and decided; columns named in the
 *                          file's first line). A diagnostic: limits hold without it, and a
 *                          trace that cannot be written is dropped with a warning.
 *
 * Fail closed: an invalid value, any other GPUSLICE_ variable (a misspelling, or a name that
 * is not UTF-8), a limit without a tenant, a ledger directory that does not exist, or a
 * ledger directory or file that cannot be used makes the shim print
 * one line naming what was wrong and the accepted form, after which cuInit and every memory
 * and context call the shim hooks return CUDA_ERROR_NOT_INITIALIZED (3) (the driver is then
 * never initialized, so the rest fail too), and the NVML memory queries NVML_ERROR_UNKNOWN
 * (999). Launches are never refused: while the tenant has used up its share they wait.
 *
 * What callers see under a quota:
 *   - an allocation that would pass the limit returns CUDA_ERROR_OUT_OF_MEMORY (2) and
 *     changes nothing; so does creating a context whose footprint does not fit;
 *   - cuMemGetInfo: total = min(limit, device total), free = min(total - used, device free);
 *     cuDeviceTotalMem: min(limit, device total);
 *   - nvmlDeviceGetMemoryInfo: the same total and free, used = total - free;
 *     nvmlDeviceGetMemoryInfo_v2: used = the tenant's usage, reserved = the rest, so that
 *     total = reserved + used + free;
 *   - the pre-CUDA-3.2 32-bit entry points (cuMemAlloc, cuMemAllocPitch, cuArrayCreate,
 *     cuArray3DCreate without _v2) return CUDA_ERROR_NOT_SUPPORTED (801).
 */
#define GPUSLICE_ENV_TENANT "GPUSLICE_TENANT"
#define GPUSLICE_ENV_MEMORY_LIMIT "GPUSLICE_MEMORY_LIMIT"
#define GPUSLICE_ENV_COMPUTE_SHARE "GPUSLICE_COMPUTE_SHARE"
#define GPUSLICE_ENV_COMPUTE_LIMIT "GPUSLICE_COMPUTE_LIMIT"
#define GPUSLICE_ENV_PRIORITY "GPUSLICE_PRIORITY"
#define GPUSLICE_ENV_DIR "GPUSLICE_DIR"
#define GPUSLICE_ENV_LOG "GPUSLICE_LOG"
#define GPUSLICE_ENV_TRACE "GPUSLICE_TRACE"
#define GPUSLICE_DEFAULT_DIR "/run/gpuslice"
/**
 * Where a container's tenant is pinned: `GPUSLICE_TENANT=<name>` and `GPUSLICE_DIR=<path>`
 * lines (blank lines and # comments allowed, nothing else). gpuslice's CDI specs mount it
 * read-only. Where it exists, the shim takes the tenant and the ledger from it; the
 * environment may only repeat them (another value fails CUDA initialization), and its
 * limits may only lower the quota's. An unreadable or malformed file fails closed.
 */
#define GPUSLICE_PINNED_TENANT_FILE "/etc/gpuslice/tenant"

/* ---- The ledger: on-disk ABI ----
 *
 * A directory, GPUSLICE_DIR (default /run/gpuslice), holding one directory per tenant and
 * one lock file per tenant:
 *
 *     <dir>/tenants/<tenant>/quota   struct gpuslice_quota_file: what the tenant may use;
 *                                    written by whoever created the tenant, read-only to it
 *     <dir>/tenants/<tenant>/usage   struct gpuslice_usage_file: what the tenant uses;
 *                                    written by the tenant's processes, read by anyone
 *     <dir>/locks/<tenant>           struct gpuslice_lock_file: the tenant's locks (see
 *                                    GPUSLICE_LOCK_*); open to the tenant's processes and its
 *                                    creator alone
 *
 * A tenant name is 1 to 63 characters of [A-Za-z0-9._-] that start and end with a letter or
 * a digit (so never "..", a hidden file or an option, and always a valid CDI device name).
 * Directories are mode 0755, quota and usage files 0644, lock files 0600 (the device plugin
 * makes its tenants' lock files 0666 for the containers' users, keeps locks/ at 0700, and
 * mounts into a container only tenants/ (read-only), the tenant's usage file and the
 * tenant's lock file).
 *
 * Why a lock file of its own: every tenant can open the quota and usage files of every other
 * tenant for reading (tenants/ is mounted read-only into every container), and a read-only
 * descriptor is enough to take a read lock, which blocks a write lock on the same bytes. So
 * no lock is ever taken on those files: every lock gpuslice relies on is on a byte of the
 * tenant's lock file, which no other tenant can open.
 *
 * The files are fixed-size and little-endian, and are read and written through shared
 * memory mappings by many processes at once. Every field that can change while the file is
 * in use is a naturally aligned 32- or 64-bit integer that must be accessed atomically
 * (C11 atomics, or __atomic_load_n / __atomic_store_n / __atomic_fetch_add with
 * __ATOMIC_SEQ_CST). The structs below declare plain integers so that they describe the
 * layout exactly; cast to _Atomic or use the builtins when reading a live file.
 *
 * Validation. A reader must refuse (and name) a file whose magic, layout_version,
 * header_size, file_size, max_gpus, max_slots, table_offset, slot_offset, entry_size or
 * slot_size differ from the values below, or whose length on disk differs from file_size.
 * No kind of file is ever accepted as another kind. Every index read from a
 * file must be bounds-checked.
 *
 * Readers of another tenant's usage file should copy it with pread(2) rather than map it:
 * the tenant can truncate its own file, and touching a mapping past the end of a file
 * raises SIGBUS.
 */

/** Version of the layout described here; files of any other version are refused. */
#define GPUSLICE_LAYOUT_VERSION 2u

/** First 8 bytes of a quota file (no terminating NUL in the file). */
#define GPUSLICE_QUOTA_MAGIC "GPUSLQTA"
/** First 8 bytes of a usage file (no terminating NUL in the file). */
#define GPUSLICE_USAGE_MAGIC "GPUSLUSE"
/** First 8 bytes of a lock file (no terminating NUL in the file). */
#define GPUSLICE_LOCK_MAGIC "GPUSLLCK"
/** Length of a magic. */
#define GPUSLICE_MAGIC_LEN 8

/** GPUs per file: per-GPU entries of a quota file, GPU table entries of a usage file. */
#define GPUSLICE_MAX_GPUS 16
/** Process slots per usage file. */
#define GPUSLICE_MAX_SLOTS 1024
/** Words of a usage file's occupied-slot bitmap. */
#define GPUSLICE_BITMAP_WORDS (GPUSLICE_MAX_SLOTS / 64)

#define GPUSLICE_HEADER_SIZE 64u
#define GPUSLICE_QUOTA_TABLE_OFFSET 96u
#define GPUSLICE_QUOTA_ENTRY_SIZE 64u
#define GPUSLICE_QUOTA_FILE_SIZE 1120u
#define GPUSLICE_USAGE_TABLE_OFFSET 64u
#define GPUSLICE_USAGE_ENTRY_SIZE 64u
#define GPUSLICE_USAGE_BITMAP_OFFSET 1088u
#define GPUSLICE_USAGE_SLOT_OFFSET 1216u
#define GPUSLICE_USAGE_SLOT_SIZE 672u
#define GPUSLICE_USAGE_FILE_SIZE 689344u
#define GPUSLICE_LOCK_FILE_SIZE 64u

/*
 * The bytes of a tenant's lock file whose OFD locks (F_OFD_SETLK / F_OFD_SETLKW, l_len = 1)
 * coordinate the tenant's processes and its creator. Locks need no bytes behind them: the
 * file is only its header.
 */
/** Write lock: held by a quota writer for a whole in-place update of the quota file. */
#define GPUSLICE_LOCK_QUOTA_UPDATE 0u
/** Write lock: held while a GPU is added to the usage file's GPU table. */
#define GPUSLICE_LOCK_GPU_TABLE 1u
/** Write lock: held by `gpuslice run` while it enters or leaves the tenant. */
#define GPUSLICE_LOCK_RUN_ENTRY 2u
/** Read lock: held by every `gpuslice run` in the tenant while it is in it. */
#define GPUSLICE_LOCK_RUN_MEMBERS 3u
/** Write lock on GPUSLICE_LOCK_SLOTS + i: held by the process that owns slot i. */
#define GPUSLICE_LOCK_SLOTS 64u

/** gpuslice_limits.memory_limit_bytes meaning "no limit". */
#define GPUSLICE_MEMORY_UNLIMITED UINT64_MAX

/** gpuslice_limits.priority. */
#define GPUSLICE_PRIORITY_UNSET 0u
#define GPUSLICE_PRIORITY_LOW 1u
#define GPUSLICE_PRIORITY_NORMAL 2u
#define GPUSLICE_PRIORITY_HIGH 3u

/** gpuslice_usage_gpu.state. */
#define GPUSLICE_GPU_EMPTY 0u
#define GPUSLICE_GPU_REGISTERED 1u

/** gpuslice_slot.state. */
#define GPUSLICE_SLOT_FREE 0u
#define GPUSLICE_SLOT_LIVE 1u

/**
 * The 64-byte header that starts every file.
 */
struct gpuslice_header {
    uint8_t magic[GPUSLICE_MAGIC_LEN]; /* GPUSLICE_QUOTA_MAGIC, _USAGE_MAGIC or _LOCK_MAGIC */
    uint32_t layout_version;           /* GPUSLICE_LAYOUT_VERSION */
    uint32_t header_size;              /* 64 */
    uint64_t file_size;                /* GPUSLICE_QUOTA_FILE_SIZE, _USAGE_ or _LOCK_ */
    uint32_t max_gpus;                 /* GPUSLICE_MAX_GPUS */
    uint32_t max_slots;                /* usage and lock: GPUSLICE_MAX_SLOTS; quota: 0 */
    uint64_t table_offset;             /* quota: per-GPU limits (96); usage: GPU table (64);
                                          lock: 0 */
    uint64_t slot_offset;              /* usage: process slots (1216); quota, lock: 0 */
    uint32_t entry_size;               /* size of one per-GPU entry (64; lock: 0) */
    uint32_t slot_size;                /* usage: 672; quota, lock: 0 */
    /*
     * quota: the generation (atomic), a sequence lock: odd while an update is being written,
     *        even and larger after it. A reader loads it (acquire), reads the fields, issues
     *        an acquire fence, loads it again, and retries if it was odd or changed.
     * usage, lock: 0 (the usage file's occupied bitmap follows its GPU table).
     */
    uint64_t word;
};

/**
 * One set of limits (32 bytes). All fields atomic in a quota file (updated in place).
 */
struct gpuslice_limits {
    uint64_t memory_limit_bytes;     /* per GPU; GPUSLICE_MEMORY_UNLIMITED = no limit */
    uint32_t compute_share_permille; /* 1..1000; 0 = unset */
    uint32_t compute_limit_permille; /* 1..1000; 0 = unset */
    uint32_t priority;               /* GPUSLICE_PRIORITY_* */
    uint32_t reserved[3];            /* zero */
};

/**
 * One per-GPU entry of a quota file (64 bytes): these limits replace the defaults on the GPU.
 */
struct gpuslice_quota_gpu {
    uint8_t uuid[16];   /* the GPU's UUID bytes (as cuDeviceGetUuid returns them) */
    uint32_t in_use;    /* 1 = entry valid, 0 = unused */
    uint32_t reserved[3];
    struct gpuslice_limits limits;
};

/**
 * A quota file (1120 bytes).
 *
 * Created whole: written under a temporary name in the tenant's directory and hard-linked
 * into place, so no reader sees a partial file. Later updates are atomic stores in place
 * between two generation bumps (see gpuslice_header.word), so a running tenant sees a new
 * quota without restarting. A writer claims an update by turning the generation from even
 * to odd with a compare-and-swap, and holds, where it can (F_OFD_SETLK, never waiting), an
 * OFD write lock on GPUSLICE_LOCK_QUOTA_UPDATE of the tenant's lock file from before that
 * until the generation is even again. A writer that finds the generation odd takes the
 * update over (compare-and-swap to the next odd value) at once when nobody holds the lock,
 * else after about 2 seconds. A reader that keeps finding the generation odd waits while
 * that lock is held (F_OFD_GETLK), for up to about a second: the writer is alive, only
 * descheduled. Odd with no lock held means the writer died mid-update; the fields then hold
 * values some writer stored, until the next update. A reader that cannot open the lock file
 * settles after about a millisecond.
 */
struct gpuslice_quota_file {
    struct gpuslice_header header;
    struct gpuslice_limits defaults;                     /* offset 64: GPUs without an entry */
    struct gpuslice_quota_gpu gpus[GPUSLICE_MAX_GPUS]; /* offset 96 = table_offset */
};

/**
 * One entry of a usage file's GPU table (64 bytes).
 *
 * Registration (adding a GPU) happens under an OFD write lock (F_OFD_SETLKW) on
 * GPUSLICE_LOCK_GPU_TABLE of the tenant's lock file: the registrant fills uuid and zeroes
 * the counters, then stores
 * state = GPUSLICE_GPU_REGISTERED last, with release ordering. Lock-free readers load state
 * (acquire) before uuid. Indexes into this table (0..15) are per file.
 */
struct gpuslice_usage_gpu {
    uint8_t uuid[16];
    uint32_t state;                /* GPUSLICE_GPU_EMPTY / GPUSLICE_GPU_REGISTERED */
    uint32_t reserved0;
    uint64_t oom_refusals;         /* allocations refused for being over quota (atomic) */
    uint64_t retired_gpu_time_ns;  /* GPU time of processes whose slots were emptied (atomic) */
    uint64_t credit_ns;            /* the tenant's compute credit, cumulative ns (atomic) */
    uint64_t refilled_at_ns;       /* CLOCK_MONOTONIC ns of the last refill; moved by CAS by
                                      the process that refills (atomic) */
    uint64_t throttled_ns;         /* wall time launches waited for credit (atomic) */
};

/**
 * One process slot's record for one GPU (40 bytes), indexed like the GPU table.
 */
struct gpuslice_slot_gpu {
    uint64_t memory_bytes; /* memory this process holds on the GPU (atomic) */
    uint64_t gpu_time_ns;  /* GPU time charged to this process on the GPU (atomic) */
    uint64_t pending_bytes; /* reservations being checked, not yet granted (atomic) */
    uint64_t activity;      /* bit 63: work in flight now; bit 62: backlogged (wants more);
                               bit 61: a launch waits at its gate now (not published in the
                               moments after its turn ended); bit 60: it holds a turn on the
                               GPU; bit 59: its queued work takes more than 1 ms to finish
                               (a high-priority process's: more than 100 us)
                               (see docs/architecture.md); bits 0-58: CLOCK_MONOTONIC ns it
                               last had work in flight, saw launches finish or waited for
                               credit; others learn when a high-priority process's regular
                               work comes from it (atomic) */
    uint64_t compute;       /* the compute settings the process enforces on this GPU: bit 63
                               published; bits 0-15 share permille, 16-31 limit permille,
                               32-39 priority (GPUSLICE_PRIORITY_*); 0 = unset (atomic).
                               Readers must not believe more than the tenant's quota gives
                               on the GPU: no share where it has none, at most its share,
                               at most its priority (normal where it has none) */
};

/**
 * One process slot (672 bytes).
 *
 * Slot i is owned by whoever holds an OFD write lock (F_OFD_SETLK, l_start =
 * GPUSLICE_LOCK_SLOTS + i, l_len = 1) on the tenant's lock file. The kernel drops the lock
 * when the owning open file description is closed, in particular when the process dies, in
 * any PID namespace; pid and pid_namespace are informational only. Claiming: take the lock
 * (non-blocking), empty the slot if it still holds anything (its previous owner died),
 * store pid, pid_namespace and claimed_unix_ms, state = GPUSLICE_SLOT_LIVE, then set bit i
 * of the occupied bitmap. A clean exit empties the slot, stores state = GPUSLICE_SLOT_FREE,
 * clears the bit, and only then drops the lock.
 *
 * Reclaiming: a slot that may hold usage (bit set, state non-zero, or counters non-zero)
 * whose lock can be taken belonged to a dead process. The taker zeroes it (adding each
 * gpu_time_ns to the GPU table's retired_gpu_time_ns), clears its bit, and unlocks.
 * F_OFD_GETLK on the byte tells an observer whether the owner is alive.
 *
 * A forked child shares its parent's lock (the open file description is shared) and keeps
 * it, close-on-exec, as it keeps the parent's descriptors of the driver and with them the
 * parent's device memory: the slot stays live until the parent and every such child are
 * gone. A child that uses the GPU itself claims a slot of its own.
 */
struct gpuslice_slot {
    uint32_t state;           /* GPUSLICE_SLOT_FREE / GPUSLICE_SLOT_LIVE */
    uint32_t pid;             /* informational only, never trusted */
    uint64_t claimed_unix_ms; /* when the slot was claimed */
    uint64_t reserved;        /* zero */
    uint64_t pid_namespace;   /* inode of the process's PID namespace (/proc/self/ns/pid),
                                 0 if unknown; with pid, names the process from the host.
                                 Informational only */
    struct gpuslice_slot_gpu gpus[GPUSLICE_MAX_GPUS]; /* offset 32 in the slot */
};

/**
 * A usage file (689344 bytes).
 *
 * The memory a tenant uses on GPU g is the sum of slots[i].gpus[g].memory_bytes over the
 * slots i whose bit is set in the occupied bitmap (bit i % 64 of word i / 64). There is no
 * separate total, so a process that dies at any instruction leaves a consistent file: its
 * slot still holds what it had.
 *
 * The reservation protocol (lock-free, no syscall), to reserve n bytes on GPU g against
 * limit L from slot s:
 *   1. atomically add n to slots[s].gpus[g].pending_bytes (seq_cst);
 *   2. sum memory_bytes[g] + pending_bytes[g] over the occupied slots (seq_cst loads,
 *      pending_bytes before memory_bytes in each slot: the reverse of the order in which a
 *      grant moves bytes, so a read during a move cannot miss them);
 *      if the sum <= L: add n to memory_bytes, then subtract it from pending_bytes: granted;
 *   3. otherwise subtract n from pending_bytes and re-sum: if the others alone leave room
 *      for n, another reservation was in flight at the same moment: retry (a bounded number
 *      of times); otherwise refuse.
 * Because every reservation announces itself before it reads, of any two that race the
 * later one sees the earlier: reservations that are granted never together exceed L.
 * Readers sum memory_bytes only, so they never see a request that is then refused. (A sum
 * over slots is not one atomic read: while bytes pass from one process to another, a reader
 * may count them in both and briefly see more than L.) Releasing subtracts from memory_bytes
 * (never below zero).
 */
struct gpuslice_usage_file {
    struct gpuslice_header header;
    struct gpuslice_usage_gpu gpus[GPUSLICE_MAX_GPUS]; /* offset 64 = table_offset */
    /* offset 1088: bit i % 64 of occupied[i / 64] set = slot i may hold usage, so it is
     * included in the sums; set by the slot's owner after it claims the slot, cleared when
     * the slot is emptied (atomic). Readers of another tenant's file need copy only the
     * slots up to the last occupied one: slots are claimed lowest first. */
    uint64_t occupied[GPUSLICE_BITMAP_WORDS];
    struct gpuslice_slot slots[GPUSLICE_MAX_SLOTS];    /* offset 1216 = slot_offset */
};

/**
 * A lock file (64 bytes): its header alone. The locks are on the GPUSLICE_LOCK_* bytes.
 */
struct gpuslice_lock_file {
    struct gpuslice_header header;
};

/* The layout, checked by the compiler. */
_Static_assert(sizeof(struct gpuslice_header) == GPUSLICE_HEADER_SIZE, "header size");
_Static_assert(offsetof(struct gpuslice_header, magic) == 0, "magic");
_Static_assert(offsetof(struct gpuslice_header, layout_version) == 8, "layout_version");
_Static_assert(offsetof(struct gpuslice_header, header_size) == 12, "header_size");
_Static_assert(offsetof(struct gpuslice_header, file_size) == 16, "file_size");
_Static_assert(offsetof(struct gpuslice_header, max_gpus) == 24, "max_gpus");
_Static_assert(offsetof(struct gpuslice_header, max_slots) == 28, "max_slots");
_Static_assert(offsetof(struct gpuslice_header, table_offset) == 32, "table_offset");
_Static_assert(offsetof(struct gpuslice_header, slot_offset) == 40, "slot_offset");
_Static_assert(offsetof(struct gpuslice_header, entry_size) == 48, "entry_size");
_Static_assert(offsetof(struct gpuslice_header, slot_size) == 52, "slot_size");
_Static_assert(offsetof(struct gpuslice_header, word) == 56, "word");

_Static_assert(sizeof(struct gpuslice_limits) == 32, "limits size");
_Static_assert(offsetof(struct gpuslice_limits, compute_share_permille) == 8, "share");
_Static_assert(offsetof(struct gpuslice_limits, compute_limit_permille) == 12, "limit");
_Static_assert(offsetof(struct gpuslice_limits, priority) == 16, "priority");
_Static_assert(offsetof(struct gpuslice_limits, reserved) == 20, "limits reserved");

_Static_assert(sizeof(struct gpuslice_quota_gpu) == GPUSLICE_QUOTA_ENTRY_SIZE, "quota entry");
_Static_assert(offsetof(struct gpuslice_quota_gpu, in_use) == 16, "in_use");
_Static_assert(offsetof(struct gpuslice_quota_gpu, limits) == 32, "quota entry limits");
_Static_assert(offsetof(struct gpuslice_quota_file, defaults) == 64, "defaults");
_Static_assert(offsetof(struct gpuslice_quota_file, gpus) == GPUSLICE_QUOTA_TABLE_OFFSET,
               "quota table");
_Static_assert(sizeof(struct gpuslice_quota_file) == GPUSLICE_QUOTA_FILE_SIZE, "quota file");

_Static_assert(sizeof(struct gpuslice_usage_gpu) == GPUSLICE_USAGE_ENTRY_SIZE, "gpu entry");
_Static_assert(offsetof(struct gpuslice_usage_gpu, state) == 16, "gpu state");
_Static_assert(offsetof(struct gpuslice_usage_gpu, oom_refusals) == 24, "oom_refusals");
_Static_assert(offsetof(struct gpuslice_usage_gpu, retired_gpu_time_ns) == 32, "retired");
_Static_assert(offsetof(struct gpuslice_usage_gpu, credit_ns) == 40, "credit_ns");
_Static_assert(offsetof(struct gpuslice_usage_gpu, refilled_at_ns) == 48, "refilled_at_ns");
_Static_assert(offsetof(struct gpuslice_usage_gpu, throttled_ns) == 56, "throttled_ns");

_Static_assert(sizeof(struct gpuslice_slot_gpu) == 40, "slot gpu record");
_Static_assert(offsetof(struct gpuslice_slot_gpu, gpu_time_ns) == 8, "gpu_time_ns");
_Static_assert(sizeof(struct gpuslice_slot) == GPUSLICE_USAGE_SLOT_SIZE, "slot size");
_Static_assert(offsetof(struct gpuslice_slot, pid) == 4, "pid");
_Static_assert(offsetof(struct gpuslice_slot, claimed_unix_ms) == 8, "claimed_unix_ms");
_Static_assert(offsetof(struct gpuslice_slot_gpu, compute) == 32, "compute");
_Static_assert(offsetof(struct gpuslice_slot, pid_namespace) == 24, "pid_namespace");
_Static_assert(offsetof(struct gpuslice_slot_gpu, activity) == 24, "activity");
_Static_assert(offsetof(struct gpuslice_slot, gpus) == 32, "slot gpus");

_Static_assert(offsetof(struct gpuslice_usage_file, gpus) == GPUSLICE_USAGE_TABLE_OFFSET,
               "usage table");
_Static_assert(offsetof(struct gpuslice_usage_file, occupied) == GPUSLICE_USAGE_BITMAP_OFFSET,
               "occupied bitmap");
_Static_assert(offsetof(struct gpuslice_usage_file, slots) == GPUSLICE_USAGE_SLOT_OFFSET,
               "slots");
_Static_assert(sizeof(struct gpuslice_usage_file) == GPUSLICE_USAGE_FILE_SIZE, "usage file");
_Static_assert(sizeof(struct gpuslice_lock_file) == GPUSLICE_LOCK_FILE_SIZE, "lock file");

/* ---- The shim's marker ----
 *
 * libgpuslice.so exports the GPUSLICE_LAYOUT_VERSION it was built for, in its read-only data.
 * A tool handed a path as "the shim" reads it (from the ELF dynamic symbol table, or with
 * dlsym) to know the file is the shim and speaks the tool's ledger layout: gpuslice run,
 * cdi generate and the device plugin refuse any other file, since a file the loader ignores
 * (or a shim of another layout) would leave the workload without limits.
 */
extern const uint32_t gpuslice_ledger_layout_version;

#ifdef __cplusplus
}
#endif

#endif /* GPUSLICE_H */
