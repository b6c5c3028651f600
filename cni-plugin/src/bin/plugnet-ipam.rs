//! `plugnet-ipam`: the CNI IPAM plugin executable. All logic lives in `plugnet::ipam`.

use plugnet::ipam::IpamPlugin;
use plugnet::log::Logged;
use plugnet::skel::{self, Env, OsEnv};
use plugnet::version::SUPPORTED;

fn main() {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version" | "-V")) {
        println!("plugnet-ipam {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if OsEnv.var("CNI_COMMAND").is_none() || matches!(arg.as_deref(), Some("--help" | "-h")) {
        eprintln!(
            "plugnet-ipam {}: CNI IPAM plugin (files-with-lock store, host-local compatible config).\n\
             Run by a CNI runtime with CNI_COMMAND set and the network configuration on stdin.\n\
             CNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            SUPPORTED.join(", ")
        );
        return;
    }
    let plugin = Logged::new(
        IpamPlugin,
        "plugnet-ipam",
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
