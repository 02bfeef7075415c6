//! What a tenant is allowed: [`Limits`], per GPU or by default ([`TenantQuota`]).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use crate::error::LedgerError;
use crate::layout::{MEMORY_UNLIMITED, RawLimits};
use crate::names::GpuUuid;

/// How a tenant's work is ordered against other tenants' on a contended GPU. Ordered
/// low < normal < high.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Priority {
    /// Yields to everyone else.
    Low,
    /// The default.
    Normal,
    /// Others keep little work in flight while this tenant is active.
    High,
}

impl Priority {
    /// Its name, as `GPUSLICE_PRIORITY` and `--priority` take it.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// The stored form: 0 unset, 1 low, 2 normal, 3 high.
    pub(crate) fn to_raw(p: Option<Priority>) -> u32 {
        match p {
            None => 0,
            Some(Priority::Low) => 1,
            Some(Priority::Normal) => 2,
            Some(Priority::High) => 3,
        }
    }

    /// The inverse of [`Priority::to_raw`]; `None` for 0 and for values it does not know.
    pub(crate) fn from_raw(v: u32) -> Option<Priority> {
        match v {
            1 => Some(Priority::Low),
            2 => Some(Priority::Normal),
            3 => Some(Priority::High),
            _ => None,
        }
    }
}

/// The most a permille value can be.
pub const PERMILLE_MAX: u32 = 1000;

/// One set of limits. `None` means "not set here": for memory that is unlimited, for compute
/// the policy's default.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Limits {
    /// Device memory the tenant's processes may hold together on one GPU. Stored as
    /// `u64::MAX` when `None` (so `Some(u64::MAX)` reads back as `None`: both are unlimited).
    pub memory_bytes: Option<u64>,
    /// The tenant's guaranteed share of kernel time when others want the GPU, 1..=1000.
    pub compute_share_permille: Option<u32>,
    /// A hard cap on kernel time even when the GPU is idle, 1..=1000.
    pub compute_limit_permille: Option<u32>,
    /// Ordering against other tenants.
    pub priority: Option<Priority>,
}

impl Limits {
    /// The compute part of these limits.
    pub fn compute(&self) -> crate::ComputeSettings {
        crate::ComputeSettings {
            share_permille: self.compute_share_permille,
            limit_permille: self.compute_limit_permille,
            priority: self.priority,
        }
    }

    /// Refuses values the file cannot hold (a permille of 0 would read back as unset).
    pub(crate) fn check(&self, path: &Path) -> Result<(), LedgerError> {
        for (what, v) in [
            ("compute_share_permille", self.compute_share_permille),
            ("compute_limit_permille", self.compute_limit_permille),
        ] {
            if let Some(v) = v
                && !(1..=PERMILLE_MAX).contains(&v)
            {
                return Err(LedgerError::InvalidLimit {
                    path: path.to_path_buf(),
                    what,
                    value: v.into(),
                });
            }
        }
        Ok(())
    }

    /// Stores these limits (relaxed: callers order the stores with the generation).
    pub(crate) fn store(&self, raw: &RawLimits) {
        raw.memory_limit_bytes
            .store(self.memory_bytes.unwrap_or(MEMORY_UNLIMITED), Relaxed);
        raw.compute_share_permille
            .store(self.compute_share_permille.unwrap_or(0), Relaxed);
        raw.compute_limit_permille
            .store(self.compute_limit_permille.unwrap_or(0), Relaxed);
        raw.priority.store(Priority::to_raw(self.priority), Relaxed);
        for r in &raw.reserved {
            r.store(0, Relaxed);
        }
    }

    /// Loads limits (relaxed: callers order the loads with the generation). Values a valid
    /// file cannot hold (a priority above 3, a permille above 1000) are read leniently, as
    /// unset and as 1000; [`QuotaFile`](crate::QuotaFile) refuses such files when it opens.
    pub(crate) fn load(raw: &RawLimits) -> Limits {
        let memory = raw.memory_limit_bytes.load(Relaxed);
        let permille = |v: u32| (v != 0).then_some(v.min(PERMILLE_MAX));
        Limits {
            memory_bytes: (memory != MEMORY_UNLIMITED).then_some(memory),
            compute_share_permille: permille(raw.compute_share_permille.load(Relaxed)),
            compute_limit_permille: permille(raw.compute_limit_permille.load(Relaxed)),
            priority: Priority::from_raw(raw.priority.load(Relaxed)),
        }
    }

    /// Why stored limits are not valid, if they are not.
    pub(crate) fn raw_problem(raw: &RawLimits) -> Option<String> {
        let priority = raw.priority.load(Relaxed);
        if priority > 3 {
            return Some(format!("priority is {priority}, expected 0 to 3"));
        }
        for (what, v) in [
            (
                "compute_share_permille",
                raw.compute_share_permille.load(Relaxed),
            ),
            (
                "compute_limit_permille",
                raw.compute_limit_permille.load(Relaxed),
            ),
        ] {
            if v > PERMILLE_MAX {
                return Some(format!("{what} is {v}, expected at most {PERMILLE_MAX}"));
            }
        }
        None
    }
}

