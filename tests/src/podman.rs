//! podman (4.3, CNI backend) with its own storage (vfs), configuration and a busybox image in a
//! temp dir, for the tests that run containers on a plugnet network. podman creates the
//! container namespaces and calls CNI in the machine's host namespace, so the test's bridge
//! lives there; the guard removes the containers, podman's storage, the bridge and the FORWARD
//! accept rule a test may insert for it.

use std::process::{Command, Output, Stdio};

use crate::{bin_dir, REFERENCE_PLUGINS};

pub struct Podman {
    pub dir: tempfile::TempDir,
    bridge: String,
}

impl Podman {
    /// A podman whose temp dir is `{prefix}-podman-*` and whose image
    /// `localhost/{prefix}bb:latest` holds busybox with `applets`; `bridge` is the bridge the
    /// test's network makes (removed on drop).
    pub fn new(prefix: &str, applets: &[&str], bridge: &str) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-podman-"))
            .tempdir()
            .unwrap();
        let root = dir.path().join("image/bin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::copy("/bin/busybox", root.join("busybox")).expect("busybox-static installed");
        for c in applets {
            std::os::unix::fs::symlink("busybox", root.join(c)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("image/etc")).unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                // runc: crun 1.8 refuses this machine's hybrid cgroup layout.
                "[engine]\nruntime = \"runc\"\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"{REFERENCE_PLUGINS}\"]\n\
                 network_config_dir = \"{}\"\n",
                bin_dir().display(),
                dir.path().join("net.d").display()
            ),
        )
        .unwrap();
        let p = Podman {
            dir,
            bridge: bridge.to_string(),
        };
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(p.dir.path().join("image"))
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = p
            .cmd()
            .args(["import", "-", &format!("localhost/{prefix}bb:latest")])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the image");
        assert!(out.status.success(), "podman import: {out:?}");
        p
    }

    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs", "--network-backend", "cni"]);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-t", "0", "-a"]);
        let _ = self.run(&["system", "reset", "-f"]);
        let br = self.bridge.as_str();
        let _ = Command::new("ip").args(["link", "del", br]).output();
        let _ = Command::new("iptables")
            .args(["-D", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT"])
            .output();
    }
}
