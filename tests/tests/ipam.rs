//! plugnet-ipam driven as a real process, the way runtimes and other plugins run it.

use plugnet_tests::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn conf(version: &str, net: &str, data_dir: &Path, ranges: Value) -> Vec<u8> {
    json!({
        "cniVersion": version,
        "name": net,
        "type": "plugnet-ipam",
        "ipam": {"type": "plugnet-ipam", "ranges": ranges, "dataDir": data_dir,
                  "routes": [{"dst": "0.0.0.0/0"}]}
    })
    .to_string()
    .into_bytes()
}

fn ipam(cmd: &str, id: &str, ifname: &str, stdin: &[u8]) -> CniOut {
    cni(
        &bin("plugnet-ipam"),
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/run/netns/unused"),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/opt/cni/bin"),
        ],
        stdin,
    )
}

/// Every claim named by its owner's record; returns (claims, records).
fn store_state(dir: &Path) -> (HashMap<String, String>, HashMap<String, String>) {
    let read = |sub: &str| -> HashMap<String, String> {
        let mut m = HashMap::new();
        let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
            return m;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A writer's temporary link: not part of the store until renamed.
                assert!(name.ends_with(".tmp"), "unexpected entry {name}");
                continue;
            }
            let target = std::fs::read_link(e.path())
                .unwrap_or_else(|err| panic!("{}: not a valid entry: {err}", e.path().display()));
            m.insert(name, target.to_string_lossy().into_owned());
        }
        m
    };
    let claims = read("ip");
    let records = read("owner");
    for (ip, owner) in &claims {
        let rec = records
            .get(owner)
            .unwrap_or_else(|| panic!("claim {ip} -> {owner} has no record: held by nobody"));
        assert!(
            rec.split(' ').skip(1).any(|a| a == ip),
            "record {owner} = {rec:?} does not name its claim {ip}"
        );
    }
    for (owner, rec) in &records {
        let mut words = rec.split(' ');
        assert!(
            matches!(words.next(), Some("attached" | "reserved")),
            "{owner}: bad record {rec:?}"
        );
        for w in words {
            w.parse::<std::net::IpAddr>()
                .unwrap_or_else(|_| panic!("{owner}: bad address {w:?}"));
        }
    }
    (claims, records)
}

#[test]
fn every_command_in_every_version() {
    let data = tempfile::tempdir().unwrap();
    for (i, v) in VERSIONS.iter().enumerate() {
        let net = format!("pnc-v{i}");
        let c = conf(
            v,
            &net,
            data.path(),
            json!([[{"subnet": "10.40.1.0/24"}], [{"subnet": "fd40::/64"}]]),
        );
        let out = ipam("ADD", "c1", "eth0", &c);
        let r = out.ok().json();
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["ips"][0]["address"], "10.40.1.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.40.1.1");
        assert_eq!(r["ips"][1]["address"], "fd40::2/64");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert!(
            r.get("interfaces").is_none(),
            "IPAM results carry no interfaces"
        );
        assert!(r["ips"][0].get("interface").is_none());
        assert_eq!(r["ips"][0].get("version").is_some(), *v < "1.0.0", "{v}");

        let check = ipam("CHECK", "c1", "eth0", &c);
        if *v >= "0.4.0" {
            check.ok();
            ipam("CHECK", "other", "eth0", &c).err(999);
        } else {
            check.err(1);
        }
        let status = ipam("STATUS", "", "", &c);
        let gc = ipam("GC", "", "", &c);
        if *v == "1.1.0" {
            status.ok();
            gc.ok();
            // GC without c1 in the valid list released it.
            assert!(store_state(&data.path().join(&net)).0.is_empty());
        } else {
            status.err(1);
            gc.err(1);
        }
        ipam("DEL", "c1", "eth0", &c).ok();
        ipam("DEL", "c1", "eth0", &c).ok();
        ipam("DEL", "never-added", "eth0", &c).ok();
        assert!(store_state(&data.path().join(&net)).0.is_empty());

        let out = ipam("VERSION", "", "", &c).ok().json();
        assert_eq!(out["supportedVersions"], json!(VERSIONS));
    }
}

