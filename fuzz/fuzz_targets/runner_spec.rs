//! `plugnet up` spec parsing: never a panic, and every accepted spec has unique valid names
//! and turns into network lists without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::runner::{Source, Spec};
use plugnet::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = Spec::from_slice(data) else { return };
    assert!(!spec.networks.is_empty());
    for (i, e) in spec.networks.iter().enumerate() {
        assert!(validate::is_valid_id(&e.name));
        assert!(spec.networks[..i].iter().all(|o| o.name != e.name));
        if let Some(ifname) = &e.ifname {
            assert!(validate::interface_name(ifname).is_ok());
        }
        if !matches!(e.source, Source::ConfDir(_)) {
            // Never touches the conf dir for these; must not panic.
            let _ = e.network_list(std::path::Path::new("/nonexistent"));
        }
    }
});
