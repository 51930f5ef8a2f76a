//! The store's tests: merges against a full unpack, digests and memory
//! counts against a recount, sweeps and tombstones.

use proptest::prelude::*;

use super::*;
use crate::clock::NodeId;
use crate::testing::{arb_write, stamp};

const GRACE_MS: u64 = 10_000;

fn store() -> Store {
    Store::new(&Config {
        partition_count: 16,
        tombstone_grace_ms: GRACE_MS,
        ..Config::default()
    })
}

fn value(v: &'static str) -> Vec<(Bytes, Bytes)> {
    vec![(Bytes::new(), Bytes::from_static(v.as_bytes()))]
}

fn expiring_at(ms: u64) -> Expiry {
    Expiry {
        expires_at_ms: Some(ms),
        max_idle_ms: None,
    }
}

/// The digest a store would have if it were built from scratch.
fn recomputed_digest(store: &Store, partition: PartitionId) -> PartitionDigest {
    store.recompute_digest(partition)
}

#[test]
fn reads_see_writes_and_absent_keys_are_absent() {
    let mut s = store();
    assert!(
        s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 1)
            .unwrap()
    );
    let got = s.read(b"k", 2, |got| {
        assert_eq!(got.key(), b"k");
        got.fields()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect::<Vec<_>>()
    });
    assert_eq!(got, Some(vec![(b"".to_vec(), b"v".to_vec())]));
    assert!(s.read(b"other", 2, |_| ()).is_none());
    assert_eq!(s.len(), 1);
    assert!(
        !s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 3)
            .unwrap(),
        "a duplicate changes nothing"
    );
}

#[test]
fn a_reader_on_another_thread_sees_the_owners_writes_for_replicated_partitions_only() {
    let mut s = store();
    let reader = s.reader();
    let p = s.partition_of(b"k");
    s.put(b"k", value("v1"), Expiry::default(), stamp(1, 1), 1)
        .unwrap();
    let read = |reader: StoreReader| {
        std::thread::spawn(move || {
            reader.read_local(
                b"k",
                |n| n == 1,
                || 2,
                |got| got.field(b"").map(<[u8]>::to_vec),
            )
        })
        .join()
        .unwrap()
    };
    assert_eq!(read(reader.clone()), Err(NotReplicated));
    s.set_replicated(p, 3);
    assert_eq!(
        read(reader.clone()),
        Err(NotReplicated),
        "one of three copies is not enough"
    );
    s.set_replicated(p, 1);
    assert_eq!(read(reader.clone()), Ok(Some(Some(b"v1".to_vec()))));
    s.put(b"k", value("v2"), Expiry::default(), stamp(2, 1), 2)
        .unwrap();
    assert_eq!(read(reader.clone()), Ok(Some(Some(b"v2".to_vec()))));
    s.delete(b"k", stamp(3, 1), 3).unwrap();
    assert_eq!(read(reader), Ok(None), "a deleted session reads as absent");
}

#[test]
fn records_visible_changes_only_while_watched() {
    let mut s = store();
    s.put(b"a", value("1"), expiring_at(100), stamp(1, 1), 1)
        .unwrap();
    assert!(s.take_changes().is_empty(), "nothing recorded unwatched");
    s.record_changes(true);
    let change = |key: &[u8], kind| KeyChange {
        key: Bytes::copy_from_slice(key),
        kind,
    };
    s.put(b"b", value("1"), Expiry::default(), stamp(2, 1), 2)
        .unwrap();
    s.put(b"b", value("1"), Expiry::default(), stamp(2, 1), 2)
        .unwrap();
    s.delete(b"b", stamp(3, 1), 3).unwrap();
    s.delete(b"b", stamp(4, 1), 4).unwrap();
    s.sweep(s.partition_of(b"a"), 100);
    assert_eq!(
        s.take_changes(),
        vec![
            change(b"b", ChangeKind::Updated),
            change(b"b", ChangeKind::Removed),
            change(b"a", ChangeKind::Removed),
        ],
        "a duplicate, and a delete of a deleted session, change nothing visible"
    );
    assert!(s.take_changes().is_empty());
}