#[test]
fn duplicate_add_requested_ip_and_exhaustion() {
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "pnc-dup",
        data.path(),
        json!([[{"subnet": "10.40.2.0/29"}]]),
    );
    ipam("ADD", "a", "eth0", &c).ok();
    let e = ipam("ADD", "a", "eth0", &c).err(999);
    assert!(e["msg"].as_str().unwrap().contains("duplicate"));
    // Same container, another interface: a separate attachment.
    ipam("ADD", "a", "eth1", &c).ok();
    let with_ip = cni(
        &bin("plugnet-ipam"),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "b"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.40.2.6"),
        ],
        &c,
    );
    assert_eq!(with_ip.ok().json()["ips"][0]["address"], "10.40.2.6/29");
    ipam("ADD", "c", "eth0", &c).ok();
    ipam("ADD", "d", "eth0", &c).ok();
    let before = store_state(&data.path().join("pnc-dup"));
    let e = ipam("ADD", "e", "eth0", &c).err(50);
    assert!(e["msg"]
        .as_str()
        .unwrap()
        .contains("no IP addresses available"));
    ipam("STATUS", "", "", &c).err(50);
    assert_eq!(
        store_state(&data.path().join("pnc-dup")),
        before,
        "a failed ADD changes nothing"
    );
}

#[test]
fn bad_input_gets_a_clean_error_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let good = conf(
        "1.0.0",
        "pnc-bad",
        data.path(),
        json!([[{"subnet": "10.40.3.0/24"}]]),
    );
    ipam("ADD", "keep", "eth0", &good).ok();
    let before = store_state(&data.path().join("pnc-bad"));

    ipam("ADD", "x", "eth0", b"{\"cniVersion\": \"1.0.0\", \"name\":").err(6);
    ipam("ADD", "x", "eth0", b"").err(6);
    ipam("ADD", "x", "sixteen-bytes-xx", &good).err(4);
    ipam("ADD", "x", "a/b", &good).err(4);
    ipam("ADD", "../x", "eth0", &good).err(4);
    ipam("ADD", "", "eth0", &good).err(3);
    ipam(
        "ADD",
        "x",
        "eth0",
        &conf(
            "1.0.0",
            "../x",
            data.path(),
            json!([[{"subnet": "10.40.3.0/24"}]]),
        ),
    )
    .err(7);
    ipam(
        "ADD",
        "x",
        "eth0",
        &conf(
            "0.2.0",
            "pnc-bad",
            data.path(),
            json!([[{"subnet": "10.40.3.0/24"}]]),
        ),
    )
    .err(1);
    ipam(
        "ADD",
        "x",
        "eth0",
        &conf(
            "1.0.0",
            "pnc-bad",
            data.path(),
            json!([[{"subnet": "10.40.3.1/24"}]]),
        ),
    )
    .err(7);
    ipam(
        "ADD",
        "x",
        "eth0",
        &conf("1.0.0", "pnc-bad", data.path(), json!("nope")),
    )
    .err(6);
    let missing_env = cni(&bin("plugnet-ipam"), &[("CNI_COMMAND", "ADD")], &good);
    let v = missing_env.err(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
    let mut huge = good.clone();
    huge.extend(std::iter::repeat_n(b' ', 10 << 20));
    ipam("ADD", "x", "eth0", &huge).err(5);

    assert_eq!(store_state(&data.path().join("pnc-bad")), before);
    assert!(!data.path().join("x").exists() && !data.path().parent().unwrap().join("x").exists());
}

