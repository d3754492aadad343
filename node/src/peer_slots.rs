//! What one peer holds of something bounded: engine copy and stream slots, a director's miss
//! gathers. Any peer can ask, so each holds at most a few: one peer, however many requests it
//! sends, cannot take every slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;

/// Counts what each peer holds, up to a cap a peer.
#[derive(Clone, Debug)]
pub(crate) struct PeerSlots {
    cap: usize,
    held: Arc<Mutex<HashMap<PeerId, usize>>>,
}

/// One slot held by a peer; given back when dropped.
pub(crate) struct PeerSlot {
    peer: PeerId,
    held: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl PeerSlots {
    /// At most `cap` slots a peer.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            held: Arc::default(),
        }
    }

    /// A slot for `peer`, unless it holds `cap` already.
    pub(crate) fn take(&self, peer: PeerId) -> Option<PeerSlot> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(peer).or_default();
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peer,
            held: self.held.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Peers come and go: only those holding a slot are kept.
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_cap_and_gets_slots_back() {
        let slots = PeerSlots::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = slots.take(a);
        let second = slots.take(a);
        assert!(first.is_some() && second.is_some());
        assert!(slots.take(a).is_none(), "a third for the same peer");
        assert!(slots.take(b).is_some(), "another peer is not held up");
        drop(first);
        assert!(slots.take(a).is_some(), "a slot given back is taken again");
        drop(second);
        let count = |p| slots.held.lock().map(|h| h.get(&p).copied()).ok().flatten();
        assert_eq!(count(b), None, "nothing kept of a peer that holds nothing");
    }
}
