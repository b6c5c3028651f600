//! Any stdin through the real dispatcher, for every command: never a panic, and every failure
//! is a spec-shaped error JSON on stdout.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::skel::{self, MapEnv, Plugin, Request};
use plugnet::{CniError, CniResult};

struct Nop;
impl Plugin for Nop {
    fn add(&self, req: &Request) -> Result<CniResult, CniError> {
        Ok(req.config.prev_result.clone().unwrap_or_default())
    }
    fn del(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn check(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, _: &Request) -> Result<(), CniError> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
        let env = MapEnv::new(&[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "fuzz"),
            ("CNI_NETNS", "/run/netns/fuzz"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]);
        let mut out = Vec::new();
        let code = skel::run(&Nop, &env, &mut &data[..], &mut out);
        if code != 0 {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("error is JSON");
            assert!(v["code"].is_u64() && v["msg"].is_string() && v["cniVersion"].is_string());
        }
    }
});