#[test]
fn sixty_four_concurrent_adds_get_distinct_addresses() {
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "1.0.0",
        "pnc-par",
        data.path(),
        json!([[{"subnet": "10.40.4.0/24"}]]),
    );
    let run_all = |cmd: &'static str| -> Vec<CniOut> {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || ipam(cmd, &format!("par{i}"), "eth0", &c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let adds = run_all("ADD");
    let addrs: HashSet<String> = adds
        .iter()
        .map(|o| {
            o.ok().json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(addrs.len(), 64, "duplicate addresses handed out");
    assert_eq!(store_state(&data.path().join("pnc-par")).0.len(), 64);
    for o in run_all("DEL") {
        o.ok();
    }
    let (claims, records) = store_state(&data.path().join("pnc-par"));
    assert!(claims.is_empty() && records.is_empty());
}

/// 500 ADD/DEL cycles, 8 at a time, while random plugin processes are SIGKILLed at random
/// moments. The store must never be corrupt, and after DEL of every id and a GC no address
/// is held by nobody.
#[test]
fn kill_storm_never_corrupts_or_leaks() {
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "1.1.0",
        "pnc-kill",
        data.path(),
        json!([[{"subnet": "10.40.8.0/22"}], [{"subnet": "fd40:8::/64"}]]),
    );
    let dir = data.path().join("pnc-kill");
    let mut rng = Rng::seeded();
    let mut killed = 0;
    let cycles = 500;
    for round in 0..cycles / 8 {
        let mut children = Vec::new();
        for w in 0..8 {
            let id = format!("k{}", (round * 8 + w) % 40);
            for cmd in ["ADD", "DEL"] {
                let mut child = Command::new(bin("plugnet-ipam"))
                    .env("CNI_COMMAND", cmd)
                    .env("CNI_CONTAINERID", &id)
                    .env("CNI_NETNS", "/x")
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", "/x")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                let _ = child.stdin.take().unwrap().write_all(&c);
                children.push((child, rng.below(4) == 0, rng.below(2500)));
            }
        }
        for (child, kill, after_us) in children.iter_mut() {
            if *kill {
                std::thread::sleep(Duration::from_micros(*after_us));
                if child.kill().is_ok() {
                    killed += 1;
                }
            }
        }
        for (mut child, _, _) in children {
            let _ = child.wait();
        }
        // Consistent after every round, whatever was killed where.
        store_state(&dir);
    }
    eprintln!("killed {killed} plugin processes over {cycles} cycles");
    assert!(killed > 0);
    for i in 0..40 {
        ipam("DEL", &format!("k{i}"), "eth0", &c).ok();
    }
    let (claims, records) = store_state(&dir);
    assert!(claims.is_empty(), "addresses left: {claims:?}");
    assert!(records.is_empty(), "records left: {records:?}");
    // Temporary links of writers killed between symlink and rename are swept by GC.
    ipam("GC", "", "", &c).ok();
    for sub in ["ip", "owner", ""] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "GC left {sub}/{name}");
        }
    }
}

/// The reference `bridge` plugin uses plugnet-ipam as its IPAM, end to end in a netns.
#[test]
fn reference_bridge_with_plugnet_ipam() {
    if !have_reference_plugins() {
        panic!("containernetworking-plugins is not installed (scripts/test.sh installs it)");
    }
    let data = tempfile::tempdir().unwrap();
    let br = format!("pncb{}", unique());
    let _br = LinkGuard(br.clone());
    let ns = Netns::new("pnc-refbr");
    let c = json!({
        "cniVersion": "1.0.0", "name": "pnc-refbr", "type": "bridge", "bridge": br,
        "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": data.path(),
                  "ranges": [[{"subnet": "10.40.20.0/24"}]]}
    })
    .to_string();
    let path = cni_path();
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "refbr1"),
            ("CNI_NETNS", ns_path_static(&ns)),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ]
    };
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    let add = cni(&bridge, &env("ADD"), c.as_bytes());
    let r = add.ok().json();
    assert_eq!(r["ips"][0]["address"], "10.40.20.2/24");
    assert!(ns.exec("ip -4 addr show eth0").contains("10.40.20.2/24"));
    assert!(ns.exec_ok("ping -c1 -W2 10.40.20.1"), "gateway unreachable");
    let mut with_prev: Value = serde_json::from_str(&c).unwrap();
    with_prev["prevResult"] = r;
    let with_prev = with_prev.to_string();
    cni(&bridge, &env("CHECK"), with_prev.as_bytes()).ok();
    cni(&bridge, &env("DEL"), with_prev.as_bytes()).ok();
    assert!(
        store_state(&data.path().join("pnc-refbr")).0.is_empty(),
        "lease left after DEL"
    );
    assert!(!ns.exec("ip link").contains("eth0"));
}

fn ns_path_static(ns: &Netns) -> &'static str {
    Box::leak(ns.path().into_boxed_str())
}

