//! The ledger's compute records: what each process publishes about its compute settings and
//! its activity on each GPU, and the tenant's credit (the token bucket) per GPU.
//!
//! Everything here is one 64-bit word read or written atomically, so that every process of
//! every tenant can read another tenant's records with a plain `pread` copy and decide the
//! same thing. The arithmetic that turns these numbers into rates lives in the shim's
//! compute policy; the ledger only stores them.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::limits::{PERMILLE_MAX, Priority};
use crate::slot::ProcessSlot;
use crate::usage::{GpuIndex, UsageFile};

/// A process's compute settings on a GPU as it enforces them (its environment's, under the
/// tenant's quota: see [`ComputeSettings::capped_by`]), published in its slot so that other
/// tenants can split the GPU.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ComputeSettings {
    /// The guaranteed part when others compete, 1..=1000 permille.
    pub share_permille: Option<u32>,
    /// The hard cap, 1..=1000 permille.
    pub limit_permille: Option<u32>,
    /// The priority; `None` is normal.
    pub priority: Option<Priority>,
}

/// The accepted form of a compute percentage, in words, for error messages.
pub const PERCENT_FORM: &str =
    "a percentage from 0.1 to 100 with at most one decimal, such as 30, 12.5 or 30%";

/// A compute percentage (`30`, `12.5`, `30%`, surrounding blanks allowed) in permille: 1 to
/// 1000, at most one decimal. What `GPUSLICE_COMPUTE_SHARE` / `_LIMIT` and the command's
/// flags accept, so that the command never takes a value the shim would refuse.
pub fn parse_percent(text: &str) -> Option<u32> {
    let text = text.trim();
    let number = text.strip_suffix('%').unwrap_or(text).trim_end();
    let (whole, tenth) = match number.split_once('.') {
        Some((whole, tenth)) if tenth.len() == 1 => (whole, tenth),
        Some(_) => return None,
        None => (number, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(tenth) || whole.len() > 3 {
        return None;
    }
    let permille = whole.parse::<u32>().ok()? * 10 + tenth.parse::<u32>().ok()?;
    (1..=PERMILLE_MAX).contains(&permille).then_some(permille)
}

/// `high`, `normal` or `low`, in any case.
pub fn parse_priority(text: &str) -> Option<Priority> {
    match text.trim().to_ascii_lowercase().as_str() {
        "high" => Some(Priority::High),
        "normal" => Some(Priority::Normal),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

/// The lower of two optional settings, unset meaning "no constraint": a set one wins.
fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl ComputeSettings {
    /// These settings under a quota's `ceiling`: what a process may claim where a quota file
    /// sets its tenant's compute settings. Unlike [`lowered_by`](Self::lowered_by), an
    /// unset field of the ceiling is a constraint too: no share in the quota means no share
    /// may be claimed (a share is a guarantee), and no priority means normal (so no process
    /// can make itself high). The limit only ever comes down: any cap is allowed where the
    /// quota has none. Where the ceiling has a share and these settings none, the quota's
    /// share applies.
    pub fn capped_by(self, ceiling: ComputeSettings) -> ComputeSettings {
        let ceiling_priority = ceiling.priority.unwrap_or(Priority::Normal);
        ComputeSettings {
            share_permille: ceiling
                .share_permille
                .map(|c| self.share_permille.map_or(c, |s| s.min(c))),
            limit_permille: lower(self.limit_permille, ceiling.limit_permille),
            priority: Some(
                self.priority
                    .map_or(ceiling_priority, |p| p.min(ceiling_priority)),
            ),
        }
    }

    /// The most restrictive of the two, field by field: the lower share, the lower limit,
    /// the lower priority, a set one winning over an unset one. How a tenant's processes
    /// that enforce different settings are combined.
    pub fn lowered_by(self, other: ComputeSettings) -> ComputeSettings {
        ComputeSettings {
            share_permille: lower(self.share_permille, other.share_permille),
            limit_permille: lower(self.limit_permille, other.limit_permille),
            priority: lower(self.priority, other.priority),
        }
    }
}

/// Set in a packed [`ComputeSettings`] once the process has published them.
const PUBLISHED: u64 = 1 << 63;

impl ComputeSettings {
    /// The stored form: bit 63 published, bits 0-15 share, 16-31 limit, 32-39 priority
    /// (0 meaning unset in each field).
    pub fn pack(self) -> u64 {
        let permille = |v: Option<u32>| u64::from(v.unwrap_or(0).min(PERMILLE_MAX));
        PUBLISHED
            | permille(self.share_permille)
            | (permille(self.limit_permille) << 16)
            | (u64::from(Priority::to_raw(self.priority)) << 32)
    }

    /// The inverse of [`ComputeSettings::pack`]; `None` for a slot that published nothing.
    /// Out-of-range fields read as unset.
    pub fn unpack(word: u64) -> Option<ComputeSettings> {
        if word & PUBLISHED == 0 {
            return None;
        }
        let permille = |v: u64| {
            u32::try_from(v & 0xffff)
                .ok()
                .filter(|&p| (1..=PERMILLE_MAX).contains(&p))
        };
        Some(ComputeSettings {
            share_permille: permille(word),
            limit_permille: permille(word >> 16),
            priority: u32::try_from((word >> 32) & 0xff)
                .ok()
                .and_then(Priority::from_raw),
        })
    }
}

/// What a process is doing on one GPU, as its watcher last saw it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Activity {
    /// It had work in flight on the GPU (the hardware is time-slicing it in).
    pub in_flight: bool,
    /// It wanted more of the GPU than it got: its launches waited for credit, or its work
    /// kept the GPU busy without a gap.
    pub backlogged: bool,
    /// A launch of it was waiting at its gate (for credit or for its turn).
    pub waiting: bool,
    /// It holds a turn on the GPU: it keeps work in flight (short gaps aside) and its turn
    /// has not ended.
    pub holding: bool,
    /// Its work in flight takes longer than a handover to finish: another process that
    /// started now would be time-sliced with it rather than follow it. A high-priority
    /// process's, longer than the others may keep queued beside it (they start nothing
    /// beside a long one).
    pub long_queue: bool,
    /// When it was last seen active (`CLOCK_MONOTONIC`, nanoseconds: work in flight,
    /// launches seen finished, or wanting more); 0 never. Tenants yielding to a
    /// high-priority one learn when its regular work comes from it (`policy::arrivals`).
    pub at_ns: u64,
}

const IN_FLIGHT: u64 = 1 << 63;
const BACKLOGGED: u64 = 1 << 62;
const WAITING: u64 = 1 << 61;
const HOLDING: u64 = 1 << 60;
const LONG_QUEUE: u64 = 1 << 59;
/// 2^59 ns is 18 years of uptime; records written before `waiting`, `holding` and
/// `long_queue` existed read as none of them.
const TIME_MASK: u64 = LONG_QUEUE - 1;

impl Activity {
    /// The stored form: bit 63 in flight, bit 62 backlogged, bit 61 waiting, bit 60
    /// holding, bit 59 long queue, the rest the time.
    pub fn pack(self) -> u64 {
        let mut word = self.at_ns & TIME_MASK;
        if self.in_flight {
            word |= IN_FLIGHT;
        }
        if self.backlogged {
            word |= BACKLOGGED;
        }
        if self.waiting {
            word |= WAITING;
        }
        if self.holding {
            word |= HOLDING;
        }
        if self.long_queue {
            word |= LONG_QUEUE;
        }
        word
    }

    /// The inverse of [`Activity::pack`].
    pub fn unpack(word: u64) -> Activity {
        Activity {
            in_flight: word & IN_FLIGHT != 0,
            backlogged: word & BACKLOGGED != 0,
            waiting: word & WAITING != 0,
            holding: word & HOLDING != 0,
            long_queue: word & LONG_QUEUE != 0,
            at_ns: word & TIME_MASK,
        }
    }

    /// Whether it was seen at most `window_ns` before `now_ns`.
    pub fn seen_within(self, now_ns: u64, window_ns: u64) -> bool {
        self.at_ns != 0 && now_ns.saturating_sub(self.at_ns) <= window_ns
    }
}

impl ProcessSlot {
    /// Publishes the compute settings this process enforces on `gpu`.
    pub fn publish_compute(&self, gpu: GpuIndex, settings: ComputeSettings) {
        if let Some(own) = self.own_record(gpu) {
            own.compute.store(settings.pack(), SeqCst);
        }
    }

    /// Publishes what this process is doing on `gpu`.
    pub fn set_activity(&self, gpu: GpuIndex, activity: Activity) {
        if let Some(own) = self.own_record(gpu) {
            own.activity.store(activity.pack(), SeqCst);
        }
    }
}

impl UsageFile {
    /// The tenant's credit on `gpu`, in nanoseconds of GPU time (cumulative, compared with
    /// [`UsageFile::gpu_time_ns`]).
    pub fn credit_ns(&self, gpu: GpuIndex) -> u64 {
        self.gpu_entry(gpu).map_or(0, |e| e.credit_ns.load(SeqCst))
    }

    /// Refills the tenant's credit on `gpu`, unless another process did so less than
    /// `min_interval_ns` ago: whoever moves `refilled_at_ns` from its old value to `now_ns`
    /// owns the refill of the time in between, so each stretch of time is added once
    /// however many processes try. `refill(credit, elapsed_ns)` gives the new credit.
    /// Returns whether this call refilled.
    pub fn refill_credit(
        &self,
        gpu: GpuIndex,
        now_ns: u64,
        min_interval_ns: u64,
        refill: impl Fn(u64, u64) -> u64,
    ) -> bool {
        let Some(entry) = self.gpu_entry(gpu) else {
            return false;
        };
        let last = entry.refilled_at_ns.load(SeqCst);
        if last != 0 && now_ns < last.saturating_add(min_interval_ns) {
            return false;
        }
        if entry
            .refilled_at_ns
            .compare_exchange(last, now_ns, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        // The first refill of a GPU starts the clock; it adds nothing.
        let elapsed = if last == 0 { 0 } else { now_ns - last };
        let _ = entry
            .credit_ns
            .fetch_update(SeqCst, SeqCst, |c| Some(refill(c, elapsed)));
        true
    }

    /// Adds `ns` to the wall time the tenant's launches waited for credit on `gpu`.
    pub fn add_throttled(&self, gpu: GpuIndex, ns: u64) {
        if let Some(e) = self.gpu_entry(gpu) {
            let _ = e
                .throttled_ns
                .fetch_update(Relaxed, Relaxed, |t| Some(t.saturating_add(ns)));
        }
    }

    /// The wall time the tenant's launches waited for credit on `gpu`, in nanoseconds.
    pub fn throttled_ns(&self, gpu: GpuIndex) -> u64 {
        self.gpu_entry(gpu)
            .map_or(0, |e| e.throttled_ns.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        share: Option<u32>,
        limit: Option<u32>,
        priority: Option<Priority>,
    ) -> ComputeSettings {
        ComputeSettings {
            share_permille: share,
            limit_permille: limit,
            priority,
        }
    }

    #[test]
    fn under_a_quota_a_process_can_lower_its_settings_but_never_raise_them() {
        use Priority::{High, Low, Normal};
        // (claimed, quota) -> what holds
        let cases = [
            // Nothing claimed: the quota's.
            (
                settings(None, None, None),
                settings(Some(250), Some(500), Some(High)),
                settings(Some(250), Some(500), Some(High)),
            ),
            // Lower share, lower limit, lower priority: taken.
            (
                settings(Some(100), Some(300), Some(Low)),
                settings(Some(250), Some(500), Some(Normal)),
                settings(Some(100), Some(300), Some(Low)),
            ),
            // Higher share, higher limit, higher priority: the quota's.
            (
                settings(Some(900), Some(1000), Some(High)),
                settings(Some(250), Some(500), Some(Normal)),
                settings(Some(250), Some(500), Some(Normal)),
            ),
            // No share in the quota: none may be claimed.
            (
                settings(Some(1000), None, None),
                settings(None, None, None),
                settings(None, None, Some(Normal)),
            ),
            // No priority in the quota: normal at most.
            (
                settings(None, None, Some(High)),
                settings(None, None, None),
                settings(None, None, Some(Normal)),
            ),
            // No limit in the quota: any cap is a lowering.
            (
                settings(None, Some(300), None),
                settings(None, None, None),
                settings(None, Some(300), Some(Normal)),
            ),
        ];
        for (claimed, quota, want) in cases {
            assert_eq!(
                claimed.capped_by(quota),
                want,
                "{claimed:?} under {quota:?}"
            );
        }
    }
    use crate::{GpuUuid, Ledger, TenantName};

    #[test]
    fn settings_round_trip_through_their_word() {
        for settings in [
            ComputeSettings::default(),
            ComputeSettings {
                share_permille: Some(250),
                limit_permille: Some(1000),
                priority: Some(Priority::High),
            },
            ComputeSettings {
                share_permille: None,
                limit_permille: Some(1),
                priority: Some(Priority::Low),
            },
        ] {
            assert_eq!(ComputeSettings::unpack(settings.pack()), Some(settings));
        }
        assert_eq!(ComputeSettings::unpack(0), None, "never published");
        let garbage = PUBLISHED | 5000 | (7000 << 16) | (9 << 32);
        assert_eq!(
            ComputeSettings::unpack(garbage),
            Some(ComputeSettings::default()),
            "out-of-range fields read as unset"
        );
    }

    #[test]
    fn lowering_keeps_the_most_restrictive_of_each_setting() {
        let file = ComputeSettings {
            share_permille: Some(500),
            limit_permille: None,
            priority: Some(Priority::Normal),
        };
        let env = ComputeSettings {
            share_permille: Some(700),
            limit_permille: Some(300),
            priority: Some(Priority::High),
        };
        let lowered = ComputeSettings {
            share_permille: Some(500),
            limit_permille: Some(300),
            priority: Some(Priority::Normal),
        };
        assert_eq!(file.lowered_by(env), lowered);
        assert_eq!(env.lowered_by(file), lowered);
        assert_eq!(file.lowered_by(ComputeSettings::default()), file);
    }

    #[test]
    fn activity_round_trips_and_ages() {
        let a = Activity {
            in_flight: true,
            backlogged: false,
            waiting: true,
            holding: false,
            long_queue: true,
            at_ns: 123_456_789,
        };
        assert_eq!(Activity::unpack(a.pack()), a);
        let b = Activity {
            in_flight: false,
            backlogged: true,
            waiting: false,
            holding: true,
            long_queue: false,
            at_ns: (1 << 59) - 1,
        };
        assert_eq!(Activity::unpack(b.pack()), b);
        assert!(a.seen_within(123_456_789 + 10, 10));
        assert!(!a.seen_within(123_456_789 + 11, 10));
        assert!(!Activity::default().seen_within(5, u64::MAX));
    }

    #[test]
    fn each_stretch_of_time_is_refilled_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let tenant = TenantName::new("t").unwrap();
        let usage = ledger.open_usage(&tenant).unwrap();
        let gpu = usage.register_gpu(&GpuUuid([7; 16])).unwrap();
        let add_elapsed = |c: u64, e: u64| c + e;
        assert!(
            usage.refill_credit(gpu, 1_000, 100, add_elapsed),
            "starts the clock"
        );
        assert_eq!(usage.credit_ns(gpu), 0);
        assert!(
            !usage.refill_credit(gpu, 1_050, 100, add_elapsed),
            "too soon"
        );
        assert!(usage.refill_credit(gpu, 1_200, 100, add_elapsed));
        assert_eq!(usage.credit_ns(gpu), 200);
        assert!(!usage.refill_credit(gpu, 1_200, 0, add_elapsed) || usage.credit_ns(gpu) == 200);
        usage.add_throttled(gpu, 5);
        usage.add_throttled(gpu, 7);
        assert_eq!(usage.throttled_ns(gpu), 12);
        assert_eq!(usage.credit_ns(GpuIndex(99)), 0, "outside the table");
    }

    #[test]
    fn published_records_are_cleared_with_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let tenant = TenantName::new("t").unwrap();
        let usage = ledger.open_usage(&tenant).unwrap();
        let gpu = usage.register_gpu(&GpuUuid([7; 16])).unwrap();
        let slot = usage.claim_slot().unwrap();
        slot.publish_compute(
            gpu,
            ComputeSettings {
                share_permille: Some(300),
                ..ComputeSettings::default()
            },
        );
        slot.set_activity(
            gpu,
            Activity {
                in_flight: true,
                backlogged: true,
                waiting: false,
                holding: false,
                long_queue: false,
                at_ns: 42,
            },
        );
        let snap = ledger.snapshot_usage(&tenant).unwrap();
        let seen = snap.compute_slots(gpu);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].settings.and_then(|s| s.share_permille), Some(300));
        assert!(seen[0].activity.in_flight && seen[0].activity.backlogged);
        drop(slot);
        let snap = ledger.snapshot_usage(&tenant).unwrap();
        assert!(snap.compute_slots(gpu).is_empty());
    }
}
