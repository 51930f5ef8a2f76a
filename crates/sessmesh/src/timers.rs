//! The driver's timers: the core node's timers by deadline, on the
//! monotonic clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use sessmesh_core::Timer;
use tokio::time::Instant;

/// Timers in deadline order; ties in the order they were set.
///
/// Each request sets timers with one of a few fixed delays (its deadline, its
/// speculative retry), so those are due in the order they were set: each
/// delay keeps a queue of its own, one push and one pop per timer. Others go
/// to a heap.
#[derive(Default)]
pub(crate) struct Timers {
    due: BinaryHeap<Reverse<Due>>,
    /// Per fixed delay, its timers in the order they were set.
    lanes: Vec<(Duration, VecDeque<Due>)>,
    next: u64,
}

/// Where the earliest timer is.
enum Source {
    Heap,
    Lane(usize),
}

/// A timer in the heap, ordered by deadline and then by when it was set.
struct Due {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Timers {
    /// Fixed delays that get a queue of their own, at most.
    const MAX_LANES: usize = 4;
    /// Room a lane keeps when it shrinks, timers.
    const KEPT_ROOM: usize = 1024;

    /// Sets `timer` to fire `after` from `now`.
    pub(crate) fn set(&mut self, now: Instant, after: Duration, timer: Timer) {
        self.next += 1;
        let due = Due {
            at: now + after,
            seq: self.next,
            timer,
        };
        if matches!(due.timer, Timer::Request(_) | Timer::Speculate(_)) {
            let lane = match self.lanes.iter().position(|(d, _)| *d == after) {
                Some(lane) => Some(lane),
                None if self.lanes.len() < Self::MAX_LANES => {
                    self.lanes.push((after, VecDeque::new()));
                    Some(self.lanes.len() - 1)
                }
                None => None,
            };
            // `now` never goes back, so a lane stays in deadline order.
            if let Some(lane) = lane
                && self.lanes[lane]
                    .1
                    .back()
                    .is_none_or(|last| last.at <= due.at)
            {
                self.lanes[lane].1.push_back(due);
                return;
            }
        }
        self.due.push(Reverse(due));
    }

    /// The earliest timer and where it is.
    fn earliest(&self) -> Option<(&Due, Source)> {
        let heap = self.due.peek().map(|Reverse(due)| (due, Source::Heap));
        self.lanes
            .iter()
            .enumerate()
            .filter_map(|(i, (_, queue))| queue.front().map(|due| (due, Source::Lane(i))))
            .chain(heap)
            .min_by(|(a, _), (b, _)| a.cmp(b))
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.earliest().map(|(due, _)| due.at)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (due, source) = self.earliest()?;
        if due.at > now {
            return None;
        }
        match source {
            Source::Heap => self.due.pop().map(|Reverse(due)| due.timer),
            Source::Lane(i) => {
                let lane = &mut self.lanes[i].1;
                let due = lane.pop_front();
                // A burst of requests grew the lane: give the room back
                // once it has drained.
                if lane.capacity() > Self::KEPT_ROOM && lane.len() * 4 < lane.capacity() {
                    lane.shrink_to(Self::KEPT_ROOM.max(lane.len() * 2));
                }
                due.map(|due| due.timer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_by_deadline_then_in_the_order_they_were_set() {
        let mut timers = Timers::default();
        let now = Instant::now();
        let later = now + Duration::from_millis(10);
        timers.set(now, Duration::from_millis(10), Timer::Sweep);
        timers.set(now, Duration::ZERO, Timer::AntiEntropy);
        timers.set(now, Duration::ZERO, Timer::ReplayHints);
        assert_eq!(timers.next_deadline(), Some(now));
        assert_eq!(timers.pop_due(now), Some(Timer::AntiEntropy));
        assert_eq!(timers.pop_due(now), Some(Timer::ReplayHints));
        assert_eq!(timers.pop_due(now), None, "not due yet");
        assert_eq!(timers.pop_due(later), Some(Timer::Sweep));
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn request_timers_in_their_queues_and_others_in_the_heap_pop_in_one_order() {
        let mut timers = Timers::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        timers.set(t0, ms(2_000), Timer::Request(1));
        timers.set(t0, ms(20), Timer::Speculate(1));
        timers.set(t0, ms(10), Timer::Sweep);
        timers.set(t0 + ms(5), ms(2_000), Timer::Request(2));
        // Past the queues' number: these go to the heap.
        for (i, after) in [1, 2, 3, 4, 5].into_iter().enumerate() {
            timers.set(t0, ms(after * 1_000), Timer::Request(10 + i as u64));
        }
        // Same deadline as Request(1), set later.
        timers.set(t0 + ms(1_000), ms(1_000), Timer::Request(3));
        assert!(timers.lanes.len() <= Timers::MAX_LANES);
        let mut order = Vec::new();
        while let Some(at) = timers.next_deadline() {
            order.push((at - t0, timers.pop_due(at).unwrap()));
        }
        assert_eq!(
            order,
            [
                (ms(10), Timer::Sweep),
                (ms(20), Timer::Speculate(1)),
                (ms(1_000), Timer::Request(10)),
                (ms(2_000), Timer::Request(1)),
                (ms(2_000), Timer::Request(11)),
                (ms(2_000), Timer::Request(3)),
                (ms(2_005), Timer::Request(2)),
                (ms(3_000), Timer::Request(12)),
                (ms(4_000), Timer::Request(13)),
                (ms(5_000), Timer::Request(14)),
            ]
        );
    }
}
