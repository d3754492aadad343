//! A map whose entries expire and whose size is bounded: what a director keeps for a peer
//! that may never come back (a console in the middle of a swap that went away), so that
//! nothing a peer can cause grows without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Entries live `ttl` after they were put; at `cap` entries, putting one drops the oldest.
#[derive(Debug)]
pub(crate) struct Expiring<K, V> {
    ttl: Duration,
    cap: usize,
    entries: HashMap<K, (V, Instant)>,
}

impl<K: Hash + Eq + Clone, V> Expiring<K, V> {
    /// Entries for `ttl`, at most `cap` of them.
    pub(crate) fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            entries: HashMap::new(),
        }
    }

    /// Puts `value` under `key` at `now`: expired entries go first, then the oldest while
    /// the map is full.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (_, at)| now.duration_since(*at) < ttl);
        while self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            let oldest = (self.entries.iter())
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.entries.remove(&k),
                None => break,
            };
        }
        self.entries.insert(key, (value, now));
    }

    /// Takes the value under `key`, unless it expired by `now`.
    pub(crate) fn remove(&mut self, key: &K, now: Instant) -> Option<V> {
        let (value, at) = self.entries.remove(key)?;
        (now.duration_since(at) < self.ttl).then_some(value)
    }

    /// The value under `key`, unless it expired by `now`.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<&V> {
        (self.entries.get(key))
            .filter(|(_, at)| now.duration_since(*at) < self.ttl)
            .map(|(value, _)| value)
    }

    /// Whether `key` holds a value that has not expired by `now`.
    pub(crate) fn contains(&self, key: &K, now: Instant) -> bool {
        (self.entries.get(key)).is_some_and(|(_, at)| now.duration_since(*at) < self.ttl)
    }

    /// Entries held (expired ones included until the next insert).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<K: Hash + Eq + Clone, V> Default for Expiring<K, V> {
    /// A minute, 4096 entries.
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut map = Expiring::new(s(60), 3);
        map.insert("a", 1, t0);
        assert!(map.contains(&"a", t0 + s(59)) && !map.contains(&"a", t0 + s(60)));
        assert_eq!(map.remove(&"a", t0 + s(59)), Some(1));
        map.insert("b", 2, t0);
        assert_eq!(map.remove(&"b", t0 + s(60)), None, "expired");
        for (i, k) in ["c", "d", "e", "f"].into_iter().enumerate() {
            map.insert(k, i, t0 + s(i as u64));
        }
        assert_eq!(map.len(), 3, "bounded");
        assert_eq!(map.remove(&"c", t0 + s(5)), None, "the oldest went");
        assert_eq!(map.remove(&"f", t0 + s(5)), Some(3));
        // Expired entries go at the next insert, whatever the cap.
        map.insert("g", 9, t0 + s(200));
        assert_eq!(map.len(), 1);
    }
}
