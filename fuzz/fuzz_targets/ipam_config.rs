//! IPAM configuration parsing (ranges, requested addresses): never a panic, and every accepted
//! configuration has canonical ranges.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::ipam::IpamConfig;

fuzz_target!(|data: &[u8]| {
    let (args, conf) = data.split_at(data.len().min(8));
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(conf) else { return };
    let ip = std::str::from_utf8(args).ok();
    if let Ok(c) = IpamConfig::from_request(&v, ip) {
        for set in &c.ranges {
            for r in set {
                assert!(r.subnet.contains(r.start) && r.subnet.contains(r.end));
                assert!(r.size() > 0 || r.gateway.is_some());
            }
        }
    }
});
