//! Cluster networks across hosts (issue 18): a real three-member etcd, three "hosts" (network
//! namespaces with their own plugnet-agent and state dirs), plugnet-ipam and the plugnet bridge
//! plugin run as a runtime runs them. Checked by what an operator sees: addresses, etcd's
//! keys, `plugnet cluster` output, the plugins' answers.

use plugnet_tests::cluster::{wait_for, Topology, World, WorldOptions};
use plugnet_tests::{unique, CniOut, Netns};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One world at a time: three etcd members, three agents and a load on two shared cores are
/// enough; several at once only make elections and timeouts slower.
static ONE_WORLD: Mutex<()> = Mutex::new(());

fn one_world() -> std::sync::MutexGuard<'static, ()> {
    ONE_WORLD.lock().unwrap_or_else(|e| e.into_inner())
}

fn ip_of(out: &CniOut) -> IpAddr {
    let v = out.ok().json();
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {v}"))
}

/// Block → holder (None: reclaimed) of `net`, as etcd records it.
fn blocks(w: &World, net: &str) -> BTreeMap<ipnetwork::IpNetwork, Option<String>> {
    w.cli_ok(&["blocks", "--network", net])
        .as_array()
        .expect("array")
        .iter()
        .map(|b| {
            (
                b["block"].as_str().unwrap().parse().unwrap(),
                b["host"].as_str().map(String::from),
            )
        })
        .collect()
}

fn holder_of(map: &BTreeMap<ipnetwork::IpNetwork, Option<String>>, ip: IpAddr) -> Option<String> {
    map.iter()
        .find(|(b, _)| b.contains(ip))
        .and_then(|(_, h)| h.clone())
}

/// ADD `n` containers named `{tag}{i}` on host `h` with `threads` at once; their addresses.
fn add_many(
    w: &World,
    h: usize,
    net: &str,
    tag: &str,
    n: usize,
    threads: usize,
) -> Vec<(String, IpAddr)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let conf = w.hosts[h].ipam_conf(&format!("{net}-cni"), net, "1.0.0");
    std::thread::scope(|s| {
        for t in 0..threads {
            let (out, conf) = (out.clone(), conf.clone());
            let host = &w.hosts[h];
            s.spawn(move || {
                for i in (t..n).step_by(threads) {
                    let id = format!("{tag}{i}");
                    // Code 11 is "try again later", and runtimes do: on a loaded machine the
                    // agent may take longer than an ADD waits to claim the next block.
                    let mut r = host.ipam("ADD", &id, &conf);
                    for _ in 0..20 {
                        if r.code == 0 || r.json()["code"] != 11 {
                            break;
                        }
                        eprintln!("ADD {id} on {}: try again: {}", host.name, r.stdout.trim());
                        std::thread::sleep(Duration::from_millis(200));
                        r = host.ipam("ADD", &id, &conf);
                    }
                    assert_eq!(
                        r.code, 0,
                        "ADD {id} on {}: {} {}",
                        host.name, r.stdout, r.stderr
                    );
                    out.lock().unwrap().push((id, ip_of(&r)));
                }
            });
        }
    });
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

fn assert_unique(all: &[(String, IpAddr)]) {
    let mut seen: HashMap<IpAddr, &str> = HashMap::new();
    for (id, ip) in all {
        if let Some(other) = seen.insert(*ip, id) {
            panic!("{ip} handed out twice: {other} and {id}");
        }
    }
}

