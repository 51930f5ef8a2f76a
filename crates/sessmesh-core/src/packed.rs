//! The in-memory form of a stored session: key, registers and fields packed
//! into one allocation.
//!
//! A store holds a million sessions, so each costs one heap allocation and a
//! 16-byte slot in its partition's table rather than a `BTreeMap`, a boxed key
//! and a boxed value each. Reads borrow from the packed bytes without copying.
//! (No serialization crate gives a borrowed, allocation-free view with the
//! stamp elision below, so the format is written here; it never leaves the
//! process, so it carries no version.)
//!
//! Layout (integers little-endian, `varint` is unsigned LEB128):
//! ```text
//! varint key_len, key
//! u8 flags                                    (EVICTED: the clear is an eviction's)
//! [stamp clear]                                 if CLEAR
//! [stamp expires_at unless EXPIRES_AT_CLEAR]
//! [opt_u64 expires_at]                          if EXPIRES
//! [stamp max_idle unless IDLE_AT_CLEAR]
//! [opt_u64 max_idle]                            if IDLE
//! [stamp touched]                               if TOUCHED
//! varint field_count, then per field in name order:
//!   varint name_len, name, u8 field_flags,
//!   [stamp unless FIELD_AT_CLEAR], [varint value_len, value if FIELD_VALUE]
//! stamp   = u64 time, u64 node
//! opt_u64 = u8 0 (None) | u8 1, varint value
//! ```
//! A stamp equal to the clear stamp, as a whole-value put writes them, is
//! stored as a flag bit instead of 16 bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use crdts::LWWReg;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::{HlcTime, NodeId, Stamp};
use crate::session::{FieldRegister, Header, Session, TimeRegister};

const CLEAR: u8 = 1;
const EXPIRES: u8 = 1 << 1;
const EXPIRES_AT_CLEAR: u8 = 1 << 2;
const IDLE: u8 = 1 << 3;
const IDLE_AT_CLEAR: u8 = 1 << 4;
const TOUCHED: u8 = 1 << 5;
/// The clear stamp is an eviction's ([`Header::evicted`]).
const EVICTED: u8 = 1 << 6;

const FIELD_VALUE: u8 = 1;
const FIELD_AT_CLEAR: u8 = 1 << 1;

/// Packs `session` stored under `key` into one exactly-sized allocation.
pub(crate) fn encode(key: &[u8], session: &Session) -> Box<[u8]> {
    let header = session.header();
    let mut out = Vec::with_capacity(encoded_len(key, session));
    put_varint(&mut out, key.len() as u64);
    out.extend_from_slice(key);
    let mut flags = 0;
    if header.clear != Stamp::ZERO {
        flags |= CLEAR;
    }
    for (register, set, at_clear) in [
        (&header.expires_at, EXPIRES, EXPIRES_AT_CLEAR),
        (&header.max_idle, IDLE, IDLE_AT_CLEAR),
    ] {
        if *register != TimeRegister::default() {
            flags |= set;
            if register.marker == header.clear {
                flags |= at_clear;
            }
        }
    }
    if header.touched != Stamp::ZERO {
        flags |= TOUCHED;
    }
    if header.evicted {
        flags |= EVICTED;
    }
    out.push(flags);
    if flags & CLEAR != 0 {
        put_stamp(&mut out, header.clear);
    }
    for (register, set, at_clear) in [
        (&header.expires_at, EXPIRES, EXPIRES_AT_CLEAR),
        (&header.max_idle, IDLE, IDLE_AT_CLEAR),
    ] {
        if flags & set != 0 {
            if flags & at_clear == 0 {
                put_stamp(&mut out, register.marker);
            }
            match register.val {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_varint(&mut out, v);
                }
            }
        }
    }
    if flags & TOUCHED != 0 {
        put_stamp(&mut out, header.touched);
    }
    put_varint(&mut out, session.registers().len() as u64);
    for (name, field) in session.registers() {
        put_field(
            &mut out,
            name,
            field.val.as_deref(),
            field.marker,
            header.clear,
        );
    }
    debug_assert_eq!(out.len(), out.capacity(), "encoded_len must be exact");
    out.into_boxed_slice()
}