#[test]
fn refuses_an_oversized_key_and_stores_nothing() {
    let mut s = store();
    let key = vec![b'k'; MAX_KEY_LEN + 1];
    let err = s
        .put(&key, value("v"), Expiry::default(), stamp(1, 1), 1)
        .unwrap_err();
    assert_eq!(err, Error::KeyTooLong { len: 513, max: 512 });
    assert!(s.is_empty());
    assert!(
        s.put(
            &key[..MAX_KEY_LEN],
            value("v"),
            Expiry::default(),
            stamp(1, 1),
            1
        )
        .unwrap()
    );
}

#[test]
fn an_expired_session_is_invisible_at_once_and_reclaimed_by_a_sweep() {
    let mut s = store();
    s.put(b"k", value("v"), expiring_at(1_000), stamp(10, 1), 10)
        .unwrap();
    assert!(s.read(b"k", 999, |_| ()).is_some());
    assert!(
        s.read(b"k", 1_000, |_| ()).is_none(),
        "invisible the moment its deadline comes, before any sweep"
    );
    let p = s.partition_of(b"k");
    let stats = s.sweep(p, 1_000);
    assert_eq!(stats.expired, 1);
    assert_eq!(s.len(), 1, "kept as a tombstone through the grace period");
    assert_eq!(s.sweep(p, 1_000 + GRACE_MS).collected, 1);
    assert!(s.is_empty());
    assert_eq!(s.digest(p), PartitionDigest::default());
}

#[test]
fn a_deleted_session_cannot_come_back_within_the_window_and_tombstones_do_not_pile_up() {
    const DEADLINE: u64 = 50_000;
    let mut s = store();
    let mut stale = store();
    // The session, with a deadline, reaches both replicas; the stale one also
    // takes a late field write. Then the session is deleted (logout) at 1,000.
    for replica in [&mut s, &mut stale] {
        replica
            .put(b"k", value("v"), expiring_at(DEADLINE), stamp(100, 1), 100)
            .unwrap();
    }
    stale
        .put_field(
            b"k",
            Bytes::from_static(b"cart"),
            Bytes::from_static(b"1"),
            stamp(900, 2),
            900,
        )
        .unwrap();
    s.delete(b"k", stamp(1_000, 1), 1_000).unwrap();
    let p = s.partition_of(b"k");
    let stale_state = stale.session(b"k").unwrap();

    // Throughout the window (until the covered deadline plus grace), the stale
    // state merges in without bringing the session back, sweeps or not.
    for now in [
        1_001,
        20_000,
        DEADLINE - 1,
        DEADLINE,
        DEADLINE + GRACE_MS - 1,
    ] {
        s.sweep(p, now);
        s.merge_remote(b"k", stale_state.clone(), now).unwrap();
        assert!(s.read(b"k", now, |_| ()).is_none(), "resurrected at {now}");
        assert_eq!(s.len(), 1, "the tombstone is kept at {now}");
    }
    // After it, the tombstone goes, and the stale state cannot revive the
    // session either: it has expired by its own deadline.
    assert_eq!(s.sweep(p, DEADLINE + GRACE_MS).collected, 1);
    assert!(s.is_empty());
    s.merge_remote(b"k", stale_state, DEADLINE + GRACE_MS)
        .unwrap();
    assert!(s.read(b"k", DEADLINE + GRACE_MS, |_| ()).is_none());
    assert!(s.is_empty(), "an expired stale state is not even stored");

    // Many logouts leave no tombstones behind once their window has passed.
    for i in 0..1_000u64 {
        let key = i.to_le_bytes();
        s.put(&key, value("v"), expiring_at(DEADLINE), stamp(100, 1), 100)
            .unwrap();
        s.delete(&key, stamp(200 + i, 1), 200 + i).unwrap();
    }
    assert_eq!(s.len(), 1_000);
    let now = DEADLINE + GRACE_MS;
    let collected: usize = (0..s.partition_count())
        .map(|p| s.sweep(PartitionId(p), now).collected)
        .sum();
    assert_eq!(collected, 1_000);
    assert!(s.is_empty());
}

