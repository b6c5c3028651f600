//! The address store: who holds which address, on disk ([`FileStore`]) or in memory
//! ([`MemStore`], for tests).
//!
//! Invariants, kept by the allocator and by every store operation being atomic:
//! - every claim (`ip → owner`) is listed in its owner's record (records are written before
//!   claims and removed after them), so a process killed at any instruction never leaves an
//!   address held by nobody;
//! - mutations happen only under the store's exclusive lock.
//!
//! `entries` says what a store holds (owners, records, claims) and what the allocator needs
//! of one (the [`Store`] trait); [`FileStore`] is plugnet-ipam's store on disk, [`MemStore`]
//! one in memory for tests.

pub(crate) mod entries;
mod files;
mod mem;

pub use entries::{now, Claim, Damage, Hold, Owner, Record, Store, SyncJob, FORMAT};
pub use files::{sync_paths, FileStore};
pub use mem::MemStore;
