//! `plugnet`: the CNI bridge plugin executable when `CNI_COMMAND` is set (all logic in
//! `plugnet::bridge`); otherwise the runtime-side runner CLI (`plugnet::cli`: up, down, …).

use plugnet::bridge::BridgePlugin;
use plugnet::skel::{self, Env, OsEnv};

fn main() {
    if OsEnv.var("CNI_COMMAND").is_none() {
        std::process::exit(plugnet::cli::main(std::env::args().collect()));
    }
    let code = skel::run(
        &BridgePlugin::default(),
        &OsEnv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    );
    std::process::exit(code);
}
