//! Anti-entropy digests: how two replicas of a partition find the keys they
//! disagree on without sending the keys they agree on.
//!
//! Each stored session has a *fingerprint*, a 64-bit hash of its key and of
//! every stamp it holds (not only the newest: two replicas can share a newest
//! stamp yet differ in an older field). A partition keeps [`DIGEST_BUCKETS`]
//! buckets, each the wrapping sum of the fingerprints of the keys that hash
//! into it, updated incrementally on every change (subtract the old
//! fingerprint, add the new). The exchange narrows down in three steps:
//!
//! 1. partition roots (one hash of the buckets per partition) →
//! 2. the buckets of partitions whose roots differ →
//! 3. `(key hash, fingerprint)` pairs of buckets that differ →
//!    the differing keys, whose sessions are then exchanged and merged.
//!
//! A bucket is picked by the top six bits of the key hash, which are
//! independent of the low bits that pick the partition.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Buckets per partition digest.
pub const DIGEST_BUCKETS: usize = 64;

/// The digest bucket of a key with hash `key_hash`.
pub fn bucket_of(key_hash: u64) -> u8 {
    (key_hash >> 58) as u8
}

/// The incremental digest of one partition of one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionDigest {
    buckets: [u64; DIGEST_BUCKETS],
}

impl Default for PartitionDigest {
    fn default() -> Self {
        PartitionDigest {
            buckets: [0; DIGEST_BUCKETS],
        }
    }
}

impl PartitionDigest {
    pub(crate) fn add(&mut self, key_hash: u64, fingerprint: u64) {
        let bucket = &mut self.buckets[usize::from(bucket_of(key_hash))];
        *bucket = bucket.wrapping_add(fingerprint);
    }

    pub(crate) fn remove(&mut self, key_hash: u64, fingerprint: u64) {
        let bucket = &mut self.buckets[usize::from(bucket_of(key_hash))];
        *bucket = bucket.wrapping_sub(fingerprint);
    }

    /// The bucket sums.
    pub fn buckets(&self) -> &[u64; DIGEST_BUCKETS] {
        &self.buckets
    }

    /// One hash of all buckets: equal roots mean (with overwhelming
    /// probability) equal partitions.
    pub fn root(&self) -> u64 {
        let mut bytes = [0u8; DIGEST_BUCKETS * 8];
        for (chunk, bucket) in bytes.chunks_exact_mut(8).zip(self.buckets) {
            chunk.copy_from_slice(&bucket.to_le_bytes());
        }
        xxh3_64(&bytes)
    }

    /// The buckets where `theirs` differs from this digest. A list of the wrong
    /// length (a peer with another bucket count) differs everywhere.
    pub fn differing_buckets(&self, theirs: &[u64]) -> Vec<u8> {
        (0..DIGEST_BUCKETS)
            .filter(|&b| theirs.len() != DIGEST_BUCKETS || theirs[b] != self.buckets[b])
            .map(|b| u8::try_from(b).expect("64 buckets fit in u8"))
            .collect()
    }
}

/// A key's hash and fingerprint, as step 3 of the exchange sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyDigest {
    /// [`crate::key_hash`] of the key.
    pub key_hash: u64,
    /// The session's fingerprint.
    pub fingerprint: u64,
}

/// The key hashes on which two bucket listings disagree: present on one side
/// only, or present on both with different fingerprints. Sorted, no duplicates.
pub fn differing_keys(mine: &[KeyDigest], theirs: &[KeyDigest]) -> Vec<u64> {
    let mut mine = mine.to_vec();
    let mut theirs = theirs.to_vec();
    mine.sort_unstable();
    theirs.sort_unstable();
    let mut differ = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < mine.len() || j < theirs.len() {
        match (mine.get(i), theirs.get(j)) {
            (Some(a), Some(b)) if a.key_hash == b.key_hash => {
                if a.fingerprint != b.fingerprint {
                    differ.push(a.key_hash);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.key_hash < b.key_hash => {
                differ.push(a.key_hash);
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                differ.push(b.key_hash);
                j += 1;
            }
            (Some(a), None) => {
                differ.push(a.key_hash);
                i += 1;
            }
            (None, None) => break,
        }
    }
    differ.dedup();
    differ
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kd(key_hash: u64, fingerprint: u64) -> KeyDigest {
        KeyDigest {
            key_hash,
            fingerprint,
        }
    }

    #[test]
    fn add_then_remove_restores_the_digest() {
        let mut digest = PartitionDigest::default();
        let empty_root = digest.root();
        digest.add(u64::MAX, 42);
        digest.add(7, 9);
        assert_ne!(digest.root(), empty_root);
        assert_eq!(
            digest.differing_buckets(PartitionDigest::default().buckets()),
            vec![0, 63]
        );
        digest.remove(u64::MAX, 42);
        digest.remove(7, 9);
        assert_eq!(digest, PartitionDigest::default());
        assert_eq!(digest.root(), empty_root);
    }

    #[test]
    fn a_short_bucket_list_differs_everywhere() {
        assert_eq!(
            PartitionDigest::default().differing_buckets(&[0; 3]).len(),
            DIGEST_BUCKETS
        );
    }

    #[test]
    fn differing_keys_finds_missing_and_changed_keys() {
        let mine = [kd(5, 1), kd(1, 1), kd(3, 3), kd(9, 9)];
        let theirs = [kd(1, 1), kd(3, 4), kd(7, 7), kd(9, 9)];
        assert_eq!(differing_keys(&mine, &theirs), vec![3, 5, 7]);
        assert_eq!(differing_keys(&theirs, &mine), vec![3, 5, 7]);
        assert!(differing_keys(&mine, &mine).is_empty());
        assert_eq!(differing_keys(&[], &mine), vec![1, 3, 5, 9]);
    }
}
