//! `plugnet-ipam`: the CNI IPAM plugin executable. All logic lives in `plugnet::ipam`.

use plugnet::ipam::IpamPlugin;
use plugnet::log::Logged;
use plugnet::skel::{self, Env, OsEnv};
use plugnet::version::SUPPORTED;

#[global_allocator]
static HEAP: plugnet::heap::Heap = plugnet::heap::new();

fn main() {
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version" | "-V")) {
        println!("plugnet-ipam {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let help = matches!(arg.as_deref(), Some("--help" | "-h"));
    if OsEnv.var("CNI_COMMAND").is_none() || help {
        let text = format!(
            "plugnet-ipam {}: CNI IPAM plugin (files-with-lock store, host-local compatible config).\n\
             Run by a CNI runtime with CNI_COMMAND set and the network configuration on stdin;\n\
             to see or fix what it holds use `plugnet ipam ls` / `plugnet ipam release` / `plugnet gc`.\n\
             CNI protocol versions supported: {}\n\
             Logging (stdout is the protocol): PLUGNET_LOG=stderr|syslog|file:/PATH|off and\n\
             PLUGNET_LOG_LEVEL=error|warn|info|debug|trace, or the config key\n\
             \"log\": {{\"target\": …, \"level\": …}}; default stderr at warn.",
            env!("CARGO_PKG_VERSION"),
            SUPPORTED.join(", ")
        );
        // --help answers on stdout; a bare run (no CNI_COMMAND) explains itself on stderr, as
        // the reference plugins do, so a runtime probing it never reads prose as a result.
        if help {
            println!("{text}");
        } else {
            eprintln!("{text}");
        }
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
