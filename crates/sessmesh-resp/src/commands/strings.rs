//! Strings: `GET`, `SET` and its options, `GETDEL`, `GETEX`, `MGET`, `MSET`.

use super::*;

impl Handler {
    pub(super) async fn get(&self, key: &Bytes) -> Result<Reply, Reply> {
        match self.read(key).await? {
            None => Ok(Reply::Nil),
            Some(Value::String { value: v, .. }) => Ok(Reply::Bulk(v)),
            Some(Value::Hash(_)) => Err(wrong_type()),
        }
    }

    pub(super) async fn set(
        &self,
        key: &Bytes,
        value: &Bytes,
        options: &[Bytes],
    ) -> Result<Reply, Reply> {
        self.set_with(key, value, options, "set").await
    }

    pub(super) async fn set_with(
        &self,
        key: &Bytes,
        value: &Bytes,
        options: &[Bytes],
        command: &str,
    ) -> Result<Reply, Reply> {
        let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
        let mut expires: Option<i64> = None;
        let mut i = 0;
        while i < options.len() {
            let o = &options[i];
            if eq(o, "NX") && !xx {
                nx = true;
            } else if eq(o, "XX") && !nx {
                xx = true;
            } else if eq(o, "GET") {
                get = true;
            } else if eq(o, "KEEPTTL") && expires.is_none() {
                keep_ttl = true;
            } else if ["EX", "PX", "EXAT", "PXAT"].iter().any(|w| eq(o, w))
                && expires.is_none()
                && !keep_ttl
                && i + 1 < options.len()
            {
                expires = Some(deadline(o, &options[i + 1], command)?);
                i += 1;
            } else {
                return Err(syntax());
            }
            i += 1;
        }
        let old = if nx || xx || get || keep_ttl {
            self.read(key).await?
        } else {
            None
        };
        let (old_value, old_deadline) = match &old {
            Some(Value::String { value, deadline_ms }) => (Some(value.clone()), *deadline_ms),
            Some(Value::Hash(_)) if get => return Err(wrong_type()),
            Some(Value::Hash(data)) => (None, data.deadline_ms()),
            None => (None, None),
        };
        let old_reply = || old_value.clone().map_or(Reply::Nil, Reply::Bulk);
        if (nx && old.is_some()) || (xx && old.is_none()) {
            return Ok(if get { old_reply() } else { Reply::Nil });
        }
        let expiry = match expires {
            Some(at) => Expiry::at_ms(u64::try_from(at).unwrap_or(0)),
            None if keep_ttl => old_deadline.map_or(Expiry::NEVER, Expiry::at_ms),
            None => Expiry::NEVER,
        };
        self.node
            .put(
                key.clone(),
                [(Bytes::from_static(STRING_FIELD), value.clone())],
                expiry,
            )
            .await
            .map_err(|e| failed(&e))?;
        Ok(if get { old_reply() } else { Reply::Ok })
    }

    pub(super) async fn getdel(&self, key: &Bytes) -> Result<Reply, Reply> {
        match self.read(key).await? {
            None => Ok(Reply::Nil),
            Some(Value::Hash(_)) => Err(wrong_type()),
            Some(Value::String { value: v, .. }) => {
                self.node
                    .delete(key.clone())
                    .await
                    .map_err(|e| failed(&e))?;
                Ok(Reply::Bulk(v))
            }
        }
    }

    pub(super) async fn getex(&self, key: &Bytes, options: &[Bytes]) -> Result<Reply, Reply> {
        let change = match options {
            [] => None,
            [o] if eq(o, "PERSIST") => Some(None),
            [o, arg] if ["EX", "PX", "EXAT", "PXAT"].iter().any(|w| eq(o, w)) => {
                Some(Some(deadline(o, arg, "getex")?))
            }
            _ => return Err(syntax()),
        };
        let value = match self.read(key).await? {
            None => return Ok(Reply::Nil),
            Some(Value::Hash(_)) => return Err(wrong_type()),
            Some(Value::String { value: v, .. }) => v,
        };
        match change {
            None => {}
            Some(None) => self.clear_expiry(key).await?,
            Some(Some(at)) => {
                self.node
                    .expire_at(key.clone(), Some(at_ms(at)))
                    .await
                    .map_err(|e| failed(&e))?;
            }
        }
        Ok(Reply::Bulk(value))
    }

    pub(super) async fn mget(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Array(
            values
                .into_iter()
                .map(|value| match value {
                    Some(Value::String { value: v, .. }) => Reply::Bulk(v),
                    _ => Reply::Nil,
                })
                .collect(),
        ))
    }

    pub(super) async fn mset(&self, pairs: &[Bytes]) -> Result<Reply, Reply> {
        if !pairs.len().is_multiple_of(2) {
            return Err(arity("mset"));
        }
        let writes = pairs.chunks(2).map(|pair| {
            let write = Write::Put {
                fields: vec![(Bytes::from_static(STRING_FIELD), pair[1].clone())],
                expiry: Expiry::NEVER,
            };
            (pair[0].clone(), write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Ok)
    }
}
