//! The compute policy's arithmetic: what fraction of a GPU each active tenant is entitled
//! to, and the credit that turns a rate into "may this launch go now?".
//!
//! Plain functions of the ledger's numbers, so that every process of every tenant computes
//! the same answer without talking to the others. The controller (`controller.rs`) drives
//! them; the launch gate (`gate.rs`) acts on the answer.

/// One tenant's standing on a GPU, as every process reads it from the ledger.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Demand {
    /// Its guaranteed part when others compete, in permille; `None`: no guarantee.
    pub share_permille: Option<u32>,
    /// Its hard cap even on an idle GPU, in permille; `None`: no cap.
    pub limit_permille: Option<u32>,
    /// Whether it has had work on the GPU recently.
    pub active: bool,
    /// The most it would use now, as a fraction of the GPU: `None` when it wants more than
    /// it gets (backlogged), else a little above what it has been using. What it leaves
    /// goes to the others, so a light tenant with a large share wastes nothing.
    pub wants: Option<f64>,
}

impl Demand {
    /// The most it may be given: its limit, or what it wants if that is less.
    fn cap(&self) -> f64 {
        let limit = self.limit_permille.map_or(1.0, permille);
        self.wants.map_or(limit, |w| w.clamp(0.0, 1.0).min(limit))
    }
}

/// The weight of each active tenant without a share, when the shares of the others
/// already add up to the whole GPU: enough to run in what they leave idle, never enough to
/// dent a guarantee.
const UNGUARANTEED_FLOOR: f64 = 0.01;

/// The fraction of the GPU (0 to 1) each tenant is entitled to now, in the order given;
/// inactive tenants get 0.
///
/// Active tenants split the GPU in proportion to their shares. A tenant whose part would
/// pass its limit gets its limit, and what it leaves goes to the others in the same
/// proportions (water-filling), so the GPU is never left idle while someone below its limit
/// wants it. Tenants without a share split what the shares of the active ones leave
/// unguaranteed. A tenant alone gets the whole GPU, or its limit.
pub fn entitled_rates(demands: &[Demand]) -> Vec<f64> {
    let mut rates = vec![0.0; demands.len()];
    let guaranteed: f64 = demands
        .iter()
        .filter(|d| d.active)
        .filter_map(|d| d.share_permille)
        .map(permille)
        .sum();
    let unshared = demands
        .iter()
        .filter(|d| d.active && d.share_permille.is_none())
        .count();
    let unshared_weight = if unshared == 0 {
        0.0
    } else {
        #[allow(clippy::cast_precision_loss)]
        let each = (1.0 - guaranteed).max(0.0) / unshared as f64;
        each.max(UNGUARANTEED_FLOOR)
    };
    let weight = |d: &Demand| d.share_permille.map_or(unshared_weight, permille);

    let mut open: Vec<usize> = (0..demands.len())
        .filter(|&i| demands[i].active && weight(&demands[i]) > 0.0)
        .collect();
    let mut remaining = 1.0_f64;
    while !open.is_empty() && remaining > 0.0 {
        let total: f64 = open.iter().map(|&i| weight(&demands[i])).sum();
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| remaining * weight(&demands[i]) / total > demands[i].cap())
            .collect();
        if capped.is_empty() {
            for &i in &open {
                rates[i] = remaining * weight(&demands[i]) / total;
            }
            break;
        }
        for &i in &capped {
            rates[i] = demands[i].cap();
            remaining -= rates[i];
        }
        open.retain(|i| !capped.contains(i));
    }
    rates
}

/// The fraction of the GPU each tenant is guaranteed now: what [`entitled_rates`] gives it
/// when every active tenant wants all it may get, so that none leaves part of its share to
/// the others. A tenant receiving less than this while it wants more is below its share.
pub fn guaranteed_rates(demands: &[Demand]) -> Vec<f64> {
    let competing: Vec<Demand> = demands
        .iter()
        .map(|d| Demand { wants: None, ..*d })
        .collect();
    entitled_rates(&competing)
}

