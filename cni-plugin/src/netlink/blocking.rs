//! The blocking face of the async vocabulary: every caller of [`super::Netlink`] is
//! synchronous (the plugin's commands, the runner's report, GC, plugnet-shim), so this is the
//! one place that starts a runtime to drive it; invariant: the runtime is current-thread and
//! lives for one call on the caller's thread (no worker thread ever enters a namespace).

use std::future::Future;

use super::NetlinkError;

/// Runs `f` (netlink work: it may open connections, which this runtime then drives) to
/// completion on the calling thread.
pub fn block_on<F: Future>(f: F) -> Result<F::Output, NetlinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| NetlinkError::io("start netlink runtime", e))?;
    Ok(rt.block_on(f))
}
