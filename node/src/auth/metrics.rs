//! What the auth server counts, for the station's metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Logins that succeeded.
    pub logins_ok: AtomicU64,
    /// Logins refused for a wrong password or an unknown user.
    pub logins_failed: AtomicU64,
    /// Logins refused by the backoff before any password check.
    pub logins_throttled: AtomicU64,
    /// Tokens signed (every kind).
    pub tokens_issued: AtomicU64,
    /// Engine token requests from peers that are not enrolled engines.
    pub engine_tokens_refused: AtomicU64,
    /// Admin operations refused.
    pub admin_refused: AtomicU64,
    /// Stations enrolled (or re-enrolled).
    pub enrollments: AtomicU64,
}

impl Metrics {
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its metric name, for a Prometheus text endpoint.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("vodmesh_auth_logins_ok_total", get(&self.logins_ok)),
            ("vodmesh_auth_logins_failed_total", get(&self.logins_failed)),
            (
                "vodmesh_auth_logins_throttled_total",
                get(&self.logins_throttled),
            ),
            ("vodmesh_auth_tokens_issued_total", get(&self.tokens_issued)),
            (
                "vodmesh_auth_engine_tokens_refused_total",
                get(&self.engine_tokens_refused),
            ),
            ("vodmesh_auth_admin_refused_total", get(&self.admin_refused)),
            ("vodmesh_auth_enrollments_total", get(&self.enrollments)),
        ]
    }
}
