//! A tenant's standing on a GPU, from what every tenant published in the ledger: the rate
//! it is entitled to, whether it yields to a high-priority tenant, and the others as
//! contenders for turns. Plain data in (the parts of each tenant's usage file and quota the
//! compute controller reads), plain answers out.

use std::collections::HashMap;

use gpuslice_ledger::{Activity, ComputeSettings, Priority, TenantName};

use crate::policy::compute::{Demand, entitled_rates, guaranteed_rates};
use crate::policy::turns::Contender;

/// A process's "in flight" mark counts this long after it was written (a process that
/// died or stalled stops counting).
pub const FRESH_NS: u64 = 5_000_000;
/// A tenant with work in flight or waiting this recently is active: it gets its share.
pub const ACTIVE_NS: u64 = 50_000_000;
/// A process that waited at its gate this recently, or kept the GPU busy this long without
/// a gap, wants more than it gets.
pub const BACKLOG_NS: u64 = 20_000_000;
/// The time constant of each tenant's measured rate of use.
const RATE_TAU_NS: f64 = 50_000_000.0;
/// Headroom over a light tenant's measured use before it counts as wanting more.
const HEADROOM: f64 = 1.25;
const HEADROOM_FLOOR: f64 = 0.02;

/// One tenant's records on one GPU, as this tick copied them from the ledger.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedTenant {
    /// Its name.
    pub name: TenantName,
    /// Its GPU time on the GPU, departed processes included, nanoseconds.
    pub gpu_time_ns: u64,
    /// Its credit on the GPU, nanoseconds (compared with `gpu_time_ns`).
    pub credit_ns: u64,
    /// What its quota file lets it claim on the GPU (`None`: it has no quota file, and
    /// nothing bounds what its processes publish; a quota that cannot be read is the
    /// lowest ceiling, `ComputeSettings::default()`).
    pub ceiling: Option<ComputeSettings>,
    /// Its occupied slots' records on the GPU.
    pub slots: Vec<PublishedSlot>,
}

/// One occupied slot's compute records on one GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedSlot {
    /// The slot's index.
    pub index: u32,
    /// The settings its process enforces (`None`: it published none).
    pub settings: Option<ComputeSettings>,
    /// What its process was last seen doing.
    pub activity: Activity,
}

impl PublishedTenant {
    /// What the tenant may claim of what its processes published: capped by its quota
    /// file, which it cannot write (a process that wrote its own usage file could
    /// otherwise claim any share, or high priority, and make every neighbour yield to it).
    fn ceiling(&self, published: ComputeSettings) -> ComputeSettings {
        match self.ceiling {
            Some(ceiling) => published.capped_by(ceiling),
            None => published,
        }
    }

    /// Its slots whose activity was seen within `window_ns` of `now_ns`.
    fn seen_within(&self, now_ns: u64, window_ns: u64) -> impl Iterator<Item = &PublishedSlot> {
        self.slots
            .iter()
            .filter(move |s| s.activity.seen_within(now_ns, window_ns))
    }
}

/// This tenant's standing on a GPU this tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    /// The fraction of the GPU it is entitled to now.
    pub rate: f64,
    /// A high-priority tenant is active elsewhere and this one is not high.
    pub yield_to_high: bool,
    /// Whether this tenant has priority high.
    pub high: bool,
    /// The other tenants on the GPU.
    pub rivals: Vec<Contender>,
    /// The fraction of the GPU guaranteed to it while it wants it (its share when every
    /// active tenant wants all it may get).
    pub guaranteed: f64,
    /// The latest time a process of another high-priority tenant was published active
    /// (0: none is): what `policy::arrivals` learns their bursts of work from.
    pub high_seen_at_ns: u64,
}

/// Each tenant's rate of use of one GPU, as one process measures it from the GPU time the
/// tenant's records show tick after tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UseRates {
    rates: HashMap<TenantName, UseRate>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct UseRate {
    gpu_time_ns: u64,
    at_ns: u64,
    rate: f64,
}

impl UseRates {
    /// `tenant`'s rate of use, now that its GPU time is `used` at `now`.
    fn measure(&mut self, tenant: &TenantName, used: u64, now: u64) -> f64 {
        let entry = self.rates.entry(tenant.clone()).or_default();
        if entry.at_ns != 0 && now > entry.at_ns {
            #[allow(clippy::cast_precision_loss)]
            let (dt, dused) = (
                (now - entry.at_ns) as f64,
                used.saturating_sub(entry.gpu_time_ns) as f64,
            );
            let alpha = (dt / RATE_TAU_NS).min(1.0);
            entry.rate += alpha * ((dused / dt).min(1.0) - entry.rate);
        }
        entry.gpu_time_ns = used;
        entry.at_ns = now;
        entry.rate
    }
}

