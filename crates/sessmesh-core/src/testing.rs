//! Proptest strategies shared by the unit tests.

use bytes::Bytes;
use proptest::prelude::*;

use crate::clock::{HlcTime, NodeId, Stamp};
use crate::session::{Expiry, Session, Write};

/// A stamp at wall-clock `ms` from `node`.
pub(crate) fn stamp(ms: u64, node: u64) -> Stamp {
    Stamp::new(HlcTime::from_wall_ms(ms), NodeId(node))
}

fn arb_bytes(names: &'static [&'static str]) -> impl Strategy<Value = Bytes> {
    prop::sample::select(names).prop_map(|s: &str| Bytes::from_static(s.as_bytes()))
}

/// Field names from a small set, so histories collide on fields.
fn arb_name() -> impl Strategy<Value = Bytes> {
    arb_bytes(&["", "user", "cart", "theme"])
}

fn arb_value() -> impl Strategy<Value = Bytes> {
    arb_bytes(&["a", "b", "ccc", ""])
}

/// Times in a small window so that deadlines land both before and after the writes.
fn arb_time() -> impl Strategy<Value = u64> {
    0u64..60_000
}

/// Any write.
pub(crate) fn arb_write() -> impl Strategy<Value = Write> {
    prop_oneof![
        (
            prop::collection::vec((arb_name(), arb_value()), 0..3),
            prop::option::of(arb_time()),
            prop::option::of(0u64..20_000)
        )
            .prop_map(|(fields, expires_at_ms, max_idle_ms)| Write::Put {
                fields,
                expiry: Expiry {
                    expires_at_ms,
                    max_idle_ms
                }
            }),
        (arb_name(), arb_value()).prop_map(|(name, value)| Write::PutField { name, value }),
        arb_name().prop_map(|name| Write::DeleteField { name }),
        Just(Write::Delete),
        prop::option::of(arb_time()).prop_map(|at_ms| Write::ExpireAt { at_ms }),
        prop::option::of(0u64..20_000).prop_map(|idle_ms| Write::MaxIdle { idle_ms }),
        Just(Write::Touch),
        Just(Write::Evict),
    ]
}

/// A session built from a random history of writes, some of them expired by a sweep.
pub(crate) fn arb_session() -> impl Strategy<Value = Session> {
    prop::collection::vec(
        (arb_write(), arb_time(), 1u64..4, prop::bool::weighted(0.1)),
        0..8,
    )
    .prop_map(|history| {
        let mut session = Session::default();
        for (write, ms, node, sweep) in history {
            if sweep {
                session.expire_if_due(ms);
            }
            session.apply(&write, stamp(ms, node));
        }
        session
    })
}
