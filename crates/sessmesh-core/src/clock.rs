//! Hybrid logical clock and the [`Stamp`] every write carries.
//!
//! A stamp orders writes across the cluster: its [`HlcTime`] packs wall-clock
//! milliseconds (upper 48 bits) and a logical counter (lower 16 bits) into one
//! `u64`, so comparing times is comparing integers, and the issuing node's
//! [`NodeId`] breaks ties. One [`Hlc`] issues strictly increasing times even
//! when the wall clock steps back, so no two writes share a stamp.
//!
//! The clock never reads the system time: the driver passes `now_ms` in.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Identifies one incarnation of a node in stamps and on the wire.
///
/// The runtime picks a fresh id each time a node starts (from its name and
/// generation), so a restarted node whose wall clock went backwards still
/// cannot issue a stamp equal to one it issued before the restart.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

/// Hybrid logical time: wall-clock milliseconds and a logical counter in one `u64`.
///
/// Ordering is the integer ordering, which is (wall ms, counter) lexicographically.
/// When the counter overflows within one millisecond the time carries into the
/// next millisecond, which keeps times strictly increasing at the cost of running
/// a little ahead of the wall clock under a burst of more than 65,536 writes per ms.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct HlcTime(u64);

impl HlcTime {
    /// The earliest time; no write carries it.
    pub const ZERO: HlcTime = HlcTime(0);
    /// Bits of the logical counter.
    pub const LOGICAL_BITS: u32 = 16;
    /// The largest wall-clock millisecond a time can hold (about the year 10,889).
    pub const MAX_WALL_MS: u64 = (1 << (64 - Self::LOGICAL_BITS)) - 1;

    /// The first time of wall-clock millisecond `ms` (counter 0), saturating at
    /// [`Self::MAX_WALL_MS`].
    pub fn from_wall_ms(ms: u64) -> Self {
        HlcTime(ms.min(Self::MAX_WALL_MS) << Self::LOGICAL_BITS)
    }

    /// Builds a time from its packed representation (as [`Self::as_u64`] returns it).
    pub const fn from_u64(raw: u64) -> Self {
        HlcTime(raw)
    }

    /// The packed representation: wall ms in the upper 48 bits, counter below.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Wall-clock milliseconds.
    pub const fn wall_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    /// The logical counter within the millisecond.
    pub fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The next time after this one (one logical tick later), saturating.
    pub const fn tick(self) -> Self {
        HlcTime(self.0.saturating_add(1))
    }
}

/// The stamp of a write: when (hybrid logical time) and who (node id).
///
/// Stamps are totally ordered (time first, then node id) and unique, because
/// one node's [`Hlc`] never issues the same time twice. That is what makes
/// last-writer-wins merge commutative: there are no ties between different writes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    /// Hybrid logical time of the write.
    pub time: HlcTime,
    /// The node that issued the stamp.
    pub node: NodeId,
}

impl Stamp {
    /// Older than every write: the stamp of a register that was never written.
    pub const ZERO: Stamp = Stamp {
        time: HlcTime::ZERO,
        node: NodeId(0),
    };

    /// Builds a stamp.
    pub const fn new(time: HlcTime, node: NodeId) -> Self {
        Stamp { time, node }
    }

    /// The first stamp of wall-clock millisecond `ms`: older than every write
    /// issued at or after `ms`, newer than every write issued before it.
    pub fn at_wall_ms(ms: u64) -> Self {
        Stamp {
            time: HlcTime::from_wall_ms(ms),
            node: NodeId(0),
        }
    }

    /// Wall-clock milliseconds of the stamp's time.
    pub const fn wall_ms(self) -> u64 {
        self.time.wall_ms()
    }

    /// The first stamp after every stamp with this stamp's time or an older one.
    pub const fn after(self) -> Self {
        Stamp {
            time: self.time.tick(),
            node: NodeId(0),
        }
    }
}