/// The standing of `own` (whose processes enforce `own_settings`) among `tenants` (every
/// tenant on the GPU, `own` included) at `now`; measures each tenant's rate of use in
/// `rates` on the way.
pub fn standing(
    tenants: &[PublishedTenant],
    own: &TenantName,
    own_settings: ComputeSettings,
    now: u64,
    rates: &mut UseRates,
) -> Standing {
    let mut demands = Vec::with_capacity(tenants.len());
    let mut own_index = None;
    let mut high_active_elsewhere = false;
    let mut high_seen_at_ns = 0;
    let mut rivals = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let is_own = tenant.name == *own;
        let active = tenant.seen_within(now, ACTIVE_NS).next().is_some();
        let backlogged = tenant
            .seen_within(now, BACKLOG_NS)
            .any(|s| s.activity.backlogged);
        let settings = if is_own {
            own_settings
        } else {
            // Only processes active now: a dead one's slot keeps its settings until it is
            // reclaimed. Never more than the tenant's quota allows.
            tenant.ceiling(combined(
                tenant
                    .seen_within(now, ACTIVE_NS)
                    .filter_map(|s| s.settings),
            ))
        };
        let high = settings.priority == Some(Priority::High);
        let rate = rates.measure(&tenant.name, tenant.gpu_time_ns, now);
        if is_own {
            own_index = Some(demands.len());
        } else {
            high_active_elsewhere |= active && high;
            if high {
                high_seen_at_ns = tenant
                    .seen_within(now, ACTIVE_NS)
                    .map(|s| s.activity.at_ns)
                    .fold(high_seen_at_ns, u64::max);
            }
            let fresh = || tenant.seen_within(now, FRESH_NS).map(|s| s.activity);
            rivals.push(Contender {
                in_flight: fresh().any(|a| a.in_flight),
                holding: fresh().any(|a| a.holding),
                waiting: fresh().any(|a| a.waiting),
                long_queue: fresh().any(|a| a.long_queue),
                backlogged,
                available_ns: available(tenant.credit_ns, tenant.gpu_time_ns),
                high,
                wins_ties: tenant.name.as_str() < own.as_str(),
            });
        }
        demands.push(Demand {
            share_permille: settings.share_permille,
            limit_permille: settings.limit_permille,
            // This tenant is always in the split: it is asking.
            active: active || is_own,
            wants: (!backlogged && !is_own).then(|| (rate * HEADROOM + HEADROOM_FLOOR).min(1.0)),
        });
    }
    let rates = entitled_rates(&demands);
    let rate = own_index
        .and_then(|i| rates.get(i).copied())
        .unwrap_or_else(|| f64::from(own_settings.limit_permille.unwrap_or(1000)) / 1000.0);
    let guaranteed = own_index
        .and_then(|i| guaranteed_rates(&demands).get(i).copied())
        .unwrap_or(rate);
    let high = own_settings.priority == Some(Priority::High);
    Standing {
        rate,
        yield_to_high: high_active_elsewhere && !high,
        high,
        rivals,
        guaranteed,
        high_seen_at_ns,
    }
}

/// Processes other than this one (`own`'s slot `own_slot`), of any tenant, with work in
/// flight on the GPU now.
pub fn in_flight_elsewhere(
    tenants: &[PublishedTenant],
    own: &TenantName,
    own_slot: u32,
    now: u64,
) -> u64 {
    tenants
        .iter()
        .map(|tenant| {
            tenant
                .seen_within(now, FRESH_NS)
                .filter(|s| !(tenant.name == *own && s.index == own_slot))
                .filter(|s| s.activity.in_flight)
                .count() as u64
        })
        .sum()
}

/// Processes of `own` that want more of the GPU than they get now (their launches wait, or
/// they keep the GPU busy without a gap), as their published activity says.
pub fn own_processes_wanting_more(tenants: &[PublishedTenant], own: &TenantName, now: u64) -> u64 {
    tenants.iter().find(|t| t.name == *own).map_or(0, |t| {
        t.seen_within(now, BACKLOG_NS)
            .filter(|s| s.activity.backlogged)
            .count() as u64
    })
}

