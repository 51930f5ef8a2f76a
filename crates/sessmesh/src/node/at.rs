//! Calls at a level of the caller's choosing: [`Node::at`].

use super::*;

/// Per-call settings over a [`Node`]; see [`Node::at`].
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub(super) node: &'a Node,
    pub(super) level: Level,
}

impl At<'_> {
    /// [`Node::get`] at this level.
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn get(self, key: impl Into<Bytes>) -> Result<Option<SessionData>, Error> {
        let key = key.into();
        check_key(&key)?;
        let reader = self.node.inner.local.reader();
        let one_copy = |replicas| self.level.required(replicas) == 1;
        if let Ok(local) = reader.read_local(&key, one_copy, now_ms, |s| s.to_data()) {
            return Ok(local);
        }
        match self.node.read(key.clone(), self.level).await? {
            Outcome::Read(session) => {
                Ok(session.and_then(|s| SessionData::new(&key, &s, now_ms())))
            }
            other => Err(failure(other)),
        }
    }

    /// [`Node::get_field`] at this level.
    ///
    /// # Errors
    /// As [`Node::get`].
    pub async fn get_field(
        self,
        key: impl Into<Bytes>,
        name: impl AsRef<[u8]>,
    ) -> Result<Option<Bytes>, Error> {
        let key = key.into();
        let name = name.as_ref();
        check_key(&key)?;
        let one_copy = |replicas| self.level.required(replicas) == 1;
        let local = self
            .node
            .inner
            .local
            .reader()
            .read_local(&key, one_copy, now_ms, |s| {
                s.field(name).map(Bytes::copy_from_slice)
            });
        if let Ok(local) = local {
            return Ok(local.flatten());
        }
        Ok(self
            .get(key)
            .await?
            .and_then(|s| s.field(name).map(Bytes::copy_from_slice)))
    }

    async fn write(self, key: Bytes, write: Write) -> Result<(), Error> {
        self.written(key, write).await.map(drop)
    }

    /// Writes, and for a delete says whether its read saw a live session.
    async fn written(self, key: Bytes, write: Write) -> Result<Option<bool>, Error> {
        check_key(&key)?;
        match self.node.write(key, write, self.level).await? {
            Outcome::Written { existed, .. } => Ok(existed),
            other => Err(failure(other)),
        }
    }

    /// [`Node::put`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn put<N, V>(
        self,
        key: impl Into<Bytes>,
        fields: impl IntoIterator<Item = (N, V)>,
        expiry: Expiry,
    ) -> Result<(), Error>
    where
        N: Into<Bytes>,
        V: Into<Bytes>,
    {
        let fields = fields
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect();
        self.write(key.into(), Write::Put { fields, expiry }).await
    }

    /// [`Node::put_field`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn put_field(
        self,
        key: impl Into<Bytes>,
        name: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let write = Write::PutField {
            name: name.into(),
            value: value.into(),
        };
        self.write(key.into(), write).await
    }

    /// [`Node::delete_field`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn delete_field(
        self,
        key: impl Into<Bytes>,
        name: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let write = Write::DeleteField { name: name.into() };
        self.write(key.into(), write).await
    }

    /// [`Node::delete`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn delete(self, key: impl Into<Bytes>) -> Result<bool, Error> {
        let existed = self.written(key.into(), Write::Delete).await?;
        Ok(existed.unwrap_or(false))
    }

    /// [`Node::touch`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn touch(self, key: impl Into<Bytes>) -> Result<(), Error> {
        self.write(key.into(), Write::Touch).await
    }

    /// [`Node::expire_at`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn expire_at(
        self,
        key: impl Into<Bytes>,
        at: Option<SystemTime>,
    ) -> Result<(), Error> {
        let write = Write::ExpireAt {
            at_ms: at.map(millis_since_epoch),
        };
        self.write(key.into(), write).await
    }

    /// [`Node::set_max_idle`] at this level.
    ///
    /// # Errors
    /// As [`Node::put`].
    pub async fn set_max_idle(
        self,
        key: impl Into<Bytes>,
        idle: Option<Duration>,
    ) -> Result<(), Error> {
        let write = Write::MaxIdle {
            idle_ms: idle.map(millis),
        };
        self.write(key.into(), write).await
    }
}
