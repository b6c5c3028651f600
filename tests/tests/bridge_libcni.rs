//! The `plugnet` bridge plugin under libcni (Debian's golang-github-appc-cni-dev 1.1.2, what
//! podman/containerd/CRI-O link): a small Go client from tests/go/libcni-client, built offline,
//! runs ADD, CHECK and DEL for cniVersion 0.3.1, 0.4.0 and 1.0.0, with libcni's own result
//! cache supplying prevResult.

mod bridge_support;

use std::process::{Command, Stdio};

use bridge_support::*;
use serde_json::{json, Value};

#[test]
fn libcni_add_check_del_for_each_version() {
    assert!(unsafe { libc::geteuid() } == 0, "needs root");
    let work = tempfile::Builder::new()
        .prefix("pnb-libcni-")
        .tempdir()
        .unwrap();
    let client = libcni_client(work.path());
    let host = Host::new("lcni");
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        let name = format!("pnblcni{i}");
        let mut plugin = conf(&host, v, &name, "pnbbrl", 11, true);
        plugin.as_object_mut().unwrap().remove("name");
        plugin.as_object_mut().unwrap().remove("cniVersion");
        let list = json!({"cniVersion": v, "name": name, "plugins": [plugin]});
        let list_path = work.path().join(format!("{name}.conflist"));
        std::fs::write(&list_path, serde_json::to_vec(&list).unwrap()).unwrap();
        let cache = work.path().join("cache");
        let ctr = host.container();
        let id = format!("libcni-{i}");
        let run = |op: &str| {
            let mut c = Command::new(&client);
            c.arg(op)
                .arg(&list_path)
                .arg(ctr.path())
                .arg(&id)
                .arg("eth0")
                .arg(&cache)
                .arg(cni_path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            host.spawn_in(c, b"")
        };

        let out = run("validate");
        assert_eq!(out.code, 0, "{v} validate: {out:?}");

        let out = run("add");
        assert_eq!(out.code, 0, "{v} ADD: {out:?}");
        let res: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(res["cniVersion"], *v, "{res}");
        assert_eq!(res["interfaces"][2]["sandbox"], ctr.path());
        assert!(
            ctr.ping("10.50.11.1") && ctr.ping("fd50:11::1"),
            "{v}: gateway unreachable"
        );
        let cached = cache.join("results").join(format!("{name}-{id}-eth0"));
        assert!(cached.exists(), "libcni cached no result");

        let out = run("check");
        if *v == "0.3.1" {
            assert_ne!(out.code, 0, "libcni must refuse CHECK below 0.4.0");
            assert!(
                out.stderr.contains("does not support the CHECK command"),
                "{out:?}"
            );
        } else {
            assert_eq!(out.code, 0, "{v} CHECK: {out:?}");
        }

        let out = run("del");
        assert_eq!(out.code, 0, "{v} DEL: {out:?}");
        assert!(!cached.exists(), "libcni kept the cache after DEL");
        assert_eq!(ctr.link_names(), vec!["lo"], "{v}");
        assert!(host.plugnet_veths().is_empty(), "{v}");
        assert!(host.leases(&name).is_empty(), "{v}");
        // DEL again (cache gone, so without prevResult) still succeeds.
        assert_eq!(run("del").code, 0, "{v}: second DEL");
    }
}