#[test]
fn deleted_field_markers_are_dropped_after_the_grace_period() {
    let mut s = store();
    s.put(b"k", value("v"), Expiry::default(), stamp(1, 1), 1)
        .unwrap();
    s.delete_field(b"k", Bytes::from_static(b"gone"), stamp(2, 1), 2)
        .unwrap();
    let p = s.partition_of(b"k");
    assert_eq!(s.sweep(p, 2 + GRACE_MS - 1).field_tombstones_dropped, 0);
    assert_eq!(s.sweep(p, 2 + GRACE_MS + 1).field_tombstones_dropped, 1);
    assert_eq!(s.session(b"k").unwrap().registers().len(), 1);
    assert_eq!(s.digest(p), recomputed_digest(&s, p));
}

#[test]
fn entries_by_hash_finds_exactly_the_listed_keys() {
    let mut s = store();
    for i in 0..200u32 {
        s.put(
            &i.to_le_bytes(),
            value("v"),
            Expiry::default(),
            stamp(1, 1),
            1,
        )
        .unwrap();
    }
    let key = 7u32.to_le_bytes();
    let p = s.partition_of(&key);
    let found = s.entries_by_hash(p, &[key_hash(&key), 12345]);
    assert_eq!(found.len(), 1);
    assert_eq!(&found[0].key[..], &key);
    assert_eq!(found[0].session, s.session(&key).unwrap());
}

#[test]
fn local_writes_go_only_to_partitions_the_node_replicates_alone() {
    let mut s = store();
    s.record_changes(true);
    let reader = s.reader();
    let clock = Hlc::new(NodeId(9), 500);
    let put = Write::Put {
        fields: value("v"),
        expiry: Expiry::default(),
    };
    let p = s.partition_of(b"k");
    for replicas in [0, 2, 3] {
        s.set_replicated(p, replicas);
        assert_eq!(
            reader.write_local(b"k", &put, &clock, 5),
            Err(NotReplicated)
        );
    }
    assert!(s.is_empty(), "refused writes store nothing");
    s.set_replicated(p, 1);
    let too_long = vec![b'k'; MAX_KEY_LEN + 1];
    if s.partition_of(&too_long) == p {
        assert_eq!(
            reader.write_local(&too_long, &put, &clock, 5),
            Err(NotReplicated)
        );
    }
    let (stamp, changed) = reader.write_local(b"k", &put, &clock, 5).unwrap();
    assert!(changed);
    assert_eq!(stamp.node, NodeId(9));
    assert_eq!(stamp.wall_ms(), 5);
    assert_eq!(s.len(), 1);
    assert_eq!(s.session(b"k"), Some(Session::from_write(&put, stamp)));
    assert_eq!(s.digest(p), recomputed_digest(&s, p));
    assert_eq!(
        s.take_changes(),
        vec![KeyChange {
            key: Bytes::from_static(b"k"),
            kind: ChangeKind::Updated
        }]
    );
    // The same clock orders the owner's later writes after it.
    let (logout, _) = reader.write_local(b"k", &Write::Delete, &clock, 1).unwrap();
    assert!(
        logout > stamp,
        "a later stamp even when the wall clock steps back"
    );
    assert!(s.read(b"k", 5, |_| ()).is_none());
    assert_eq!(s.take_changes()[0].kind, ChangeKind::Removed);
}

