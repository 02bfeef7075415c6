//! Quota files: a tenant's limits, written by whoever created the tenant and read live by the
//! tenant's processes.
//!
//! Consistency between the many fields of an update comes from the header's generation, used
//! as a sequence lock: a writer makes it odd, stores the new values, and makes it even again
//! (one greater than before, plus one); a reader retries while it is odd or changed under it.
//! Writers claim an update by turning the generation odd with a compare-and-swap, so two
//! writers never write at once; and each holds, where it can, a write lock on the tenant's
//! lock file (its [`QUOTA_UPDATE`](lock_bytes::QUOTA_UPDATE) byte) for the whole update, so a
//! reader can tell a writer that is slow (descheduled with the generation odd: wait for it)
//! from one that died mid-update (the lock is gone with its process). The lock is only a
//! signal to readers, never something a writer waits for: the tenant's own processes can
//! open the lock file and hold that byte, and must not keep their creator from lowering
//! their quota. (The lock is in the lock file, not the quota file, because every tenant can
//! open the quota file read-only, and a read lock on it would fake a live writer.)

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU64, fence};
use std::time::Duration;

use crate::error::LedgerError;
use crate::files::{self, Access, TempFile};
use crate::layout::{QUOTA_FILE_SIZE, QUOTA_GEOMETRY, QuotaLayout, RawLimits, lock_bytes};
use crate::layout::{uuid_bytes, uuid_words};
use crate::limits::{Limits, TenantQuota};
use crate::locks::{LockFile, LockKind};
use crate::names::GpuUuid;
use crate::sys::View;

/// How many times a reader retries at once while a writer is mid-update. An update takes
/// microseconds, so this covers it unless the writer was descheduled.
const SPINS_BEFORE_SLEEPING: u32 = 200;

/// How long a reader sleeps between later retries, each after checking that a writer still
/// holds the lock...
const RETRY_SLEEP: Duration = Duration::from_micros(100);
/// ...and at most how many times (a second or more): a writer that holds the lock longer is
/// stopped (a debugger, a frozen cgroup), and a tenant's allocation must not hang on it.
const MAX_SLEEPS: u32 = 10_000;

/// How long a writer waits for another that keeps the generation odd while the update lock
/// is held, before it takes the update over: writers take microseconds, so a longer wait
/// means a writer stopped (a debugger, a frozen cgroup) or one of the tenant's own processes
/// holds the byte, and the writer, often the device plugin serving every tenant, must not
/// hang on either.
const WRITER_WAIT: Duration = Duration::from_secs(2);
/// How long such a writer sleeps between its looks.
const WRITER_RETRY: Duration = Duration::from_millis(1);

/// How many times a reader that cannot ask whether a writer is alive (it cannot open the
/// tenant's lock file: another tenant, an observer of another user) sleeps before it settles
/// for what is stored: briefly, since it cannot tell a slow writer from a dead one, and a
/// neighbour's watcher reads quotas every tick.
const BLIND_SLEEPS: u32 = 10;

/// The time a quota reader or writer waits on: the real clock, or in tests one that moves
/// only when they sleep, so that what they wait for is counted, never timed.
trait Clock {
    /// The time since an arbitrary origin.
    fn now(&self) -> Duration;
    /// Lets `time` pass.
    fn sleep(&mut self, time: Duration);
}

/// The real clock (`CLOCK_MONOTONIC`: its origin is the boot).
struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(crate::clock::monotonic_ns())
    }

    fn sleep(&mut self, time: Duration) {
        std::thread::sleep(time);
    }
}

/// A tenant's quota file, mapped read-only and validated when opened.
///
/// Reads are live: an update written while the file is open is seen by the next call, so a
/// running tenant picks up a new quota without restarting.
pub struct QuotaFile {
    path: PathBuf,
    /// Kept open with the mapping.
    _file: File,
    view: View<QuotaLayout>,
    /// The tenant's lock file, to ask whether a writer holds the update lock; `None` where
    /// this process cannot open it (then an odd generation is waited out to the bound).
    locks: Option<LockFile>,
}