/// A hybrid logical clock for one node (Kulkarni et al., 2014).
///
/// [`Hlc::stamp`] issues stamps for local writes; [`Hlc::observe`] folds in
/// stamps seen from peers so that a write issued after seeing another write
/// is ordered after it, even when this node's wall clock lags behind.
///
/// The clock can be shared between threads (`&self` methods): the peer's
/// task and callers writing to partitions only this node replicates stamp
/// from one clock, and every stamp it issues is unique.
#[derive(Debug)]
pub struct Hlc {
    node: NodeId,
    last: AtomicU64,
    max_drift_ms: u64,
    /// How far the wall clock runs ahead of a majority of the peers, as
    /// measured ([`crate::peer_clocks`]); [`NOT_MEASURED`] until then.
    lead_over_peers_ms: AtomicI64,
}

/// The lead over peers before anything is measured.
const NOT_MEASURED: i64 = i64::MIN;

impl Clone for Hlc {
    /// An independent clock that starts where this one is.
    fn clone(&self) -> Self {
        Hlc {
            node: self.node,
            last: AtomicU64::new(self.last.load(Ordering::Acquire)),
            max_drift_ms: self.max_drift_ms,
            lead_over_peers_ms: AtomicI64::new(self.lead_over_peers_ms.load(Ordering::Acquire)),
        }
    }
}

impl Hlc {
    /// A clock for `node` that refuses remote stamps more than `max_drift_ms`
    /// ahead of local wall-clock time.
    pub fn new(node: NodeId, max_drift_ms: u64) -> Self {
        Hlc {
            node,
            last: AtomicU64::new(HlcTime::ZERO.0),
            max_drift_ms,
            lead_over_peers_ms: AtomicI64::new(NOT_MEASURED),
        }
    }

    /// Sets how far this node's wall clock runs ahead of a majority of its
    /// peers (negative: behind), as measured; `None` when nothing is.
    pub fn set_lead_over_peers(&self, lead_ms: Option<i64>) {
        let lead = match lead_ms {
            Some(lead) => lead.max(NOT_MEASURED + 1),
            None => NOT_MEASURED,
        };
        self.lead_over_peers_ms.store(lead, Ordering::Release);
    }

    /// How far a stamp issued at `now_ms` would be ahead of a majority of
    /// the peers' clocks, when that is more than the drift bound they
    /// accept; `None` when it is within the bound or nothing is measured.
    /// A stamp is the later of the wall clock and the last time issued or
    /// observed, so stamps issued before a clock was corrected still count.
    pub fn ahead_of_peers_ms(&self, now_ms: u64) -> Option<u64> {
        let lead = self.lead_over_peers_ms.load(Ordering::Acquire);
        if lead == NOT_MEASURED {
            return None;
        }
        let carried = self.last().wall_ms().saturating_sub(now_ms);
        let ahead = i64::try_from(carried)
            .unwrap_or(i64::MAX)
            .saturating_add(lead);
        u64::try_from(ahead).ok().filter(|&a| a > self.max_drift_ms)
    }

