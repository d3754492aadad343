//! A converged swarm built from global knowledge (`--setup warm`): every routing table filled
//! with up to k peers of each bucket, every record stored at the k stations closest to its
//! key, as Kademlia's own lookups leave them.
//!
//! Distances are Kademlia's: XOR of the SHA-256 of the keys ([`kad::KBucketKey`]). Sorting
//! every station for every record is N² log N (hours at 10^4 stations), so the station keys
//! are sorted once ([`KeySpace`]): the stations whose keys share the longest prefix with a
//! target are one contiguous range of that order, and so are the members of each bucket of a
//! routing table. A binary search finds either.

use std::ops::Range;

use libp2p::kad::{self, RecordKey};
use libp2p::{Multiaddr, PeerId};
use rand::Rng;
use rand::seq::IteratorRandom;

/// A 256-bit Kademlia key: the SHA-256 of a peer id or a record key.
pub(super) type Hash = [u8; 32];

/// The Kademlia key of a peer.
pub(super) fn peer_hash(peer: PeerId) -> Hash {
    to_hash(kad::KBucketKey::from(peer).hashed_bytes())
}

/// The Kademlia key of a record.
pub(super) fn record_hash(key: &RecordKey) -> Hash {
    to_hash(kad::KBucketKey::new(key.clone()).hashed_bytes())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0; 32];
    h.copy_from_slice(&bytes[..32.min(bytes.len())]);
    h
}