impl fmt::Debug for QuotaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaFile")
            .field("path", &self.path)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl QuotaFile {
    /// Opens and validates the quota file at `path`; `None` if there is none. `locks` is the
    /// tenant's lock file, where this process can open it.
    pub(crate) fn open(
        path: &Path,
        locks: Option<LockFile>,
    ) -> Result<Option<QuotaFile>, LedgerError> {
        let Some(file) = files::open_existing(path, Access::ReadOnly)? else {
            return Ok(None);
        };
        files::validate(&file, path, &QUOTA_GEOMETRY)?;
        let view = View::map(file.as_fd(), false).map_err(|e| LedgerError::io(path, "map", e))?;
        let quota = QuotaFile {
            path: path.to_path_buf(),
            _file: file,
            view,
            locks,
        };
        if let Some(problem) = quota.read_consistent(entry_problem) {
            return Err(LedgerError::corrupt(path, problem));
        }
        Ok(Some(quota))
    }

    /// The limits on `gpu`: its own entry if the quota has one, else the defaults.
    pub fn limits_for(&self, gpu: &GpuUuid) -> Limits {
        let wanted = uuid_words(&gpu.0);
        self.read_consistent(|l| {
            l.gpus
                .iter()
                .find(|e| {
                    e.in_use.load(Relaxed) == 1
                        && e.uuid[0].load(Relaxed) == wanted[0]
                        && e.uuid[1].load(Relaxed) == wanted[1]
                })
                .map_or_else(|| Limits::load(&l.defaults), |e| Limits::load(&e.limits))
        })
    }

    /// The limits on a GPU without an entry of its own.
    pub fn defaults(&self) -> Limits {
        self.read_consistent(|l| Limits::load(&l.defaults))
    }

    /// The whole quota, read consistently.
    pub fn quota(&self) -> TenantQuota {
        self.read_consistent(|l| TenantQuota {
            defaults: Limits::load(&l.defaults),
            per_gpu: l
                .gpus
                .iter()
                .filter(|e| e.in_use.load(Relaxed) == 1)
                .map(|e| {
                    let uuid = uuid_bytes([e.uuid[0].load(Relaxed), e.uuid[1].load(Relaxed)]);
                    (GpuUuid(uuid), Limits::load(&e.limits))
                })
                .collect(),
        })
    }

    /// Counts updates: even when the file is stable, odd while an update is being written,
    /// and larger after every update. Cheap enough to poll.
    pub fn generation(&self) -> u64 {
        self.view.get().header.word.load(Acquire)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` over the mapped file until it ran while no writer was active.
    ///
    /// A writer that keeps the generation odd for long is waited for while it holds the
    /// update lock (up to [`MAX_SLEEPS`] times); once it holds none, it died mid-update, and
    /// what is stored is returned: every field holds a value some writer stored, and the
    /// next update rewrites them all.
    fn read_consistent<R>(&self, read: impl Fn(&QuotaLayout) -> R) -> R {
        self.read_consistent_on(read, &mut RealClock)
    }

    /// [`QuotaFile::read_consistent`], its waits on `clock`.
    fn read_consistent_on<R>(&self, read: impl Fn(&QuotaLayout) -> R, clock: &mut impl Clock) -> R {
        let layout = self.view.get();
        let generation = &layout.header.word;
        let mut attempts: u32 = 0;
        loop {
            let before = generation.load(Acquire);
            let value = read(layout);
            // Orders the data loads above before the re-check below (seqlock reader).
            fence(Acquire);
            let after = generation.load(Relaxed);
            if before == after && before.is_multiple_of(2) {
                return value;
            }
            attempts = attempts.saturating_add(1);
            if attempts < SPINS_BEFORE_SLEEPING {
                std::hint::spin_loop();
                continue;
            }
            let Some(locks) = &self.locks else {
                // Nothing tells a slow writer from a dead one: a short wait, then settle.
                if attempts >= SPINS_BEFORE_SLEEPING + BLIND_SLEEPS {
                    return value;
                }
                clock.sleep(RETRY_SLEEP);
                continue;
            };
            if attempts >= SPINS_BEFORE_SLEEPING + MAX_SLEEPS {
                return value;
            }
            let writer_holds_lock = locks.is_locked(lock_bytes::QUOTA_UPDATE);
            // Re-read after the probe: a writer that just finished released the lock too.
            if before == after && !writer_holds_lock && generation.load(Acquire) == before {
                return value;
            }
            clock.sleep(RETRY_SLEEP);
        }
    }
}

/// Why the stored entries are not valid, if they are not.
fn entry_problem(l: &QuotaLayout) -> Option<String> {
    if let Some(p) = Limits::raw_problem(&l.defaults) {
        return Some(format!("defaults: {p}"));
    }
    for (i, e) in l.gpus.iter().enumerate() {
        let in_use = e.in_use.load(Relaxed);
        if in_use > 1 {
            return Some(format!(
                "GPU entry {i}: in_use is {in_use}, expected 0 or 1"
            ));
        }
        if in_use == 1
            && let Some(p) = Limits::raw_problem(&e.limits)
        {
            return Some(format!("GPU entry {i}: {p}"));
        }
    }
    None
}

/// Stores a whole quota (callers order these stores with the generation).
fn store_quota(l: &QuotaLayout, q: &TenantQuota) {
    q.defaults.store(&l.defaults);
    for (i, e) in l.gpus.iter().enumerate() {
        match q.per_gpu.get(i) {
            Some((uuid, limits)) => {
                let words = uuid_words(&uuid.0);
                e.uuid[0].store(words[0], Relaxed);
                e.uuid[1].store(words[1], Relaxed);
                limits.store(&e.limits);
                e.in_use.store(1, Relaxed);
            }
            None => {
                e.in_use.store(0, Relaxed);
                e.uuid[0].store(0, Relaxed);
                e.uuid[1].store(0, Relaxed);
                zero_limits(&e.limits);
            }
        }
        for r in &e.reserved {
            r.store(0, Relaxed);
        }
    }
}

/// Zeroes an unused entry's limits, so the file holds no stale values.
fn zero_limits(raw: &RawLimits) {
    raw.memory_limit_bytes.store(0, Relaxed);
    raw.compute_share_permille.store(0, Relaxed);
    raw.compute_limit_permille.store(0, Relaxed);
    raw.priority.store(0, Relaxed);
    for r in &raw.reserved {
        r.store(0, Relaxed);
    }
}

/// Writes `q` as the quota file at `path` inside the tenant directory `dir`: a new file is
/// published whole; an existing one is updated in place, live, under the update lock of the
/// tenant's lock file `locks`.
pub(crate) fn write_quota(
    dir: &Path,
    path: &Path,
    locks: &LockFile,
    q: &TenantQuota,
) -> Result<(), LedgerError> {
    write_quota_on(dir, path, locks, q, &mut RealClock)
}

/// [`write_quota`], its waits on `clock`.
fn write_quota_on(
    dir: &Path,
    path: &Path,
    locks: &LockFile,
    q: &TenantQuota,
    clock: &mut impl Clock,
) -> Result<(), LedgerError> {
    q.check(path)?;
    if update_in_place(path, locks, q, clock)? {
        return Ok(());
    }
    files::ensure_dir(dir)?;
    let temp = TempFile::create(dir, "quota", QUOTA_FILE_SIZE as u64, files::FILE_MODE)?;
    {
        let view = View::<QuotaLayout>::map(temp.file.as_fd(), true)
            .map_err(|e| LedgerError::io(&temp.path, "map", e))?;
        let layout = view.get();
        QUOTA_GEOMETRY.init_header(&layout.header);
        store_quota(layout, q);
    }
    temp.file
        .sync_all()
        .map_err(|e| LedgerError::io(&temp.path, "write", e))?;
    if temp.publish_no_clobber(path)? {
        return Ok(());
    }
    // Another writer published first: update theirs, so no reader is left on a stale file.
    if update_in_place(path, locks, q, clock)? {
        Ok(())
    } else {
        Err(LedgerError::io(
            path,
            "update",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
    }
}

/// Claims `generation` for an update: turns it from even to odd with a compare-and-swap and
/// returns the odd value. An odd one belongs to another writer: one that holds no update
/// lock died mid-update and is taken over at once; otherwise it is waited for at most
/// [`WRITER_WAIT`] and then taken over (moved to the next odd value, so that readers of the
/// old one read again). `ours`: this writer holds the update lock.
fn begin_update(
    generation: &AtomicU64,
    locks: &LockFile,
    ours: bool,
    clock: &mut impl Clock,
) -> u64 {
    let started = clock.now();
    loop {
        let current = generation.load(Acquire);
        if current.is_multiple_of(2) {
            if generation
                .compare_exchange(current, current | 1, AcqRel, Acquire)
                .is_ok()
            {
                return current | 1;
            }
            continue;
        }
        // A write lock has one holder: when it is this writer's, the one that left the
        // generation odd holds none, so it died (or is a writer that could not take the
        // lock either, which the compare-and-swap below still keeps apart from this one).
        let writer_alive = !ours && locks.is_locked(lock_bytes::QUOTA_UPDATE);
        if !writer_alive || clock.now().saturating_sub(started) >= WRITER_WAIT {
            let next = current.wrapping_add(2);
            if generation
                .compare_exchange(current, next, AcqRel, Acquire)
                .is_ok()
            {
                return next;
            }
            continue;
        }
        clock.sleep(WRITER_RETRY);
    }
}

/// Updates an existing quota file in place; `false` if there is none.
fn update_in_place(
    path: &Path,
    locks: &LockFile,
    q: &TenantQuota,
    clock: &mut impl Clock,
) -> Result<bool, LedgerError> {
    let Some(file) = files::open_existing(path, Access::ReadWrite)? else {
        return Ok(false);
    };
    files::validate(&file, path, &QUOTA_GEOMETRY)?;
    let view = View::<QuotaLayout>::map(file.as_fd(), true)
        .map_err(|e| LedgerError::io(path, "map", e))?;
    // The lock tells readers a writer is alive; if the tenant holds it, they will think so
    // anyway, and the update goes ahead.
    let lock = locks.handle()?;
    let ours = lock.try_lock(lock_bytes::QUOTA_UPDATE, LockKind::Exclusive)?;
    let layout = view.get();
    let generation = &layout.header.word;
    let odd = begin_update(generation, locks, ours, clock);
    // Orders the odd generation before the data stores (seqlock writer).
    fence(Release);
    store_quota(layout, q);
    generation.store(odd.wrapping_add(1), Release);
    drop(view);
    if ours {
        lock.unlock(lock_bytes::QUOTA_UPDATE)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_only(bytes: u64) -> TenantQuota {
        TenantQuota {
            defaults: Limits {
                memory_bytes: Some(bytes),
                ..Limits::default()
            },
            per_gpu: Vec::new(),
        }
    }

    /// The tenant's lock file in `dir`, created.
    fn lock_file(dir: &Path) -> LockFile {
        let path = dir.join("lock");
        LockFile::create(dir, &path).expect("create the lock file");
        LockFile::open(&path, Access::ReadWrite)
            .expect("open")
            .expect("exists")
    }

    /// A quota file holding `memory_only(1)`, open for reading, and a writable view of it
    /// with a description of the lock file (a writer's).
    fn quota_file() -> (
        tempfile::TempDir,
        QuotaFile,
        crate::locks::LockHandle,
        View<QuotaLayout>,
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("quota");
        let locks = lock_file(dir.path());
        write_quota(dir.path(), &path, &locks, &memory_only(1)).expect("first write");
        let writer_lock = locks.handle().expect("a description of the lock file");
        let reader = QuotaFile::open(&path, Some(locks))
            .expect("open")
            .expect("exists");
        let writer = files::open_existing(&path, Access::ReadWrite)
            .expect("open")
            .expect("exists");
        let view = View::<QuotaLayout>::map(writer.as_fd(), true).expect("map");
        (dir, reader, writer_lock, view)
    }

    /// A clock that moves only when it is slept on, counting the sleeps, and calls
    /// `on_sleep` with their count at each (to act while a reader or writer waits).
    struct FakeClock<F: FnMut(u32)> {
        now: Duration,
        sleeps: u32,
        on_sleep: F,
    }

    fn fake_clock() -> FakeClock<impl FnMut(u32)> {
        FakeClock {
            now: Duration::ZERO,
            sleeps: 0,
            on_sleep: |_| {},
        }
    }

    impl<F: FnMut(u32)> Clock for FakeClock<F> {
        fn now(&self) -> Duration {
            self.now
        }

        fn sleep(&mut self, time: Duration) {
            self.now += time;
            self.sleeps += 1;
            (self.on_sleep)(self.sleeps);
        }
    }

    /// The defaults, read with waits on `clock`.
    fn defaults_on(reader: &QuotaFile, clock: &mut impl Clock) -> Limits {
        reader.read_consistent_on(|l| Limits::load(&l.defaults), clock)
    }

    /// `q` written to `dir`'s quota file with waits on `clock`.
    fn write_on(dir: &Path, q: &TenantQuota, clock: &mut impl Clock) {
        let locks = LockFile::open(&dir.join("lock"), Access::ReadWrite)
            .expect("open")
            .expect("exists");
        write_quota_on(dir, &dir.join("quota"), &locks, q, clock).expect("the update goes through");
    }

    /// A writer (holding `lock`) stopped mid-update of `view`: the update lock held and the
    /// generation odd, which it returns.
    fn stopped_mid_update(lock: &crate::locks::LockHandle, view: &View<QuotaLayout>) -> u64 {
        lock.lock_wait(lock_bytes::QUOTA_UPDATE, LockKind::Exclusive)
            .expect("lock");
        let generation = &view.get().header.word;
        let odd = generation.load(Relaxed) | 1;
        generation.store(odd, Release);
        odd
    }

    #[test]
    fn reader_waits_for_a_writer_descheduled_mid_update() {
        let (_dir, reader, writer, view) = quota_file();
        let generation = &view.get().header.word;
        let odd = stopped_mid_update(&writer, &view);
        // Half an update: only the memory limit written so far.
        memory_only(2).defaults.store(&view.get().defaults);
        // The writer, holding the lock, finishes while the reader waits: the reader must be
        // waiting then (had it taken the half-written update, it would never sleep).
        let mut clock = FakeClock {
            now: Duration::ZERO,
            sleeps: 0,
            on_sleep: |sleeps| {
                if sleeps == 3 {
                    memory_only(3).defaults.store(&view.get().defaults);
                    generation.store(odd + 1, Release);
                    writer.unlock(lock_bytes::QUOTA_UPDATE).expect("unlock");
                }
            },
        };
        assert_eq!(defaults_on(&reader, &mut clock).memory_bytes, Some(3));
        assert_eq!(clock.sleeps, 3, "it read as soon as the writer was done");
    }

    #[test]
    fn reader_does_not_hang_on_a_writer_stopped_mid_update() {
        let (_dir, reader, writer, view) = quota_file();
        stopped_mid_update(&writer, &view);
        let mut clock = fake_clock();
        assert_eq!(defaults_on(&reader, &mut clock).memory_bytes, Some(1));
        assert_eq!(
            clock.sleeps, MAX_SLEEPS,
            "it waited to the bound, and no longer"
        );
        assert_eq!(clock.now, RETRY_SLEEP * MAX_SLEEPS);
    }

    #[test]
    fn reader_settles_for_what_a_writer_that_died_mid_update_left() {
        let (_dir, reader, _writer, view) = quota_file();
        let generation = &view.get().header.word;
        // Odd with nobody holding the lock: the writer is gone.
        generation.store(generation.load(Relaxed) | 1, Release);
        memory_only(2).defaults.store(&view.get().defaults);
        let mut clock = fake_clock();
        assert_eq!(defaults_on(&reader, &mut clock).memory_bytes, Some(2));
        assert_eq!(clock.sleeps, 0, "nothing to wait for");
    }

    #[test]
    fn a_tenant_holding_its_update_lock_cannot_keep_its_creator_from_changing_its_quota() {
        let (dir, reader, tenant_lock, _view) = quota_file();
        // A process of the tenant (which can open its lock file) holds the byte.
        tenant_lock
            .lock_wait(lock_bytes::QUOTA_UPDATE, LockKind::Exclusive)
            .expect("lock");
        let mut clock = fake_clock();
        write_on(dir.path(), &memory_only(7), &mut clock);
        assert_eq!(clock.sleeps, 0, "the writer did not wait");
        assert_eq!(reader.defaults().memory_bytes, Some(7));
    }

    #[test]
    fn a_writer_takes_over_an_update_a_dead_writer_left_half_done() {
        let (dir, reader, _tenant_lock, view) = quota_file();
        let generation = &view.get().header.word;
        // Odd, with nobody holding the lock: a writer died mid-update.
        generation.store(generation.load(Relaxed) | 1, Release);
        let mut clock = fake_clock();
        write_on(dir.path(), &memory_only(9), &mut clock);
        assert_eq!(clock.sleeps, 0, "the writer did not wait");
        assert!(generation.load(Acquire).is_multiple_of(2));
        assert_eq!(reader.defaults().memory_bytes, Some(9));
    }

    #[test]
    fn a_writer_takes_over_from_a_writer_stopped_mid_update_after_its_wait() {
        let (dir, reader, other_writer, view) = quota_file();
        let generation = &view.get().header.word;
        // Odd, and the lock held: a writer stopped mid-update (or the tenant holds the byte).
        let odd = stopped_mid_update(&other_writer, &view);
        let mut clock = fake_clock();
        write_on(dir.path(), &memory_only(9), &mut clock);
        assert_eq!(clock.now, WRITER_WAIT, "it waited its while, and no longer");
        // Moved past the stopped writer's odd value, so that its readers read again.
        assert_eq!(generation.load(Acquire), odd + 3);
        other_writer
            .unlock(lock_bytes::QUOTA_UPDATE)
            .expect("unlock");
        assert_eq!(reader.defaults().memory_bytes, Some(9));
    }

    #[test]
    fn a_reader_that_cannot_ask_about_writers_settles_quickly() {
        let (dir, _reader, writer, view) = quota_file();
        stopped_mid_update(&writer, &view);
        // Another tenant's watcher: no lock file to probe. It must not stall its tick for
        // the second a tenant's own reader may wait.
        let blind = QuotaFile::open(&dir.path().join("quota"), None)
            .expect("open")
            .expect("exists");
        let mut clock = fake_clock();
        assert_eq!(defaults_on(&blind, &mut clock).memory_bytes, Some(1));
        assert_eq!(clock.sleeps, BLIND_SLEEPS);
    }
}
