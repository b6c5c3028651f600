//! `plugnet-agent`: the per-host daemon, and (`plugnet-agent cluster …`, also reached as
//! `plugnet cluster …`) the operator's cluster command line. All logic lives in the library;
//! this parses, starts logging, runs and is the only place that exits.

use clap::Parser;
use plugnet_agent::config::{Cli, Command};

fn main() {
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