fn permille(value: u32) -> f64 {
    f64::from(value.min(1000)) / 1000.0
}

/// The credit of one tenant on one GPU, in nanoseconds of GPU time: refilled at the
/// tenant's entitled rate, consumed by the GPU time it receives. A launch may go while the
/// credit exceeds what was consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credit {
    /// How far ahead of consumption credit may run: the largest burst a tenant that was
    /// idle may take at full speed. Small, so a limit holds over short windows too.
    pub burst_ns: u64,
    /// How far behind consumption credit may fall (work already in flight when the gate
    /// closed): the debt a tenant pays back by waiting, bounded so that one enormous kernel
    /// cannot lock a tenant out for long.
    pub max_debt_ns: u64,
}

impl Credit {
    /// The credit after `elapsed_ns` at `rate`, given what has been consumed so far.
    pub fn refill(&self, credit: u64, consumed: u64, rate: f64, elapsed_ns: u64) -> u64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let added = (rate.clamp(0.0, 1.0) * elapsed_ns as f64) as u64;
        credit
            .saturating_add(added)
            .min(consumed.saturating_add(self.burst_ns))
            .max(consumed.saturating_sub(self.max_debt_ns))
    }

    /// Whether a launch may go now.
    pub fn may_launch(credit: u64, consumed: u64) -> bool {
        credit > consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(share: Option<u32>, limit: Option<u32>) -> Demand {
        Demand {
            share_permille: share,
            limit_permille: limit,
            active: true,
            wants: None,
        }
    }

    fn assert_rates(demands: &[Demand], expected: &[f64]) {
        let rates = entitled_rates(demands);
        for (got, want) in rates.iter().zip(expected) {
            assert!(
                (got - want).abs() < 1e-9,
                "rates {rates:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn active_tenants_split_by_share() {
        assert_rates(
            &[tenant(Some(250), None), tenant(Some(750), None)],
            &[0.25, 0.75],
        );
        assert_rates(
            &[
                tenant(Some(100), None),
                tenant(Some(300), None),
                tenant(Some(600), None),
            ],
            &[0.1, 0.3, 0.6],
        );
    }

    #[test]
    fn shares_are_weights_when_they_do_not_add_up() {
        // Two tenants of 25% each, alone together: the GPU is not left half idle.
        assert_rates(
            &[tenant(Some(250), None), tenant(Some(250), None)],
            &[0.5, 0.5],
        );
    }

    #[test]
    fn a_tenant_alone_gets_everything_up_to_its_limit() {
        assert_rates(&[tenant(Some(300), None)], &[1.0]);
        assert_rates(&[tenant(None, None)], &[1.0]);
        assert_rates(&[tenant(Some(500), Some(300))], &[0.3]);
    }

    #[test]
    fn a_light_tenant_leaves_what_it_does_not_use_to_the_others() {
        let light = Demand {
            wants: Some(0.12),
            ..tenant(Some(750), None)
        };
        assert_rates(&[light, tenant(Some(250), None)], &[0.12, 0.88]);
        // Once it wants more than it gets, its share holds again.
        assert_rates(
            &[tenant(Some(750), None), tenant(Some(250), None)],
            &[0.75, 0.25],
        );
    }

    #[test]
    fn a_capped_tenant_gives_its_surplus_to_the_others() {
        assert_rates(
            &[tenant(Some(500), Some(300)), tenant(Some(500), None)],
            &[0.3, 0.7],
        );
        // Capped twice over: each cap applies, the GPU keeps what nobody may take.
        assert_rates(
            &[tenant(Some(500), Some(200)), tenant(Some(500), Some(300))],
            &[0.2, 0.3],
        );
    }

    #[test]
    fn inactive_tenants_get_nothing_and_leave_their_share() {
        let mut idle = tenant(Some(750), None);
        idle.active = false;
        assert_rates(&[tenant(Some(250), None), idle], &[1.0, 0.0]);
        assert!(entitled_rates(&[]).is_empty());
    }

    #[test]
    fn tenants_without_a_share_split_what_is_not_guaranteed() {
        assert_rates(
            &[
                tenant(Some(600), None),
                tenant(None, None),
                tenant(None, None),
            ],
            &[0.6, 0.2, 0.2],
        );
        // With every percent guaranteed, an unshared tenant still gets a sliver.
        let rates = entitled_rates(&[tenant(Some(1000), None), tenant(None, None)]);
        assert!(
            rates[0] > 0.98 && rates[1] > 0.0 && rates[1] < 0.02,
            "{rates:?}"
        );
    }

    /// What each is guaranteed is its part when all compete: a light tenant leaves what it
    /// does not use to the others, but keeps its guarantee for when it wants it.
    #[test]
    fn the_guarantee_is_the_split_when_every_active_tenant_wants_all_it_may_get() {
        let light = Demand {
            wants: Some(0.12),
            ..tenant(Some(700), None)
        };
        let high = tenant(Some(300), None);
        assert_rates(&[light, high], &[0.12, 0.88]);
        let guaranteed = guaranteed_rates(&[light, high]);
        assert!((guaranteed[0] - 0.7).abs() < 1e-9, "{guaranteed:?}");
        assert!((guaranteed[1] - 0.3).abs() < 1e-9, "{guaranteed:?}");
        // (demands, guaranteed)
        let limited = Demand {
            wants: Some(0.05),
            ..tenant(Some(500), Some(200))
        };
        let mut idle = tenant(Some(500), None);
        idle.active = false;
        let table: &[(&[Demand], &[f64])] = &[
            // A limit still caps it, and what it leaves goes to the others.
            (&[limited, tenant(Some(500), None)], &[0.2, 0.8]),
            // Without a share: its part of what the shares leave.
            (&[tenant(None, None), tenant(Some(300), None)], &[0.7, 0.3]),
            (&[tenant(None, None), tenant(None, None)], &[0.5, 0.5]),
            // Inactive tenants are guaranteed nothing and take nothing from the others.
            (&[tenant(Some(250), None), idle], &[1.0, 0.0]),
        ];
        for (demands, expected) in table {
            let got = guaranteed_rates(demands);
            for (got_one, want) in got.iter().zip(expected.iter()) {
                assert!(
                    (got_one - want).abs() < 1e-9,
                    "{got:?}, expected {expected:?}"
                );
            }
        }
    }

    #[test]
    fn credit_never_runs_more_than_a_burst_ahead_or_too_far_behind() {
        let credit = Credit {
            burst_ns: 20_000_000,
            max_debt_ns: 200_000_000,
        };
        assert_eq!(credit.refill(0, 0, 0.3, 10_000_000), 3_000_000);
        assert_eq!(credit.refill(0, 0, 1.0, 1_000_000_000), 20_000_000);
        assert_eq!(credit.refill(0, 1_000_000_000, 0.5, 0), 800_000_000);
        assert!(Credit::may_launch(5, 4));
        assert!(!Credit::may_launch(4, 4));
    }

    /// A tenant that always wants the GPU, launching 1 ms kernels whenever its credit allows,
    /// receives its entitled rate over time: the control loop in miniature.
    #[test]
    fn a_greedy_tenant_receives_its_rate() {
        for rate in [0.3, 0.25, 0.75, 1.0] {
            let credit = Credit {
                burst_ns: 20_000_000,
                max_debt_ns: 200_000_000,
            };
            let (mut granted, mut consumed, mut busy_until) = (0u64, 0u64, 0u64);
            let step = 100_000; // the keeper refills every 100 µs of simulated time
            let end = 10_000_000_000u64;
            let mut now = 0;
            while now < end {
                granted = credit.refill(granted, consumed, rate, step);
                now += step;
                if now >= busy_until && Credit::may_launch(granted, consumed) {
                    busy_until = now + 1_000_000;
                    consumed += 1_000_000;
                }
            }
            #[allow(clippy::cast_precision_loss)]
            let received = consumed as f64 / end as f64;
            assert!(
                (received - rate).abs() < 0.01,
                "rate {rate}: received {received}"
            );
        }
    }
}
