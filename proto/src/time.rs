//! Wall-clock time on the wire: milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch of `now + d`.
pub fn in_ms(d: Duration) -> u64 {
    now_ms().saturating_add(d.as_millis() as u64)
}
