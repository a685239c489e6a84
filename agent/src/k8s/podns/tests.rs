//! Resolution over temporary cgroup trees for every layout the kubelet makes,
//! with a fake `/proc` whose `ns/net` files stand in for namespaces (a
//! distinct file is a distinct inode, as a distinct namespace is).

use std::path::{Path, PathBuf};

use super::*;

const UID: &str = "0b5f9c1e-2d3a-4b6c-8d7e-9f0a1b2c3d4e";
const UID_: &str = "0b5f9c1e_2d3a_4b6c_8d7e_9f0a1b2c3d4e";

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// A fake host: `proc/1` in the host namespace.
    fn new() -> Self {
        let h = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        h.process(1, None);
        h
    }

    fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn cgroup_root(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }

    /// A process; `same_as` makes its namespace the same file (inode) as another pid's.
    fn process(&self, pid: u32, same_as: Option<u32>) {
        let ns = self.proc_root().join(pid.to_string()).join("ns");
        std::fs::create_dir_all(&ns).expect("proc dir");
        match same_as {
            Some(other) => std::fs::hard_link(self.proc_root().join(format!("{other}/ns/net")), ns.join("net"))
                .expect("shared namespace"),
            None => std::fs::write(ns.join("net"), b"").expect("namespace file"),
        }
    }

    /// A cgroup directory (relative to the cgroup root) listing `pids`.
    fn cgroup(&self, rel: &str, pids: &[u32]) -> PathBuf {
        let d = self.cgroup_root().join(rel);
        std::fs::create_dir_all(&d).expect("cgroup dir");
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        std::fs::write(d.join("cgroup.procs"), text).expect("cgroup.procs");
        d
    }

    fn resolver(&self) -> PodNsResolver {
        PodNsResolver::new(&self.proc_root(), &self.cgroup_root())
    }
}

fn ns_of(h: &Host, pid: u32) -> PathBuf {
    h.proc_root().join(pid.to_string()).join("ns/net")
}

#[test]
fn every_layout_resolves_to_a_pod_process_namespace() {
    #[rustfmt::skip]
    let layouts: &[(&str, String)] = &[
        // cgroup v2, systemd driver, containerd and CRI-O, each QoS class.
        ("v2 systemd containerd burstable", format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-abc.scope")),
        ("v2 systemd containerd besteffort", format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-abc.scope")),
        ("v2 systemd containerd guaranteed", format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-abc.scope")),
        ("v2 systemd crio burstable", format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-abc.scope")),
        ("v2 systemd crio guaranteed", format!("kubepods.slice/kubepods-pod{UID_}.slice/crio-abc.scope")),
        // cgroup v2, cgroupfs driver.
        ("v2 cgroupfs burstable", format!("kubepods/burstable/pod{UID}/abc")),
        ("v2 cgroupfs besteffort", format!("kubepods/besteffort/pod{UID}/abc")),
        ("v2 cgroupfs guaranteed", format!("kubepods/pod{UID}/abc")),
        // cgroup v1: the same under a controller's hierarchy.
        ("v1 systemd containerd", format!("pids/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-abc.scope")),
        ("v1 systemd crio (named systemd hierarchy)", format!("systemd/kubepods.slice/kubepods-pod{UID_}.slice/crio-abc.scope")),
        ("v1 cgroupfs memory", format!("memory/kubepods/besteffort/pod{UID}/abc")),
        ("v1 cgroupfs cpu,cpuacct", format!("cpu,cpuacct/kubepods/pod{UID}/abc")),
    ];
    for (what, rel) in layouts {
        let h = Host::new();
        h.process(4242, None);
        h.cgroup(rel, &[4242]);
        let got = h.resolver().resolve(UID).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, ns_of(&h, 4242), "{what}");
    }
}

#[test]
fn crio_monitor_and_host_namespace_processes_are_skipped() {
    let h = Host::new();
    h.process(10, Some(1)); // conmon: the host's namespace
    h.process(11, Some(1)); // some helper in the pod cgroup, host namespace
    h.process(12, None); // the pause container
    h.process(13, Some(12)); // the app, sharing the pod's namespace
    let pod = format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    h.cgroup(&format!("{pod}/crio-conmon-abc.scope"), &[10]);
    h.cgroup(&format!("{pod}/crio-abc.scope"), &[11, 12]);
    h.cgroup(&format!("{pod}/crio-def.scope"), &[13]);
    let got = h.resolver().resolve(UID).expect("a pod process");
    assert!(got == ns_of(&h, 12) || got == ns_of(&h, 13), "{}", got.display());
}

#[test]
fn exited_processes_are_skipped() {
    let h = Host::new();
    h.process(21, None);
    // 20 is listed but gone from /proc.
    h.cgroup(&format!("kubepods/burstable/pod{UID}/abc"), &[20, 21]);
    assert_eq!(h.resolver().resolve(UID), Ok(ns_of(&h, 21)));
}

#[test]
fn failures_say_why() {
    // No cgroup at all.
    let h = Host::new();
    std::fs::create_dir_all(h.cgroup_root()).expect("cgroup root");
    let e = h.resolver().resolve(UID).expect_err("no cgroup");
    assert!(matches!(e, PodNsError::NoCgroup { .. }), "{e}");
    assert!(e.to_string().contains(UID), "{e}");

    // The cgroup exists but is empty (containers not started) or lists only exited pids.
    let dir = h.cgroup(&format!("kubepods/pod{UID}/abc"), &[]);
    let e = h.resolver().resolve(UID).expect_err("no process");
    assert!(matches!(e, PodNsError::NoProcess { .. }), "{e}");
    std::fs::write(dir.join("cgroup.procs"), "999\n").expect("stale pid");
    assert!(matches!(h.resolver().resolve(UID), Err(PodNsError::NoProcess { .. })));
    std::fs::remove_file(dir.join("cgroup.procs")).expect("gone procs file");
    assert!(matches!(h.resolver().resolve(UID), Err(PodNsError::NoProcess { .. })));

    // Only processes in the host's namespace: a hostNetwork pod.
    h.process(30, Some(1));
    std::fs::write(dir.join("cgroup.procs"), "30\n").expect("host pid");
    let e = h.resolver().resolve(UID).expect_err("host namespace");
    assert_eq!(e, PodNsError::HostNetns { uid: UID.into() });

    // No host /proc.
    let r = PodNsResolver::new(Path::new("/nonexistent/proc"), &h.cgroup_root());
    assert!(matches!(r.resolve(UID), Err(PodNsError::HostUnknown { .. })));
}

#[test]
fn a_real_process_in_the_host_namespace_is_refused() {
    // This test's own pid under the real /proc: the agent's own namespace
    // (here the host's) must never be taken for a pod's.
    let h = Host::new();
    let me = std::process::id();
    h.cgroup(&format!("kubepods/pod{UID}/abc"), &[me]);
    let r = PodNsResolver::new(Path::new("/proc"), &h.cgroup_root());
    assert_eq!(r.resolve(UID), Err(PodNsError::HostNetns { uid: UID.into() }));
}
