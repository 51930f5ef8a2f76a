//! Hashes: a session's fields (`HSET`, `HGET`, `HDEL`, `HINCRBY`, ...).

use super::*;

impl Handler {
    pub(super) async fn hset(
        &self,
        name: &str,
        key: &Bytes,
        pairs: &[Bytes],
    ) -> Result<Reply, Reply> {
        if !pairs.len().is_multiple_of(2) {
            return Err(arity(name));
        }
        if pairs.chunks(2).any(|p| p[0].as_ref() == STRING_FIELD) {
            return Err(err("ERR empty hash field names are not supported"));
        }
        let existing = self.glance_hash(key).await?;
        let mut seen = std::collections::HashSet::new();
        let added = pairs
            .chunks(2)
            .filter(|pair| seen.insert(&pair[0]))
            .filter(|pair| existing.as_ref().and_then(|d| d.field(&pair[0])).is_none())
            .count();
        let writes = pairs.chunks(2).map(|pair| {
            let write = Write::PutField {
                name: pair[0].clone(),
                value: pair[1].clone(),
            };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        let added = i64::try_from(added).unwrap_or(i64::MAX);
        Ok(if name == "HMSET" {
            Reply::Ok
        } else {
            Reply::Int(added)
        })
    }

    pub(super) async fn hsetnx(
        &self,
        key: &Bytes,
        field: &Bytes,
        value: &Bytes,
    ) -> Result<Reply, Reply> {
        if field.as_ref() == STRING_FIELD {
            return Err(err("ERR empty hash field names are not supported"));
        }
        if self
            .read_hash(key)
            .await?
            .is_some_and(|d| d.field(field).is_some())
        {
            return Ok(Reply::Int(0));
        }
        self.node
            .put_field(key.clone(), field.clone(), value.clone())
            .await
            .map_err(|e| failed(&e))?;
        Ok(Reply::Int(1))
    }

    pub(super) async fn hget(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        Ok(self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(Reply::bulk))
            .unwrap_or(Reply::Nil))
    }

    pub(super) async fn hmget(&self, key: &Bytes, fields: &[Bytes]) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Array(
            fields
                .iter()
                .map(|f| {
                    data.as_ref()
                        .and_then(|d| d.field(f).map(Reply::bulk))
                        .unwrap_or(Reply::Nil)
                })
                .collect(),
        ))
    }

    pub(super) async fn hread(&self, name: &str, key: &Bytes) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        let fields: Vec<(&[u8], &[u8])> = data
            .as_ref()
            .map(|d| d.fields().collect())
            .unwrap_or_default();
        Ok(match name {
            "HLEN" => Reply::Int(i64::try_from(fields.len()).unwrap_or(i64::MAX)),
            "HKEYS" => Reply::Array(fields.iter().map(|(n, _)| Reply::bulk(n)).collect()),
            "HVALS" => Reply::Array(fields.iter().map(|(_, v)| Reply::bulk(v)).collect()),
            _ => Reply::Map(
                fields
                    .iter()
                    .map(|(n, v)| (Reply::bulk(n), Reply::bulk(v)))
                    .collect(),
            ),
        })
    }

    /// Deletes every named field, seen or not (as `DEL` does whole
    /// sessions); the count is of the fields the read before saw.
    pub(super) async fn hdel(&self, key: &Bytes, fields: &[Bytes]) -> Result<Reply, Reply> {
        let data = self.glance_hash(key).await?;
        let mut seen = std::collections::HashSet::new();
        let removed = fields
            .iter()
            .filter(|field| seen.insert(*field))
            .filter(|field| data.as_ref().is_some_and(|d| d.field(field).is_some()))
            .count();
        let writes = fields.iter().map(|field| {
            let write = Write::DeleteField {
                name: field.clone(),
            };
            (key.clone(), write)
        });
        self.write_all(writes).await?;
        Ok(Reply::Int(i64::try_from(removed).unwrap_or(i64::MAX)))
    }

    pub(super) async fn hexists(&self, key: &Bytes, field: &Bytes) -> Result<Reply, Reply> {
        let data = self.read_hash(key).await?;
        Ok(Reply::Int(i64::from(
            data.is_some_and(|d| d.field(field).is_some()),
        )))
    }

    pub(super) async fn hincrby(
        &self,
        key: &Bytes,
        field: &Bytes,
        by: &Bytes,
    ) -> Result<Reply, Reply> {
        let by = int(by).ok_or_else(not_integer)?;
        if field.as_ref() == STRING_FIELD {
            return Err(err("ERR empty hash field names are not supported"));
        }
        let current = match self
            .read_hash(key)
            .await?
            .and_then(|d| d.field(field).map(int))
        {
            None => 0,
            Some(Some(n)) => n,
            Some(None) => return Err(err("ERR hash value is not an integer")),
        };
        let next = current
            .checked_add(by)
            .ok_or_else(|| err("ERR increment or decrement would overflow"))?;
        self.node
            .put_field(key.clone(), field.clone(), Bytes::from(next.to_string()))
            .await
            .map_err(|e| failed(&e))?;
        Ok(Reply::Int(next))
    }
}