#[test]
fn three_hosts_share_a_network_through_etcd_failures() {
    let _one = one_world();
    let mut w = World::new(WorldOptions {
        prefix: "pnc",
        topology: Topology::TwoSubnets,
        agent_args: vec!["--lease-ttl".into(), "3s".into()],
        ..Default::default()
    });
    let net = format!("pnc{}", unique());
    w.cli_ok(&[
        "network",
        "create",
        &net,
        "--subnet",
        "10.230.0.0/16",
        "--subnet",
        "fd30::/64",
    ]);
    // The same through the plugnet binary, which runs plugnet-agent for it.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &w.admin.ns.name])
        .arg(plugnet_tests::bin("plugnet"))
        .args([
            "cluster",
            "--etcd",
            &w.etcd.endpoints(),
            "--json",
            "network",
            "ls",
        ])
        .output()
        .unwrap();
    let ls: Value = serde_json::from_slice(&out.stdout).expect("plugnet cluster network ls");
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == net.as_str()),
        "{ls}"
    );
    let refused = w.cli(&[
        "network",
        "create",
        "pnc-overlap",
        "--subnet",
        "10.230.128.0/17",
    ]);
    assert!(refused.unwrap_err().contains("overlaps"));

    // 300 concurrent ADDs over the three hosts.
    let rev0 = w.etcd.revision();
    let start = Instant::now();
    let per_host: Vec<Vec<(String, IpAddr)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|h| {
                let w = &w;
                let net = &net;
                s.spawn(move || add_many(w, h, net, &format!("c{h}-"), 100, 4))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = start.elapsed();
    let all: Vec<(String, IpAddr)> = per_host.iter().flatten().cloned().collect();
    assert_eq!(all.len(), 300);
    assert_unique(&all);
    let map = blocks(&w, &net);
    for (h, list) in per_host.iter().enumerate() {
        for (id, ip) in list {
            assert_eq!(
                holder_of(&map, *ip).as_deref(),
                Some(w.hosts[h].name.as_str()),
                "{id} on {} got {ip}, not in a block etcd records as that host's: {map:?}",
                w.hosts[h].name
            );
        }
        let held = map
            .values()
            .filter(|v| v.as_deref() == Some(w.hosts[h].name.as_str()))
            .count();
        // 100 addresses: 2 blocks of 61 (IPv4), 2 of 62 (IPv6), +1 of each at most for the
        // watermark kept ahead.
        assert!(
            (4..=6).contains(&held),
            "{} holds {held} blocks: {map:?}",
            w.hosts[h].name
        );
    }
    let writes = w.etcd.revision() - rev0;
    eprintln!(
        "figures: 300 ADDs on 3 hosts in {took:?}; {} blocks claimed; {writes} etcd writes",
        map.len()
    );
    assert!(
        writes as usize <= map.len() + 3,
        "{writes} etcd writes for {} blocks",
        map.len()
    );

    // A container through the bridge plugin: its block's gateway on the bridge, reachable.
    let ctr = Netns::new("pncc");
    let bconf: Value = serde_json::json!({"cniVersion": "1.0.0", "name": format!("{net}-cni"),
        "type": "plugnet", "bridge": "pncbr0", "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "plugnet-ipam", "cluster": net, "agentDir": w.hosts[0].agent_dir()}});
    let r = w.hosts[0].bridge("ADD", "pnc-bridge", &ctr.path(), &bconf);
    let res = r.ok().json();
    let gw = res["ips"][0]["gateway"].as_str().unwrap().to_string();
    assert!(
        ctr.exec_ok(&format!("ping -c 1 -W 2 {gw}")),
        "container cannot reach {gw}: {res}"
    );
    assert!(
        w.hosts[0]
            .bridge("DEL", "pnc-bridge", &ctr.path(), &bconf)
            .code
            == 0
    );

    // One member killed: nothing changes (a fresh block is still claimed).
    w.etcd.kill(0);
    let more = add_many(&w, 0, &net, "m0-", 70, 2);
    assert_unique(&[all.clone(), more.clone()].concat());
    // The agent's keep-alive stream may have been on the killed member: it moves to another
    // one (seconds on a loaded machine, its grows answered "try again" meanwhile, as retried
    // above), after which the status is not degraded.
    let mut st = Value::Null;
    let settled = (0..60).any(|_| {
        st = w.cli_ok(&[
            "status",
            "--state-dir",
            w.hosts[0].agent_dir().to_str().unwrap(),
        ]);
        st["degraded"] == false || {
            std::thread::sleep(Duration::from_millis(250));
            false
        }
    });
    assert!(
        settled,
        "still degraded 15 s after one member of three was killed: {st}"
    );

    // All of etcd down: ADD and DEL go on from held blocks; a block request fails clearly.
    w.etcd.kill_all();
    let conf1 = w.hosts[1].ipam_conf(&format!("{net}-cni"), &net, "1.1.0");
    wait_for(Duration::from_secs(15), "host 1 sees etcd down", || {
        (w.hosts[1].status()["etcd"]["reachable"] == false).then_some(())
    });
    for i in 0..5 {
        w.hosts[1].ipam("ADD", &format!("d{i}"), &conf1).ok();
        w.hosts[1].ipam("DEL", &format!("d{i}"), &conf1).ok();
    }
    assert_eq!(
        w.hosts[1].ipam("STATUS", "", &conf1).code,
        0,
        "free addresses remain"
    );
    let st = w.cli(&[
        "status",
        "--state-dir",
        w.hosts[1].agent_dir().to_str().unwrap(),
    ]);
    let st = st.unwrap_or_else(|e| panic!("status with etcd down: {e}"));
    assert_eq!(st["degraded"], true, "{st}");
    // Fill host 2's blocks: the ADD after the last free address fails within ~2 s.
    let conf2 = w.hosts[2].ipam_conf(&format!("{net}-cni"), &net, "1.1.0");
    let mut filled = 0;
    let failure = loop {
        let t = Instant::now();
        let r = w.hosts[2].ipam("ADD", &format!("f{filled}"), &conf2);
        if r.code != 0 {
            break (r, t.elapsed());
        }
        filled += 1;
        assert!(filled < 200, "host 2 never ran out");
    };
    let v = failure.0.err(11);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(&net) && msg.contains("no block could be claimed") && msg.contains("etcd"),
        "{v}"
    );
    assert!(
        failure.1 < Duration::from_millis(2600),
        "the failing ADD took {:?}",
        failure.1
    );
    assert_eq!(w.hosts[2].ipam("STATUS", "", &conf2).err(50)["code"], 50);

    // etcd back: the agents resync, the refused ADD goes through.
    w.etcd.start_all();
    w.etcd.wait_healthy(Duration::from_secs(30));
    wait_for(
        Duration::from_secs(20),
        "host 2 adds again after etcd came back",
        || (w.hosts[2].ipam("ADD", "f-again", &conf2).code == 0).then_some(()),
    );
    assert_eq!(w.hosts[2].ipam("STATUS", "", &conf2).code, 0);

    // Hostile local requests do not hurt the agent.
    hostile_socket(&w.hosts[0].agent_dir());
    assert_eq!(w.hosts[0].status()["registered"], true);

    // network rm leaves no key of the network; the hosts' local state goes once empty.
    let refused = w.cli(&["network", "rm", &net]).unwrap_err();
    assert!(
        refused.contains("registered hosts hold blocks"),
        "{refused}"
    );
    w.cli_ok(&["network", "rm", &net, "--force"]);
    let keys: Vec<String> = w
        .etcd
        .keys("/plugnet/")
        .into_iter()
        .filter(|k| k.contains(&net))
        .collect();
    assert!(keys.is_empty(), "left in etcd: {keys:?}");
    let add = w.hosts[1].ipam("ADD", "after-rm", &conf1);
    // The agent's watch makes this at once; when the watch was broken (etcd restarted above)
    // the periodic resync (every 30 s) does it: wait for whichever comes first.
    wait_for(Duration::from_secs(35), "ADD refused after rm", || {
        let r = w.hosts[1].ipam("ADD", "after-rm2", &conf1);
        (r.code != 0 && r.stdout.contains("removed")).then_some(())
    });
    drop(add);
    for (h, list) in per_host.iter().enumerate() {
        let conf = w.hosts[h].ipam_conf(&format!("{net}-cni"), &net, "1.0.0");
        for (id, _) in list {
            w.hosts[h].ipam("DEL", id, &conf).ok();
        }
        for (_, id) in w.hosts[h].held(&net) {
            w.hosts[h].ipam("DEL", &id, &conf).ok();
        }
        let file = plugnet::ipam::cluster::local::network_file(&w.hosts[h].agent_dir(), &net);
        wait_for(Duration::from_secs(35), "local state removed", || {
            (!file.exists()).then_some(())
        });
    }
}

/// Garbage, oversize and non-UTF-8 requests get an error answer; the agent goes on.
fn hostile_socket(agent_dir: &std::path::Path) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let path = plugnet::ipam::cluster::local::socket(agent_dir);
    for req in [
        b"{\"op\":\"grow\"}\n".to_vec(),
        b"\xff\xfe\n".to_vec(),
        vec![b'a'; 100_000],
        b"{\"op\":\"grow\",\"network\":\"../../etc\",\"families\":[4]}\n".to_vec(),
    ] {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&req);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.contains("\"ok\":false"), "{answer:?}");
    }
}