/// Appends one field as [`encode`] lays it out.
fn put_field(out: &mut Vec<u8>, name: &[u8], value: Option<&[u8]>, marker: Stamp, clear: Stamp) {
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name);
    let mut flags = 0;
    if value.is_some() {
        flags |= FIELD_VALUE;
    }
    if marker == clear {
        flags |= FIELD_AT_CLEAR;
    }
    out.push(flags);
    if flags & FIELD_AT_CLEAR == 0 {
        put_stamp(out, marker);
    }
    if let Some(value) = value {
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// The size [`put_field`] writes.
fn field_len(name: &[u8], value: Option<&[u8]>, marker: Stamp, clear: Stamp) -> usize {
    varint_len(name.len() as u64)
        + name.len()
        + 1
        + if marker == clear { 0 } else { STAMP_LEN }
        + value.map_or(0, |v| varint_len(v.len() as u64) + v.len())
}

/// `packed` with its field `name` set to `value` at `stamp`: the packing of
/// what merging that one write ([`crate::session::Write::PutField`]) into
/// the unpacked session gives, made without unpacking it. Such a write
/// leaves the header as it is, so only the field list changes: the bytes
/// before and after the field are copied around it. `None` when the merge
/// changes nothing: the clear stamp hides the write, or the stored field is
/// newer (or as new, with a value that wins the tie).
pub(crate) fn with_field(
    packed: &Packed<'_>,
    name: &[u8],
    value: &[u8],
    stamp: Stamp,
) -> Option<Box<[u8]>> {
    let clear = packed.header.clear;
    if !packed.header.is_live(stamp) {
        return None;
    }
    // The field's place in the field list: where it starts, and where the
    // stored field it replaces ends.
    let mut fields = packed.fields();
    let (at, replaced_end) = loop {
        let start = fields.reader.pos;
        let Some(field) = fields.next() else {
            break (start, None);
        };
        match field.name.cmp(name) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Greater => break (start, None),
            std::cmp::Ordering::Equal => {
                // The register merge: the later stamp wins, and at the same
                // stamp the larger value.
                if field.stamp > stamp || (field.stamp == stamp && field.value >= Some(value)) {
                    return None;
                }
                break (start, Some(fields.reader.pos));
            }
        }
    };
    let count = packed.field_count + usize::from(replaced_end.is_none());
    let fields_start = packed.bytes.len() - packed.fields.len();
    let count_start = fields_start - varint_len(packed.field_count as u64);
    let after = replaced_end.unwrap_or(at);
    let len = count_start
        + varint_len(count as u64)
        + at
        + field_len(name, Some(value), stamp, clear)
        + (packed.fields.len() - after);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&packed.bytes[..count_start]);
    put_varint(&mut out, count as u64);
    out.extend_from_slice(&packed.fields[..at]);
    put_field(&mut out, name, Some(value), stamp, clear);
    out.extend_from_slice(&packed.fields[after..]);
    debug_assert_eq!(out.len(), len, "the length must be exact");
    Some(out.into_boxed_slice())
}

/// The exact size [`encode`] produces, so it allocates once.
fn encoded_len(key: &[u8], session: &Session) -> usize {
    let header = session.header();
    let stamp_unless_clear = |s: Stamp| if s == header.clear { 0 } else { STAMP_LEN };
    let register_len = |r: &TimeRegister| {
        if *r == TimeRegister::default() {
            0
        } else {
            stamp_unless_clear(r.marker) + 1 + r.val.map_or(0, varint_len)
        }
    };
    let mut len = varint_len(key.len() as u64) + key.len() + 1;
    len += if header.clear != Stamp::ZERO {
        STAMP_LEN
    } else {
        0
    };
    len += register_len(&header.expires_at) + register_len(&header.max_idle);
    len += if header.touched != Stamp::ZERO {
        STAMP_LEN
    } else {
        0
    };
    len += varint_len(session.registers().len() as u64);
    for (name, field) in session.registers() {
        len += field_len(name, field.val.as_deref(), field.marker, header.clear);
    }
    len
}

