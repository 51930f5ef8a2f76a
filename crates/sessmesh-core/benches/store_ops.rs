//! Store throughput against a plain `HashMap<Vec<u8>, Vec<u8>>`, in one run.
//!
//! ```text
//! cargo bench -p sessmesh-core --bench store_ops
//! ```
//! Both hold 1,000,000 sessions of 64-byte keys and 256-byte values and are
//! read or written at pseudo-random keys. `get` looks the value up;
//! `get_copy` also copies it out, as a server writing a reply does; `put`
//! replaces it; `merge` merges a replica's one-field update into the stored
//! session (the replication path); its baseline is `put`'s map insert.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::LazyLock;

use bytes::Bytes;
use divan::Bencher;
use sessmesh_core::{Config, Expiry, HlcTime, NodeId, Session, Stamp, Store, Write};

const SESSIONS: usize = 1_000_000;
const NOW_MS: u64 = 1_700_000_000_000;

static KEYS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    (0..SESSIONS)
        .map(|i| format!("session:{i:056}").into_bytes())
        .collect()
});

fn value(i: usize) -> Vec<u8> {
    vec![i.to_le_bytes()[0]; 256]
}

/// A cheap pseudo-random walk over the keys (xorshift), the same for both sides.
struct Walk(u64);

impl Walk {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % SESSIONS as u64).expect("below SESSIONS")
    }
}

fn stamp(counter: u64) -> Stamp {
    Stamp::new(
        HlcTime::from_u64(HlcTime::from_wall_ms(NOW_MS).as_u64() + counter),
        NodeId(1),
    )
}

fn filled_map() -> HashMap<Vec<u8>, Vec<u8>> {
    KEYS.iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), value(i)))
        .collect()
}

fn filled_store() -> Store {
    let mut store = Store::new(&Config::default());
    for (i, key) in KEYS.iter().enumerate() {
        let fields = vec![(Bytes::new(), Bytes::from(value(i)))];
        store
            .put(key, fields, Expiry::default(), stamp(1), NOW_MS)
            .expect("fits");
    }
    store
}

fn main() {
    divan::main();
}

#[divan::bench_group(sample_count = 1000, sample_size = 100)]
mod get {
    use super::*;

    #[divan::bench]
    fn hashmap(bencher: Bencher<'_, '_>) {
        let map = filled_map();
        let mut walk = Walk(0x9E37_79B9);
        bencher.bench_local(|| {
            map.get(&KEYS[walk.next()])
                .map(|v| black_box(v.as_slice()).len())
        });
    }

    #[divan::bench]
    fn store(bencher: Bencher<'_, '_>) {
        let store = filled_store();
        let mut walk = Walk(0x9E37_79B9);
        bencher.bench_local(|| {
            store
                .read(&KEYS[walk.next()], NOW_MS, |s| {
                    s.field(b"").map(|v| black_box(v).len())
                })
                .flatten()
        });
    }
}

/// A get whose value is then used: copied out, as a server writing a reply does.
#[divan::bench_group(sample_count = 1000, sample_size = 100)]
mod get_copy {
    use super::*;

    #[divan::bench]
    fn hashmap(bencher: Bencher<'_, '_>) {
        let map = filled_map();
        let mut walk = Walk(0x2545_F491);
        let mut reply = Vec::with_capacity(512);
        bencher.bench_local(|| {
            reply.clear();
            if let Some(v) = map.get(&KEYS[walk.next()]) {
                reply.extend_from_slice(v);
            }
            black_box(&reply);
        });
    }

    #[divan::bench]
    fn store(bencher: Bencher<'_, '_>) {
        let store = filled_store();
        let mut walk = Walk(0x2545_F491);
        let mut reply = Vec::with_capacity(512);
        bencher.bench_local(|| {
            reply.clear();
            store.read(&KEYS[walk.next()], NOW_MS, |s| {
                if let Some(v) = s.field(b"") {
                    reply.extend_from_slice(v);
                }
            });
            black_box(&reply);
        });
    }
}

#[divan::bench_group(sample_count = 1000, sample_size = 100)]
mod put {
    use super::*;

    #[divan::bench]
    fn hashmap(bencher: Bencher<'_, '_>) {
        let mut map = filled_map();
        let mut walk = Walk(0x51_7CC1);
        bencher.bench_local(|| {
            let i = walk.next();
            map.insert(KEYS[i].clone(), value(i))
        });
    }

    #[divan::bench]
    fn store(bencher: Bencher<'_, '_>) {
        let mut store = filled_store();
        let mut walk = Walk(0x51_7CC1);
        let mut counter = 1;
        bencher.bench_local(|| {
            let i = walk.next();
            counter += 1;
            let fields = vec![(Bytes::new(), Bytes::from(value(i)))];
            store.put(&KEYS[i], fields, Expiry::default(), stamp(counter), NOW_MS)
        });
    }
}

#[divan::bench_group(sample_count = 1000, sample_size = 100)]
mod merge {
    use super::*;

    #[divan::bench]
    fn store(bencher: Bencher<'_, '_>) {
        let mut store = filled_store();
        let mut walk = Walk(0xB5_297A);
        let mut counter = 1;
        bencher.bench_local(|| {
            let i = walk.next();
            counter += 1;
            let write = Write::PutField {
                name: Bytes::from_static(b"cart"),
                value: Bytes::from(value(i)),
            };
            store.merge_remote(
                &KEYS[i],
                Session::from_write(&write, stamp(counter)),
                NOW_MS,
            )
        });
    }
}
