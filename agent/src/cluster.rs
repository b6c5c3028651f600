//! `plugnet-agent cluster …` (also `plugnet cluster …`): the operator's commands (in progress).

use crate::config::EtcdArgs;
use clap::Args;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

pub fn main(_args: ClusterArgs) -> i32 {
    eprintln!("plugnet cluster: not in this build yet");
    2
}
