//! What a node knows of its peers' clocks, and whether its own runs ahead.
//!
//! A replica refuses a stamp further ahead of its own clock than
//! `max_clock_drift_ms` (see [`crate::Hlc::observe`]). A node whose clock
//! runs ahead would see its writes refused one by one, while its own copy
//! kept them: such a write could later win over a newer acknowledged one
//! once real time caught up with its stamp. So each node measures its
//! peers' clocks and stops stamping when it runs ahead of them.
//!
//! - **Measuring.** Every [`PROBE_PERIOD_MS`], and when a member comes up,
//!   the node sends each member a `ClockProbe` carrying its wall clock; the
//!   member answers with its own. The offset is the member's clock less the
//!   midpoint of the round trip (as NTP does), within half the round trip.
//!   A replica that refuses a stamp says so with its clock, which counts as
//!   a (one-way) measurement too.
//! - **Deciding.** The node runs ahead when its next stamp would be more
//!   than the bound ahead of a majority of the members it has measured. Its
//!   next stamp is the later of its wall clock and its hybrid clock, which
//!   may still carry stamps issued before the clock was corrected. While it
//!   runs ahead its [`Hlc`] refuses to stamp ([`Hlc::try_stamp`]).
//! - **Unmeasured.** Until the first measurement, and after the runtime
//!   reports that the wall clock stepped, the node does not know. Its
//!   coordinated writes are then applied to its own copy only once another
//!   replica has accepted the stamp (see [`crate::node`]), so a write that
//!   every other replica refused is stored nowhere.

use std::collections::HashMap;

use crate::clock::Hlc;

/// How often a node measures its peers' clocks. Milliseconds.
pub const PROBE_PERIOD_MS: u64 = 1_000;

/// A change in whether this node runs ahead of its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Episode {
    /// It started running ahead, by this much.
    Ahead {
        /// How far its next stamp is ahead of a majority of its peers, ms.
        ahead_ms: u64,
    },
    /// It no longer runs ahead.
    InSync,
}

/// Measured offsets of the peers' clocks. See the [module docs](self).
#[derive(Debug, Default)]
pub struct PeerClocks {
    /// Each measured member's clock less this node's, ms, by name.
    offsets: HashMap<String, i64>,
    /// Whether the node currently counts as running ahead.
    ahead: bool,
}

impl PeerClocks {
    /// Each measured member's clock less this node's, in ms: negative when
    /// this node runs ahead of it.
    pub fn offset_of(&self, name: &str) -> Option<i64> {
        self.offsets.get(name).copied()
    }

    /// Whether any measurement has been made since the start or the last
    /// step of the wall clock.
    pub fn measured(&self) -> bool {
        !self.offsets.is_empty()
    }

    /// Records that `name`'s clock read `peer_ms` halfway between `sent_ms`
    /// and `received_ms` on this node's clock (for a one-way reading, pass
    /// the same time twice), and tells `hlc` how far ahead of its peers it
    /// runs. Returns the change of episode, if any, at `now_ms`.
    pub fn record(
        &mut self,
        name: &str,
        peer_ms: u64,
        sent_ms: u64,
        received_ms: u64,
        hlc: &Hlc,
        now_ms: u64,
    ) -> Option<Episode> {
        let midpoint = (u128::from(sent_ms) + u128::from(received_ms)) / 2;
        let offset = i128::from(peer_ms) - midpoint as i128;
        let offset = i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX });
        self.offsets.insert(name.to_owned(), offset);
        self.update(hlc, now_ms)
    }

    /// Forgets the members `keep` does not keep (those gone from the cluster).
    pub fn retain(
        &mut self,
        keep: impl Fn(&str) -> bool,
        hlc: &Hlc,
        now_ms: u64,
    ) -> Option<Episode> {
        self.offsets.retain(|name, _| keep(name));
        self.update(hlc, now_ms)
    }

    /// The wall clock stepped: every measurement is void until taken again.
    pub fn stepped(&mut self, hlc: &Hlc, now_ms: u64) -> Option<Episode> {
        self.offsets.clear();
        self.update(hlc, now_ms)
    }

    /// How far this node's wall clock runs ahead of a majority of its
    /// measured peers (the smallest lead that still covers a majority), or
    /// `None` with no measurement.
    fn majority_lead_ms(&self) -> Option<i64> {
        if self.offsets.is_empty() {
            return None;
        }
        // This node's lead over each peer, largest first.
        let mut leads: Vec<i64> = self.offsets.values().map(|o| o.saturating_neg()).collect();
        leads.sort_unstable_by(|a, b| b.cmp(a));
        Some(leads[leads.len() / 2])
    }

    /// Hands the majority lead to `hlc` and works out the episode at `now_ms`.
    fn update(&mut self, hlc: &Hlc, now_ms: u64) -> Option<Episode> {
        let lead = self.majority_lead_ms();
        hlc.set_lead_over_peers(lead);
        let ahead_ms = hlc.ahead_of_peers_ms(now_ms);
        let ahead = ahead_ms.is_some();
        if ahead == self.ahead {
            return None;
        }
        self.ahead = ahead;
        Some(match ahead_ms {
            Some(ahead_ms) => Episode::Ahead { ahead_ms },
            None => Episode::InSync,
        })
    }

    /// Re-evaluates the episode as time passes (a node whose hybrid clock
    /// ran ahead catches up without a new measurement).
    pub fn tick(&mut self, hlc: &Hlc, now_ms: u64) -> Option<Episode> {
        self.update(hlc, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NodeId;

    #[test]
    fn a_node_ahead_of_a_majority_refuses_to_stamp_and_says_so_once() {
        let hlc = Hlc::new(NodeId(1), 500);
        let mut clocks = PeerClocks::default();
        let now = 10_000;
        // One peer 2 s behind: a majority of one.
        let episode = clocks.record("b", now - 2_000, now - 10, now + 10, &hlc, now);
        assert_eq!(episode, Some(Episode::Ahead { ahead_ms: 2_000 }));
        assert!(hlc.try_stamp(now).is_err());
        // A second peer in step: one of two is no majority.
        assert_eq!(
            clocks.record("c", now, now, now, &hlc, now),
            Some(Episode::InSync)
        );
        assert!(hlc.try_stamp(now).is_ok());
        // A third, behind again: two of three.
        assert_eq!(
            clocks.record("d", now - 900, now, now, &hlc, now),
            Some(Episode::Ahead { ahead_ms: 900 })
        );
        assert_eq!(
            clocks.record("d", now - 950, now, now, &hlc, now),
            None,
            "still the same episode"
        );
        assert_eq!(clocks.offset_of("b"), Some(-2_000));
        assert_eq!(clocks.stepped(&hlc, now), Some(Episode::InSync));
        assert!(!clocks.measured());
    }

    #[test]
    fn stamps_issued_before_a_correction_keep_the_node_ahead_until_time_catches_up() {
        let hlc = Hlc::new(NodeId(1), 500);
        let mut clocks = PeerClocks::default();
        // The wall clock ran 2 s ahead and stamped a write...
        hlc.stamp(12_000);
        // ...then was corrected: the peers read the same time as this node.
        assert_eq!(
            clocks.record("b", 10_000, 10_000, 10_000, &hlc, 10_000),
            Some(Episode::Ahead { ahead_ms: 2_000 })
        );
        assert!(hlc.try_stamp(10_000).is_err());
        assert_eq!(clocks.tick(&hlc, 11_600), Some(Episode::InSync));
        let stamp = hlc.try_stamp(11_600).expect("within the bound again");
        assert!(stamp.wall_ms() >= 12_000, "stamps never go back");
    }
}
