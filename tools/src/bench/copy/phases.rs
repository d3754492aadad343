//! When each step of a replica's copy happened (`copy.copy_phases` in `bench.json`), read
//! from the stations' events: what a copy spends before its first segment and after its last,
//! and how many copies it keeps in flight (each segment directed, each stored).
//!
//! Each time is when the bench took the event from the stations' sink, not when it happened:
//! the first steps (the manifest verified, the first locate) come in one batch with the
//! content manager's `ReplicateSent` when the bench's task runs late, and then all read about
//! 0 ms (as in the runs of 2026-12-07). The segments' times, spread over the copy, are what
//! these are for.

use std::time::Duration;

use serde_json::{Value, json};
use vodmesh_node::events::Kind;

/// When a copy's steps happened, from the content manager's `Replicate`.
#[derive(Default)]
pub(super) struct Phases {
    /// The target verified the program's manifest.
    manifest: Option<Duration>,
    /// The first `LocateCopy` asked, and answered.
    first_locate: Option<(Duration, Option<Duration>)>,
    /// Every segment stored at the target, in order.
    copied: Vec<Duration>,
    /// Every segment's copy directed to the target's engine, in order.
    directed: Vec<Duration>,
    /// The last segment entered in the target's location table.
    last_tabled: Option<Duration>,
    /// The target's `program/<id>` provided in the registry.
    provided: Option<Duration>,
}

impl Phases {
    pub(super) fn see(&mut self, kind: &Kind, at: Duration) {
        match kind {
            Kind::ManifestVerified => self.manifest = Some(at),
            Kind::LocateAsked if self.first_locate.is_none() => {
                self.first_locate = Some((at, None));
            }
            Kind::Located { .. } => {
                if let Some((_, answered @ None)) = &mut self.first_locate {
                    *answered = Some(at);
                }
            }
            Kind::Copied { .. } => self.copied.push(at),
            Kind::FetchDirected { .. } => self.directed.push(at),
            Kind::Tabled => self.last_tabled = Some(at),
            Kind::Provided => self.provided = Some(at),
            _ => {}
        }
    }

    pub(super) fn json(&self) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        let copied: Vec<_> = self.copied.iter().map(|d| ms(Some(*d))).collect();
        json!({
            "manifest_verified": ms(self.manifest),
            "first_locate_asked": ms(self.first_locate.map(|(a, _)| a)),
            "first_located": ms(self.first_locate.and_then(|(_, b)| b)),
            "first_copied": copied.first(),
            "last_copied": copied.last(),
            "last_tabled": ms(self.last_tabled),
            "provided": ms(self.provided),
            "copied": copied,
            "directed": self.directed.iter().map(|d| ms(Some(*d))).collect::<Vec<_>>(),
        })
    }
}