/// The key of a packed session, without parsing the rest.
pub(crate) fn key_of(packed: &[u8]) -> &[u8] {
    let mut reader = Reader {
        bytes: packed,
        pos: 0,
    };
    let len = reader.varint_usize();
    reader.take(len)
}

/// A parsed view of a packed session that borrows its bytes.
#[derive(Clone, Debug)]
pub(crate) struct Packed<'a> {
    /// The whole packed session.
    pub(crate) bytes: &'a [u8],
    pub(crate) key: &'a [u8],
    pub(crate) header: Header,
    field_count: usize,
    fields: &'a [u8],
}

/// One field of a [`Packed`] session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackedField<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) stamp: Stamp,
    /// `None` for a deleted field.
    pub(crate) value: Option<&'a [u8]>,
}

impl<'a> Packed<'a> {
    /// Parses the key and header; fields are parsed as they are iterated.
    ///
    /// # Panics
    /// On bytes [`encode`] did not produce: they never leave the store.
    pub(crate) fn parse(packed: &'a [u8]) -> Packed<'a> {
        let mut r = Reader {
            bytes: packed,
            pos: 0,
        };
        let key_len = r.varint_usize();
        let key = r.take(key_len);
        let flags = r.u8();
        let mut header = Header::default();
        if flags & CLEAR != 0 {
            header.clear = r.stamp();
        }
        let clear = header.clear;
        for (register, set, at_clear) in [
            (&mut header.expires_at, EXPIRES, EXPIRES_AT_CLEAR),
            (&mut header.max_idle, IDLE, IDLE_AT_CLEAR),
        ] {
            if flags & set != 0 {
                register.marker = if flags & at_clear != 0 {
                    clear
                } else {
                    r.stamp()
                };
                register.val = match r.u8() {
                    0 => None,
                    _ => Some(r.varint()),
                };
            }
        }
        if flags & TOUCHED != 0 {
            header.touched = r.stamp();
        }
        header.evicted = flags & EVICTED != 0;
        let field_count = r.varint_usize();
        Packed {
            bytes: packed,
            key,
            header,
            field_count,
            fields: &packed[r.pos..],
        }
    }

    /// Every field, deleted ones included, in name order.
    pub(crate) fn fields(&self) -> Fields<'a> {
        Fields {
            reader: Reader {
                bytes: self.fields,
                pos: 0,
            },
            remaining: self.field_count,
            clear: self.header.clear,
        }
    }

    /// Whether a reader at `now_ms` sees this session (see [`Session::is_visible`]).
    /// The time is asked for only when the session has a deadline.
    pub(crate) fn is_visible(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let mut any_value = false;
        let mut newest = Stamp::ZERO;
        for field in self.fields() {
            any_value |= field.value.is_some();
            newest = newest.max(field.stamp);
        }
        any_value && self.header.deadline_ms(newest).is_none_or(|d| now_ms() < d)
    }

    /// Whether no field holds a value (see [`Session::is_tombstone`]).
    pub(crate) fn is_tombstone(&self) -> bool {
        !self.fields().any(|f| f.value.is_some())
    }

    /// The expiry deadline in wall-clock ms, if any (see [`Session::deadline_ms`]).
    pub(crate) fn deadline_ms(&self) -> Option<u64> {
        self.header
            .deadline_ms(self.fields().map(|f| f.stamp).max().unwrap_or(Stamp::ZERO))
    }

