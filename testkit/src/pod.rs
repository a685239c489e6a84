//! Root-only fixtures that make a "pod" on this machine as the kubelet
//! would: a process inside a network namespace ([`PodProcess`]), and a real
//! cgroup v2 tree laid out as the kubelet's systemd driver lays it out
//! ([`PodCgroups`]), so the agent finds the pod's namespace and cgroup by
//! its UID and the egress programs can attach to the pod's cgroup.
//!
//! The tree lives under the cgroup v2 mount as `nodeward-test-<pid>x<n>`
//! (found by `cgroup::leftover_cgroups`); drop kills what is left inside
//! and removes every directory, panics included.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cgroup::cgroup2_root;
use super::netns::{NetnsGuard, unique};

/// A process inside a namespace (`ip netns exec NS sleep 600`), a pod's
/// "container"; killed and reaped on drop.
pub struct PodProcess(Child);

impl PodProcess {
    pub fn start(ns: &NetnsGuard) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("ip netns exec sleep");
        let p = Self(child);
        // `ip netns exec` enters the namespace, then execs: wait until it has.
        let want = std::fs::metadata(&ns.path).expect("netns file").ino();
        let start = Instant::now();
        while std::fs::metadata(format!("/proc/{}/ns/net", p.pid()))
            .map(|m| m.ino())
            .ok()
            != Some(want)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the pod process never entered {}",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A kubelet-shaped cgroup v2 tree: `<root>/kubepods.slice/
/// kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` per pod.
/// Give the agent [`PodCgroups::root`] as `kubernetes.cgroup_root`.
pub struct PodCgroups {
    root: PathBuf,
    pods: Vec<PathBuf>,
}

impl PodCgroups {
    pub fn new() -> Self {
        let (_, tag) = unique();
        let root = cgroup2_root().join(format!("nodeward-test-{tag}"));
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", root.display()));
        Self { root, pods: Vec::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pod `uid`'s cgroup, made if missing.
    pub fn pod(&mut self, uid: &str) -> PathBuf {
        let u = uid.replace('-', "_");
        let dir = self.root.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
        ));
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            self.pods.push(dir.clone());
        }
        dir
    }

    /// Moves `pid` into pod `uid`'s cgroup.
    pub fn add(&mut self, uid: &str, pid: u32) {
        let procs = self.pod(uid).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }
}

impl Default for PodCgroups {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for dir in &self.pods {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        // Deepest first: a cgroup goes once its children and processes have.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in dirs.iter().rev() {
            while let Err(e) = std::fs::remove_dir(d) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("removing cgroup {}: {e}", d.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
