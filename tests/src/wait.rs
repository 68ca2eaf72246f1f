//! Polling with a deadline, for conditions that become true eventually
//! (a BGP session establishing, a route appearing).

use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it returns true or `timeout` passes.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
