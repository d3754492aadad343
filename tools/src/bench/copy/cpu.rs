//! The CPU a copy's parts took alone (its transport, the store's durable write) and the copy
//! itself, for the rate the machine's cores allow a copy (`copy.copy_cpu_limit_mb_s`).

use std::time::Duration;

use super::super::{cpus, round2};

/// The CPU the copy section's parts took, for the limit the machine's cores set a copy.
pub(super) struct Cpu {
    /// The transport the copy took, moving the same bytes alone, both ends.
    pub(super) transport: Duration,
    /// The store's durable write of the same bytes (the probe the bound took).
    pub(super) store: Duration,
    /// The copy, both stations.
    pub(super) copy: Duration,
    /// The bytes each of them moved.
    pub(super) bytes: u64,
}

impl Cpu {
    /// The machine's cores.
    pub(super) fn cores(&self) -> usize {
        cpus()
    }

    /// CPU seconds per GB (10^9 bytes) of `cpu`.
    pub(super) fn per_gb(&self, cpu: Duration) -> f64 {
        round2(cpu.as_secs_f64() / (self.bytes as f64 / 1e9))
    }

    /// The copy rate, in MB/s, at which the transport's work and the store's (each as
    /// measured alone) keep every core busy: a copy needs both per byte, and the cores run
    /// them all.
    pub(super) fn limit_mb_s(&self) -> f64 {
        let per_byte = (self.transport + self.store).as_secs_f64() / self.bytes as f64;
        (self.cores() as f64 / per_byte.max(1e-15) / 1e6).round()
    }
}
