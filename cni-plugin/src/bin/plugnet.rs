//! `plugnet`: the CNI bridge plugin executable. All logic lives in `plugnet::bridge`.
//!
//! With `CNI_COMMAND` set it is a CNI plugin. Without it, it is meant to become the
//! runtime-side front end (ordered network lists, `plugnet add|del|check NET NETNS`); until
//! then it prints usage.

use plugnet::bridge::BridgePlugin;
use plugnet::skel::{self, Env, OsEnv};
use plugnet::version::SUPPORTED;

fn main() {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version" | "-V")) {
        println!("plugnet {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if OsEnv.var("CNI_COMMAND").is_none() {
        std::process::exit(front_end(arg.as_deref()));
    }
    let code = skel::run(
        &BridgePlugin::default(),
        &OsEnv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    );
    std::process::exit(code);
}

/// Hook for the runtime-side CLI front end (not a CNI invocation). Usage for now.
fn front_end(arg: Option<&str>) -> i32 {
    eprintln!(
        "plugnet {}: CNI bridge plugin (Linux bridge + veth), a drop-in for the reference \
         \"bridge\" plugin.\nRun by a CNI runtime with CNI_COMMAND set and the network \
         configuration on stdin.\nCNI protocol versions supported: {}",
        env!("CARGO_PKG_VERSION"),
        SUPPORTED.join(", ")
    );
    match arg {
        None | Some("--help" | "-h" | "help") => 0,
        Some(other) => {
            eprintln!("unknown command {other:?}");
            2
        }
    }
}
