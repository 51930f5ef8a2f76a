//! Membership settings: presets for a LAN, a WAN and one machine, checked
//! by [`MembershipConfig::validate`], and turned into foca's own.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::Error;

/// Membership settings. Presets: [`MembershipConfig::lan`], [`MembershipConfig::wan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often each member probes a random other member.
    pub probe_period_ms: u64,
    /// How long a direct probe may take before indirect probes start; below
    /// `probe_period_ms`.
    pub probe_rtt_ms: u64,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute suspicion before it is
    /// declared down. Longer tolerates slow members; shorter detects crashes sooner.
    pub suspect_to_down_after_ms: u64,
    /// How often updates are gossiped besides probes, and to how many members.
    pub gossip_period_ms: u64,
    /// Members gossiped to each `gossip_period_ms`.
    pub gossip_fanout: usize,
    /// How many times each update is piggybacked; grows with the cluster.
    pub max_transmissions: u8,
    /// Largest gossip packet, at most what the transport carries in one datagram.
    pub max_packet_bytes: usize,
    /// While no other member is known, announce to the seeds this often.
    pub rejoin_period_ms: u64,
    /// How long a down member is remembered (so its stale messages are ignored).
    pub remove_down_after_ms: u64,
    /// How often to announce to a few members declared down, so that the two
    /// sides of a healed partition find each other again.
    pub announce_to_down_period_ms: u64,
}

impl MembershipConfig {
    /// The largest gossip packet every transport carries: a QUIC datagram on a
    /// path that has not discovered a larger MTU than the 1,200 bytes QUIC
    /// guarantees, less QUIC's and the envelope's overhead.
    pub const MAX_PACKET_BYTES: usize = 1_100;

    /// For a LAN of about `cluster_size` members: 1 s probes, 200 ms gossip
    /// (foca's LAN preset, with the suspicion window it derives from the size),
    /// and a 5 s announce to members declared down.
    pub fn lan(cluster_size: u32) -> Self {
        Self::from_foca(&foca::Config::new_lan(size(cluster_size)), cluster_size)
    }

    /// For a few members on one machine (tests, demos): 300 ms probes, 100 ms
    /// gossip, a one-second suspicion window, so a crash is declared in
    /// about 2.5 s. Far too eager for a real network.
    pub fn local() -> Self {
        MembershipConfig {
            probe_period_ms: 300,
            probe_rtt_ms: 100,
            suspect_to_down_after_ms: 1_000,
            gossip_period_ms: 100,
            rejoin_period_ms: 500,
            announce_to_down_period_ms: 1_000,
            ..Self::lan(5)
        }
    }

    /// For a WAN of about `cluster_size` members: 5 s probes, 500 ms gossip,
    /// and a 25 s announce to members declared down.
    pub fn wan(cluster_size: u32) -> Self {
        Self::from_foca(&foca::Config::new_wan(size(cluster_size)), cluster_size)
    }

    /// Each update is piggybacked `ceil(3 ln(n + 1))` times (at least foca's
    /// count): a member then misses a given update with odds near
    /// `e^(-3 ln n) = 1/n^3`, so in a cluster of `n` the chance that anyone
    /// misses any one join stays below `1/n`. Foca's own count, `4 log10(n + 1)`,
    /// left a few of 200 members each missing a join.
    #[expect(clippy::cast_possible_truncation, reason = "clamped to 255 first")]
    fn transmissions(foca_count: u8, cluster_size: u32) -> u8 {
        let wanted = (3.0 * f64::from(cluster_size.saturating_add(1)).ln()).ceil();
        foca_count.max(wanted.min(255.0) as u8)
    }

    fn from_foca(c: &foca::Config, cluster_size: u32) -> Self {
        let gossip = c.periodic_gossip.as_ref();
        MembershipConfig {
            probe_period_ms: millis(c.probe_period),
            probe_rtt_ms: millis(c.probe_rtt),
            indirect_probes: c.num_indirect_probes.get(),
            suspect_to_down_after_ms: millis(c.suspect_to_down_after),
            gossip_period_ms: gossip.map_or(200, |g| millis(g.frequency)),
            gossip_fanout: gossip.map_or(3, |g| g.num_members.get()),
            max_transmissions: Self::transmissions(c.max_transmissions.get(), cluster_size),
            max_packet_bytes: Self::MAX_PACKET_BYTES,
            rejoin_period_ms: millis(c.probe_period) * 2,
            remove_down_after_ms: 24 * 60 * 60 * 1000,
            announce_to_down_period_ms: millis(c.probe_period) * 5,
        }
    }

    /// Within this long after a member crashes, every live member has declared
    /// it down: a few probe periods to find it unresponsive, the suspicion
    /// window, and the time for the verdict to spread.
    pub fn detection_bound_ms(&self) -> u64 {
        3 * self.probe_period_ms
            + self.suspect_to_down_after_ms
            + u64::from(self.max_transmissions) * self.gossip_period_ms
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first setting that is wrong and why.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid =
            |setting: &'static str, reason: String| Err(Error::InvalidConfig { setting, reason });
        for (setting, value) in [
            ("probe_period_ms", self.probe_period_ms),
            ("probe_rtt_ms", self.probe_rtt_ms),
            ("suspect_to_down_after_ms", self.suspect_to_down_after_ms),
            ("gossip_period_ms", self.gossip_period_ms),
            ("rejoin_period_ms", self.rejoin_period_ms),
            (
                "announce_to_down_period_ms",
                self.announce_to_down_period_ms,
            ),
        ] {
            if value == 0 {
                return invalid(setting, "must be above 0".into());
            }
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return invalid(
                "probe_rtt_ms",
                format!(
                    "{} ms must be below probe_period_ms ({} ms)",
                    self.probe_rtt_ms, self.probe_period_ms
                ),
            );
        }
        if self.indirect_probes == 0 || self.gossip_fanout == 0 || self.max_transmissions == 0 {
            let setting = if self.indirect_probes == 0 {
                "indirect_probes"
            } else if self.gossip_fanout == 0 {
                "gossip_fanout"
            } else {
                "max_transmissions"
            };
            return invalid(setting, "must be at least 1".into());
        }
        if !(512..=Self::MAX_PACKET_BYTES).contains(&self.max_packet_bytes) {
            return invalid(
                "max_packet_bytes",
                format!(
                    "{} is outside 512 to {} (a gossip packet must fit one QUIC datagram)",
                    self.max_packet_bytes,
                    Self::MAX_PACKET_BYTES
                ),
            );
        }
        Ok(())
    }

    pub(super) fn to_foca(&self) -> foca::Config {
        let ms = Duration::from_millis;
        let mut c = foca::Config::new_lan(size(1));
        c.probe_period = ms(self.probe_period_ms);
        c.probe_rtt = ms(self.probe_rtt_ms);
        c.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes).unwrap_or(NonZeroUsize::MIN);
        c.suspect_to_down_after = ms(self.suspect_to_down_after_ms);
        c.max_transmissions = NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN);
        c.max_packet_size = NonZeroUsize::new(self.max_packet_bytes).unwrap_or(NonZeroUsize::MIN);
        c.remove_down_after = Some(ms(self.remove_down_after_ms));
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: ms(self.announce_to_down_period_ms),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: ms(self.gossip_period_ms),
            num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

fn size(cluster_size: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(cluster_size).unwrap_or(std::num::NonZeroU32::MIN)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
