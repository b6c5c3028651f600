//! `plugnet-agent cluster …`, also reached as `plugnet cluster …`: the operator's commands over
//! the cluster's state in etcd (networks, hosts, blocks, status, release-host).
//!
//! Invariant: every change is one etcd transaction guarded by what was read (no lost update
//! between two operators); output is a table, or JSON with `--json`; exit 0 on success, 1 on
//! failure, 2 on a usage error.

use crate::config::{duration, EtcdArgs};
use crate::etcd::Etcd;
use crate::metrics::Metrics;
use crate::schema::{self, BlockValue, HostRecord, Mode, NetworkDef};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use etcd_client::{Compare, CompareOp, DeleteOptions, Txn, TxnOp};
use ipnetwork::IpNetwork;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Cluster networks: create, ls, rm.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Hosts registered (alive) and hosts still holding blocks without a registration.
    Hosts,
    /// Every block and who holds it.
    Blocks {
        #[arg(long)]
        network: Option<String>,
    },
    /// etcd's members, and this host's agent (degraded when etcd is out of reach, the host is
    /// fenced, or containers sit in blocks another host took over).
    Status {
        /// The agent's state dir on this host.
        #[arg(long, default_value = crate::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Take back every block of a host now (it is gone for good); refused while the host is
    /// registered, unless --force.
    ReleaseHost {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Define a cluster network.
    Create(CreateArgs),
    Ls,
    /// Remove a network and every block of it (hosts stop handing out its addresses; DEL
    /// keeps working); refused while registered hosts hold blocks of it, unless --force.
    Rm {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// A subnet blocks are cut from (repeat for IPv6 or more space).
    #[arg(long = "subnet", required = true)]
    pub subnets: Vec<IpNetwork>,
    /// Prefix length of IPv4 blocks (64 addresses at 26).
    #[arg(long, default_value_t = 26)]
    pub block_size: u8,
    /// Prefix length of IPv6 blocks (default: as many addresses as IPv4 blocks).
    #[arg(long)]
    pub block_size6: Option<u8>,
    #[arg(long, value_enum, default_value = "host-gw")]
    pub mode: ModeArg,
    /// VXLAN network identifier (default: the lowest one no other network uses, from 4096).
    #[arg(long)]
    pub vni: Option<u32>,
    /// How long a host's lease must be gone before others take its blocks.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub reclaim_grace: Duration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    HostGw,
    Vxlan,
}

/// Entry point: the exit code.
pub fn main(mut args: ClusterArgs) -> i32 {
    if args.etcd.etcd.is_empty() {
        if let Ok(v) = std::env::var("PLUGNET_ETCD") {
            args.etcd.etcd = v.split(',').map(String::from).collect();
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugnet cluster: start runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                print!("{}", table(&args.command, &v));
            }
            0
        }
        Err(e) => {
            eprintln!("plugnet cluster: {e:#}");
            1
        }
    }
}

async fn run(args: &ClusterArgs) -> Result<Value> {
    if let ClusterCommand::Status { state_dir } = &args.command {
        return status(&args.etcd, state_dir).await;
    }
    let etcd = Etcd::connect(&args.etcd, Arc::new(Metrics::new())).await?;
    match &args.command {
        ClusterCommand::Network(NetworkCommand::Create(c)) => create(&etcd, c).await,
        ClusterCommand::Network(NetworkCommand::Ls) => networks(&etcd).await,
        ClusterCommand::Network(NetworkCommand::Rm { name, force }) => {
            remove(&etcd, name, *force).await
        }
        ClusterCommand::Hosts => hosts(&etcd).await,
        ClusterCommand::Blocks { network } => blocks(&etcd, network.as_deref()).await,
        ClusterCommand::ReleaseHost { name, force } => release_host(&etcd, name, *force).await,
        ClusterCommand::Status { .. } => unreachable!("handled above"),
    }
}

/// The schema key: created with the first network, checked by everyone after.
async fn ensure_schema(etcd: &Etcd) -> Result<()> {
    let value = json!({"version": schema::VERSION}).to_string();
    let r = etcd
        .txn(
            Txn::new()
                .when([Compare::version(schema::SCHEMA_KEY, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(schema::SCHEMA_KEY, value, None)]),
        )
        .await?;
    if r.succeeded() {
        return Ok(());
    }
    check_schema(etcd).await
}

pub async fn check_schema(etcd: &Etcd) -> Result<()> {
    if let Some(kv) = etcd.get(schema::SCHEMA_KEY).await? {
        let v: Value = schema::decode(&kv.key, &kv.value)?;
        if v["version"].as_u64() != Some(u64::from(schema::VERSION)) {
            bail!(
                "etcd holds plugnet schema {} under {}; this plugnet knows version {}",
                v["version"],
                schema::SCHEMA_KEY,
                schema::VERSION
            );
        }
    }
    Ok(())
}

async fn defs(etcd: &Etcd) -> Result<(BTreeMap<String, NetworkDef>, i64)> {
    let (kvs, rev) = etcd.get_prefix(schema::NETWORKS).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let d: NetworkDef = schema::decode(&kv.key, &kv.value)?;
        out.insert(d.name.clone(), d);
    }
    Ok((out, rev))
}

async fn create(etcd: &Etcd, c: &CreateArgs) -> Result<Value> {
    schema::check_name("network", &c.name)?;
    let block6 = c.block_size6.unwrap_or(128 - (32 - c.block_size.min(32)));
    for s in &c.subnets {
        if s.network() != s.ip() {
            bail!(
                "--subnet {s}: host bits set; use {}/{}",
                s.network(),
                s.prefix()
            );
        }
        let (block, max) = if s.is_ipv4() {
            (c.block_size, 29)
        } else {
            (block6, 125)
        };
        if block < s.prefix() || block > max {
            bail!(
                "--subnet {s}: blocks of /{block} do not fit (between /{} and /{max})",
                s.prefix()
            );
        }
    }
    for (i, a) in c.subnets.iter().enumerate() {
        for b in &c.subnets[i + 1..] {
            if a.contains(b.network()) || b.contains(a.network()) {
                bail!("--subnet {a} and {b} overlap");
            }
        }
    }
    ensure_schema(etcd).await?;
    let (existing, rev) = defs(etcd).await?;
    if existing.contains_key(&c.name) {
        bail!("cluster network {} exists", c.name);
    }
    for d in existing.values() {
        for a in &d.subnets {
            for b in &c.subnets {
                if a.contains(b.network()) || b.contains(a.network()) {
                    bail!("--subnet {b} overlaps {a} of cluster network {}", d.name);
                }
            }
        }
    }
    let vni = match (c.mode, c.vni) {
        (ModeArg::HostGw, Some(_)) => bail!("--vni is for --mode vxlan"),
        (ModeArg::HostGw, None) => None,
        (ModeArg::Vxlan, Some(v)) if v == 0 || v > 0xff_ffff => bail!("--vni {v}: 1-16777215"),
        (ModeArg::Vxlan, Some(v)) => {
            if let Some(d) = existing.values().find(|d| d.vni == Some(v)) {
                bail!("--vni {v} is used by cluster network {}", d.name);
            }
            Some(v)
        }
        (ModeArg::Vxlan, None) => {
            (4096..=0xff_ffff).find(|v| !existing.values().any(|d| d.vni == Some(*v)))
        }
    };
    let def = NetworkDef {
        name: c.name.clone(),
        subnets: c.subnets.clone(),
        block_prefix_v4: c.block_size,
        block_prefix_v6: block6,
        mode: match c.mode {
            ModeArg::HostGw => Mode::HostGw,
            ModeArg::Vxlan => Mode::Vxlan,
        },
        vni,
        reclaim_grace_secs: c.reclaim_grace.as_secs().max(1),
        created_unix: schema::now_unix(),
    };
    let key = schema::network_key(&c.name);
    // Created only if no network appeared or changed since the overlap check read them.
    let r = etcd
        .txn(
            Txn::new()
                .when([
                    Compare::version(key.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(schema::NETWORKS, CompareOp::Less, rev + 1).with_prefix(),
                ])
                .and_then([TxnOp::put(key, schema::encode(&def), None)]),
        )
        .await?;
    if !r.succeeded() {
        bail!("another network was created at the same moment; run the command again");
    }
    Ok(serde_json::to_value(&def).expect("serialises"))
}

async fn block_list(etcd: &Etcd, prefix: &str) -> Result<Vec<(String, IpNetwork, BlockValue)>> {
    let (kvs, _) = etcd.get_prefix(prefix).await?;
    let mut out = Vec::new();
    for kv in kvs {
        if let Some((net, block)) = schema::parse_block_key(&kv.key) {
            out.push((net, block, schema::decode(&kv.key, &kv.value)?));
        }
    }
    Ok(out)
}

async fn host_list(etcd: &Etcd) -> Result<BTreeMap<String, HostRecord>> {
    let (kvs, _) = etcd.get_prefix(schema::HOSTS).await?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        let h: HostRecord = schema::decode(&kv.key, &kv.value)?;
        out.insert(h.name.clone(), h);
    }
    Ok(out)
}

async fn networks(etcd: &Etcd) -> Result<Value> {
    let (defs, _) = defs(etcd).await?;
    let blocks = block_list(etcd, schema::BLOCKS).await?;
    Ok(Value::Array(
        defs.values()
            .map(|d| {
                let mut v = serde_json::to_value(d).expect("serialises");
                let held = blocks
                    .iter()
                    .filter(|(n, _, b)| n == &d.name && b.holder().is_some())
                    .count();
                v["blocksHeld"] = json!(held);
                v
            })
            .collect(),
    ))
}

async fn remove(etcd: &Etcd, name: &str, force: bool) -> Result<Value> {
    schema::check_name("network", name)?;
    let key = schema::network_key(name);
    let kv = etcd
        .get(&key)
        .await?
        .ok_or_else(|| anyhow!("no cluster network {name}"))?;
    let hosts = host_list(etcd).await?;
    let blocks = block_list(etcd, &schema::blocks_prefix(name)).await?;
    let mut live: Vec<&str> = blocks
        .iter()
        .filter_map(|(_, _, b)| b.holder())
        .filter(|h| hosts.contains_key(*h))
        .collect();
    live.sort();
    live.dedup();
    if !live.is_empty() && !force {
        bail!(
            "registered hosts hold blocks of {name}: {} (their containers keep their addresses, \
             new ones there fail); pass --force to remove it anyway",
            live.join(", ")
        );
    }
    let r = etcd
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision,
                )])
                .and_then([
                    TxnOp::delete(key, None),
                    TxnOp::delete(
                        schema::blocks_prefix(name),
                        Some(DeleteOptions::new().with_prefix()),
                    ),
                ]),
        )
        .await?;
    if !r.succeeded() {
        bail!("cluster network {name} changed while removing it; run the command again");
    }
    Ok(json!({"removed": name, "blocks": blocks.len()}))
}