fn held_by(w: &World, net: &str, host: &str) -> Vec<ipnetwork::IpNetwork> {
    blocks(w, net)
        .into_iter()
        .filter(|(_, h)| h.as_deref() == Some(host))
        .map(|(b, _)| b)
        .collect()
}

fn no_duplicates_across_hosts(w: &World, net: &str) {
    let all: Vec<(String, IpAddr)> = w
        .hosts
        .iter()
        .flat_map(|h| {
            h.held(net)
                .into_iter()
                .map(|(ip, id)| (format!("{}:{id}", h.name), ip))
        })
        .collect();
    assert_unique(&all);
}

#[test]
fn a_host_cut_off_past_the_grace_period_and_back() {
    let _one = one_world();
    let mut w = World::new(WorldOptions {
        prefix: "pnd",
        agent_args: [
            "--lease-ttl",
            "2s",
            "--low-watermark",
            "4",
            "--cooldown",
            "1h",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let net = format!("pnd{}", unique());
    // Four /26 blocks in all, reclaimed 6 s after a host's lease is gone.
    w.cli_ok(&[
        "network",
        "create",
        &net,
        "--subnet",
        "10.231.0.0/24",
        "--reclaim-grace",
        "6s",
    ]);
    add_many(&w, 0, &net, "a", 5, 1);
    add_many(&w, 1, &net, "b", 1, 1);
    add_many(&w, 2, &net, "c", 1, 1);
    let a_block = held_by(&w, &net, &w.hosts[0].name);
    assert_eq!(a_block.len(), 1, "{:?}", blocks(&w, &net));
    let a_block = a_block[0];
    let conf_a = w.hosts[0].ipam_conf(&format!("{net}-cni"), &net, "1.1.0");

    // Cut off: ADDs go on from the held block until the fence...
    let ips = w.etcd.ips();
    w.hosts[0].cut_off(&ips);
    let cut = Instant::now();
    let a5 = w.hosts[0].ipam("ADD", "a5", &conf_a);
    assert_eq!(a5.code, 0, "ADD right after the cut: {}", a5.stdout);
    // ...the others reclaim its block after lease (2 s) + grace (6 s)...
    w.wait(
        Duration::from_secs(30),
        "the cut-off host's block reclaimed",
        || (blocks(&w, &net).get(&a_block) == Some(&None)).then_some(()),
    );
    let reclaimed_after = cut.elapsed();
    assert!(
        reclaimed_after >= Duration::from_secs(7),
        "reclaimed after {reclaimed_after:?}"
    );
    // ...and by then the cut-off host hands out nothing new, and says why.
    let t = Instant::now();
    let refused = w.hosts[0].ipam("ADD", "a6", &conf_a);
    let v = refused.err(11);
    assert!(
        v["msg"].as_str().unwrap().contains("out of reach of etcd"),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(w.hosts[0].ipam("STATUS", "", &conf_a).err(50)["code"], 50);
    // The others go on: host 1 needs a second block and gets the never-used one.
    add_many(&w, 1, &net, "b-more", 61, 2);
    assert!(!held_by(&w, &net, &w.hosts[1].name).contains(&a_block));

    // Back: the block is still free, so the host takes it back; nothing is held twice.
    w.hosts[0].reconnect();
    w.wait(Duration::from_secs(20), "the block taken back", || {
        (blocks(&w, &net).get(&a_block) == Some(&Some(w.hosts[0].name.clone()))).then_some(())
    });
    w.wait(
        Duration::from_secs(10),
        "ADD on the host that came back",
        || (w.hosts[0].ipam("ADD", "a7", &conf_a).code == 0).then_some(()),
    );
    no_duplicates_across_hosts(&w, &net);

    // Cut off again, and this time another host needs the last block: the host comes back to
    // a block someone else holds. It hands out nothing in it and reports its containers.
    w.hosts[0].cut_off(&ips);
    w.wait(Duration::from_secs(30), "reclaimed again", || {
        (blocks(&w, &net).get(&a_block) == Some(&None)).then_some(())
    });
    add_many(&w, 2, &net, "c-more", 70, 2);
    assert!(held_by(&w, &net, &w.hosts[2].name).contains(&a_block));
    w.hosts[0].reconnect();
    let a_in_block: usize = w.hosts[0]
        .held(&net)
        .iter()
        .filter(|(ip, _)| a_block.contains(*ip))
        .count();
    let st = w.wait(
        Duration::from_secs(20),
        "revoked containers reported",
        || {
            let st = w.hosts[0].status();
            let n = st["networks"][0]["revoked"].as_array().map_or(0, Vec::len);
            (n == a_in_block).then_some(st)
        },
    );
    assert!(a_in_block >= 6, "{st}");
    let check = w.hosts[0].ipam("CHECK", "a0", &conf_a);
    assert!(check.err(999)["msg"]
        .as_str()
        .unwrap()
        .contains("another host took over"));
    assert_eq!(w.hosts[0].ipam("STATUS", "", &conf_a).err(51)["code"], 51);
    let none_left = w.hosts[0].ipam("ADD", "a8", &conf_a);
    assert!(
        none_left.err(11)["msg"]
            .as_str()
            .unwrap()
            .contains("no free IPv4 block"),
        "{}",
        none_left.stdout
    );
    let ops = w.cli_ok(&[
        "status",
        "--state-dir",
        w.hosts[0].agent_dir().to_str().unwrap(),
    ]);
    assert_eq!(ops["degraded"], true, "{ops}");
    for (_, id) in w.hosts[0].held(&net) {
        w.hosts[0].ipam("DEL", &id, &conf_a).ok();
    }
    w.wait(
        Duration::from_secs(5),
        "the report clears once they are gone",
        || {
            (w.hosts[0].status()["networks"][0]["revoked"]
                .as_array()
                .map_or(0, Vec::len)
                == 0)
                .then_some(())
        },
    );
    assert_eq!(w.hosts[0].ipam("STATUS", "", &conf_a).code, 0);

    // release-host: refused while the host is registered, then its blocks go at once and no
    // key names it.
    let c_name = w.hosts[2].name.clone();
    w.hosts[2].stop_agent();
    let refused = w.cli(&["release-host", &c_name]).unwrap_err();
    assert!(refused.contains("registered"), "{refused}");
    w.wait(
        Duration::from_secs(10),
        "the stopped host's lease gone",
        || w.cli(&["release-host", &c_name]).ok(),
    );
    let left: Vec<(String, String)> = w
        .etcd
        .get_prefix("/plugnet/")
        .into_iter()
        .filter(|(k, v)| k.contains(&c_name) || v.contains(&format!("\"{c_name}\"")))
        .collect();
    assert!(
        left.is_empty(),
        "keys naming {c_name} after release-host: {left:?}"
    );
}

#[test]
fn the_agent_killed_and_restarted_under_add_del_load() {
    let _one = one_world();
    let mut w = World::new(WorldOptions {
        prefix: "pne",
        hosts: 1,
        // Small blocks, a short cooldown: claims and releases all through the run.
        agent_args: [
            "--low-watermark",
            "4",
            "--cooldown",
            "1s",
            "--lease-ttl",
            "3s",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let net = format!("pne{}", unique());
    w.cli_ok(&[
        "network",
        "create",
        &net,
        "--subnet",
        "10.232.0.0/22",
        "--block-size",
        "28",
    ]);
    let conf = w.hosts[0].ipam_conf(&format!("{net}-cni"), &net, "1.0.0");
    // Live addresses: an ADD that answers one already live is the failure this test hunts.
    let live: Mutex<HashMap<IpAddr, String>> = Mutex::new(HashMap::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (adds, refused) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    std::thread::scope(|s| {
        for t in 0..4 {
            let (live, stop, adds, refused, conf, net) =
                (&live, &stop, &adds, &refused, &conf, &net);
            let host = plugnet_tests::cluster::host::ipam;
            s.spawn(move || {
                let mut mine: Vec<(String, IpAddr)> = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let id = format!("k{t}-{n}");
                    let r = host("ADD", &id, conf);
                    if r.code == 0 {
                        let ip = ip_of(&r);
                        if let Some(other) = live.lock().unwrap().insert(ip, id.clone()) {
                            panic!("{ip} handed to {id} while {other} holds it");
                        }
                        adds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        mine.push((id, ip));
                    } else {
                        // Only while the agent is down and the blocks are full: said clearly.
                        let v = r.err(11);
                        assert!(v["msg"].as_str().unwrap().contains(net.as_str()), "{v}");
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if mine.len() > 12 || (n % 3 == 0 && !mine.is_empty()) {
                        let (id, ip) = mine.remove(0);
                        // Unheld before the DEL: once DEL answers, anyone may get it again.
                        live.lock().unwrap().remove(&ip);
                        host("DEL", &id, conf).ok();
                    }
                }
                for (id, ip) in mine {
                    live.lock().unwrap().remove(&ip);
                    host("DEL", &id, conf).ok();
                }
            });
        }
        let host = &mut w.hosts[0];
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(1500));
            host.kill_agent();
            std::thread::sleep(Duration::from_millis(300));
            host.start_agent();
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let (adds, refused) = (adds.into_inner(), refused.into_inner());
    eprintln!("figures: {adds} ADDs, {refused} refused while the agent was down, 4 SIGKILLs");
    assert!(adds > 100, "only {adds} ADDs got through");
    assert!(
        w.hosts[0].held(&net).is_empty(),
        "left in the store: {:?}",
        w.hosts[0].held(&net)
    );
    // The agent's blocks and etcd's agree, and the empty ones go back after the cooldown
    // (the watermark keeps one).
    let name = w.hosts[0].name.clone();
    w.wait(Duration::from_secs(20), "empty blocks returned", || {
        let st = w.hosts[0].status();
        let local: Vec<String> = st["networks"][0]["blocks"]
            .as_array()?
            .iter()
            .map(|b| b["block"].as_str().unwrap().to_string())
            .collect();
        let mut etcd: Vec<String> = held_by(&w, &net, &name)
            .iter()
            .map(ToString::to_string)
            .collect();
        etcd.sort();
        let mut sorted = local.clone();
        sorted.sort();
        (sorted == etcd && local.len() == 1).then_some(())
    });
}

#[test]
fn install_puts_the_agent_and_a_unit_systemd_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("root");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let install = |extra: &[&str]| {
        std::process::Command::new(repo.join("scripts/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--bin-dir")
            .arg(plugnet_tests::bin_dir())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = install(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = prefix.join("usr/local/bin/plugnet-agent");
    let unit_path = prefix.join("etc/systemd/system/plugnet-agent.service");
    assert!(agent.is_file() && unit_path.is_file());
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains("Before=docker.service containerd.service plugnet-shim.service"),
        "{unit}"
    );
    // systemd-analyze verify checks every directive and that ExecStart's binary exists.
    let verify = |exec: &std::path::Path| {
        let text = unit.replace("/usr/local/bin/plugnet-agent", &exec.display().to_string());
        let p = tmp.path().join("plugnet-agent.service");
        std::fs::write(&p, text).unwrap();
        std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&p)
            .output()
            .unwrap()
    };
    let ok = verify(&agent);
    assert!(
        ok.status.success() && ok.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !verify(&tmp.path().join("missing")).status.success(),
        "verify accepted a missing binary"
    );
    let out = install(&["--uninstall"]);
    assert!(out.status.success());
    assert!(!agent.exists() && !unit_path.exists());
}
