//! Two replicas of one session update it at the same time, then merge: both
//! field updates survive, and a logout stays a logout.
//!
//! ```text
//! cargo run -p sessmesh-core --example replicas_merge
//! ```

use bytes::Bytes;
use sessmesh_core::{Config, Expiry, Hlc, NodeId, Store, Write};

fn show(name: &str, store: &Store, key: &[u8], now_ms: u64) {
    let fields = store.read(key, now_ms, |session| {
        session
            .fields()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect::<Vec<String>>()
    });
    match fields {
        Some(fields) => println!("  {name}: {}", fields.join(", ")),
        None => println!("  {name}: (no session)"),
    }
}

fn exchange(
    a: &mut Store,
    b: &mut Store,
    key: &[u8],
    now_ms: u64,
) -> Result<(), sessmesh_core::Error> {
    let (from_a, from_b) = (a.session(key), b.session(key));
    if let Some(state) = from_b {
        a.merge_remote(key, state, now_ms)?;
    }
    if let Some(state) = from_a {
        b.merge_remote(key, state, now_ms)?;
    }
    Ok(())
}

fn main() -> Result<(), sessmesh_core::Error> {
    let config = Config::default();
    let (mut a, mut b) = (Store::new(&config), Store::new(&config));
    let (clock_a, clock_b) = (Hlc::new(NodeId(1), 500), Hlc::new(NodeId(2), 500));
    let key = b"session:ada";
    let mut now_ms = 1_700_000_000_000;

    println!("1. Ada logs in on replica a; the session reaches b.");
    let login = Write::Put {
        fields: vec![(Bytes::from("user"), Bytes::from("ada"))],
        expiry: Expiry {
            expires_at_ms: None,
            max_idle_ms: Some(30 * 60 * 1000),
        },
    };
    a.apply(key, &login, clock_a.stamp(now_ms), now_ms)?;
    exchange(&mut a, &mut b, key, now_ms)?;
    show("a", &a, key, now_ms);
    show("b", &b, key, now_ms);

    println!("2. Two requests at once: one adds to the cart on a, one sets the theme on b.");
    now_ms += 10;
    let cart = Write::PutField {
        name: Bytes::from("cart"),
        value: Bytes::from("1 book"),
    };
    let theme = Write::PutField {
        name: Bytes::from("theme"),
        value: Bytes::from("dark"),
    };
    a.apply(key, &cart, clock_a.stamp(now_ms), now_ms)?;
    b.apply(key, &theme, clock_b.stamp(now_ms), now_ms)?;
    show("a", &a, key, now_ms);
    show("b", &b, key, now_ms);

    println!("3. The replicas merge: both updates survive, on both.");
    exchange(&mut a, &mut b, key, now_ms)?;
    show("a", &a, key, now_ms);
    show("b", &b, key, now_ms);

    println!("4. Ada logs out on a while b, not yet told, takes one more cart update.");
    now_ms += 10;
    a.apply(key, &Write::Delete, clock_a.stamp(now_ms), now_ms)?;
    let late = Write::PutField {
        name: Bytes::from("cart"),
        value: Bytes::from("2 books"),
    };
    b.apply(key, &late, clock_b.stamp(now_ms - 5), now_ms)?;
    show("a", &a, key, now_ms);
    show("b", &b, key, now_ms);

    println!(
        "5. They merge: the logout is newer than everything b held, so the session stays gone."
    );
    exchange(&mut a, &mut b, key, now_ms)?;
    show("a", &a, key, now_ms);
    show("b", &b, key, now_ms);
    assert!(a.read(key, now_ms, |_| ()).is_none() && b.read(key, now_ms, |_| ()).is_none());
    Ok(())
}
