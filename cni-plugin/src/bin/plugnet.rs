//! `plugnet`: the CNI bridge plugin executable when `CNI_COMMAND` is set (all logic in
//! `plugnet::bridge`); otherwise the runtime-side runner CLI (`plugnet::cli`: up, down, …).

use plugnet::bridge::BridgePlugin;
use plugnet::log::Logged;
use plugnet::skel::{self, Env, OsEnv};

#[global_allocator]
static HEAP: plugnet::heap::Heap = plugnet::heap::new();

fn main() {
    if OsEnv.var("CNI_COMMAND").is_none() {
        std::process::exit(plugnet::cli::main(std::env::args().collect()));
    }
    let plugin = Logged::new(
        BridgePlugin::default(),
        "plugnet",
        OsEnv.var("PLUGNET_LOG"),
        OsEnv.var("PLUGNET_LOG_LEVEL"),
    );
    let code = skel::run(
        &plugin,
        &OsEnv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    );
    std::process::exit(code);
}