async fn hosts(etcd: &Etcd) -> Result<Value> {
    let hosts = host_list(etcd).await?;
    let blocks = block_list(etcd, schema::BLOCKS).await?;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, b) in &blocks {
        if let Some(h) = b.holder() {
            *count.entry(h.to_string()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (name, h) in &hosts {
        let mut v = serde_json::to_value(h).expect("serialises");
        v["alive"] = json!(true);
        v["blocks"] = json!(count.get(name).copied().unwrap_or(0));
        out.push(v);
    }
    for (name, n) in &count {
        if !hosts.contains_key(name) {
            out.push(json!({"name": name, "alive": false, "blocks": n}));
        }
    }
    Ok(Value::Array(out))
}

async fn blocks(etcd: &Etcd, network: Option<&str>) -> Result<Value> {
    let prefix = match network {
        Some(n) => {
            schema::check_name("network", n)?;
            schema::blocks_prefix(n)
        }
        None => schema::BLOCKS.to_string(),
    };
    let hosts = host_list(etcd).await?;
    Ok(Value::Array(
        block_list(etcd, &prefix)
            .await?
            .into_iter()
            .map(|(net, block, v)| {
                let mut o = serde_json::to_value(&v).expect("serialises");
                o["network"] = json!(net);
                o["block"] = json!(block.to_string());
                if let Some(h) = v.holder() {
                    o["hostAlive"] = json!(hosts.contains_key(h));
                }
                o
            })
            .collect(),
    ))
}

async fn release_host(etcd: &Etcd, name: &str, force: bool) -> Result<Value> {
    schema::check_name("host", name)?;
    let key = schema::host_key(name);
    let registered = etcd.get(&key).await?;
    if registered.is_some() && !force {
        bail!(
            "host {name} is registered (its agent keeps its lease alive): stop it first, or pass \
             --force if it is gone and its lease has yet to run out"
        );
    }
    let blocks = {
        let (kvs, _) = etcd.get_prefix(schema::BLOCKS).await?;
        kvs.into_iter()
            .filter(|kv| {
                matches!(schema::decode::<BlockValue>(&kv.key, &kv.value),
                    Ok(BlockValue::Held { host, .. }) if host == name)
            })
            .collect::<Vec<_>>()
    };
    if let Some(h) = &registered {
        let r = etcd
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        h.mod_revision,
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)]),
            )
            .await?;
        if !r.succeeded() {
            bail!("host {name} re-registered while releasing it; run the command again");
        }
        if h.lease != 0 {
            let _ = etcd.lease_revoke(h.lease).await;
        }
    }
    let value = schema::encode(&BlockValue::Reclaimed {
        at_unix: schema::now_unix(),
    });
    let mut released = Vec::new();
    for chunk in blocks.chunks(60) {
        let mut cmp = vec![Compare::version(key.clone(), CompareOp::Equal, 0)];
        let mut ops = Vec::new();
        for kv in chunk {
            cmp.push(Compare::mod_revision(
                kv.key.clone(),
                CompareOp::Equal,
                kv.mod_revision,
            ));
            ops.push(TxnOp::put(kv.key.clone(), value.clone(), None));
        }
        if !etcd
            .txn(Txn::new().when(cmp).and_then(ops))
            .await?
            .succeeded()
        {
            bail!("host {name} or its blocks changed while releasing it; run the command again");
        }
        released.extend(chunk.iter().filter_map(|kv| {
            schema::parse_block_key(&kv.key)
                .map(|(n, b)| json!({"network": n, "block": b.to_string()}))
        }));
    }
    Ok(json!({"host": name, "released": released}))
}

