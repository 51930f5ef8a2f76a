//! Keys and expiry: `DEL`, `UNLINK`, `EXISTS`, `TYPE`, `EXPIRE` and its
//! kin, `TTL`, `PTTL`, `PERSIST`, `SCAN`.

use super::*;

impl Handler {
    pub(super) async fn clear_expiry(&self, key: &Bytes) -> Result<(), Reply> {
        self.node
            .expire_at(key.clone(), None)
            .await
            .map_err(|e| failed(&e))?;
        self.node
            .set_max_idle(key.clone(), None)
            .await
            .map_err(|e| failed(&e))
    }

    /// Deletes every key, seen or not: a logout through a node that never
    /// saw the session (it was created across a partition) must still hold
    /// once the partition heals. The keys are deleted together, and one
    /// that fails (the delete is kept all the same) does not stop the
    /// others. The count is of the keys the deletes' reads saw.
    pub(super) async fn del(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let deletes = keys.iter().map(|key| self.node.delete(key.clone()));
        let mut deleted = 0;
        for outcome in join_all(deletes).await {
            deleted += i64::from(outcome.map_err(|e| failed(&e))?);
        }
        Ok(Reply::Int(deleted))
    }

    pub(super) async fn exists(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let values = self.read_all(keys).await?;
        Ok(Reply::Int(
            i64::try_from(values.iter().filter(|v| v.is_some()).count()).unwrap_or(i64::MAX),
        ))
    }

    pub(super) async fn type_of(&self, key: &Bytes) -> Result<Reply, Reply> {
        Ok(Reply::Simple(match self.read(key).await? {
            None => "none",
            Some(Value::String { .. }) => "string",
            Some(Value::Hash(_)) => "hash",
        }))
    }

    pub(super) async fn expire(
        &self,
        name: &str,
        key: &Bytes,
        amount: &Bytes,
        options: &[Bytes],
    ) -> Result<Reply, Reply> {
        let n = int(amount).ok_or_else(not_integer)?;
        let at = match name {
            "EXPIRE" => n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms())),
            "PEXPIRE" => n.checked_add(now_ms()),
            "EXPIREAT" => n.checked_mul(1000),
            _ => Some(n),
        }
        .ok_or_else(|| {
            Reply::Error(format!(
                "ERR invalid expire time in '{}' command",
                name.to_ascii_lowercase()
            ))
        })?;
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for o in options {
            if eq(o, "NX") {
                nx = true;
            } else if eq(o, "XX") {
                xx = true;
            } else if eq(o, "GT") {
                gt = true;
            } else if eq(o, "LT") {
                lt = true;
            } else {
                return Err(Reply::Error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )));
            }
        }
        if nx && (xx || gt || lt) {
            return Err(err(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if gt && lt {
            return Err(err(
                "ERR GT and LT options at the same time are not compatible",
            ));
        }
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        let current = data
            .deadline_ms()
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        let allowed = match current {
            None => !xx && !gt,
            Some(c) => !nx && (!gt || at > c) && (!lt || at < c),
        };
        if !allowed {
            return Ok(Reply::Int(0));
        }
        if at <= now_ms() {
            self.node
                .delete(key.clone())
                .await
                .map_err(|e| failed(&e))?;
        } else {
            self.node
                .expire_at(key.clone(), Some(at_ms(at)))
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(Reply::Int(1))
    }

    pub(super) async fn ttl(&self, key: &Bytes, millis: bool) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(-2));
        };
        let Some(deadline) = data.deadline_ms() else {
            return Ok(Reply::Int(-1));
        };
        let left = (i64::try_from(deadline).unwrap_or(i64::MAX) - now_ms()).max(0);
        Ok(Reply::Int(if millis { left } else { (left + 500) / 1000 }))
    }

    pub(super) async fn persist(&self, key: &Bytes) -> Result<Reply, Reply> {
        let Some(data) = self.node.get(key.clone()).await.map_err(|e| failed(&e))? else {
            return Ok(Reply::Int(0));
        };
        if data.deadline_ms().is_none() {
            return Ok(Reply::Int(0));
        }
        self.clear_expiry(key).await?;
        Ok(Reply::Int(1))
    }

    /// Every key this node stores that a reader sees now.
    pub(super) fn local_keys(&self) -> Vec<Bytes> {
        (0..self.node.partition_count())
            .flat_map(|p| self.node.local_keys(p))
            .collect()
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`. The cursor is the
    /// next partition to list; each call lists whole partitions until it has
    /// `COUNT` keys, so a key present for the whole scan is returned.
    pub(super) fn scan(&self, args: &[Bytes]) -> Reply {
        let Some(cursor) = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|c| c.parse::<u64>().ok())
        else {
            return err("ERR invalid cursor");
        };
        let (mut pattern, mut count, mut kind) = (None, 10usize, None);
        let mut options = args[1..].chunks(2);
        for option in options.by_ref() {
            match option {
                [o, v] if eq(o, "MATCH") => pattern = Some(v.clone()),
                [o, v] if eq(o, "COUNT") => match int(v) {
                    Some(n) if n >= 1 => count = usize::try_from(n).unwrap_or(usize::MAX),
                    Some(_) => return syntax(),
                    None => return not_integer(),
                },
                [o, v] if eq(o, "TYPE") => kind = Some(v.to_ascii_lowercase()),
                _ => return syntax(),
            }
        }
        let partitions = u64::from(self.node.partition_count());
        let mut keys = Vec::new();
        let mut next = cursor;
        while next < partitions && keys.len() < count {
            let partition = u32::try_from(next).unwrap_or(u32::MAX);
            keys.extend(
                self.node
                    .local_keys(partition)
                    .into_iter()
                    .filter(|k| pattern.as_ref().is_none_or(|p| glob::matches(p, k))),
            );
            next += 1;
        }
        if let Some(kind) = kind {
            // TYPE filters by what each key holds; only strings and hashes exist.
            if kind != b"string" && kind != b"hash" {
                keys.clear();
            }
        }
        let next = if next >= partitions { 0 } else { next };
        Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        ])
    }
}