#[test]
fn local_writes_from_threads_and_owner_merges_keep_the_digests_exact() {
    let mut s = store();
    for p in 0..s.partition_count() {
        s.set_replicated(PartitionId(p), 1);
    }
    let clock = Arc::new(Hlc::new(NodeId(1), 500));
    std::thread::scope(|scope| {
        for t in 0..2u64 {
            let (reader, clock) = (s.reader(), Arc::clone(&clock));
            scope.spawn(move || {
                for i in 0..2_000u64 {
                    let key = (i % 300).to_le_bytes();
                    let write = if i % 7 == 0 {
                        Write::Delete
                    } else {
                        Write::PutField {
                            name: Bytes::from(vec![b'a' + u8::try_from(t).unwrap()]),
                            value: Bytes::from(i.to_le_bytes().to_vec()),
                        }
                    };
                    reader.write_local(&key, &write, &clock, 100 + i).unwrap();
                }
            });
        }
        for i in 0..2_000u64 {
            let key = (i % 300).to_le_bytes();
            s.put_field(
                &key,
                Bytes::from_static(b"o"),
                Bytes::new(),
                stamp(50 + i, 2),
                100 + i,
            )
            .unwrap();
        }
    });
    let mut entries = 0;
    for p in (0..s.partition_count()).map(PartitionId) {
        assert_eq!(s.digest(p), recomputed_digest(&s, p));
        entries += s.partition_len(p);
    }
    assert_eq!(s.len(), entries);
}

/// What the stored entries take, counted afresh.
fn recounted_bytes(store: &Store) -> usize {
    (0..store.partition_count())
        .map(|p| {
            let partition = store.shared.read(PartitionId(p));
            partition
                .table
                .iter()
                .map(|packed| locking::entry_bytes(packed.len()))
                .sum::<usize>()
        })
        .sum()
}

/// What the tables' slots take, counted afresh from their capacity.
fn recounted_table_bytes(store: &Store) -> usize {
    (0..store.partition_count())
        .map(|p| locking::table_bytes(store.shared.read(PartitionId(p)).table.capacity()))
        .sum()
}

fn arb_op() -> impl Strategy<Value = (u8, Option<Write>, u64, u64)> {
    // (key, write or sweep, ms, node)
    (
        0u8..6,
        prop::option::weighted(0.9, arb_write()),
        0u64..60_000,
        1u64..4,
    )
}

/// What the store keeps after merging `incoming` into `before` at
/// `now_ms`, by the rules [`Store::merge_remote`] states, with a full
/// unpack and merge: `None` when the result is a collectable tombstone.
fn full_merge(before: Option<Session>, incoming: &Session, now_ms: u64) -> Option<Session> {
    let due_by = now_ms.max(incoming.newest_stamp().wall_ms());
    let mut merged = before.unwrap_or_default();
    merged.expire_if_due(due_by);
    merged.merge(incoming.clone());
    merged.expire_if_due(now_ms);
    let collectable = merged.is_tombstone() && merged.collectable_at_ms(GRACE_MS) <= now_ms;
    (!collectable).then_some(merged)
}