/// Credit in hand: credit less consumption, in nanoseconds (negative: in debt).
pub fn available(credit: u64, consumed: u64) -> i64 {
    let ahead = i64::try_from(credit.abs_diff(consumed)).unwrap_or(i64::MAX);
    if credit >= consumed { ahead } else { -ahead }
}

/// A tenant's settings from what its processes published: the most restrictive of each.
fn combined(all: impl Iterator<Item = ComputeSettings>) -> ComputeSettings {
    all.reduce(ComputeSettings::lowered_by).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn share(permille: u32) -> ComputeSettings {
        ComputeSettings {
            share_permille: Some(permille),
            ..ComputeSettings::default()
        }
    }

    /// A slot that published `settings`, backlogged, seen `ago_ns` before now.
    fn slot(index: u32, settings: ComputeSettings, ago_ns: u64) -> PublishedSlot {
        PublishedSlot {
            index,
            settings: Some(settings),
            activity: Activity {
                backlogged: true,
                at_ns: NOW - ago_ns,
                ..Activity::default()
            },
        }
    }

    fn tenant(
        name: &str,
        ceiling: Option<ComputeSettings>,
        slots: Vec<PublishedSlot>,
    ) -> PublishedTenant {
        PublishedTenant {
            name: TenantName::new(name).unwrap(),
            gpu_time_ns: 0,
            credit_ns: 0,
            ceiling,
            slots,
        }
    }

    /// A neighbour counts with the most restrictive settings of its active processes,
    /// under its quota's ceiling: here, beside this tenant's share of 50%.
    #[test]
    fn a_neighbours_settings_are_its_active_processes_under_its_quota() {
        let long_ago = 2 * ACTIVE_NS;
        // (its slots, its quota's ceiling, this tenant's rate)
        let table: &[(&[PublishedSlot], Option<ComputeSettings>, f64)] = &[
            (&[slot(0, share(300), 0)], None, 500.0 / 800.0),
            // A process gone quiet long ago no longer lowers it...
            (
                &[slot(0, share(300), 0), slot(1, share(100), long_ago)],
                None,
                500.0 / 800.0,
            ),
            // ...an active one does.
            (
                &[slot(0, share(300), 0), slot(1, share(100), 0)],
                None,
                500.0 / 600.0,
            ),
            // Never more than its quota gives.
            (&[slot(0, share(300), 0)], Some(share(200)), 500.0 / 700.0),
            // A quota that cannot be read gives no share: the two split what is left.
            (
                &[slot(0, share(300), 0)],
                Some(ComputeSettings::default()),
                0.5,
            ),
        ];
        for (slots, ceiling, rate) in table {
            let tenants = [
                tenant("own", None, vec![slot(0, share(500), 0)]),
                tenant("neighbour", *ceiling, slots.to_vec()),
            ];
            let own = TenantName::new("own").unwrap();
            let got = standing(&tenants, &own, share(500), NOW, &mut UseRates::default());
            assert!(
                (got.rate - rate).abs() < 1e-9,
                "{slots:?} under {ceiling:?}: {got:?}"
            );
            assert!(
                got.rivals[0].wins_ties,
                "\"neighbour\" sorts before \"own\": on equal credit it starts first"
            );
        }
    }

    /// A light neighbour (not backlogged) wants a little more than it has been using, and
    /// leaves the rest: its use is measured from its GPU time, tick after tick.
    #[test]
    fn a_light_neighbour_leaves_what_it_does_not_use() {
        let own = TenantName::new("own").unwrap();
        let mut rates = UseRates::default();
        let light = |gpu_time_ns| PublishedTenant {
            gpu_time_ns,
            slots: vec![PublishedSlot {
                activity: Activity {
                    in_flight: true,
                    at_ns: NOW,
                    ..Activity::default()
                },
                ..slot(0, share(750), 0)
            }],
            ..tenant("light", None, Vec::new())
        };
        // It has been using 10% for a second: it wants 1.25 x 10% + 2 points.
        let mut got = None;
        for step in 0..=1_000u64 {
            let tenants = [
                tenant("own", None, vec![slot(0, share(250), 0)]),
                light(step * 100_000),
            ];
            let now = NOW - 1_000_000_000 + step * 1_000_000;
            got = Some(standing(&tenants, &own, share(250), now, &mut rates));
        }
        let got = got.unwrap();
        assert!((got.rate - (1.0 - 0.145)).abs() < 1e-3, "{got:?}");
        assert!((got.guaranteed - 0.25).abs() < 1e-9, "{got:?}");
    }
}
