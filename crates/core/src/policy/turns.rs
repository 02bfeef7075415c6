//! Turn-taking: tenants that all want more of a GPU than they get take turns on it instead
//! of keeping work in flight at the same time.
//!
//! When two processes have work in flight on one GPU the hardware time-slices between their
//! contexts, and each switch costs: on an H100, two saturating matmul loops side by side get
//! through about 10% less together than one alone. Credit (`compute.rs`) already decides how
//! much each tenant gets; turns decide when, so that the GPU runs one tenant at a time:
//!
//! - a tenant holding the GPU (work in flight) keeps it while it has credit, and for at most
//!   [`Turns::max_turn_ns`] while another waits; once its gate has closed while another
//!   waits, its turn is over: it launches nothing more until its work has drained and its
//!   next turn comes;
//! - a tenant waiting starts when no other tenant has work in flight, or when those that do
//!   are draining (their launches wait too) and have less than a handover's worth of work
//!   left, so that the GPU is neither left idle between turns nor time-slicing the end of
//!   one turn with the start of the next (on an H100, starting beside a draining queue of
//!   matmuls lost about 1.5 ms of GPU time per handover); when several wait with credit,
//!   the one with the most credit in hand starts first;
//! - a tenant that is not backlogged (light, such as one serving requests) never waits for a
//!   turn: it is time-sliced in by the hardware as without gpuslice;
//! - a tenant waiting longer than [`Turns::max_wait_ns`] goes anyway (another's kernels too
//!   long to end a turn: back to time-slicing, never a lockout);
//! - a high-priority tenant takes no turns: it never waits for one, and holds none against
//!   the others; how they yield to it is `policy::priority`'s.
//!
//! Every process decides for itself from what all published in the ledger, a tick old at
//! most; when two decide to start at once, the cost is a moment of time-slicing, as without
//! turns.

use std::cmp::Ordering;

/// A tenant's state on a GPU, as this tick read it (the own tenant's from this process).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contender {
    /// It has work in flight.
    pub in_flight: bool,
    /// It holds a turn: work in flight, short gaps aside (a synchronization between
    /// steps), and its turn has not ended.
    pub holding: bool,
    /// A launch of it waits at its gate now.
    pub waiting: bool,
    /// Its work in flight takes longer than a handover to finish.
    pub long_queue: bool,
    /// It wants more than it gets.
    pub backlogged: bool,
    /// Credit in hand: credit less GPU time consumed, nanoseconds (negative: in debt).
    pub available_ns: i64,
    /// It has priority `high`.
    pub high: bool,
    /// Of a rival: it starts before this tenant when both have as much credit (a fixed
    /// order every process agrees on, such as the tenants' names).
    pub wins_ties: bool,
}

/// What this process knows of its own turn on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OwnTurn {
    /// How long it has held its turn, nanoseconds (0: it holds none).
    pub held_ns: u64,
    /// How long its launches have waited for a turn, nanoseconds (0: not waiting).
    pub waited_ns: u64,
    /// Its turn is over: its gate closed while another waited, and its work still drains.
    pub ended: bool,
}

/// The bounds of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turns {
    /// The longest a tenant keeps the GPU while another waits.
    pub max_turn_ns: u64,
    /// The longest a tenant waits for a turn before going anyway.
    pub max_wait_ns: u64,
}

impl Turns {
    /// Whether this tenant (`own`, its process's `turn`) may launch now, beside `rivals` (the
    /// other tenants on the GPU).
    pub fn may_launch(&self, own: &Contender, turn: OwnTurn, rivals: &[Contender]) -> bool {
        if own.high {
            return true;
        }
        if !own.backlogged || turn.waited_ns > self.max_wait_ns {
            return true;
        }
        // Rivals that would start if they could: waiting, with credit to start on.
        if turn.held_ns > 0 {
            return !turn.ended && (turn.held_ns <= self.max_turn_ns || !contested(rivals));
        }
        // Holding the GPU and still launching, or draining a queue that would be
        // time-sliced with this tenant's work.
        if rivals
            .iter()
            .filter(|r| !r.high)
            .any(|r| (r.holding && !r.waiting) || (r.in_flight && r.long_queue))
        {
            return false;
        }
        !rivals.iter().any(|r| {
            competing(r)
                && match r.available_ns.cmp(&own.available_ns) {
                    Ordering::Greater => true,
                    Ordering::Equal => r.wins_ties,
                    Ordering::Less => false,
                }
        })
    }
}

/// A rival that would start if it could: waiting, with credit to start on.
fn competing(rival: &Contender) -> bool {
    rival.waiting && !rival.high && rival.available_ns > 0
}

