//! The whole cluster's keyspace, one partition at a time: `SCAN`, `KEYS`,
//! `RANDOMKEY` and `DBSIZE` list every partition's keys from a replica of
//! it (this node's own store for the partitions it replicates), so they
//! answer for the cluster, not only for what this node stores. `INFO`'s
//! keyspace lines count this node's own keys.

use super::keys::Scan;
use super::*;

/// How many partitions are listed at the same time.
const AT_ONCE: u32 = 32;

impl Handler {
    /// The keys of `partitions`, each listed from one of its replicas.
    async fn listed(&self, partitions: std::ops::Range<u32>) -> Result<Vec<Bytes>, Reply> {
        let lists = join_all(partitions.map(|p| self.node.partition_keys(p))).await;
        let mut keys = Vec::new();
        for list in lists {
            keys.extend(list.map_err(|e| failed(&e))?);
        }
        Ok(keys)
    }

    /// The keys of database `db` in the whole keyspace, by their names there.
    pub(super) async fn keys_in(&self, db: u32) -> Result<Vec<Bytes>, Reply> {
        let count = self.node.partition_count();
        let mut keys = Vec::new();
        for start in (0..count).step_by(AT_ONCE as usize) {
            let listed = self.listed(start..(start + AT_ONCE).min(count)).await?;
            keys.extend(listed.iter().filter_map(|k| databases::in_db(db, k)));
        }
        Ok(keys)
    }

    /// `KEYS pattern`.
    pub(super) async fn keys(&self, pattern: &[u8], db: u32) -> Result<Reply, Reply> {
        Ok(Reply::Array(
            self.keys_in(db)
                .await?
                .into_iter()
                .filter(|k| glob::matches(pattern, k))
                .map(Reply::Bulk)
                .collect(),
        ))
    }

    /// `DBSIZE`.
    pub(super) async fn dbsize(&self, db: u32) -> Result<Reply, Reply> {
        // Counted a batch at a time: at most AT_ONCE partitions' key names
        // are held at once, not the whole keyspace's.
        let partitions = self.node.partition_count();
        let mut count = 0;
        for start in (0..partitions).step_by(AT_ONCE as usize) {
            let listed = self
                .listed(start..(start + AT_ONCE).min(partitions))
                .await?;
            count += listed
                .iter()
                .filter(|k| databases::db_of(k) == Some(db))
                .count();
        }
        Ok(Reply::Int(i64::try_from(count).unwrap_or(i64::MAX)))
    }

    /// `RANDOMKEY`: a key of the first partition, from one picked by the
    /// clock on, that has one.
    pub(super) async fn random_key(&self, db: u32) -> Result<Reply, Reply> {
        let count = self.node.partition_count();
        let first = u32::try_from(now_ms().unsigned_abs() % u64::from(count.max(1))).unwrap_or(0);
        for offset in (0..count).step_by(AT_ONCE as usize) {
            let batch = offset..(offset + AT_ONCE).min(count);
            let lists =
                join_all(batch.map(|i| self.node.partition_keys((first + i) % count))).await;
            for list in lists {
                let keys: Vec<Bytes> = list
                    .map_err(|e| failed(&e))?
                    .iter()
                    .filter_map(|k| databases::in_db(db, k))
                    .collect();
                if !keys.is_empty() {
                    let at = usize::try_from(now_ms()).unwrap_or(0) % keys.len();
                    return Ok(Reply::Bulk(keys[at].clone()));
                }
            }
        }
        Ok(Reply::Nil)
    }

    /// `SCAN`: the cursor is the next partition to list; each call lists
    /// whole partitions until it has `COUNT` keys, so a key present for the
    /// whole scan is returned. `TYPE` reads each key found.
    pub(super) async fn scan(&self, scan: Scan) -> Result<Reply, Reply> {
        let Scan {
            cursor,
            pattern,
            count,
            kind,
            db,
        } = scan;
        let partitions = self.node.partition_count();
        let mut next = u32::try_from(cursor).unwrap_or(u32::MAX);
        let mut keys = Vec::new();
        while next < partitions && keys.len() < count {
            // As many partitions as should give COUNT keys, at least one.
            let batch = u32::try_from(count / 8)
                .unwrap_or(AT_ONCE)
                .clamp(1, AT_ONCE);
            let end = next.saturating_add(batch).min(partitions);
            keys.extend(
                self.listed(next..end)
                    .await?
                    .iter()
                    .filter_map(|k| databases::in_db(db, k))
                    .filter(|k| pattern.as_ref().is_none_or(|p| glob::matches(p, k))),
            );
            next = end;
        }
        if let Some(kind) = kind {
            let stored: Vec<Bytes> = keys
                .iter()
                .map(|k| Bytes::from([databases::prefix(db).as_slice(), k].concat()))
                .collect();
            let values = self.read_all(&stored).await?;
            let kept = keys.into_iter().zip(values).filter(|(_, value)| {
                let name: &[u8] = match value {
                    None => return false,
                    Some(Value::String { .. }) => b"string",
                    Some(Value::Hash(_)) => b"hash",
                    Some(Value::Set(_)) => b"set",
                };
                name == kind.as_slice()
            });
            keys = kept.map(|(k, _)| k).collect();
        }
        let next = if next >= partitions { 0 } else { next };
        Ok(Reply::Array(vec![
            Reply::bulk(next.to_string()),
            Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
        ]))
    }
}
