//! Every Docker remote-driver request body through the shim's router and driver, over a
//! backend that owns no kernel state: never a panic, every reply is JSON with the right error
//! key, and a success status is exactly 200.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet_shim::backend::{AttachOutcome, AttachRequest, CniBackend, Holder, PoolCtx};
use plugnet_shim::driver::{Driver, DriverConfig};
use plugnet_shim::server::dispatch;
use plugnet_shim::state::{AttachmentRecord, Store};
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

const PATHS: &[&str] = &[
    "/Plugin.Activate",
    "/NetworkDriver.GetCapabilities",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/NetworkDriver.DiscoverNew",
    "/NetworkDriver.DiscoverDelete",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
    "/Bogus.Method",
];

/// A backend with no kernel and no store: IPAM hands out the pool's first address, the rest
/// fails cleanly.
struct Inert;

impl CniBackend for Inert {
    fn load_conflist(&self, name: &str) -> anyhow::Result<Value> {
        anyhow::bail!("no conflist {name}")
    }
    fn export_conflist(&self, _: &Value) -> anyhow::Result<()> {
        Ok(())
    }
    fn unexport_conflist(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    fn ipam_reserve(
        &self,
        pool: &PoolCtx,
        _: &Holder,
        requested: Option<IpAddr>,
        _: &dyn Fn(IpAddr) -> bool,
    ) -> anyhow::Result<ipnetwork::IpNetwork> {
        let ip = requested.unwrap_or(pool.range.subnet.network());
        Ok(ipnetwork::IpNetwork::new(ip, pool.range.subnet.prefix())?)
    }
    fn ipam_transfer(&self, _: &PoolCtx, _: &Holder, _: &Holder) -> anyhow::Result<()> {
        Ok(())
    }
    fn ipam_release(&self, _: &PoolCtx, _: &Holder) -> anyhow::Result<()> {
        Ok(())
    }
    fn remove_bridge(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }
    fn link_exists(&self, _: &str) -> anyhow::Result<bool> {
        Ok(false)
    }
    fn attach(&self, _: &AttachRequest) -> anyhow::Result<AttachOutcome> {
        anyhow::bail!("no kernel here")
    }
    fn detach(&self, _: &str, _: &AttachmentRecord) -> anyhow::Result<()> {
        Ok(())
    }
    fn attachment_alive(&self, _: &AttachmentRecord) -> bool {
        false
    }
    fn sweep_staging(&self, _: &std::path::Path, _: &[PathBuf]) -> usize {
        0
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let path = PATHS[selector as usize % PATHS.len()];
    let root = std::env::temp_dir().join(format!("pn-fuzz-shim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let store = Store::open(&root.join("state")).unwrap();
    let driver = Driver::new(DriverConfig::new(root.join("staging")), Inert, store);
    let reply = dispatch(&driver, path, body);
    let v: Value = serde_json::from_slice(&reply.body).expect("reply is JSON");
    if reply.status == 200 {
        if path.starts_with("/IpamDriver.") {
            assert!(v.get("Err").is_none(), "IPAM errors use Error: {v}");
        }
    } else {
        assert!(v["Err"].is_string(), "non-200 replies carry Err: {v}");
    }
});
