//! `plugnet-agent`: the per-host daemon, and (`plugnet-agent cluster …`, also reached as
//! `plugnet cluster …`) the operator's cluster command line. All logic lives in the library;
//! this parses, starts logging, runs and is the only place that exits.

use clap::Parser;
use plugnet_agent::config::{Cli, Command};

fn main() {
    // Release builds unwind (plugnet-shim answers a handler's panic with a 500); the agent keeps
    // ending the whole process on any panic, for systemd to restart it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let cli = Cli::parse();
    if let Some(Command::Cluster(args)) = cli.command {
        std::process::exit(plugnet_agent::cluster::main(args));
    }
    plugnet_agent::logging::init(&cli.daemon.log_level);
    let config = match cli.daemon.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = plugnet_agent::runtime::run(config) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
