//! What a session holds, in Redis's terms: a string is a session with one
//! field whose name is empty; a set, one whose fields' names all begin with
//! a zero byte (its members' adds); a hash, any other.
//!
//! A set is an observed-remove set: each add of a member is a field of its
//! own, the member's bytes followed by the add's tag (8 bytes, unique per
//! add), so a remove deletes the adds it saw and an add it did not see (on
//! another node at the same time) survives it.

use bytes::Bytes;
use sessmesh::SessionData;

/// The field a string value is stored under.
pub(super) const STRING_FIELD: &[u8] = b"";

/// What a session holds, in Redis's terms.
pub(super) enum Value {
    String {
        value: Bytes,
        deadline_ms: Option<u64>,
    },
    Hash(SessionData),
    /// Its members are the fields whose names begin with [`SET_PREFIX`].
    Set(SessionData),
}

/// The first byte of a set member's field name; no hash field name begins
/// with it.
pub(super) const SET_PREFIX: &[u8] = b"\0";

/// How many bytes at the end of a set field's name are its add's tag.
const TAG_LEN: usize = 8;

/// The field name of the add of `member` tagged `tag`.
pub(super) fn member_field(member: &[u8], tag: u64) -> Bytes {
    let mut name = Vec::with_capacity(SET_PREFIX.len() + member.len() + TAG_LEN);
    name.extend_from_slice(SET_PREFIX);
    name.extend_from_slice(member);
    name.extend_from_slice(&tag.to_be_bytes());
    Bytes::from(name)
}

/// The member a set field's name is an add of.
pub(super) fn member_of(field: &[u8]) -> Option<&[u8]> {
    let rest = field.strip_prefix(SET_PREFIX)?;
    rest.get(..rest.len().checked_sub(TAG_LEN)?)
}

/// The distinct members the set fields `names` hold, in order.
pub(super) fn members_of<'a>(names: impl Iterator<Item = &'a [u8]>) -> Vec<Bytes> {
    let mut members: Vec<Bytes> = names
        .filter_map(member_of)
        .map(Bytes::copy_from_slice)
        .collect();
    members.sort();
    members.dedup();
    members
}

/// Tags for set adds: unique per add, from a counter that starts where
/// a hash of the node's name and the start time put it.
#[derive(Debug)]
pub(super) struct Tags(std::sync::atomic::AtomicU64);

impl Tags {
    pub(super) fn new(node: &str) -> Self {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        for byte in node.bytes() {
            seed = (seed ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        Tags(std::sync::atomic::AtomicU64::new(seed))
    }

    /// A tag not given before.
    pub(super) fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

pub(super) fn value_of(data: SessionData) -> Value {
    let string = {
        let mut fields = data.fields();
        match (fields.next(), fields.next()) {
            (Some((name, value)), None) if name == STRING_FIELD => {
                Some(Bytes::copy_from_slice(value))
            }
            _ => None,
        }
    };
    match string {
        Some(value) => Value::String {
            value,
            deadline_ms: data.deadline_ms(),
        },
        None if data.fields().all(|(name, _)| name.starts_with(SET_PREFIX)) => Value::Set(data),
        None => Value::Hash(data),
    }
}