/// `plugnet ipam ls --json` for one network of `data`.
fn ls_json(data: &Path, net: &str, conf_dir: Option<&Path>) -> Value {
    let mut cmd = Command::new(bin("plugnet"));
    cmd.args(["ipam", "ls", "--json", "--network", net, "--data-dir"])
        .arg(data)
        .env_remove("CNI_COMMAND");
    if let Some(d) = conf_dir {
        cmd.arg("--conf-dir").arg(d);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ipam ls: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

fn damaged_entries(ls: &Value) -> Vec<String> {
    let mut v: Vec<String> = ls["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["entry"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Tampering (a claim with garbage in it at the next round-robin address, a regular file where
/// a claim belongs, a record that names no address) never blocks an ADD, and STATUS, GC and
/// `plugnet ipam ls` report it; GC repairs what it can; the owner of the damaged record keeps
/// and then releases its address.
#[test]
fn a_tampered_store_never_blocks_adds_and_is_reported() {
    use std::os::unix::fs::symlink;
    let data = tempfile::tempdir().unwrap();
    let net = "pnc-tamper";
    let c = conf(
        "1.1.0",
        net,
        data.path(),
        json!([[{"subnet": "10.40.30.0/29"}]]),
    );
    let a = ipam("ADD", "a", "eth0", &c).ok().json();
    assert_eq!(a["ips"][0]["address"], "10.40.30.2/29");
    let store = data.path().join(net);
    symlink("garbage", store.join("ip/10.40.30.3")).unwrap();
    std::fs::write(store.join("ip/10.40.30.4"), "b:eth0").unwrap();
    std::fs::remove_file(store.join("owner/a:eth0")).unwrap();
    symlink("attached nonsense", store.join("owner/a:eth0")).unwrap();

    let b = ipam("ADD", "b", "eth0", &c);
    assert_eq!(
        b.ok().json()["ips"][0]["address"],
        "10.40.30.5/29",
        "ADD must step over damaged entries"
    );
    let status = ipam("STATUS", "", "", &c);
    status.ok();
    let ls = ls_json(data.path(), net, None);
    assert_eq!(
        damaged_entries(&ls),
        ["ip/10.40.30.3", "ip/10.40.30.4", "owner/a:eth0"]
    );
    // The owner of the damaged record still holds its address.
    ipam("CHECK", "a", "eth0", &c).ok();
    let e = ipam("ADD", "a", "eth0", &c).err(999);
    assert!(e["msg"].as_str().unwrap().contains("duplicate"), "{e}");

    let mut gc: Value = serde_json::from_slice(&c).unwrap();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth0"}
    ]);
    let out = ipam("GC", "", "", gc.to_string().as_bytes());
    out.ok();
    assert!(
        out.stderr.contains("damaged"),
        "GC says nothing: {}",
        out.stderr
    );
    assert!(damaged_entries(&ls_json(data.path(), net, None)).is_empty());
    let (claims, records) = store_state(&store);
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_eq!(records["a:eth0"], "attached 10.40.30.2", "rebuilt");
    ipam("DEL", "a", "eth0", &c).ok();
    ipam("DEL", "b", "eth0", &c).ok();
    assert!(store_state(&store).0.is_empty());
}

/// Undoes a read-only bind mount however the test ends.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// STATUS tells the truth about writability: on a read-only remount of the store ADD cannot
/// allocate, so STATUS says "not available" (50), naming why.
#[test]
fn status_is_not_ready_when_the_store_is_read_only() {
    let data = tempfile::tempdir().unwrap();
    let net = "pnc-ro";
    let c = conf(
        "1.1.0",
        net,
        data.path(),
        json!([[{"subnet": "10.40.31.0/24"}]]),
    );
    ipam("ADD", "a", "eth0", &c).ok();
    ipam("STATUS", "", "", &c).ok();
    let dir = data.path().to_path_buf();
    let ok = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .arg(&dir)
            .arg(&dir)
            .status()
    };
    assert!(ok(&["--bind"]).unwrap().success());
    let _guard = Unmount(dir.clone());
    assert!(Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let v = ipam("STATUS", "", "", &c).err(50);
    assert!(v["msg"].as_str().unwrap().contains("not writable"), "{v}");
    assert!(v["details"].as_str().unwrap().contains("Read-only"), "{v}");
    ipam("ADD", "b", "eth0", &c).err(5);
    drop(_guard);
    ipam("STATUS", "", "", &c).ok();
    ipam("DEL", "a", "eth0", &c).ok();
}

/// `::/0` from `::` (2^128 addresses): ADD, STATUS and `plugnet ipam ls` neither overflow (a
/// panic in this debug build) nor lie; counts beyond 2^64 print as decimal strings.
#[test]
fn the_whole_ipv6_space_is_a_range_like_any_other() {
    let data = tempfile::tempdir().unwrap();
    let confs = tempfile::tempdir().unwrap();
    let net = "pnc-all6";
    let ranges = json!([[{"subnet": "::/0", "rangeStart": "::"}]]);
    let c = conf("1.1.0", net, data.path(), ranges.clone());
    std::fs::write(
        confs.path().join("10-all6.conflist"),
        json!({"cniVersion": "1.1.0", "name": net, "plugins": [
            {"type": "plugnet-ipam", "ipam": {"type": "plugnet-ipam", "dataDir": data.path(),
                                               "ranges": ranges}}]})
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        ipam("ADD", "a", "eth0", &c).ok().json()["ips"][0]["address"],
        "::/0"
    );
    assert_eq!(
        ipam("ADD", "b", "eth0", &c).ok().json()["ips"][0]["address"],
        "::2/0"
    );
    ipam("STATUS", "", "", &c).ok();
    let ls = ls_json(data.path(), net, Some(confs.path()));
    assert_eq!(ls["ranges"][0]["size"], u128::MAX.to_string());
    assert_eq!(ls["ranges"][0]["used"], 2);
    assert_eq!(ls["ranges"][0]["free"], (u128::MAX - 2).to_string());
    for id in ["a", "b"] {
        ipam("DEL", id, "eth0", &c).ok();
    }
}

/// A host switching a live network from the reference host-local to plugnet-ipam (same name,
/// same dataDir): the leases host-local gave are held (a new container never gets one), shown
/// by `plugnet ipam ls`, released by DEL of their container and by GC.
#[test]
fn host_local_leases_are_honoured_after_the_switch() {
    if !have_reference_plugins() {
        panic!("containernetworking-plugins is not installed (scripts/test.sh installs it)");
    }
    let data = tempfile::tempdir().unwrap();
    let net = "pnc-switch";
    let ranges = json!([[{"subnet": "10.40.32.0/29"}]]);
    let mut hl: Value =
        serde_json::from_slice(&conf("1.0.0", net, data.path(), ranges.clone())).unwrap();
    hl["ipam"]["type"] = json!("host-local");
    let host_local = Path::new(REFERENCE_PLUGINS).join("host-local");
    let hl_add = |id: &str| {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/run/netns/unused"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", REFERENCE_PLUGINS),
        ];
        cni(&host_local, &env, hl.to_string().as_bytes())
            .ok()
            .json()["ips"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(hl_add("old1"), "10.40.32.2/29");
    assert_eq!(hl_add("old2"), "10.40.32.3/29");

    let c = conf("1.1.0", net, data.path(), ranges);
    // Round-robin goes on after host-local's last reservation.
    assert_eq!(
        ipam("ADD", "new1", "eth0", &c).ok().json()["ips"][0]["address"],
        "10.40.32.4/29"
    );
    let ls = ls_json(data.path(), net, None);
    let holders: Vec<(String, String)> = ls["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["containerID"].as_str().unwrap().into(),
                h["hold"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        holders,
        [
            ("old1".to_string(), "host-local".to_string()),
            ("old2".into(), "host-local".into()),
            ("new1".into(), "attached".into())
        ]
    );
    // Fill the rest: never an address host-local still holds.
    let mut got = vec![];
    for id in ["new2", "new3"] {
        got.push(ipam("ADD", id, "eth0", &c).ok().json()["ips"][0]["address"].clone());
    }
    assert_eq!(got, [json!("10.40.32.5/29"), json!("10.40.32.6/29")]);
    ipam("ADD", "new4", "eth0", &c).err(50);
    // DEL of an old container through plugnet-ipam releases its host-local lease.
    ipam("DEL", "old1", "eth0", &c).ok();
    assert!(!data.path().join(net).join("10.40.32.2").exists());
    assert_eq!(
        ipam("ADD", "new4", "eth0", &c).ok().json()["ips"][0]["address"],
        "10.40.32.2/29"
    );
    // GC releases the leases of containers not in the valid list.
    let mut gc: Value = serde_json::from_slice(&c).unwrap();
    gc["cni.dev/valid-attachments"] = json!(["new1", "new2", "new3", "new4"]
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect::<Vec<_>>());
    ipam("GC", "", "", gc.to_string().as_bytes()).ok();
    assert!(
        !data.path().join(net).join("10.40.32.3").exists(),
        "GC kept old2's lease"
    );
    for id in ["new1", "new2", "new3", "new4"] {
        ipam("DEL", id, "eth0", &c).ok();
    }
    assert!(store_state(&data.path().join(net)).0.is_empty());
}