async fn status(args: &EtcdArgs, state_dir: &std::path::Path) -> Result<Value> {
    let mut members = Vec::new();
    let mut healthy = 0;
    for url in &args.etcd {
        let one = EtcdArgs {
            etcd: vec![url.clone()],
            ..args.clone()
        };
        let probe = async {
            let e = Etcd::connect(&one, Arc::new(Metrics::new())).await?;
            let mut c = e.client();
            let s = e.timed("status", c.status()).await?;
            Ok::<_, anyhow::Error>(json!({
                "endpoint": url, "ok": true, "version": s.version(),
                "leader": s.leader(), "member": s.header().map(|h| h.member_id()),
                "revision": s.header().map(|h| h.revision()),
            }))
        };
        match probe.await {
            Ok(v) => {
                healthy += 1;
                members.push(v);
            }
            Err(e) => {
                members.push(json!({"endpoint": url, "ok": false, "error": format!("{e:#}")}))
            }
        }
    }
    let agent = plugnet::ipam::cluster::ask::ask(
        state_dir,
        &plugnet::ipam::cluster::ask::Request::Status,
        Duration::from_secs(3),
    );
    let agent = match agent {
        Ok(a) if a.ok => a.status,
        Ok(a) => json!({"error": a.error}),
        Err(e) => json!({"error": e}),
    };
    let etcd_ok = healthy * 2 > members.len();
    let degraded =
        !etcd_ok || agent["degraded"].as_bool().unwrap_or(false) || agent.get("error").is_some();
    if members.is_empty() && agent.get("error").is_some() {
        return Err(anyhow!("no --etcd given and {}", agent["error"]).context("status"));
    }
    Ok(json!({
        "etcd": {"members": members, "healthy": etcd_ok},
        "agent": agent,
        "degraded": degraded,
    }))
}

