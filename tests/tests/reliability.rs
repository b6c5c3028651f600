//! Reliability black-box tests: a simulated reboot (state on disk survives; namespaces,
//! bridges, veths and nftables rules vanish). The next ADDs must work and GC must return every
//! stale address and firewall record. (Kill storms live in `plugnet-soak`, run by test.sh.)

mod bridge_support;

use bridge_support::*;
use serde_json::{json, Value};

fn conf(dirs: &tempfile::TempDir, br: &str, port: u16) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "pnb-reboot", "type": "plugnet",
        "bridge": br, "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "firewallStateDir": dirs.path().join("fw"),
        "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]},
        "ipam": {"type": "plugnet-ipam", "dataDir": dirs.path().join("ipam"),
                  "ranges": [[{"subnet": "10.50.90.0/24"}]]}
    })
}

fn leases(dirs: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dirs.path().join("ipam/pnb-reboot/ip"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn fw_records(dirs: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dirs.path().join("fw/attachments"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn reboot_keeps_state_next_adds_work_and_gc_returns_the_stale() {
    // State that survives the "reboot": IPAM store and firewall records.
    let dirs = tempfile::Builder::new()
        .prefix("pnb-reboot-")
        .tempdir()
        .unwrap();
    let br = "pnbrb0";
    {
        let before = Host::new("rb1");
        let containers: Vec<Ns> = (0..3).map(|_| before.container()).collect();
        for (i, c) in containers.iter().enumerate() {
            before.add(
                &conf(&dirs, br, 18080 + i as u16),
                &Att::new(&format!("old{i}"), &c.path(), "eth0"),
            );
        }
        assert_eq!(leases(&dirs), 3);
        assert_eq!(fw_records(&dirs), 3);
        // The reboot: every namespace goes, and with it bridges, veths and nftables rules.
    }

    let after = Host::new("rb2");
    let fresh: Vec<Ns> = (0..2).map(|_| after.container()).collect();
    let mut results = Vec::new();
    for (i, c) in fresh.iter().enumerate() {
        let att = Att::new(&format!("new{i}"), &c.path(), "eth0");
        results.push((
            att.clone(),
            after.add(&conf(&dirs, br, 18090 + i as u16), &att),
        ));
    }
    assert_eq!(leases(&dirs), 5, "stale leases are still held until GC");
    // The new containers work: they reach each other and the gateway.
    let ip1 = results[1].1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        fresh[0].ping(&ip1),
        "new containers cannot reach each other after the reboot"
    );
    assert!(
        fresh[0].ping("10.50.90.1"),
        "gateway unreachable after the reboot"
    );

    // The first ADD after the reboot rebuilt the table from the records, stale ones included
    // (plugnet cannot know yet which are dead): they are there until GC says so.
    let ruleset = String::from_utf8(after.ns.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    assert!(
        ruleset.contains("18080") && ruleset.contains("18090"),
        "{ruleset}"
    );

    // GC with the runtime's valid list returns everything of the old boot.
    let mut gc = conf(&dirs, br, 0);
    gc.as_object_mut().unwrap().remove("runtimeConfig");
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "new0", "ifname": "eth0"}, {"containerID": "new1", "ifname": "eth0"}
    ]);
    after.run(&plugnet(), "GC", &gc, None).ok();
    assert_eq!(leases(&dirs), 2, "GC left stale leases");
    assert_eq!(fw_records(&dirs), 2, "GC left stale firewall records");
    let ruleset = String::from_utf8(after.ns.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    for old_port in ["18080", "18081", "18082"] {
        assert!(
            !ruleset.contains(old_port),
            "stale port mapping {old_port} left:\n{ruleset}"
        );
    }
    assert!(fresh[1].ping("10.50.90.1"), "GC broke a valid attachment");

    for (i, (att, res)) in results.iter().enumerate() {
        after
            .run(
                &plugnet(),
                "DEL",
                &with_prev(&conf(&dirs, br, 18090 + i as u16), res),
                Some(att),
            )
            .ok();
    }
    assert_eq!(leases(&dirs), 0);
    assert_eq!(fw_records(&dirs), 0);
    let ruleset = String::from_utf8(after.ns.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    assert!(
        !ruleset.contains("plugnet"),
        "rules left after the last DEL:\n{ruleset}"
    );
}

/// A late DEL racing an ADD of the same attachment (the spec forbids it; runtimes do it after
/// timeouts): the DEL is held inside its IPAM step (strace delays its store lock by 1.5 s)
/// while the ADD runs. Serialised per attachment, the ADD waits for the DEL and keeps its
/// address; unserialised, the DEL released the address of a live container.
#[test]
fn a_late_del_racing_an_add_of_the_same_attachment_never_frees_its_address() {
    let host = Host::new("race");
    let c = host.container();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "pnb-race", "type": "plugnet", "bridge": "pnbrace0",
        "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                 "ranges": [[{"subnet": "10.50.91.0/24"}]]}
    });
    // Another container first: the store exists, so the DEL takes its lock.
    let other = host.container();
    let other_att = Att::new("other", &other.path(), "eth0");
    let other_res = host.add(&conf, &other_att);
    let att = Att::new("racer", &c.path(), "eth0");
    let started = std::time::Instant::now();
    let result = std::thread::scope(|s| {
        let del = s.spawn(|| {
            let mut cmd = std::process::Command::new("strace");
            cmd.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=flock"])
                .args(["-e", "inject=flock:delay_enter=1500000"])
                .arg(plugnet())
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", &att.id)
                .env("CNI_NETNS", &att.netns)
                .env("CNI_IFNAME", &att.ifname)
                .env("CNI_PATH", cni_path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            host.spawn_in(cmd, &serde_json::to_vec(&conf).unwrap())
        });
        std::thread::sleep(std::time::Duration::from_millis(400));
        let added = host.run(&plugnet(), "ADD", &conf, Some(&att));
        let del = del.join().unwrap();
        assert_eq!(del.code, 0, "DEL: {del:?}");
        added.ok().json()
    });
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "strace did not hold the DEL: the race was not staged"
    );
    let ip = ip_of(&result);
    let mut held = host.leases("pnb-race");
    held.sort();
    let mut want = vec![ip.clone(), ip_of(&other_res)];
    want.sort();
    assert_eq!(
        held, want,
        "the late DEL released the address of the container that holds it"
    );
    assert!(c.ping("10.50.91.1"), "the container lost its network");
    host.run(&plugnet(), "DEL", &with_prev(&conf, &result), Some(&att))
        .ok();
    host.run(
        &plugnet(),
        "DEL",
        &with_prev(&conf, &other_res),
        Some(&other_att),
    )
    .ok();
    assert!(host.leases("pnb-race").is_empty());
}

/// The system calls that change something (or hand a result over) at which a kill is tried.
const MUTATING: &str =
    "symlink,symlinkat,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,sendto,sendmsg,write";

/// `plugnet` under strace in the host namespace: with `kill_at = Some((syscall, n))` it is
/// SIGKILLed on entering its n-th `syscall` (strace counts per thread, so the main thread's
/// own sequence is what is addressed); with `trace = Some(file)` the mutating calls are logged.
fn traced(
    host: &Host,
    conf: &Value,
    att: &Att,
    kill_at: Option<(&str, usize)>,
    trace: Option<&std::path::Path>,
) -> Out {
    let mut cmd = std::process::Command::new("strace");
    cmd.args(["-f", "-qq", "-e", &format!("trace={MUTATING}")]);
    match trace {
        Some(f) => cmd.arg("-o").arg(f),
        None => cmd.args(["-o", "/dev/null"]),
    };
    if let Some((call, n)) = kill_at {
        cmd.args(["-e", &format!("inject={call}:signal=KILL:when={n}")]);
    }
    cmd.arg(plugnet())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &att.id)
        .env("CNI_NETNS", &att.netns)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_PATH", cni_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    host.spawn_in(cmd, &serde_json::to_vec(conf).unwrap())
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What a user (or an auditor) sees of plugnet's state: host and container links, the host's
/// nftables ruleset, and every file of the IPAM store and firewall state.
fn world(
    host: &Host,
    c: &Ns,
    state: &std::path::Path,
) -> (Vec<String>, Vec<String>, String, Vec<String>) {
    let mut links = host.ns.link_names();
    links.sort();
    let mut ruleset = String::from_utf8(host.ns.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    // The bridge's route_localnet, which port mappings turn on and must give back.
    ruleset += &host
        .ns
        .sh(&["cat", "/proc/sys/net/ipv4/conf/pnbk9/route_localnet"]);
    let mut files = tree(host.data_dir.path());
    files.extend(tree(state).into_iter().map(|f| format!("fw/{f}")));
    (links, c.link_names(), ruleset, files)
}

/// kill -9 at every step of ADD: one traced ADD lists the main thread's mutating system calls;
/// then, for each of them in turn, an ADD is killed on entering it, the runtime's GC (with an
/// empty valid list) runs, and nothing may be left: links, addresses, claims, nftables objects
/// and state files are exactly as before the ADD.
#[test]
fn kill_at_every_step_of_add_then_gc_leaves_nothing() {
    let host = Host::new("k9");
    let c = host.container();
    let fw = tempfile::Builder::new()
        .prefix("pnb-k9-")
        .tempdir()
        .unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "pnb-k9", "type": "plugnet", "bridge": "pnbk9",
        "isGateway": true, "isDefaultGateway": true, "ipMasq": true,
        "firewallStateDir": fw.path(),
        "runtimeConfig": {"portMappings": [{"hostPort": 18931, "containerPort": 80, "protocol": "tcp"}]},
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                 "ranges": [[{"subnet": "10.50.93.0/24"}], [{"subnet": "fd50:93::/64"}]]}
    });
    let mut gc = conf.clone();
    gc.as_object_mut().unwrap().remove("runtimeConfig");
    gc["cni.dev/valid-attachments"] = json!([]);
    let att = Att::new("k9", &c.path(), "eth0");
    // Warm up (bridge, store, state dirs exist), then record one ADD's steps.
    let first = host.add(&conf, &att);
    host.run(&plugnet(), "DEL", &with_prev(&conf, &first), Some(&att))
        .ok();
    let baseline = world(&host, &c, fw.path());
    let log = fw
        .path()
        .join("..")
        .join(format!("pnb-k9-{}.trace", std::process::id()));
    let out = traced(&host, &conf, &att, None, Some(&log));
    let recorded = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let res: Value = serde_json::from_str(&out.ok().stdout).unwrap();
    host.run(&plugnet(), "DEL", &with_prev(&conf, &res), Some(&att))
        .ok();
    assert_eq!(
        world(&host, &c, fw.path()),
        baseline,
        "ADD+DEL is not neutral"
    );
    let main_pid = recorded.split_whitespace().next().unwrap().to_string();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let steps: Vec<(String, usize, String)> = recorded
        .lines()
        .filter(|l| l.starts_with(&format!("{main_pid} ")))
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?.split('(').next()?.to_string();
            let n = seen.entry(call.clone()).or_default();
            *n += 1;
            Some((call, *n, l.chars().take(110).collect()))
        })
        .collect();
    assert!(steps.len() >= 20, "too few steps recorded: {recorded}");
    for (call, n, line) in &steps {
        let out = traced(&host, &conf, &att, Some((call, *n)), None);
        assert_ne!(out.code, 0, "not killed at {call} #{n} ({line}): {out:?}");
        let g = host.run(&plugnet(), "GC", &gc, None);
        assert_eq!(g.code, 0, "GC after a kill at {call} #{n} ({line}): {g:?}");
        let now = world(&host, &c, fw.path());
        assert_eq!(
            now, baseline,
            "left behind after a kill at {call} #{n} ({line}) and GC"
        );
    }
    eprintln!("killed at each of {} steps, GC left nothing", steps.len());
}

