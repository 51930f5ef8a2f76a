//! sessmesh's disk store: what a node writes so that a restart of the whole
//! cluster finds its sessions again.
//!
//! Built so far: [`log`], the checksummed append-only file the store is
//! made of. Session states are CRDTs, so a log of them needs no order on
//! replay: merging the records in any order, duplicates included, gives the
//! same state.
#![forbid(unsafe_code)]

pub mod log;
