//! Result conversion between versions: whatever parses must convert to every version and back
//! without losing addresses, routes or interfaces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::types::CniResult;
use plugnet::version::{CniVersion, SUPPORTED};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(r) = CniResult::from_json(&v) else { return };
    for s in SUPPORTED {
        let version = CniVersion::parse(s).unwrap();
        let back = CniResult::from_json(&r.to_json(version)).expect("our output parses");
        assert_eq!(back.ips, r.ips);
        assert_eq!(back.interfaces.len(), r.interfaces.len());
        assert_eq!(back.routes.len(), r.routes.len());
    }
});
