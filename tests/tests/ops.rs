//! Black-box operations tests: install into a temporary prefix with scripts/install.sh and run a
//! CNI ADD/DEL from there, `--uninstall` removes everything, the installed systemd unit passes
//! `systemd-analyze verify`, and `plugnet ipam ls` / `plugnet gc` judge a store whose owners
//! were made by real clients (libcni, the runner, plugnet-ipam run by hand) and are live or dead.
//!
//! Objects: netns `pno-<role>-<pid><n>` (one private "host" netns per test holds the bridges and
//! host veths), bridges `pnob<pid><n>`; subnets 10.90.0.0/24 (install), 10.91.0.0/24 (gc).

use plugnet_tests::{bin, bin_dir, sh, sh_ok, unique, Netns};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(prefix: &Path, extra: &[&str]) -> Output {
    run(Command::new(repo().join("scripts/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--bin-dir")
        .arg(bin_dir())
        .args(extra))
}

/// Every file (or symlink) under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let out = sh(&format!(
        "cd {} && find . -type f -o -type l | sort",
        dir.display()
    ));
    out.lines().map(String::from).collect()
}

/// A CNI invocation of `plugin` run inside `host`.
fn cni_in(host: &Netns, plugin: &Path, env: &[(&str, &str)], conf: &Value) -> Output {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.name])
        .arg(plugin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn host_links(host: &Netns) -> Vec<String> {
    let v: Value = serde_json::from_str(&sh(&format!("ip -n {} -j link show", host.name))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// Wait (bounded) for the kernel's asynchronous removal of a link after its netns went away.
fn wait_link_gone(host: &Netns, name: &str) {
    let start = Instant::now();
    while host_links(host).iter().any(|l| l == name) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} still exists 10 s after its namespace was deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn install_into_a_prefix_run_add_del_from_there_and_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("root");
    ok(install(&prefix, &["--with-conf"]), "install.sh");
    let cni_bin = prefix.join("opt/cni/bin");
    for f in [
        "opt/cni/bin/plugnet",
        "opt/cni/bin/plugnet-ipam",
        "usr/local/bin/plugnet-shim",
        "etc/systemd/system/plugnet-shim.service",
        "etc/systemd/system/plugnet-firewall-watch.service",
        "etc/cni/net.d/10-plugnet.conflist",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    let v = ok(
        run(Command::new(cni_bin.join("plugnet-ipam")).arg("--version")),
        "plugnet-ipam --version",
    );
    assert!(v.starts_with("plugnet-ipam "), "{v}");

    // ADD and DEL through the installed binaries, bridge and host veth in a private host netns.
    let host = Netns::new("pno-ih");
    let ctr = Netns::new("pno-ic");
    let br = format!("pnob{}", unique());
    let conf = json!({"cniVersion": "1.0.0", "name": "pnoinst", "type": "plugnet", "bridge": br,
        "isGateway": true,
        "ipam": {"type": "plugnet-ipam", "dataDir": tmp.path().join("data"),
                 "ranges": [[{"subnet": "10.90.0.0/24"}]]}});
    let path = cni_bin.display().to_string();
    let ns = ctr.path();
    let env = |cmd| {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "pno-inst"),
            ("CNI_NETNS", ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", path.as_str()),
        ]
    };
    let plugin = cni_bin.join("plugnet");
    let res: Value =
        serde_json::from_str(&ok(cni_in(&host, &plugin, &env("ADD"), &conf), "ADD")).unwrap();
    assert_eq!(res["ips"][0]["address"], "10.90.0.2/24", "{res}");
    assert!(ctr.exec("ip -4 addr show eth0").contains("10.90.0.2/24"));
    assert!(
        ctr.exec_ok("ping -c 1 -W 2 10.90.0.1"),
        "the container cannot reach its gateway"
    );
    ok(cni_in(&host, &plugin, &env("DEL"), &conf), "DEL");
    assert!(!ctr.exec_ok("ip link show eth0"), "eth0 left behind");
    let veth = plugnet::bridge::naming::host_veth_name("pno-inst", "eth0");
    assert!(!host_links(&host).contains(&veth), "host veth left behind");

    ok(install(&prefix, &["--uninstall"]), "install.sh --uninstall");
    assert_eq!(files(&prefix), Vec::<String>::new(), "uninstall left files");
    // A second uninstall has nothing to do and says so.
    let again = install(&prefix, &["--uninstall"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to uninstall"));
}

#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("root");
    ok(
        install(&prefix, &["--socket", "/run/pno-test.sock"]),
        "install.sh",
    );
    let unit =
        std::fs::read_to_string(prefix.join("etc/systemd/system/plugnet-shim.service")).unwrap();
    assert!(unit.contains("--socket /run/pno-test.sock"), "{unit}");
    // The unit names /usr/local/bin/plugnet-shim; point it at the prefix's copy so verify checks
    // the binary the install put there (and every directive) without touching the host.
    let verify = |exec: &Path| {
        let dir = tmp.path().join("units");
        std::fs::create_dir_all(&dir).unwrap();
        let text = unit.replace(
            "ExecStart=/usr/local/bin/plugnet-shim",
            &format!("ExecStart={}", exec.display()),
        );
        assert_ne!(text, unit, "ExecStart not found in the unit");
        let path = dir.join("plugnet-shim.service");
        std::fs::write(&path, text).unwrap();
        run(Command::new("systemd-analyze").arg("verify").arg(&path))
    };
    let out = verify(&prefix.join("usr/local/bin/plugnet-shim"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check is meaningful: a unit whose binary is missing fails it.
    let out = verify(&prefix.join("missing/plugnet-shim"));
    assert!(!out.status.success(), "verify accepted a missing ExecStart");
    // The Debian package's unit is the same unit with the shim in /usr/bin.
    let src = std::fs::read_to_string(repo().join("conf/plugnet-shim.service")).unwrap();
    let deb =
        std::fs::read_to_string(repo().join("conf/deb/plugnet.plugnet-shim.service")).unwrap();
    assert_eq!(
        deb,
        src.replace("/usr/local/bin/plugnet-shim", "/usr/bin/plugnet-shim"),
        "conf/deb/plugnet.plugnet-shim.service drifted from conf/plugnet-shim.service"
    );

    // The firewall watch's unit runs the installed plugin (the unit names its path outside the
    // prefix, as it will be once the prefix is the root).
    let watch =
        std::fs::read_to_string(prefix.join("etc/systemd/system/plugnet-firewall-watch.service"))
            .unwrap();
    let installed = format!("ExecStart={}", prefix.join("opt/cni/bin/plugnet").display());
    let text = watch.replace("ExecStart=/opt/cni/bin/plugnet", &installed);
    assert_ne!(text, watch, "ExecStart not found in the watch unit");
    let path = tmp.path().join("units/plugnet-firewall-watch.service");
    std::fs::write(&path, text).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify of the watch unit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process keeping a namespace alive after its /run/netns path is gone; killed on drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct GcWorld {
    tmp: tempfile::TempDir,
    host: Netns,
    client: PathBuf,
    conflist: PathBuf,
}

impl GcWorld {
    fn dir(&self, sub: &str) -> String {
        self.tmp.path().join(sub).display().to_string()
    }
    fn libcni_add(&self, id: &str, ns: &Netns) {
        ok(
            run(Command::new("ip")
                .args(["netns", "exec", &self.host.name])
                .arg(&self.client)
                .arg("add")
                .arg(&self.conflist)
                .args([&ns.path(), id, "eth0", &self.dir("cache")])
                .arg(bin_dir())),
            &format!("libcni ADD {id}"),
        );
    }
    /// `plugnet <args>` in the host netns with this world's dirs.
    fn plugnet(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.host.name])
            .arg(bin("plugnet"))
            .args(args)
            .env("NETCONFPATH", self.dir("conf"))
            .env("CNI_PATH", bin_dir())
            .env("PLUGNET_STATE_DIR", self.dir("runner"))
            .env_remove("CNI_COMMAND"))
    }
    fn gc(&self, dry: bool) -> Value {
        let mut args = vec!["gc", "--json", "--data-dir"];
        let (data, cache, shim) = (self.dir("data"), self.dir("cache"), self.dir("shim"));
        args.extend([
            data.as_str(),
            "--cache-dir",
            &cache,
            "--shim-state-dir",
            &shim,
        ]);
        if dry {
            args.push("--dry-run");
        }
        serde_json::from_str(&ok(self.plugnet(&args), "plugnet gc")).unwrap()
    }
    fn ls(&self) -> Value {
        let data = self.dir("data");
        serde_json::from_str(&ok(
            self.plugnet(&["ipam", "ls", "--json", "--data-dir", &data]),
            "plugnet ipam ls",
        ))
        .unwrap()
    }
    fn holders(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ls()[0]["holders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["containerID"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
    fn caches(&self) -> Vec<String> {
        files(&self.tmp.path().join("cache"))
    }
}

fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["containerID"].as_str().unwrap().to_string(),
                o["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn build_libcni_client(dir: &Path) -> PathBuf {
    let out = dir.join("libcni-client");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("go/libcni-client"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .expect("go toolchain (golang-go) installed");
    assert!(status.success(), "go build of the libcni client failed");
    out
}

#[test]
fn ipam_ls_and_gc_reclaim_exactly_the_dead_owners() {
    let tmp = tempfile::tempdir().unwrap();
    let client = build_libcni_client(tmp.path());
    let host = Netns::new("pno-gh");
    let br = format!("pnob{}", unique());
    let conf_dir = tmp.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = conf_dir.join("50-pnogc.conflist");
    std::fs::write(
        &conflist,
        json!({"cniVersion": "1.0.0", "name": "pnogc", "plugins": [{"type": "plugnet",
            "bridge": br, "isGateway": true,
            "ipam": {"type": "plugnet-ipam", "dataDir": tmp.path().join("data"),
                     "ranges": [[{"subnet": "10.91.0.0/24"}]]}}]})
        .to_string(),
    )
    .unwrap();
    let w = GcWorld {
        tmp,
        host,
        client,
        conflist,
    };
    let veth = |id: &str| plugnet::bridge::naming::host_veth_name(id, "eth0");

    // live: its netns exists.
    let live = Netns::new("pno-gl");
    w.libcni_add("pno-live", &live);
    // dead: netns deleted.
    let dead = Netns::new("pno-gd");
    w.libcni_add("pno-dead", &dead);
    drop(dead);
    // run: attached by the runner, then its netns deleted: the runner's state keeps it.
    let ns_run = Netns::new("pno-gr");
    let spec = w.tmp.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"networks": [{"name": "gc", "conflist": "pnogc"}]}"#,
    )
    .unwrap();
    let spec_s = spec.display().to_string();
    ok(
        w.plugnet(&[
            "up",
            "--id",
            "pno-run",
            "--netns",
            &ns_run.path(),
            "--spec",
            &spec_s,
        ]),
        "plugnet up",
    );
    drop(ns_run);
    // shim: an endpoint in plugnet-shim's state, netns deleted.
    let ns_shim = Netns::new("pno-gs");
    w.libcni_add("pno-shim", &ns_shim);
    drop(ns_shim);
    std::fs::create_dir_all(w.tmp.path().join("shim/endpoints")).unwrap();
    std::fs::write(
        w.tmp.path().join("shim/endpoints/pno-shim.json"),
        r#"{"version": 1, "id": "pno-shim"}"#,
    )
    .unwrap();
    // held: /run/netns path deleted while a process still lives in the namespace.
    let ns_held = Netns::new("pno-gk");
    w.libcni_add("pno-held", &ns_held);
    let holder = Holder(
        Command::new("ip")
            .args(["netns", "exec", &ns_held.name, "sleep", "600"])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
    drop(ns_held);
    // nocache: plugnet-ipam run by hand, no cache, no state: no evidence either way.
    let ipam_conf = json!({"cniVersion": "1.0.0", "name": "pnogc",
        "ipam": {"type": "plugnet-ipam", "dataDir": w.dir("data"),
                 "ranges": [[{"subnet": "10.91.0.0/24"}]]}});
    let path = bin_dir().display().to_string();
    ok(
        cni_in(
            &w.host,
            &bin("plugnet-ipam"),
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "pno-nocache"),
                ("CNI_NETNS", "/run/netns/none"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &path),
            ],
            &ipam_conf,
        ),
        "plugnet-ipam ADD",
    );
    // leak: netns deleted, and a leftover host veth with its name (peer in the host netns, as a
    // crashed ADD could leave).
    let ns_leak = Netns::new("pno-gx");
    w.libcni_add("pno-leak", &ns_leak);
    drop(ns_leak);
    for id in ["pno-dead", "pno-leak", "pno-shim", "pno-run"] {
        wait_link_gone(&w.host, &veth(id));
    }
    let leak_peer = format!("pnop{}", unique());
    sh(&format!(
        "ip -n {h} link add {v} type veth peer name {leak_peer} && ip -n {h} link set {v} alias plugnet:pnogc",
        h = w.host.name,
        v = veth("pno-leak")
    ));
    assert!(host_links(&w.host).contains(&veth("pno-held")), "held veth");

    // ipam ls: every holder, ranges from the conflist.
    let all = [
        "pno-dead",
        "pno-held",
        "pno-leak",
        "pno-live",
        "pno-nocache",
        "pno-run",
        "pno-shim",
    ];
    assert_eq!(w.holders(), all);
    let ls = w.ls();
    assert_eq!(ls[0]["rangesKnown"], true, "{ls}");
    assert_eq!(ls[0]["ranges"][0]["used"], 7, "{ls}");
    assert_eq!(ls[0]["ranges"][0]["free"], 253 - 7, "{ls}");
    let table = ok(
        w.plugnet(&["ipam", "ls", "--data-dir", &w.dir("data")]),
        "ls",
    );
    assert!(
        table.contains("pno-nocache") && table.contains("attached") && table.contains(" ago)"),
        "{table}"
    );

    let expected: Vec<(String, String)> = [
        ("pno-dead", "dead"),
        ("pno-held", "kept"),
        ("pno-leak", "dead"),
        ("pno-live", "live"),
        ("pno-nocache", "kept"),
        ("pno-run", "live"),
        ("pno-shim", "live"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();

    // --dry-run: the verdicts, and nothing changes.
    let (ls_before, caches_before) = (w.ls(), w.caches());
    let dry = w.gc(true);
    assert_eq!(verdicts(&dry), expected, "{dry}");
    assert_eq!(w.ls(), ls_before);
    assert_eq!(w.caches(), caches_before);
    assert!(host_links(&w.host).contains(&veth("pno-leak")));

    // gc: exactly the dead ones go.
    let done = w.gc(false);
    assert_eq!(verdicts(&done), expected, "{done}");
    assert_eq!(
        w.holders(),
        ["pno-held", "pno-live", "pno-nocache", "pno-run", "pno-shim"]
    );
    let caches = w.caches().join(" ");
    assert!(
        !caches.contains("pno-dead") && !caches.contains("pno-leak"),
        "{caches}"
    );
    assert!(
        caches.contains("pno-live") && caches.contains("pno-held"),
        "{caches}"
    );
    let links = host_links(&w.host);
    assert!(!links.contains(&veth("pno-leak")), "leftover veth kept");
    assert!(links.contains(&veth("pno-live")) && links.contains(&veth("pno-held")));

    // When the last process leaves the held namespace, its owner becomes provably dead.
    drop(holder);
    wait_link_gone(&w.host, &veth("pno-held"));
    let last = w.gc(false);
    assert!(
        verdicts(&last).contains(&("pno-held".to_string(), "dead".to_string())),
        "{last}"
    );
    assert_eq!(
        w.holders(),
        ["pno-live", "pno-nocache", "pno-run", "pno-shim"]
    );
    let _ = sh_ok(&format!("ip -n {} link del {leak_peer}", w.host.name));
    drop(live);
}

#[test]
fn plugin_logs_name_network_and_container_and_never_touch_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("plugnet.log");
    let conf = json!({"cniVersion": "1.0.0", "name": "pnolog",
        "log": {"target": "stderr", "level": "warn"},
        "ipam": {"type": "plugnet-ipam", "dataDir": tmp.path().join("data"),
                 "ranges": [[{"subnet": "10.92.0.0/24"}]]}});
    let target = format!("file:{}", log.display());
    let call = |cmd: &str, id: &str, env: &[(&str, &str)]| {
        let mut all = vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", "/run/netns/pno-none"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
        ];
        all.extend_from_slice(env);
        plugnet_tests::cni(&bin("plugnet-ipam"), &all, conf.to_string().as_bytes())
    };
    // The environment overrides the config's stderr/warn: info lines go to the file.
    let env = [
        ("PLUGNET_LOG", target.as_str()),
        ("PLUGNET_LOG_LEVEL", "info"),
    ];
    let add = call("ADD", "pno-log1", &env);
    add.ok();
    assert_eq!(add.json()["ips"][0]["address"], "10.92.0.2/24");
    assert_eq!(add.stderr, "", "logging went to stderr");
    call("ADD", "pno-log2", &env).ok();
    call("DEL", "pno-log1", &env).ok();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (line, id) in lines.iter().zip(["pno-log1", "pno-log2", "pno-log1"]) {
        assert!(
            line.contains("network=pnolog") && line.contains(&format!("container={id}")),
            "{line}"
        );
    }
    assert!(
        lines[0].contains("INFO") && lines[0].contains("added: 10.92.0.2/24"),
        "{text}"
    );
    assert!(lines[2].contains("cmd=\"DEL\""), "{text}");
    // Default (config: stderr at warn): a failure is logged on stderr, naming the container;
    // stdout is still exactly the CNI error.
    let bad = call("CHECK", "pno-log9", &[]);
    bad.err(999);
    assert!(
        bad.stderr.contains("WARN") && bad.stderr.contains("container=pno-log9"),
        "{}",
        bad.stderr
    );
    // A bad setting never fails the request.
    let odd = call("DEL", "pno-log2", &[("PLUGNET_LOG", "carrier-pigeon")]);
    odd.ok();
    assert!(odd.stderr.contains("log setting ignored"), "{}", odd.stderr);
    // off: nothing anywhere.
    let quiet = call("CHECK", "pno-log9", &[("PLUGNET_LOG", "off")]);
    quiet.err(999);
    assert_eq!(quiet.stderr, "");
}

/// `PLUGNET_LOG=syslog`: the plugin runs in a private mount namespace whose /dev is a fresh
/// tmpfs with /dev/log bind-mounted to a datagram socket this test listens on, so nothing on the
/// host (which may have no syslog daemon) is touched.
#[test]
fn plugin_logs_to_syslog() {
    use std::ffi::CString;
    use std::os::unix::net::UnixDatagram;
    use std::os::unix::process::CommandExt;

    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "pnosys",
        "ipam": {"type": "plugnet-ipam", "dataDir": tmp.path().join("data"),
                 "ranges": [[{"subnet": "10.92.1.0/24"}]]}});
    let c = |s: &str| CString::new(s).unwrap();
    let (root, dev, devlog, tmpfs) = (c("/"), c("/dev"), c("/dev/log"), c("tmpfs"));
    let src = c(sock_path.to_str().unwrap());
    let mut cmd = Command::new(bin("plugnet-ipam"));
    cmd.envs([
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "pno-sys1"),
        ("CNI_NETNS", "/run/netns/pno-none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
        ("PLUGNET_LOG", "syslog"),
        ("PLUGNET_LOG_LEVEL", "info"),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                dev.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            let fd = libc::open(devlog.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            check(libc::mount(
                src.as_ptr(),
                devlog.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(conf.to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10.92.1.2/24"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no syslog datagram within 10 s");
    let line = String::from_utf8_lossy(&buf[..n]);
    // <30> = facility daemon (3) * 8 + info (6); ident with pid; the span's fields.
    assert!(line.starts_with("<30>"), "{line}");
    assert!(line.contains("plugnet-ipam["), "{line}");
    assert!(
        line.contains("network=pnosys") && line.contains("container=pno-sys1"),
        "{line}"
    );
    assert!(line.contains("added: 10.92.1.2/24"), "{line}");
}

/// The shim process; SIGTERM (then kill) on drop.
struct Shim(Child);

impl Drop for Shim {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get_unix(sock: &Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn shim_status_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    for d in ["networks", "endpoints", "pools"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    std::fs::write(
        state.join("networks/pnonet1.json"),
        json!({"version": 1, "id": "pnonet1", "mode": "derived", "cni_name": "pno-shimnet",
               "subnets": [{"pool": "10.92.2.0/24", "gateway": "10.92.2.1"}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        state.join("endpoints/pnoep1.json"),
        json!({"version": 1, "id": "pnoep1", "network_id": "pnonet1",
               "addresses": ["10.92.2.5/24"]})
        .to_string(),
    )
    .unwrap();
    let shim = bin("plugnet-shim");
    let st = state.display().to_string();
    let status = |extra: &[&str]| {
        ok(
            run(Command::new(&shim)
                .args(["status", "--state-dir", &st])
                .args(extra)),
            "plugnet-shim status",
        )
    };
    let v: Value = serde_json::from_str(&status(&["--json"])).unwrap();
    assert_eq!(v["networks"][0]["cniNetwork"], "pno-shimnet", "{v}");
    assert_eq!(v["networks"][0]["endpoints"][0]["id"], "pnoep1", "{v}");
    let text = status(&[]);
    assert!(
        text.contains("network pno-shimnet") && text.contains("10.92.2.5/24"),
        "{text}"
    );
    let missing = run(Command::new(&shim).args(["status", "--state-dir", "/nonexistent/pno"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--state-dir"));

    // The daemon with a metrics socket, in a private netns.
    let host = Netns::new("pno-sh");
    let msock = tmp.path().join("metrics.sock");
    let name = format!("pnoshim{}", unique());
    let _shim = Shim(
        Command::new("ip")
            .args(["netns", "exec", &host.name])
            .arg(&shim)
            .args(["--name", &name, "--state-dir", &st, "--socket-dir"])
            .arg(tmp.path().join("sock"))
            .arg("--cni-conf-dir")
            .arg(tmp.path().join("conf"))
            .arg("--metrics-listen")
            .arg(format!("unix:{}", msock.display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !msock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no metrics socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = http_get_unix(&msock, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("text/plain; version=0.0.4"), "{m}");
    assert!(m.contains("plugnet_shim_networks 1"), "{m}");
    assert!(
        m.contains("plugnet_shim_endpoints{network=\"pno-shimnet\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("plugnet_network_rx_bytes_total{network=\"pno-shimnet\"} 0"),
        "{m}"
    );
    assert!(http_get_unix(&msock, "/other").starts_with("HTTP/1.1 404"));
    // A non-loopback listener is refused with the reason.
    let bad = run(Command::new(&shim).args([
        "--metrics-listen",
        "0.0.0.0:9465",
        "status",
        "--state-dir",
        &st,
    ]));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("loopback"));
    drop(_shim);
    assert!(!msock.exists(), "metrics socket left behind");
}
