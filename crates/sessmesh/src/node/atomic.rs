//! Operations that are atomic across the cluster: each decided by
//! consensus among the key's replicas (see
//! [`sessmesh_core::consensus`](sessmesh_core::Cas)), linearizable with
//! every other such operation on the key. They cost two round trips to the
//! replicas where a plain write costs one, and need a majority of the key's
//! copies up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sessmesh_core::{Cas, Condition, Decision, Expiry, GroupCas, GroupDecision, Outcome, Write};
use tokio::time::Instant;

use super::{Node, check_key, failure, millis};
use crate::Error;
use crate::driver::Command;

/// A lock held through [`Node::lock`] or [`Node::try_lock`].
///
/// Its `token` is a fencing token: every lease of a key has a greater one
/// than the leases before it, across unlocks, expiries and coordinators.
/// Hand it to whatever the lock protects, and have that refuse a token
/// older than the newest it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lock's key.
    pub key: Bytes,
    /// The fencing token.
    pub token: u64,
    /// When the lease runs out, by the clock of the peer that gave it.
    /// Peers' clocks differ by up to `max_clock_drift_ms`: stop relying on
    /// the lock that long before.
    pub until: SystemTime,
    holder: Bytes,
}

/// Makes each lock attempt's holder unique within this process.
static ATTEMPTS: AtomicU64 = AtomicU64::new(0);

impl Node {
    /// Decides `op` on `key` by consensus among the key's replicas.
    ///
    /// # Errors
    /// [`Error::Undecided`] when too few replicas answered or the key was
    /// contended (check `maybe_applied` before retrying), [`Error::Refused`]
    /// when the key's state does not suit `op` (an increment of a field
    /// that holds no integer), [`Error::ClockAhead`], [`Error::KeyTooLong`],
    /// [`Error::Stopped`].
    pub async fn cas(&self, key: impl Into<Bytes>, op: Cas) -> Result<Decision, Error> {
        let key = key.into();
        check_key(&key)?;
        match self.ask(|reply| Command::Consensus(key, op, reply)).await? {
            Outcome::Decided(decision) => Ok(*decision),
            other => Err(failure(other)),
        }
    }

    /// Decides `op` on `keys`, keys of one hash tag (`{user42}:cart`,
    /// `{user42}:seen`), all at once by consensus among their replicas:
    /// linearizable with every consensus operation on any of them, and
    /// all-or-nothing.
    ///
    /// # Errors
    /// [`Error::Refused`] when the keys are of several hash tags, repeated,
    /// none, or more than [`sessmesh_core::MAX_GROUP_KEYS`], or when the
    /// computation refuses their states; otherwise as [`cas`](Self::cas).
    pub async fn cas_group(&self, keys: Vec<Bytes>, op: GroupCas) -> Result<GroupDecision, Error> {
        for key in &keys {
            check_key(key)?;
        }
        match self
            .ask(|reply| Command::ConsensusGroup(keys, op, reply))
            .await?
        {
            Outcome::DecidedGroup(decision) => Ok(*decision),
            other => Err(failure(other)),
        }
    }

    /// Creates `key` with `fields` and `expiry` unless a live session holds
    /// it; whether it did.
    ///
    /// # Errors
    /// As [`cas`](Self::cas).
    pub async fn put_if_absent<N, V>(
        &self,
        key: impl Into<Bytes>,
        fields: impl IntoIterator<Item = (N, V)>,
        expiry: Expiry,
    ) -> Result<bool, Error>
    where
        N: Into<Bytes>,
        V: Into<Bytes>,
    {
        let write = Write::Put {
            fields: fields
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
            expiry,
        };
        let op = Cas::Write {
            when: Condition::Absent,
            write,
        };
        Ok(self.cas(key, op).await?.applied)
    }

    /// Adds `by` to the integer in `field` of `key` (absent counts as 0);
    /// the new value.
    ///
    /// # Errors
    /// [`Error::Refused`] when the field holds no integer or the sum
    /// overflows; otherwise as [`cas`](Self::cas).
    pub async fn increment(
        &self,
        key: impl Into<Bytes>,
        field: impl Into<Bytes>,
        by: i64,
    ) -> Result<i64, Error> {
        let op = Cas::Increment {
            field: field.into(),
            by,
            when: Condition::Always,
        };
        let decision = self.cas(key, op).await?;
        match decision.written {
            Some((Write::PutField { value, .. }, _)) => std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Refused(format!("an increment wrote {value:?}"))),
            other => Err(Error::Refused(format!("an increment wrote {other:?}"))),
        }
    }

    /// Takes the lock `key` for `ttl` if nobody holds it; `None` if
    /// somebody does.
    ///
    /// # Errors
    /// As [`cas`](Self::cas).
    pub async fn try_lock(
        &self,
        key: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<Option<Lease>, Error> {
        let key = key.into();
        let holder = Bytes::from(format!(
            "{}/{}/{}",
            self.me().name,
            self.me().generation,
            ATTEMPTS.fetch_add(1, Ordering::Relaxed)
        ));
        let op = Cas::Lock {
            holder: holder.clone(),
            ttl_ms: millis(ttl),
        };
        let decision = self.cas(key.clone(), op).await?;
        Ok(lease_of(&key, &decision))
    }

    /// Takes the lock `key` for `ttl`, waiting up to `wait` for it to be free.
    ///
    /// # Errors
    /// [`Error::LockTimeout`] when it was not free in time; otherwise as
    /// [`cas`](Self::cas).
    pub async fn lock(
        &self,
        key: impl Into<Bytes>,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, Error> {
        let key = key.into();
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(lease) = self.try_lock(key.clone(), ttl).await? {
                return Ok(lease);
            }
            if start.elapsed() + pause > wait {
                return Err(Error::LockTimeout {
                    key,
                    waited_ms: millis(start.elapsed()),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Extends `lease` to `ttl` from now; the renewed lease (same token).
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the lease ran out or was ended; otherwise as
    /// [`cas`](Self::cas).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Lease, Error> {
        let op = Cas::Renew {
            holder: Some(lease.holder.clone()),
            token: lease.token,
            ttl_ms: millis(ttl),
        };
        let decision = self.cas(lease.key.clone(), op).await?;
        lease_of(&lease.key, &decision).ok_or_else(|| Error::NotHeld {
            key: lease.key.clone(),
            token: lease.token,
        })
    }

    /// Ends `lease`, freeing the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`] when the lease had already run out or ended;
    /// otherwise as [`cas`](Self::cas).
    pub async fn unlock(&self, lease: Lease) -> Result<(), Error> {
        let op = Cas::Unlock {
            holder: Some(lease.holder.clone()),
            token: lease.token,
        };
        if self.cas(lease.key.clone(), op).await?.applied {
            Ok(())
        } else {
            Err(Error::NotHeld {
                key: lease.key,
                token: lease.token,
            })
        }
    }
}

/// The lease a lock operation's decision gave, if any.
fn lease_of(key: &Bytes, decision: &Decision) -> Option<Lease> {
    let (write, _) = decision.written.as_ref()?;
    let given = sessmesh_core::consensus::Lease::from_write(write)?;
    Some(Lease {
        key: key.clone(),
        token: given.token,
        until: SystemTime::UNIX_EPOCH + Duration::from_millis(given.until_ms),
        holder: given.holder,
    })
}