    /// Unpacks into an owned [`Session`].
    pub(crate) fn to_session(&self) -> Session {
        let fields: BTreeMap<Bytes, FieldRegister> = self
            .fields()
            .map(|f| {
                (
                    Bytes::copy_from_slice(f.name),
                    LWWReg {
                        val: f.value.map(Bytes::copy_from_slice),
                        marker: f.stamp,
                    },
                )
            })
            .collect();
        Session::from_parts(self.header.clone(), fields)
    }

    /// A hash of the key and every stamp in the session: two replicas' stamps
    /// agree exactly when their states do, because stamps are unique per write.
    /// Anti-entropy compares these.
    pub(crate) fn fingerprint(&self) -> u64 {
        // The hashed bytes are laid out in a buffer and hashed in one call:
        // XXH3's one-shot form is several times faster than its streaming
        // form for inputs this short, and gives the same hash.
        let header = &self.header;
        let stamps = [
            header.clear,
            header.expires_at.marker,
            header.max_idle.marker,
            header.touched,
        ];
        let len = 8
            + self.key.len()
            + stamps.len() * STAMP_LEN
            + self
                .fields()
                .map(|f| 8 + f.name.len() + STAMP_LEN)
                .sum::<usize>();
        let mut stack = [0u8; 1024];
        let mut heap = Vec::new();
        let buf = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap[..]
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&(self.key.len() as u64).to_le_bytes());
        put(self.key);
        for stamp in stamps {
            put(&stamp_bytes(stamp));
        }
        for field in self.fields() {
            put(&(field.name.len() as u64).to_le_bytes());
            put(field.name);
            put(&stamp_bytes(field.stamp));
        }
        xxh3_64(buf)
    }
}

/// Iterator over the fields of a [`Packed`] session.
#[derive(Clone, Debug)]
pub(crate) struct Fields<'a> {
    reader: Reader<'a>,
    remaining: usize,
    clear: Stamp,
}

impl<'a> Iterator for Fields<'a> {
    type Item = PackedField<'a>;

    fn next(&mut self) -> Option<PackedField<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let r = &mut self.reader;
        let name_len = r.varint_usize();
        let name = r.take(name_len);
        let flags = r.u8();
        let stamp = if flags & FIELD_AT_CLEAR != 0 {
            self.clear
        } else {
            r.stamp()
        };
        let value = (flags & FIELD_VALUE != 0).then(|| {
            let len = r.varint_usize();
            r.take(len)
        });
        Some(PackedField { name, stamp, value })
    }
}

const STAMP_LEN: usize = 16;

fn stamp_bytes(stamp: Stamp) -> [u8; STAMP_LEN] {
    let mut bytes = [0; STAMP_LEN];
    bytes[..8].copy_from_slice(&stamp.time.as_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&stamp.node.0.to_le_bytes());
    bytes
}

