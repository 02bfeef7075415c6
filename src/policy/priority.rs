//! Priority: how much work a tenant keeps queued on a GPU while a high-priority tenant is
//! active there.
//!
//! A GPU runs the kernels already queued before it turns to another process's, so a
//! high-priority request waits for whatever its neighbours have in flight. Bounding that by
//! a number of launches is wrong both ways: one 1.6 ms matmul is a long wait, and one 25 µs
//! matmul at a time leaves the GPU idle between the neighbour's launches. So the bound is a
//! time: the neighbour keeps as many launches in flight as its kernels take to fill
//! [`Yield::queue_ns`], judged by the time its kernels have been taking, and always at least
//! one (it must make progress).

/// The bound on a lower tenant's queued work beside an active high-priority tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Yield {
    /// How much of its work, in GPU time, may wait ahead of a high-priority request.
    pub queue_ns: u64,
    /// The most launches in flight however short they are.
    pub max_in_flight: u64,
}

impl Yield {
    /// How many launches may be unfinished at once, for kernels that take `per_launch_ns`
    /// each (`None`: not known yet, one at a time).
    pub fn in_flight(&self, per_launch_ns: Option<u64>) -> u64 {
        per_launch_ns
            .filter(|&t| t > 0)
            .map_or(1, |t| self.queue_ns / t)
            .clamp(1, self.max_in_flight.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YIELD: Yield = Yield {
        queue_ns: 100_000,
        max_in_flight: 16,
    };

    #[test]
    fn short_kernels_fill_the_queue_and_long_ones_go_one_at_a_time() {
        assert_eq!(YIELD.in_flight(Some(25_000)), 4);
        assert_eq!(YIELD.in_flight(Some(30_000)), 3);
        assert_eq!(YIELD.in_flight(Some(200_000)), 1);
        assert_eq!(YIELD.in_flight(Some(1_600_000)), 1);
    }

    #[test]
    fn unknown_or_tiny_kernels_are_bounded_both_ways() {
        assert_eq!(YIELD.in_flight(None), 1);
        assert_eq!(YIELD.in_flight(Some(0)), 1);
        assert_eq!(YIELD.in_flight(Some(1_000)), 16);
        let none = Yield {
            queue_ns: 100_000,
            max_in_flight: 0,
        };
        assert_eq!(none.in_flight(Some(1_000)), 1, "never below one");
    }
}