/// The human form of a command's JSON answer.
fn table(cmd: &ClusterCommand, v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let rows = |cols: &[&str], items: &Value| -> String {
        let mut out = cols.join("\t").to_uppercase() + "\n";
        for it in items.as_array().into_iter().flatten() {
            let line: Vec<String> = cols.iter().map(|c| s(&it[*c])).collect();
            out += &(line.join("\t") + "\n");
        }
        out
    };
    match cmd {
        ClusterCommand::Network(NetworkCommand::Ls) => rows(
            &[
                "name",
                "subnets",
                "mode",
                "vni",
                "blockPrefixV4",
                "reclaimGraceSecs",
                "blocksHeld",
            ],
            v,
        ),
        ClusterCommand::Hosts => rows(&["name", "alive", "underlay", "vtepMac", "blocks", "id"], v),
        ClusterCommand::Blocks { .. } => {
            rows(&["network", "block", "state", "host", "hostAlive"], v)
        }
        ClusterCommand::Status { .. } => {
            let mut out = format!("{}\n", serde_json::to_string_pretty(v).expect("serialises"));
            // The data plane per peer host: are its routes (and VXLAN FDB entries) in place?
            for n in v["agent"]["dataplane"]["networks"]
                .as_array()
                .into_iter()
                .flatten()
            {
                out += &format!(
                    "\ndata plane of {} ({}, MTU {}):\n",
                    s(&n["network"]),
                    s(&n["mode"]),
                    s(&n["mtu"])
                );
                out += &rows(
                    &["host", "underlay", "routesInPlace", "fdbInPlace", "blocks"],
                    &n["peers"],
                );
            }
            out
        }
        _ => format!("{}\n", serde_json::to_string_pretty(v).expect("serialises")),
    }
}