proptest! {
    /// A write that clears past everything stored (the path that skips
    /// unpacking the stored fields) stores exactly what a full unpack
    /// and merge would.
    #[test]
    fn a_superseding_write_stores_what_a_full_merge_would(
        history in prop::collection::vec((arb_write(), 0u64..60_000), 1..12),
        last in arb_write(),
        now in 0u64..120_000,
    ) {
        let mut s = store();
        for (i, (write, ms)) in history.iter().enumerate() {
            s.apply(b"k", write, stamp(*ms, i as u64 + 1), *ms).unwrap();
        }
        let before = s.session(b"k");
        // Later than every stamp in the history.
        let incoming = Session::from_write(&last, stamp(70_000, 99));
        let expected = full_merge(before, &incoming, now);
        s.merge_remote(b"k", incoming, now).unwrap();
        prop_assert_eq!(s.session(b"k"), expected);
    }

    /// A one-field write (the path that sets the field in the packed
    /// bytes) stores exactly what a full unpack and merge would, at any
    /// stamp: older or newer than the stored ones, before or after the
    /// deadline. The digest follows.
    #[test]
    fn a_field_write_stores_what_a_full_merge_would(
        history in prop::collection::vec((arb_write(), 0u64..60_000), 1..12),
        name in prop::sample::select(&["", "user", "cart", "zz"][..]),
        value in prop::sample::select(&["a", "ccc"][..]),
        at in 0u64..70_000,
        node in 1u64..14,
        now in 0u64..120_000,
    ) {
        let mut s = store();
        for (i, (write, ms)) in history.iter().enumerate() {
            s.apply(b"k", write, stamp(*ms, i as u64 + 1), *ms).unwrap();
        }
        let before = s.session(b"k");
        let write = Write::PutField {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        };
        let incoming = Session::from_write(&write, stamp(at, node));
        let expected = full_merge(before.clone(), &incoming, now);
        let changed = s.merge_remote(b"k", incoming, now).unwrap();
        let got = s.session(b"k");
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(changed, got != before);
        let p = s.partition_of(b"k");
        prop_assert_eq!(s.digest(p), recomputed_digest(&s, p));
    }

    /// The incrementally kept digest always equals one rebuilt from
    /// scratch, and the memory count the entries' sizes.
    #[test]
    fn digests_and_memory_stay_exact(ops in prop::collection::vec(arb_op(), 0..60)) {
        let mut s = store();
        for (i, (key, write, ms, node)) in ops.into_iter().enumerate() {
            let key = [key];
            match write {
                Some(write) => {
                    // Some arrive late: older than the grace period.
                    let now = ms + (node - 1) * 15_000;
                    s.apply(&key, &write, stamp(ms, node * 1_000 + i as u64), now).unwrap();
                }
                None => {
                    s.sweep(s.partition_of(&key), ms);
                }
            }
        }
        for p in 0..s.partition_count() {
            prop_assert_eq!(s.digest(PartitionId(p)), recomputed_digest(&s, PartitionId(p)));
        }
        prop_assert_eq!(s.memory().entries, recounted_bytes(&s));
        prop_assert_eq!(s.memory().tables, recounted_table_bytes(&s));
        let p = s.partition_of(&[0]);
        s.drop_partition(p);
        prop_assert_eq!(s.memory().entries, recounted_bytes(&s));
        prop_assert_eq!(s.memory().tables, recounted_table_bytes(&s));
    }

    /// Two stores that take the same writes in opposite orders hold the
    /// same sessions and digests: at once when no deadline passes, and
    /// after anti-entropy rounds when deadlines do.
    #[test]
    fn stores_converge_whatever_the_order(
        writes in prop::collection::vec((0u8..4, arb_write(), 0u64..60_000), 0..30),
        expiry in any::<bool>(),
    ) {
        let stamped: Vec<_> = writes.into_iter().enumerate()
            .map(|(i, (key, w, ms))| {
                let w = match w {
                    Write::Put { fields, .. } if !expiry => Write::Put { fields, expiry: Expiry::default() },
                    Write::ExpireAt { .. } | Write::MaxIdle { .. } if !expiry => Write::Touch,
                    w => w,
                };
                ([key], w, stamp(ms, i as u64 + 1), ms)
            }).collect();
        let mut a = store();
        let mut c = store();
        for (key, w, s, ms) in &stamped {
            a.apply(key, w, *s, *ms).unwrap();
        }
        for (key, w, s, ms) in stamped.iter().rev() {
            c.apply(key, w, *s, *ms).unwrap();
        }
        if expiry {
            // Anti-entropy as the runtime runs it: sweep, then exchange, until quiet.
            // Which tombstone stamp a replica chose depends on when it saw the
            // deadline pass, so the exchange may take more than one round.
            let now = 60_000;
            for _ in 0..4 {
                for p in 0..a.partition_count() {
                    a.sweep(PartitionId(p), now);
                    c.sweep(PartitionId(p), now);
                    let from_a: Vec<Entry> = a.entries(PartitionId(p));
                    let from_c: Vec<Entry> = c.entries(PartitionId(p));
                    for e in from_a {
                        c.merge_remote(&e.key, e.session, now).unwrap();
                    }
                    for e in from_c {
                        a.merge_remote(&e.key, e.session, now).unwrap();
                    }
                }
            }
        }
        for p in 0..a.partition_count() {
            prop_assert_eq!(a.digest(PartitionId(p)), c.digest(PartitionId(p)));
        }
        for key in 0u8..4 {
            prop_assert_eq!(a.session(&[key]), c.session(&[key]));
        }
    }
}