/// Whether another tenant waits for the GPU with credit to use it: a turn that closes now
/// is over.
pub fn contested(rivals: &[Contender]) -> bool {
    rivals.iter().any(competing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TURNS: Turns = Turns {
        max_turn_ns: 30_000_000,
        max_wait_ns: 100_000_000,
    };

    fn idle() -> Contender {
        Contender {
            in_flight: false,
            holding: false,
            waiting: false,
            long_queue: false,
            backlogged: false,
            available_ns: 0,
            high: false,
            wins_ties: false,
        }
    }

    fn greedy(available_ns: i64) -> Contender {
        Contender {
            backlogged: true,
            available_ns,
            ..idle()
        }
    }

    fn holding(available_ns: i64) -> Contender {
        Contender {
            in_flight: true,
            holding: true,
            ..greedy(available_ns)
        }
    }

    fn waiting(available_ns: i64) -> Contender {
        Contender {
            waiting: true,
            ..greedy(available_ns)
        }
    }

    fn held(ms: u64) -> OwnTurn {
        OwnTurn {
            held_ns: ms * 1_000_000,
            ..OwnTurn::default()
        }
    }

    fn waited(ms: u64) -> OwnTurn {
        OwnTurn {
            waited_ns: ms * 1_000_000,
            ..OwnTurn::default()
        }
    }

    #[test]
    fn a_greedy_tenant_waits_while_another_holds_the_gpu() {
        assert!(!TURNS.may_launch(&greedy(5), waited(1), &[holding(-3)]));
        assert!(TURNS.may_launch(&greedy(5), waited(1), &[greedy(-3)]));
        assert!(TURNS.may_launch(&greedy(5), waited(1), &[idle()]));
        // Between two steps (nothing in flight for a moment) the holder still holds.
        let between = Contender {
            in_flight: false,
            ..holding(-3)
        };
        assert!(!TURNS.may_launch(&greedy(5), waited(1), &[between]));
        // Work in flight whose turn has ended (draining) holds nothing.
        let ended = Contender {
            holding: false,
            ..holding(-3)
        };
        assert!(TURNS.may_launch(&greedy(5), waited(1), &[ended]));
    }

    #[test]
    fn the_next_turn_starts_when_the_last_one_has_nearly_drained() {
        let draining = Contender {
            holding: false,
            waiting: true,
            long_queue: true,
            ..holding(-3)
        };
        assert!(!TURNS.may_launch(&greedy(5), waited(1), &[draining]));
        let nearly_done = Contender {
            long_queue: false,
            ..draining
        };
        assert!(TURNS.may_launch(&greedy(5), waited(1), &[nearly_done]));
        // A holder whose launches wait (for credit, nobody contesting yet) is draining too.
        let holder_waiting = Contender {
            holding: true,
            ..draining
        };
        assert!(!TURNS.may_launch(&greedy(5), waited(1), &[holder_waiting]));
        assert!(TURNS.may_launch(
            &greedy(5),
            waited(1),
            &[Contender {
                long_queue: false,
                ..holder_waiting
            }]
        ));
        // Never for longer than a wait may last.
        assert!(TURNS.may_launch(&greedy(5), waited(101), &[draining]));
    }

    #[test]
    fn the_holder_keeps_its_turn_until_it_is_long_and_someone_waits() {
        let own = holding(5);
        assert!(TURNS.may_launch(&own, held(10), &[waiting(9)]));
        assert!(!TURNS.may_launch(&own, held(31), &[waiting(9)]));
        // Nobody waiting, or only for credit: the turn goes on.
        assert!(TURNS.may_launch(&own, held(500), &[greedy(9)]));
        assert!(TURNS.may_launch(&own, held(500), &[waiting(-2)]));
        // Both in flight at once (they started together): the first past the bound yields.
        assert!(!TURNS.may_launch(
            &own,
            held(31),
            &[Contender {
                waiting: true,
                ..holding(9)
            }]
        ));
    }

    #[test]
    fn an_ended_turn_stays_over_while_its_work_drains_and_the_next_starts_meanwhile() {
        let ended = OwnTurn {
            ended: true,
            ..held(5)
        };
        assert!(!TURNS.may_launch(&holding(5), ended, &[waiting(9)]));
        // A holder whose launches wait is draining: the next one starts at once.
        let draining = Contender {
            waiting: true,
            ..holding(-1)
        };
        assert!(TURNS.may_launch(&waiting(9), waited(1), &[draining]));
        assert!(contested(&[waiting(9)]));
        assert!(!contested(&[waiting(0), greedy(9)]));
    }

    #[test]
    fn of_several_waiting_the_one_with_most_credit_starts() {
        let rivals = [waiting(4), waiting(2)];
        assert!(!TURNS.may_launch(&waiting(3), waited(1), &rivals));
        assert!(TURNS.may_launch(&waiting(5), waited(1), &rivals));
        // Rivals without credit cannot start: they are no reason to wait.
        assert!(TURNS.may_launch(&waiting(1), waited(1), &[waiting(0), waiting(-5)]));
        // Equal credit: the tie-breaker says who.
        assert!(TURNS.may_launch(&waiting(4), waited(1), &rivals));
        let tie_winner = Contender {
            wins_ties: true,
            ..waiting(4)
        };
        assert!(!TURNS.may_launch(&waiting(4), waited(1), &[tie_winner, waiting(2)]));
    }

    #[test]
    fn light_tenants_and_long_waits_fall_back_to_time_slicing() {
        assert!(TURNS.may_launch(&idle(), waited(0), &[holding(0)]));
        assert!(!TURNS.may_launch(&greedy(0), waited(100), &[holding(0)]));
        assert!(TURNS.may_launch(&greedy(0), waited(101), &[holding(0)]));
    }

    #[test]
    fn high_priority_takes_no_turns() {
        let high = Contender {
            high: true,
            ..greedy(0)
        };
        assert!(TURNS.may_launch(&high, waited(1), &[holding(50)]));
        assert!(TURNS.may_launch(&high, waited(1), &[waiting(50)]));
        // Nor does it hold one against the others, in flight or not: how they yield to it
        // is policy::priority's.
        let high_running = Contender {
            in_flight: true,
            holding: true,
            long_queue: true,
            ..high
        };
        assert!(TURNS.may_launch(&greedy(1), waited(1), &[high_running]));
        assert!(TURNS.may_launch(&idle(), waited(0), &[high_running]));
        assert!(TURNS.may_launch(&holding(9), held(1), &[high_running]));
        // A high tenant waiting with credit is no rival waiting for a turn either.
        let high_waiting = Contender {
            waiting: true,
            available_ns: 9,
            ..high
        };
        assert!(!contested(&[high_waiting]));
    }
}
