//! Two replicas of 100,000 sessions that differ in five keys find exactly those
//! keys by exchanging digests, and converge by exchanging only those sessions.
//! Every message goes through the wire codec, so the byte counts are what a
//! peer would send.

use std::collections::BTreeSet;

use bytes::Bytes;
use sessmesh_core::digest::differing_keys;
use sessmesh_core::{
    ClusterId, Codec, Config, Entry, Expiry, HlcTime, Message, NodeId, PartitionId, Stamp, Store,
    Write, key_hash,
};

const SESSIONS: u64 = 100_000;
const NOW_MS: u64 = 1_700_000_000_000;

fn stamp(offset_ms: u64, node: u64) -> Stamp {
    Stamp::new(HlcTime::from_wall_ms(NOW_MS + offset_ms), NodeId(node))
}

fn key(i: u64) -> Vec<u8> {
    format!("session:{i:056}").into_bytes() // 64 bytes
}

fn put(i: u64) -> Write {
    Write::Put {
        fields: vec![(Bytes::new(), Bytes::from(vec![(i % 251) as u8; 256]))],
        expiry: Expiry {
            expires_at_ms: Some(NOW_MS + 3_600_000),
            max_idle_ms: None,
        },
    }
}

/// Sends `message` through the codec and returns what the peer decodes, adding
/// the frame's size to `bytes`.
fn send(codec: &Codec, message: Message, bytes: &mut usize) -> Message {
    let mut frame = Vec::new();
    codec
        .encode_frame(&message, &mut frame)
        .expect("within the frame limit");
    *bytes += frame.len();
    let (decoded, used) = codec
        .decode_frame(&frame)
        .expect("decodes")
        .expect("complete");
    assert_eq!(used, frame.len());
    decoded
}

#[test]
fn digests_find_exactly_the_differing_keys_for_under_one_percent_of_the_data() {
    let config = Config::default();
    let codec = Codec::new(
        ClusterId::from_name("anti-entropy-test"),
        config.max_frame_bytes,
    );
    let mut a = Store::new(&config);
    let mut b = Store::new(&config);
    let mut data_bytes = 0usize;
    for i in 0..SESSIONS {
        let write = put(i);
        for store in [&mut a, &mut b] {
            store
                .apply(&key(i), &write, stamp(i % 1_000, 1), NOW_MS)
                .unwrap();
        }
        data_bytes += 64 + 256;
    }

    // Five ways two replicas can disagree about a key.
    let only_on_a = key(SESSIONS);
    a.apply(&only_on_a, &put(SESSIONS), stamp(2_000, 1), NOW_MS)
        .unwrap();
    let only_on_b = key(SESSIONS + 1);
    b.apply(&only_on_b, &put(SESSIONS + 1), stamp(2_000, 2), NOW_MS)
        .unwrap();
    let field_on_a = key(17);
    a.apply(
        &field_on_a,
        &Write::PutField {
            name: "cart".into(),
            value: "1".into(),
        },
        stamp(2_001, 1),
        NOW_MS,
    )
    .unwrap();
    let deleted_on_b = key(4_242);
    b.apply(&deleted_on_b, &Write::Delete, stamp(2_002, 2), NOW_MS)
        .unwrap();
    let concurrent = key(99_999);
    a.apply(
        &concurrent,
        &Write::PutField {
            name: "theme".into(),
            value: "dark".into(),
        },
        stamp(2_003, 1),
        NOW_MS,
    )
    .unwrap();
    b.apply(
        &concurrent,
        &Write::PutField {
            name: "lang".into(),
            value: "fr".into(),
        },
        stamp(2_003, 2),
        NOW_MS,
    )
    .unwrap();
    let expected: BTreeSet<Vec<u8>> = [only_on_a, only_on_b, field_on_a, deleted_on_b, concurrent]
        .into_iter()
        .collect();

    // The exchange, initiated by a.
    let mut digest_bytes = 0;
    let partitions = (0..config.partition_count).map(PartitionId);
    let roots = partitions
        .clone()
        .map(|p| (p, a.digest(p).root()))
        .collect();
    let Message::DigestRoots { roots } =
        send(&codec, Message::DigestRoots { roots }, &mut digest_bytes)
    else {
        unreachable!()
    };
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    let mut found = BTreeSet::new();
    for (partition, root) in roots {
        if b.digest(partition).root() == root {
            continue;
        }
        let buckets = b.digest(partition).buckets().to_vec();
        let Message::DigestBuckets { partition, buckets } = send(
            &codec,
            Message::DigestBuckets { partition, buckets },
            &mut digest_bytes,
        ) else {
            unreachable!()
        };
        for bucket in a.digest(partition).differing_buckets(&buckets) {
            let keys = a.bucket_keys(partition, bucket);
            let Message::DigestKeys {
                partition,
                bucket,
                keys,
            } = send(
                &codec,
                Message::DigestKeys {
                    partition,
                    bucket,
                    keys,
                },
                &mut digest_bytes,
            )
            else {
                unreachable!()
            };
            let differing = differing_keys(&b.bucket_keys(partition, bucket), &keys);
            // b pushes its versions and asks for a's.
            to_a.extend(b.entries_by_hash(partition, &differing));
            let Message::FetchKeys {
                partition,
                key_hashes,
            } = send(
                &codec,
                Message::FetchKeys {
                    partition,
                    key_hashes: differing,
                },
                &mut digest_bytes,
            )
            else {
                unreachable!()
            };
            to_b.extend(a.entries_by_hash(partition, &key_hashes));
            found.extend(key_hashes);
        }
    }

    // Exactly the five keys, found for well under 1% of the data's size.
    let expected_hashes: BTreeSet<u64> = expected.iter().map(|k| key_hash(k)).collect();
    assert_eq!(found, expected_hashes);
    let sent_keys: BTreeSet<Vec<u8>> = to_a.iter().chain(&to_b).map(|e| e.key.to_vec()).collect();
    assert_eq!(sent_keys, expected);
    let share = digest_bytes as f64 / data_bytes as f64;
    eprintln!(
        "digest exchange: {digest_bytes} bytes for {data_bytes} bytes of data ({:.4}%), {} differing keys",
        share * 100.0,
        found.len()
    );
    assert!(
        share < 0.01,
        "digests took {digest_bytes} bytes, {:.3}% of the data",
        share * 100.0
    );

    // Merging just those sessions makes the replicas identical.
    let mut merge_bytes = 0;
    for (entries, store) in [(to_a, &mut a), (to_b, &mut b)] {
        let Message::Merge { entries } = send(&codec, Message::Merge { entries }, &mut merge_bytes)
        else {
            unreachable!()
        };
        for Entry { key, session } in entries {
            store.merge_remote(&key, session, NOW_MS).unwrap();
        }
    }
    for p in partitions {
        assert_eq!(a.digest(p), b.digest(p), "partition {p:?} still differs");
    }
    let merged = a.read(&key(99_999), NOW_MS, |merged| {
        (
            merged.field(b"theme").map(<[u8]>::to_vec),
            merged.field(b"lang").map(<[u8]>::to_vec),
        )
    });
    assert_eq!(merged, Some((Some(b"dark".to_vec()), Some(b"fr".to_vec()))));
    assert!(
        a.read(&key(4_242), NOW_MS, |_| ()).is_none(),
        "the delete won on both"
    );
}