    /// [`stamp`](Self::stamp), unless the stamp would run further ahead of
    /// the peers than they accept.
    ///
    /// # Errors
    /// [`Error::ClockAhead`]; the clock is then unchanged.
    pub fn try_stamp(&self, now_ms: u64) -> Result<Stamp, Error> {
        if let Some(ahead_ms) = self.ahead_of_peers_ms(now_ms) {
            return Err(Error::ClockAhead {
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(self.stamp(now_ms))
    }

    /// The node this clock stamps for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The drift bound it enforces, ms.
    pub fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// The latest time issued or observed.
    pub fn last(&self) -> HlcTime {
        HlcTime(self.last.load(Ordering::Acquire))
    }

    /// Issues a stamp for a local write at wall-clock time `now_ms`.
    ///
    /// The stamp is strictly newer than every stamp this clock issued or
    /// observed before, whatever `now_ms` does.
    pub fn stamp(&self, now_ms: u64) -> Stamp {
        let wall = HlcTime::from_wall_ms(now_ms);
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = HlcTime(last).tick().max(wall);
            match self
                .last
                .compare_exchange_weak(last, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Stamp::new(next, self.node),
                Err(actual) => last = actual,
            }
        }
    }

    /// Folds in a stamp received from a peer at wall-clock time `now_ms`.
    ///
    /// # Errors
    /// [`Error::ClockDrift`] when the remote stamp is more than the configured
    /// drift ahead of `now_ms`; the clock is then left unchanged, so one peer
    /// with a runaway clock cannot drag every stamp in the cluster forward.
    pub fn observe(&self, remote: Stamp, now_ms: u64) -> Result<(), Error> {
        let ahead_ms = remote.wall_ms().saturating_sub(now_ms);
        if ahead_ms > self.max_drift_ms {
            return Err(Error::ClockDrift {
                ahead_ms,
                max_drift_ms: self.max_drift_ms,
                from: remote.node,
            });
        }
        self.last.fetch_max(remote.time.0, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn time_packs_wall_and_counter() {
        let t = HlcTime::from_wall_ms(1_700_000_000_123);
        assert_eq!(t.wall_ms(), 1_700_000_000_123);
        assert_eq!(t.logical(), 0);
        assert_eq!(t.tick().logical(), 1);
        assert_eq!(t.tick().wall_ms(), 1_700_000_000_123);
        assert_eq!(
            HlcTime::from_wall_ms(u64::MAX).wall_ms(),
            HlcTime::MAX_WALL_MS
        );
    }

    #[test]
    fn counter_overflow_carries_into_the_next_millisecond() {
        let clock = Hlc::new(NodeId(1), 500);
        let first = clock.stamp(10);
        let mut last = first;
        for _ in 0..70_000 {
            let s = clock.stamp(10);
            assert!(s > last);
            last = s;
        }
        assert_eq!(
            last.wall_ms(),
            11,
            "70,000 stamps in one ms run one ms ahead"
        );
    }

    #[test]
    fn observed_stamps_order_later_local_writes_after_them() {
        let a = Hlc::new(NodeId(1), 500);
        let b = Hlc::new(NodeId(2), 500);
        let from_a = a.stamp(1_000);
        // b's wall clock lags 300 ms behind a's.
        b.observe(from_a, 700)
            .expect("300 ms is within the drift bound");
        let from_b = b.stamp(700);
        assert!(from_b > from_a);
    }

    #[test]
    fn refuses_a_stamp_beyond_the_drift_bound_and_names_the_drift() {
        let clock = Hlc::new(NodeId(1), 500);
        let before = clock.stamp(1_000);
        let runaway = Stamp::new(HlcTime::from_wall_ms(1_501), NodeId(9));
        let err = clock.observe(runaway, 1_000).expect_err("501 ms ahead");
        assert_eq!(
            err,
            Error::ClockDrift {
                ahead_ms: 501,
                max_drift_ms: 500,
                from: NodeId(9)
            }
        );
        assert!(err.to_string().contains("501 ms"), "{err}");
        assert_eq!(
            clock.last(),
            before.time,
            "a refused stamp leaves the clock unchanged"
        );
        let at_bound = Stamp::new(HlcTime::from_wall_ms(1_500), NodeId(9));
        assert!(clock.observe(at_bound, 1_000).is_ok());
    }

    proptest! {
        /// Stamps issued by one clock strictly increase even when `now` goes
        /// backwards, jumps, or repeats, and observing remote stamps never
        /// breaks that.
        #[test]
        fn stamps_strictly_increase(events in prop::collection::vec(
            (0u64..10_000, prop::option::of(0u64..10_500)), 1..400)
        ) {
            let clock = Hlc::new(NodeId(7), 500);
            let mut last = Stamp::ZERO;
            for (now_ms, remote_ms) in events {
                if let Some(remote_ms) = remote_ms {
                    let remote = Stamp::new(HlcTime::from_wall_ms(remote_ms), NodeId(3));
                    let accepted = clock.observe(remote, now_ms).is_ok();
                    prop_assert_eq!(accepted, remote_ms <= now_ms + 500);
                    if accepted {
                        let next = clock.stamp(now_ms);
                        prop_assert!(next > remote, "a write after observing {remote:?} got {next:?}");
                        prop_assert!(next > last);
                        last = next;
                    }
                }
                let s = clock.stamp(now_ms);
                prop_assert!(s > last, "{s:?} after {last:?} at now={now_ms}");
                prop_assert!(s.wall_ms() >= now_ms.min(HlcTime::MAX_WALL_MS));
                last = s;
            }
        }
    }
}
