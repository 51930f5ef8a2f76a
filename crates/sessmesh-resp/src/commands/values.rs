//! What a session holds, in Redis's terms: a string is a session with one
//! field whose name is empty; a set, one whose fields' names all begin with
//! a zero byte (its members); a hash, any other.

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