fn xor(a: &Hash, b: &Hash) -> Hash {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// `h` with every bit from position `bits` on (counted from the most significant) set to
/// `fill`.
fn with_tail(h: &Hash, bits: usize, fill: bool) -> Hash {
    std::array::from_fn(|i| {
        let keep = bits.saturating_sub(i * 8).min(8);
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        (h[i] & mask) | if fill { !mask } else { 0 }
    })
}

/// Every station's key in numeric order, with the station's index.
pub(super) struct KeySpace {
    sorted: Vec<(Hash, usize)>,
}

impl KeySpace {
    /// The key space of `keys` (station `i` has `keys[i]`).
    pub(super) fn new(keys: &[Hash]) -> Self {
        let mut sorted: Vec<(Hash, usize)> = keys.iter().copied().zip(0..).collect();
        sorted.sort_unstable();
        Self { sorted }
    }

    /// The positions (in `sorted`) of the keys whose first `bits` bits are those of `prefix`.
    fn prefix_range(&self, prefix: &Hash, bits: usize) -> Range<usize> {
        let lo = with_tail(prefix, bits, false);
        let hi = with_tail(prefix, bits, true);
        let start = self.sorted.partition_point(|(k, _)| *k < lo);
        let end = self.sorted.partition_point(|(k, _)| *k <= hi);
        start..end
    }

    /// The `k` stations closest to `target`, nearest first.
    pub(super) fn closest(&self, target: &Hash, k: usize) -> Vec<usize> {
        // The longest prefix of the target that at least k keys share: every key outside
        // that range differs from the target in a higher bit than any key inside it.
        let (mut lo, mut hi) = (0usize, 256usize);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.prefix_range(target, mid).len() >= k {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut near: Vec<(Hash, usize)> = self.sorted[self.prefix_range(target, lo)]
            .iter()
            .map(|(key, i)| (xor(key, target), *i))
            .collect();
        near.sort_unstable();
        near.into_iter().take(k).map(|(_, i)| i).collect()
    }

    /// The stations in bucket `bucket` of the routing table of the station whose key is
    /// `own`: those whose distance to it has its highest set bit at `bucket` (0 the lowest),
    /// as [`kad::KBucketKey::distance`]`.ilog2()` counts.
    pub(super) fn bucket(&self, own: &Hash, bucket: u32) -> impl Iterator<Item = usize> + '_ {
        let bit = 255 - bucket.min(255) as usize;
        let mut other = *own;
        other[bit / 8] ^= 0x80 >> (bit % 8);
        self.sorted[self.prefix_range(&other, bit + 1)]
            .iter()
            .map(|(_, i)| *i)
    }
}

/// A routing table as a converged station has it: up to `k` peers of each bucket, chosen at
/// random among the stations that fall into it.
pub(super) fn routes(space: &KeySpace, own: &Hash, k: usize, rng: &mut impl Rng) -> Vec<usize> {
    (0..256u32)
        .flat_map(|b| space.bucket(own, b).choose_multiple(rng, k))
        .collect()
}

/// What one station holds after a warm start.
#[derive(Default)]
pub(super) struct Seed {
    /// Its routing table.
    pub(super) routes: Vec<(PeerId, Multiaddr)>,
    /// Station and catalog records it stores.
    pub(super) records: Vec<kad::Record>,
    /// Provider records it stores.
    pub(super) providers: Vec<kad::ProviderRecord>,
}

/// The converged swarm: each station's [`Seed`]. `peers[i]` is station `i`; each record goes
/// to the `k` stations closest to its key and to its owner (the station index beside it).
pub(super) fn converge(
    peers: &[(PeerId, Multiaddr)],
    records: Vec<(kad::Record, usize)>,
    providers: Vec<(kad::ProviderRecord, usize)>,
    k: usize,
    rng: &mut impl Rng,
) -> Vec<Seed> {
    let keys: Vec<Hash> = peers.iter().map(|(p, _)| peer_hash(*p)).collect();
    let space = KeySpace::new(&keys);
    let mut seeds: Vec<Seed> = (0..peers.len()).map(|_| Seed::default()).collect();
    for (seed, own) in seeds.iter_mut().zip(&keys) {
        seed.routes = routes(&space, own, k, rng)
            .into_iter()
            .map(|j| peers[j].clone())
            .collect();
    }
    let holders = |key: &RecordKey, owner: usize| {
        let mut at = space.closest(&record_hash(key), k);
        if !at.contains(&owner) {
            at.push(owner);
        }
        at
    };
    for (record, owner) in records {
        for j in holders(&record.key, owner) {
            seeds[j].records.push(record.clone());
        }
    }
    for (provider, owner) in providers {
        for j in holders(&provider.key, owner) {
            seeds[j].providers.push(provider.clone());
        }
    }
    seeds
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn closest_is_what_sorting_every_station_by_kademlia_distance_gives() {
        let peers = peers(500);
        let keys: Vec<Hash> = peers.iter().map(|p| peer_hash(*p)).collect();
        let space = KeySpace::new(&keys);
        for t in 0..50u32 {
            let record = RecordKey::new(&t.to_be_bytes());
            let target = kad::KBucketKey::new(record.clone());
            let mut all: Vec<usize> = (0..peers.len()).collect();
            all.sort_by_key(|&i| target.distance(&kad::KBucketKey::from(peers[i])));
            for k in [1, 20, 499, 500, 800] {
                let want: Vec<usize> = all.iter().copied().take(k).collect();
                assert_eq!(space.closest(&record_hash(&record), k), want, "k = {k}");
            }
        }
    }

    #[test]
    fn buckets_are_kademlias_and_cover_everyone_else_once() {
        let peers = peers(300);
        let keys: Vec<Hash> = peers.iter().map(|p| peer_hash(*p)).collect();
        let space = KeySpace::new(&keys);
        for (i, peer) in peers.iter().enumerate().take(20) {
            let own = kad::KBucketKey::from(*peer);
            let mut seen = Vec::new();
            for b in 0..256 {
                for j in space.bucket(&keys[i], b) {
                    let d = own.distance(&kad::KBucketKey::from(peers[j]));
                    assert_eq!(d.ilog2(), Some(b), "{j} in bucket {b} of {i}");
                    seen.push(j);
                }
            }
            seen.sort_unstable();
            let others: Vec<usize> = (0..peers.len()).filter(|&j| j != i).collect();
            assert_eq!(seen, others);
        }
    }

    #[test]
    fn routes_take_at_most_k_of_each_bucket() {
        let peers = peers(400);
        let keys: Vec<Hash> = peers.iter().map(|p| peer_hash(*p)).collect();
        let space = KeySpace::new(&keys);
        let mut rng = StdRng::seed_from_u64(7);
        let own = kad::KBucketKey::from(peers[0]);
        let table = routes(&space, &keys[0], 20, &mut rng);
        let mut per_bucket = std::collections::HashMap::<u32, usize>::new();
        for j in &table {
            let b = own.distance(&kad::KBucketKey::from(peers[*j])).ilog2();
            *per_bucket.entry(b.unwrap_or(0)).or_default() += 1;
        }
        assert!(per_bucket.values().all(|&n| n <= 20));
        // The far half of the key space alone holds about 200 of the 399 others.
        assert_eq!(per_bucket.get(&255), Some(&20));
        assert!(!table.contains(&0));
    }
}