/// Lease files a store dir holds: host-local's (`<ip>` at the top) and plugnet's (`ip/<ip>`).
fn held_anywhere(store: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = tree(store)
        .into_iter()
        .filter(|p| {
            p.trim_start_matches("ip/")
                .parse::<std::net::IpAddr>()
                .is_ok()
        })
        .collect();
    out.sort();
    out
}

/// Switching a live host from host-local to plugnet-ipam, through libcni (the library podman,
/// containerd and CRI-O use): containers attached by the reference bridge + host-local keep
/// running; the same network (name, dataDir) under plugnet-ipam never hands out their
/// addresses, a new container reaches an old one, and DEL of an old container releases its
/// host-local lease.
#[test]
fn a_live_switch_from_host_local_to_plugnet_ipam() {
    assert!(
        plugnet_tests::have_reference_plugins(),
        "containernetworking-plugins not installed"
    );
    let work = tempfile::Builder::new()
        .prefix("pnb-switch-")
        .tempdir()
        .unwrap();
    let client = libcni_client(work.path());
    let host = Host::new("swl");
    let cache = work.path().join("cache");
    let net = "pnb-swl";
    let list = |ipam_type: &str| {
        let path = work.path().join(format!("{ipam_type}.conflist"));
        let l = json!({"cniVersion": "1.0.0", "name": net, "plugins": [{
            "type": "bridge", "bridge": "pnbswl0", "isGateway": true,
            "ipam": {"type": ipam_type, "dataDir": host.data_dir.path(),
                     "ranges": [[{"subnet": "10.50.94.0/29"}]]}}]});
        std::fs::write(&path, l.to_string()).unwrap();
        path
    };
    let (before, after) = (list("host-local"), list("plugnet-ipam"));
    let run = |op: &str, l: &std::path::Path, c: &Ns, id: &str| {
        libcni_run(&host, &client, op, l, &c.path(), id, &cache)
    };
    let add = |l: &std::path::Path, c: &Ns, id: &str| -> String {
        let out = run("add", l, c, id);
        assert_eq!(out.code, 0, "ADD {id}: {out:?}");
        ip_of(&serde_json::from_str(&out.stdout).unwrap())
    };
    let old: Vec<Ns> = (0..2).map(|_| host.container()).collect();
    let old_ips: Vec<String> = old
        .iter()
        .enumerate()
        .map(|(i, c)| add(&before, c, &format!("old{i}")))
        .collect();
    assert_eq!(old_ips, ["10.50.94.2", "10.50.94.3"]);

    // The switch: the same network under plugnet-ipam; the old containers keep running.
    let new: Vec<Ns> = (0..3).map(|_| host.container()).collect();
    let new_ips: Vec<String> = new
        .iter()
        .enumerate()
        .map(|(i, c)| add(&after, c, &format!("new{i}")))
        .collect();
    for ip in &new_ips {
        assert!(
            !old_ips.contains(ip),
            "{ip} is still held by a running container"
        );
    }
    assert!(
        new[0].ping(&old_ips[0]),
        "a new container cannot reach an old one"
    );
    // Full: the next ADD is refused rather than given an address in use.
    let full = host.container();
    assert_ne!(run("add", &after, &full, "full").code, 0);
    run("del", &after, &full, "full");

    // DEL of an old container, under the new configuration, releases its host-local lease.
    let store = host.data_dir.path().join(net);
    assert!(held_anywhere(&store).contains(&old_ips[0]));
    let out = run("del", &after, &old[0], "old0");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !held_anywhere(&store).contains(&old_ips[0]),
        "host-local lease kept"
    );
    let reused = add(&after, &host.container(), "new3");
    assert_eq!(reused, old_ips[0], "the released address is free again");

    for (i, c) in new.iter().enumerate() {
        run("del", &after, c, &format!("new{i}"));
    }
    run("del", &after, &old[1], "old1");
    let out = libcni_run(&host, &client, "del", &after, "", "new3", &cache);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        held_anywhere(&store).is_empty(),
        "{:?}",
        held_anywhere(&store)
    );
}

