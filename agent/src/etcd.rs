//! The etcd client: connection options (TLS through rustls) and endpoint checks.

use crate::config::EtcdArgs;
use anyhow::{bail, Result};

/// Every URL is http:// or https://, and the TLS files go with https.
pub fn check_endpoints(args: &EtcdArgs) -> Result<()> {
    let mut tls = false;
    for url in &args.etcd {
        if url.starts_with("https://") {
            tls = true;
        } else if !url.starts_with("http://") {
            bail!("--etcd {url:?}: expected http://HOST:PORT or https://HOST:PORT");
        }
    }
    if !tls && (args.etcd_ca.is_some() || args.etcd_cert.is_some()) {
        bail!("--etcd-ca/--etcd-cert/--etcd-key need https:// endpoints");
    }
    Ok(())
}
