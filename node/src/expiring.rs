//! A map whose entries expire and whose size is bounded: what a director keeps for a peer
//! that may never come back (a console in the middle of a swap that went away), so that
//! nothing a peer can cause grows without end. [`Waiting`]: requests parked until one piece
//! of work ends, a bounded number a key.

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
        let (value, at) = self.entries.get(key)?;
        (now.duration_since(*at) < self.ttl).then_some(value)
    }

    /// Whether `key` holds a value that has not expired by `now`.
    pub(crate) fn contains(&self, key: &K, now: Instant) -> bool {
        (self.entries.get(key)).is_some_and(|(_, at)| now.duration_since(*at) < self.ttl)
    }

    /// Drops the entries expired by `now`, and returns them (for their owner to drop, or
    /// close, outside any lock).
    pub(crate) fn prune(&mut self, now: Instant) -> Vec<V> {
        let ttl = self.ttl;
        let expired: Vec<K> = (self.entries.iter())
            .filter(|(_, (_, at))| now.duration_since(*at) >= ttl)
            .map(|(k, _)| k.clone())
            .collect();
        (expired.iter())
            .filter_map(|k| self.entries.remove(k).map(|(v, _)| v))
            .collect()
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

/// Requests waiting, by key, for one piece of work each key starts (a fetch): at most `cap`
/// a key, so that a peer asking again and again while the work runs cannot grow the list.
#[derive(Debug)]
pub(crate) struct Waiting<K, T> {
    cap: usize,
    lists: HashMap<K, Vec<T>>,
}

impl<K: Hash + Eq, T> Waiting<K, T> {
    /// At most `cap` waiting a key.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            lists: HashMap::new(),
        }
    }

    /// Parks `item` under `key`: `Ok(true)` when it is the first (the caller starts the
    /// work), `Ok(false)` when it joins others, `Err(item)` when `cap` already wait.
    pub(crate) fn push(&mut self, key: K, item: T) -> Result<bool, T> {
        let list = self.lists.entry(key).or_default();
        if list.len() >= self.cap {
            return Err(item);
        }
        list.push(item);
        Ok(list.len() == 1)
    }

    /// Whether anything waits under `key`.
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.lists.contains_key(key)
    }

    /// Keys something waits under: pieces of work running.
    pub(crate) fn keys(&self) -> usize {
        self.lists.len()
    }

    /// Everything that waited under `key` (its work ended).
    pub(crate) fn take(&mut self, key: &K) -> Vec<T> {
        self.lists.remove(key).unwrap_or_default()
    }
}

impl<K: Hash + Eq, T> Default for Waiting<K, T> {
    /// 64 a key.
    fn default() -> Self {
        Self::new(64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_lists_are_bounded_and_emptied_when_their_work_ends() {
        let mut waiting = Waiting::new(3);
        assert_eq!(waiting.push("p", 1), Ok(true), "the first starts the work");
        assert_eq!(waiting.push("p", 2), Ok(false));
        assert_eq!(waiting.push("p", 3), Ok(false));
        assert_eq!(waiting.push("p", 4), Err(4), "bounded");
        assert_eq!(waiting.push("q", 5), Ok(true), "a key of its own");
        assert_eq!(waiting.keys(), 2);
        assert!(waiting.contains(&"p"));
        assert_eq!(waiting.take(&"p"), vec![1, 2, 3]);
        assert!(!waiting.contains(&"p"));
        assert_eq!(waiting.push("p", 6), Ok(true), "the next round");
    }

    #[test]
    fn entries_expire_and_the_oldest_goes_when_full() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut map = Expiring::new(s(60), 3);
        map.insert("a", 1, t0);
        assert!(map.contains(&"a", t0 + s(59)) && !map.contains(&"a", t0 + s(60)));
        assert_eq!(map.get(&"a", t0 + s(59)), Some(&1));
        assert_eq!(map.get(&"a", t0 + s(60)), None, "expired");
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
