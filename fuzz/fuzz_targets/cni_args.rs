//! `CNI_ARGS` parsing: never a panic; accepted input round-trips through `pairs()`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plugnet::args::CniArgs;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(a) = CniArgs::parse(s, &["IP", "MAC"]) {
        let again: Vec<String> = a.pairs().iter().map(|(k, v)| format!("{k}={v}")).collect();
        let b = CniArgs::parse(&again.join(";"), &["IP", "MAC"]).expect("re-parse");
        assert_eq!(a, b);
    }
});