/// A chain whose later plugin fails on DEL (the reference portmap refuses a 1.1.0 list, as
/// Debian's does) never runs plugnet's DEL, and libcni keeps no cache for a failed ADD: once
/// the container is gone, `plugnet gc` must still find plugnet's reservation, firewall record
/// and nftables table, and remove them.
#[test]
fn a_chain_that_stops_before_plugnet_on_del_strands_nothing_plugnet_gc_cannot_find() {
    assert!(
        plugnet_tests::have_reference_plugins(),
        "containernetworking-plugins not installed"
    );
    let work = tempfile::Builder::new()
        .prefix("pnb-chain-")
        .tempdir()
        .unwrap();
    let client = libcni_client(work.path());
    let host = Host::new("chn");
    let cache = work.path().join("cache");
    let (confs, fw, state) = (
        work.path().join("net.d"),
        work.path().join("fw"),
        work.path().join("runner"),
    );
    std::fs::create_dir_all(&confs).unwrap();
    let net = "pnb-chn";
    let list = confs.join("10-chain.conflist");
    std::fs::write(
        &list,
        json!({"cniVersion": "1.1.0", "name": net, "plugins": [
            {"type": "plugnet", "bridge": "pnbchn0", "isGateway": true, "ipMasq": true,
             "firewallStateDir": fw,
             "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                      "ranges": [[{"subnet": "10.50.95.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
        .to_string(),
    )
    .unwrap();
    let c = host.container();
    let add = libcni_run(&host, &client, "add", &list, &c.path(), "stranded", &cache);
    assert_ne!(
        add.code, 0,
        "libcni 1.1.2 cannot take a 1.1.0 chain: {add:?}"
    );
    let del = libcni_run(&host, &client, "del", &list, &c.path(), "stranded", &cache);
    assert_ne!(
        del.code, 0,
        "portmap was expected to refuse the DEL: {del:?}"
    );
    assert_eq!(host.leases(net).len(), 1, "plugnet's ADD had run");
    let ruleset = || String::from_utf8(host.ns.exec(&["nft", "list", "ruleset"]).stdout).unwrap();
    assert!(ruleset().contains("plugnet"), "no table to strand");
    drop(c); // the container goes, and its veth with it (the kernel tears a netns down late)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !host.plugnet_veths().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        host.plugnet_veths().is_empty(),
        "the container's veth outlived it"
    );

    let gc = |dry: bool| {
        let mut cmd = std::process::Command::new(plugnet());
        cmd.arg("gc")
            .args(["--json", "--data-dir"])
            .arg(host.data_dir.path())
            .arg("--conf-dir")
            .arg(&confs)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--shim-state-dir")
            .arg(work.path().join("no-shim"))
            .env("PLUGNET_STATE_DIR", &state)
            .env_remove("CNI_COMMAND")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if dry {
            cmd.arg("--dry-run");
        }
        host.spawn_in(cmd, b"")
    };
    let out = gc(false);
    assert_eq!(out.code, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["owners"][0]["verdict"], "dead", "{report}");
    assert!(host.leases(net).is_empty(), "reservation left: {report}");
    let records = std::fs::read_dir(fw.join("attachments"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(records, 0, "firewall record left: {report}");
    assert!(
        !ruleset().contains("plugnet"),
        "nftables table left:\n{}",
        ruleset()
    );
    let again: Value = serde_json::from_str(&gc(false).stdout).unwrap();
    assert!(again["actions"].as_array().unwrap().is_empty(), "{again}");
}

/// Finding 1's class on the plugin side: every string, index and number a caller controls —
/// environment variables, `CNI_ARGS`, configuration fields, capability args, CLI arguments —
/// with non-ASCII, oversized, out-of-range and mistyped values. Each run must end in success or
/// a spec-shaped error (code, msg, cniVersion on stdout), never a panic (this is a debug build:
/// overflow checks are on).
#[test]
fn hostile_input_never_panics_and_always_answers_in_the_spec_shape() {
    let host = Host::new("hostile");
    let c = host.container();
    let base = json!({
        "cniVersion": "1.1.0", "name": "pnb-hostile", "type": "plugnet", "bridge": "pnbhst0",
        "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                 "ranges": [[{"subnet": "10.50.96.0/24"}]]}
    });
    let long = "é".repeat(3000);
    let set = |ptr: &str, v: Value| {
        let mut conf = base.clone();
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut conf
        } else {
            conf.pointer_mut(parent).unwrap()
        };
        target[key] = v;
        conf
    };
    let mut confs: Vec<Value> = vec![base.clone()];
    for (ptr, v) in [
        ("/name", json!("aéééééé")),
        ("/name", json!("0123456789aé")),
        ("/name", json!(long)),
        ("/bridge", json!("é")),
        ("/bridge", json!("ééééééééé")),
        ("/bridge", json!(42)),
        ("/mtu", json!(-1)),
        ("/mtu", json!(1e300)),
        ("/mtu", json!(u64::MAX)),
        ("/vlan", json!(i64::MIN)),
        ("/cniVersion", json!("1.1.0é")),
        ("/ipam/dataDir", json!("relativé")),
        (
            "/ipam/ranges",
            json!([[{"subnet": "10.50.96.0/24", "rangeStart": "é"}]]),
        ),
        ("/ipam/ranges", json!([[{"subnet": "é/24"}]])),
        (
            "/ipam/ranges",
            json!([[{"subnet": "::/0", "rangeStart": "::"}]]),
        ),
        ("/ipam/ranges", json!([[{"subnet": "10.0.0.0/0"}]])),
        ("/ipam/ranges", json!([[{"subnet": "10.50.96.0/33"}]])),
        ("/ipam/ranges", json!([[]])),
        ("/ipam/ranges", json!("x")),
        ("/ipam/routes", json!([{"dst": "é"}])),
        ("/ipam/type", json!("../../bin/sh")),
        ("/ipam/type", json!("é")),
        ("/dns", json!({"nameservers": [1, 2]})),
        (
            "/runtimeConfig",
            json!({"portMappings": [{"hostPort": 70000, "containerPort": 80}]}),
        ),
        ("/runtimeConfig", json!({"portMappings": "é"})),
        ("/runtimeConfig", json!({"mac": "éé:ff:ff:ff:ff:ff"})),
        ("/runtimeConfig", json!({"mac": "ff:ff"})),
        ("/runtimeConfig", json!({"ips": ["é", "10.50.96.300"]})),
        (
            "/runtimeConfig",
            json!({"bandwidth": {"ingressRate": u64::MAX, "ingressBurst": u64::MAX}}),
        ),
        ("/runtimeConfig", json!({"ipRanges": [[{"subnet": "é"}]]})),
        ("/args", json!({"cni": {"ips": ["é"], "mac": "é"}})),
        (
            "/prevResult",
            json!({"cniVersion": "1.1.0", "ips": [{"address": "é", "interface": 99}]}),
        ),
        (
            "/prevResult",
            json!({"ips": [{"address": "10.0.0.1/24", "interface": u64::MAX}]}),
        ),
        ("/log", json!({"target": "file:é", "level": "é"})),
    ] {
        confs.push(set(ptr, v));
    }
    let envs: Vec<(&str, String)> = vec![
        ("CNI_CONTAINERID", "aéééééé".into()),
        ("CNI_CONTAINERID", long.clone()),
        ("CNI_IFNAME", "éééééééé".into()),
        ("CNI_IFNAME", "eth0é".into()),
        ("CNI_NETNS", "/proc/self/ns/mnt".into()),
        ("CNI_NETNS", "/nonexistent/é".into()),
        ("CNI_NETNS", "relative".into()),
        ("CNI_ARGS", "IP=é".into()),
        ("CNI_ARGS", "IP=10.50.96.5/99".into()),
        ("CNI_ARGS", "MAC=é".into()),
        ("CNI_ARGS", "IgnoreUnknown=é;X=1".into()),
        ("CNI_ARGS", "é=é".into()),
        ("CNI_ARGS", format!("IP={long}")),
        ("CNI_PATH", long.clone()),
        ("CNI_COMMAND", "AD".into()),
    ];
    let check = |what: &str, out: &Out| {
        assert!(
            !out.stderr.contains("panicked"),
            "{what}: panic: {}",
            out.stderr
        );
        assert!(
            out.code == 0 || out.code == 1,
            "{what}: exit {} ({out:?})",
            out.code
        );
        if out.code != 0 {
            let v: Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("{what}: error is not JSON ({e}): {out:?}"));
            assert!(v["code"].is_u64() && v["msg"].is_string(), "{what}: {v}");
            assert!(v["cniVersion"].is_string(), "{what}: {v}");
        }
    };
    let plugins = [plugnet(), bin_dir().join("plugnet-ipam")];
    let att = Att::new("hostile1", &c.path(), "eth0");
    for conf in &confs {
        for p in &plugins {
            for cmd in ["ADD", "CHECK", "DEL", "STATUS", "GC"] {
                let out = host.run(p, cmd, conf, Some(&att));
                check(&format!("{} {cmd} {conf}", p.display()), &out);
            }
            host.run(p, "DEL", &base, Some(&att));
        }
    }
    for (k, v) in &envs {
        for p in &plugins {
            let mut cmd = std::process::Command::new(p);
            cmd.env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", "hostile2")
                .env("CNI_NETNS", c.path())
                .env("CNI_IFNAME", "eth1")
                .env("CNI_PATH", cni_path())
                .env(k, v)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let out = host.spawn_in(cmd, &serde_json::to_vec(&base).unwrap());
            check(&format!("{} {k}={v:.40}", p.display()), &out);
            // DEL as the runtime would: the same environment.
            let mut del = Att::new("hostile2", &c.path(), "eth1");
            match *k {
                "CNI_CONTAINERID" => del.id = v.clone(),
                "CNI_IFNAME" => del.ifname = v.clone(),
                "CNI_ARGS" => del.args = v.clone(),
                _ => {}
            }
            check(
                &format!("DEL {k}={v:.40}"),
                &host.run(p, "DEL", &base, Some(&del)),
            );
        }
    }
    // The operator's CLI with the same values.
    for args in [
        vec!["ipam", "ls", "--network", "aéééééé"],
        vec!["ipam", "release", "--network", "é", "--id", "é"],
        vec!["down", "--id", "aéééééé"],
        vec!["info", "--id", &long],
        vec!["gc", "--dry-run", "--data-dir", "/nonexistent/é"],
    ] {
        let mut cmd = std::process::Command::new(plugnet());
        cmd.args(&args)
            .env_remove("CNI_COMMAND")
            .env("PLUGNET_STATE_DIR", host.data_dir.path().join("runner"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = host.spawn_in(cmd, b"");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        assert!((0..=2).contains(&out.code), "{args:?}: {out:?}");
    }
    let left = std::fs::read_dir(host.data_dir.path().join("pnb-hostile/owner"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a hostile run left an address held: {left:?}"
    );
}

/// DEL needs no capability args: one whose `runtimeConfig` ADD would refuse (a runtime's
/// mangled record, an older runner's) still removes everything, instead of failing forever.
#[test]
fn del_with_capability_args_it_cannot_decode_still_removes_everything() {
    let host = Host::new("delrc");
    let c = host.container();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "pnb-delrc", "type": "plugnet", "bridge": "pnbdrc0",
        "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": host.data_dir.path(),
                 "ranges": [[{"subnet": "10.50.97.0/24"}]]}
    });
    let att = Att::new("delrc", &c.path(), "eth0");
    let res = host.add(&conf, &att);
    let mut bad = with_prev(&conf, &res);
    bad["runtimeConfig"] = json!({"portMappings": "8080:80", "mac": "zz", "bandwidth": []});
    host.run(&plugnet(), "DEL", &bad, Some(&att)).ok();
    assert!(host.plugnet_veths().is_empty(), "veth left");
    assert!(host.leases("pnb-delrc").is_empty(), "address left");
    assert_eq!(c.link_names(), vec!["lo"]);
}