/// A tenant's whole quota: limits that apply on every GPU, and overrides for particular GPUs
/// (at most [`MAX_GPUS`](crate::MAX_GPUS) of them, each GPU once).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TenantQuota {
    /// Limits on a GPU that has no entry of its own.
    pub defaults: Limits,
    /// Limits for particular GPUs; an entry replaces the defaults as a whole on its GPU.
    pub per_gpu: Vec<(GpuUuid, Limits)>,
}

impl TenantQuota {
    /// The limits that apply on `gpu`.
    pub fn limits_for(&self, gpu: &GpuUuid) -> Limits {
        self.per_gpu
            .iter()
            .find(|(u, _)| u == gpu)
            .map_or(self.defaults, |(_, l)| *l)
    }

    /// Refuses a quota the file cannot hold.
    pub(crate) fn check(&self, path: &Path) -> Result<(), LedgerError> {
        if self.per_gpu.len() > crate::MAX_GPUS {
            return Err(LedgerError::TooManyGpuLimits {
                path: path.to_path_buf(),
                count: self.per_gpu.len(),
                max: crate::MAX_GPUS,
            });
        }
        self.defaults.check(path)?;
        for (i, (uuid, limits)) in self.per_gpu.iter().enumerate() {
            limits.check(path)?;
            if self.per_gpu.iter().take(i).any(|(u, _)| u == uuid) {
                return Err(LedgerError::DuplicateGpuLimit {
                    path: path.to_path_buf(),
                    uuid: *uuid,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawLimits {
        RawLimits {
            memory_limit_bytes: 0.into(),
            compute_share_permille: 0.into(),
            compute_limit_permille: 0.into(),
            priority: 0.into(),
            reserved: Default::default(),
        }
    }

    #[test]
    fn limits_round_trip_through_their_stored_form() {
        let r = raw();
        for l in [
            Limits::default(),
            Limits {
                memory_bytes: Some(4 << 30),
                compute_share_permille: Some(250),
                compute_limit_permille: Some(1000),
                priority: Some(Priority::High),
            },
            Limits {
                memory_bytes: Some(0),
                compute_share_permille: Some(1),
                compute_limit_permille: None,
                priority: Some(Priority::Low),
            },
            Limits {
                priority: Some(Priority::Normal),
                ..Limits::default()
            },
        ] {
            l.store(&r);
            assert_eq!(Limits::load(&r), l);
        }
    }

    #[test]
    fn unset_limits_are_stored_as_documented_sentinels() {
        let r = raw();
        Limits::default().store(&r);
        assert_eq!(r.memory_limit_bytes.load(Relaxed), u64::MAX);
        assert_eq!(r.compute_share_permille.load(Relaxed), 0);
        assert_eq!(r.compute_limit_permille.load(Relaxed), 0);
        assert_eq!(r.priority.load(Relaxed), 0);
    }

    #[test]
    fn out_of_range_stored_values_read_leniently_and_are_reported() {
        let r = raw();
        r.priority.store(7, Relaxed);
        r.compute_share_permille.store(5000, Relaxed);
        let l = Limits::load(&r);
        assert_eq!(l.priority, None);
        assert_eq!(l.compute_share_permille, Some(1000));
        assert!(Limits::raw_problem(&r).unwrap().contains("priority"));
        r.priority.store(0, Relaxed);
        assert!(
            Limits::raw_problem(&r)
                .unwrap()
                .contains("compute_share_permille")
        );
    }

    #[test]
    fn permille_of_zero_or_over_1000_is_refused() {
        let p = Path::new("/x/quota");
        for bad in [0, 1001] {
            let l = Limits {
                compute_limit_permille: Some(bad),
                ..Limits::default()
            };
            let err = l.check(p).unwrap_err();
            assert!(
                matches!(err, LedgerError::InvalidLimit { value, .. } if value == u64::from(bad))
            );
        }
    }

    #[test]
    fn quota_limits_for_prefers_the_gpu_entry() {
        let a = GpuUuid([1; 16]);
        let b = GpuUuid([2; 16]);
        let q = TenantQuota {
            defaults: Limits {
                memory_bytes: Some(1),
                ..Limits::default()
            },
            per_gpu: vec![(
                a,
                Limits {
                    memory_bytes: Some(2),
                    ..Limits::default()
                },
            )],
        };
        assert_eq!(q.limits_for(&a).memory_bytes, Some(2));
        assert_eq!(q.limits_for(&b).memory_bytes, Some(1));
    }
}
