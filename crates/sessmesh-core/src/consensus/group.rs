//! Consensus operations on several keys of one hash tag at once: they run
//! in the tag's shared instance ([`super::instance_of`]), so they are
//! ordered with every operation on any of its keys.

use super::CasError;
use crate::session::{Session, Write};

/// The most keys one [`GroupCas`] may name.
pub const MAX_GROUP_KEYS: usize = 1024;

/// An operation on several keys of one hash tag at once, decided by
/// consensus in their shared instance ([`super::instance_of`]): linearizable with
/// every consensus operation on any of them, and all-or-nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupCas {
    /// Only reads the keys' states: a linearizable read of all of them at
    /// one point in time.
    Read,
    /// The caller's own decision on all the keys' states. See
    /// [`GroupComputation`].
    Compute(GroupComputation),
}

/// What a [`GroupComputation`] runs: the keys' states, in the order the
/// operation named them (tombstones included), and the coordinator's clock,
/// ms, to each key's write, if any (in the same order; shorter means no
/// write for the rest).
pub type GroupComputeFn =
    dyn Fn(&[Option<&Session>], u64) -> Result<Vec<Option<Write>>, CasError> + Send + Sync;

/// A decision on several keys made by the caller's code, under the same
/// rules as a [`Computation`](super::Computation): a function of its arguments alone.
#[derive(Clone)]
pub struct GroupComputation(std::sync::Arc<GroupComputeFn>);

impl GroupComputation {
    /// A computation running `f`.
    pub fn new(
        f: impl Fn(&[Option<&Session>], u64) -> Result<Vec<Option<Write>>, CasError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        GroupComputation(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for GroupComputation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupComputation(..)")
    }
}

impl PartialEq for GroupComputation {
    /// The same function, not an equal one.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl GroupCas {
    /// Decides the operation on `current` (each key's merged state), as of
    /// `now_ms`: each key's write, if any.
    ///
    /// # Errors
    /// [`CasError`] when the computation refuses the states.
    pub fn decide(
        &self,
        current: &[Option<&Session>],
        now_ms: u64,
    ) -> Result<Vec<Option<Write>>, CasError> {
        match self {
            GroupCas::Read => Ok(Vec::new()),
            GroupCas::Compute(computation) => (computation.0)(current, now_ms),
        }
    }
}
