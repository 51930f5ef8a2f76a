//! The wall clock a peer stamps its writes with, and judges expiry by.
//!
//! A peer reads the system's wall clock. A simulation that runs peers in
//! tokio's paused clock can have the peers on its thread read a wall clock
//! that moves with virtual time instead ([`simulate_on_this_thread`]), so
//! that their stamps, and so every outcome that depends on them, repeat
//! exactly from one run of a seed to the next.

use std::cell::Cell;
use std::time::SystemTime;

use tokio::time::Instant;

thread_local! {
    /// When simulating: tokio's clock at the start, and the wall clock then.
    static SIMULATED: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// Wall-clock milliseconds since the Unix epoch: the only clock the node sees.
pub(crate) fn now_ms() -> u64 {
    if let Some((start, epoch_ms)) = SIMULATED.get() {
        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        return epoch_ms.saturating_add(elapsed);
    }
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// For simulations only: from now on, peers on this thread read a wall
/// clock that reads `epoch_ms` now and moves with tokio's clock (virtual
/// time, when the runtime's clock is paused). Call it inside the runtime,
/// before starting the peers, on a current-thread runtime.
#[doc(hidden)]
pub fn simulate_on_this_thread(epoch_ms: u64) {
    SIMULATED.set(Some((Instant::now(), epoch_ms)));
}
