//! Per cluster network, the address blocks this host holds (in progress: see the next commits).

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::runtime::Shutdown;
use crate::state::LocalState;
use anyhow::{bail, Result};
use plugnet::ipam::cluster::ask::Answer;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub struct Blocks;

type Task = Pin<Box<dyn Future<Output = Result<()>>>>;

impl Blocks {
    pub async fn start(
        _c: &ClusterConfig,
        _s: &LocalState,
        _m: Arc<Metrics>,
        _sd: &Shutdown,
    ) -> Result<Arc<Blocks>> {
        bail!("--etcd: the cluster tasks are not in this build yet")
    }
    pub fn tasks(self: Arc<Self>, _sd: Shutdown) -> Vec<(&'static str, Task)> {
        Vec::new()
    }
    pub async fn grow(&self, network: &str, _families: &[u8]) -> Answer {
        Answer::err(format!("cluster network {network}: not in this build yet"))
    }
    pub async fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