fn put_stamp(out: &mut Vec<u8>, stamp: Stamp) {
    out.extend_from_slice(&stamp_bytes(stamp));
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "each byte takes the low seven bits"
)]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A cursor over bytes that [`encode`] wrote; indexing past the end is a bug.
#[derive(Clone, Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> u8 {
        let b = self.bytes[self.pos];
        self.pos += 1;
        b
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let bytes = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        bytes
    }

    fn u64(&mut self) -> u64 {
        let mut raw = [0; 8];
        raw.copy_from_slice(self.take(8));
        u64::from_le_bytes(raw)
    }

    fn stamp(&mut self) -> Stamp {
        let time = HlcTime::from_u64(self.u64());
        Stamp::new(time, NodeId(self.u64()))
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }

    fn varint_usize(&mut self) -> usize {
        usize::try_from(self.varint()).expect("lengths in packed sessions fit in memory")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::session::Write;
    use crate::testing::{arb_session, stamp};

    #[test]
    fn whole_value_put_stores_its_stamp_once() {
        let value = Bytes::from(vec![7u8; 256]);
        let put = Write::Put {
            fields: vec![(Bytes::new(), value)],
            expiry: Default::default(),
        };
        let session = Session::from_write(&put, stamp(1_000, 1));
        let packed = encode(&[1u8; 64], &session);
        // key_len + key + flags + clear + field_count + name_len + field_flags + value_len + value
        assert_eq!(packed.len(), 1 + 64 + 1 + 16 + 1 + 1 + 1 + 2 + 256);
    }

    #[test]
    fn varint_lengths_match_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(
                Reader {
                    bytes: &out,
                    pos: 0
                }
                .varint(),
                v
            );
        }
    }

    proptest! {
        #[test]
        fn packing_round_trips(key in prop::collection::vec(any::<u8>(), 0..600), session in arb_session()) {
            let packed = encode(&key, &session);
            let view = Packed::parse(&packed);
            prop_assert_eq!(view.key, &key[..]);
            prop_assert_eq!(key_of(&packed), &key[..]);
            prop_assert_eq!(view.to_session(), session.clone());
            prop_assert_eq!(view.is_tombstone(), session.is_tombstone());
            prop_assert_eq!(view.deadline_ms(), session.deadline_ms());
            for now in [0, 5_000, 50_000, u64::MAX] {
                prop_assert_eq!(view.is_visible(|| now), session.is_visible(now));
            }
        }

        /// Setting one field on the packed bytes gives what unpacking,
        /// merging the write and packing again gives, and `None` exactly
        /// when that merge changes nothing. Stamps come near the stored
        /// ones (the same time and node included), so every case is met:
        /// hidden by the clear stamp, older, tied, newer, new field.
        #[test]
        fn setting_a_field_in_place_equals_merging_and_packing(
            key in prop::collection::vec(any::<u8>(), 0..20),
            session in arb_session(),
            name in prop::sample::select(&["", "user", "cart", "theme", "zz"][..]),
            value in prop::sample::select(&["", "a", "b", "ccc"][..]),
            ms in 0u64..60_000,
            node in 1u64..4,
            reuse in prop::option::of(0usize..8),
        ) {
            // Reuse a stamp already stored, or make one.
            let stored: Vec<Stamp> = session.registers().map(|(_, f)| f.marker)
                .chain([session.header().clear]).collect();
            let at = reuse.and_then(|i| stored.get(i % stored.len()).copied())
                .unwrap_or_else(|| stamp(ms, node));
            let write = Write::PutField {
                name: Bytes::from_static(name.as_bytes()),
                value: Bytes::from_static(value.as_bytes()),
            };
            let mut merged = session.clone();
            merged.apply(&write, at);
            let packed = encode(&key, &session);
            let view = Packed::parse(&packed);
            match with_field(&view, name.as_bytes(), value.as_bytes(), at) {
                Some(set) => {
                    prop_assert_ne!(&merged, &session);
                    prop_assert_eq!(set, encode(&key, &merged));
                }
                None => prop_assert_eq!(&merged, &session),
            }
        }

        /// The fingerprint is XXH3 over the key, the header's stamps and each
        /// field's name and stamp, as a streaming hash computes it: replicas
        /// of any version compare equal exactly when their stamps agree.
        /// Keys up to 1,100 bytes take both the stack and the heap buffer.
        #[test]
        fn fingerprint_is_the_streaming_hash_of_key_and_stamps(key in prop::collection::vec(any::<u8>(), 0..1100), session in arb_session()) {
            let packed = encode(&key, &session);
            let view = Packed::parse(&packed);
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(&key);
            let header = &view.header;
            for stamp in [header.clear, header.expires_at.marker, header.max_idle.marker, header.touched] {
                h.update(&stamp_bytes(stamp));
            }
            for field in view.fields() {
                h.update(&(field.name.len() as u64).to_le_bytes());
                h.update(field.name);
                h.update(&stamp_bytes(field.stamp));
            }
            prop_assert_eq!(view.fingerprint(), h.digest());
        }
    }
}
