//! plugnet: container networking for every CNI runtime and for Docker.
//!
//! The library holds all logic; the binaries (`plugnet`, `plugnet-ipam`) are thin.
//! - [`skel`]: the CNI dispatcher (env + stdin in, result or error out), unit-testable.
//! - [`types`], [`version`], [`error`], [`args`], [`validate`]: the protocol core.
//! - [`ipam`]: plugnet-ipam, the files-with-lock address store.
//! - [`invoke`] and [`libcni`]: running other plugins and whole network lists, as libcni does.

pub mod args;
pub mod error;
pub mod skel;
pub mod types;
pub mod validate;
pub mod version;

pub use error::{CniError, ErrorCode};
pub use skel::{Command, Request};
pub use types::CniResult;
pub use version::CniVersion;
pub mod invoke;
pub mod ipam;
pub mod libcni;
