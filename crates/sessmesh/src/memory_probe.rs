//! What the process holds for a peer beyond what the peer counts itself,
//! for hosts that can ask their allocator (the `sessmesh` server does): see
//! [`NodeBuilder::memory_probe`](crate::NodeBuilder::memory_probe).

use std::time::Duration;

use tokio::time::Instant;

/// How often the driver asks the allocator.
const PERIOD: Duration = Duration::from_millis(100);

/// Asks the allocator what it has handed out, bytes (`None`: it cannot
/// tell now).
pub type MemoryProbe = fn() -> Option<usize>;

/// The driver's readings of a [`MemoryProbe`].
pub(crate) struct Readings {
    probe: MemoryProbe,
    /// What the process held beyond the peer's count at the first reading:
    /// the runtime, the transport's buffers, whatever the process held
    /// before the peer started.
    base: Option<usize>,
    next: Instant,
}

impl Readings {
    /// Takes the first reading, the base, with the peer counting `counted`
    /// at its start.
    pub(crate) fn new(probe: MemoryProbe, now: Instant, counted: usize) -> Readings {
        let mut readings = Readings {
            probe,
            base: None,
            next: now,
        };
        readings.read(now, counted);
        readings
    }

    /// Whether a reading is due.
    pub(crate) fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Reads the allocator: what the process holds beyond `counted` (what
    /// the peer counts itself), over what it held at the first reading.
    pub(crate) fn read(&mut self, now: Instant, counted: usize) -> Option<usize> {
        self.next = now + PERIOD;
        let beyond = (self.probe)()?.saturating_sub(counted);
        let base = *self.base.get_or_insert(beyond);
        Some(beyond.saturating_sub(base))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

    fn probe() -> Option<usize> {
        Some(ALLOCATED.load(Ordering::Relaxed))
    }

    #[test]
    fn readings_count_what_grew_beyond_the_peers_own_count_since_the_first() {
        let t0 = Instant::now();
        // At the start: 5 MB of runtime and buffers, 1 MB counted.
        ALLOCATED.store(6_000_000, Ordering::Relaxed);
        let mut readings = Readings::new(probe, t0, 1_000_000);
        assert!(!readings.due(t0 + PERIOD / 2));
        assert!(readings.due(t0 + PERIOD));
        // 30 MB more, 20 of it counted by the peer: 10 MB of other memory.
        ALLOCATED.store(36_000_000, Ordering::Relaxed);
        assert_eq!(readings.read(t0 + PERIOD, 21_000_000), Some(10_000_000));
        // The queues drained: nothing beyond the count again.
        ALLOCATED.store(26_000_000, Ordering::Relaxed);
        assert_eq!(readings.read(t0 + PERIOD * 2, 21_000_000), Some(0));
        // A count above what the allocator holds never goes below 0.
        assert_eq!(readings.read(t0 + PERIOD * 3, 40_000_000), Some(0));
    }
}
