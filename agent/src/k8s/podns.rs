//! Pod → network namespace, from the node: the pod's UID names its cgroup,
//! the cgroup lists the pod's processes, and `<proc_root>/<pid>/ns/net` is
//! the namespace they share. This works for every container runtime that
//! follows the kubelet's cgroup naming, whatever the driver:
//!
//! ```text
//! systemd driver (cgroup v2 at <root>, v1 under <root>/<controller>):
//!   kubepods.slice/kubepods-pod<uid_>.slice/…                                      (Guaranteed)
//!   kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope
//!   kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/crio-<id>.scope
//! cgroupfs driver:
//!   kubepods/pod<uid>/<id>                                                          (Guaranteed)
//!   kubepods/<qos>/pod<uid>/<id>
//! ```
//!
//! `<uid_>` is the UID with `-` replaced by `_` (systemd reserves `-`).
//! CRI-O's `crio-conmon-<id>.scope` holds the monitor, which runs in the
//! host's namespace: it is skipped, and any process whose namespace is the
//! host's (`<proc_root>/1/ns/net`) or the agent's own is never taken for the
//! pod's.
//!
//! Only reading: entering the namespace and enrolling are `netns` and `enrol`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PodNsError {
    #[error(
        "no cgroup for pod UID {uid} under {root} (searched {searched} places; is cgroup_root the host's cgroup mount?)"
    )]
    NoCgroup {
        uid: String,
        root: PathBuf,
        searched: usize,
    },
    #[error("pod UID {uid}: no process in its cgroup {dir} (containers not started yet, or all exited)")]
    NoProcess { uid: String, dir: PathBuf },
    #[error(
        "pod UID {uid}: its processes share the host's network namespace (hostNetwork pods have no namespace of their own)"
    )]
    HostNetns { uid: String },
    #[error("cannot read the host's network namespace {path}: {reason} (is proc_root the host's /proc, with hostPID?)")]
    HostUnknown { path: PathBuf, reason: String },
}

/// QoS classes a burstable or best-effort pod's cgroup is nested under.
const QOS: [&str; 2] = ["burstable", "besteffort"];

/// Finds pods' network namespaces under a host's `/proc` and cgroup mount.
#[derive(Debug, Clone)]
pub struct PodNsResolver {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
}

impl PodNsResolver {
    pub fn new(proc_root: &Path, cgroup_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
        }
    }

    /// `<proc_root>/<pid>/ns/net` of a process of the pod with `uid`, in a
    /// network namespace that is not the host's.
    pub fn resolve(&self, uid: &str) -> Result<PathBuf, PodNsError> {
        let host = self.host_namespaces()?;
        let candidates = self.pod_dirs(uid);
        let searched = candidates.len();
        let Some(dir) = candidates.into_iter().find(|d| d.is_dir()) else {
            return Err(PodNsError::NoCgroup {
                uid: uid.to_string(),
                root: self.cgroup_root.clone(),
                searched,
            });
        };
        let mut saw_host = false;
        for pid in pids_under(&dir) {
            let ns = self.proc_root.join(pid.to_string()).join("ns/net");
            match std::fs::metadata(&ns) {
                Ok(m) if host.contains(&m.ino()) => saw_host = true,
                Ok(_) => return Ok(ns),
                // The process exited between listing and looking: try the next.
                Err(_) => {}
            }
        }
        if saw_host {
            Err(PodNsError::HostNetns { uid: uid.to_string() })
        } else {
            Err(PodNsError::NoProcess {
                uid: uid.to_string(),
                dir,
            })
        }
    }

    /// The pod's cgroup in the cgroup v2 hierarchy (`<cgroup_root>` on a
    /// pure v2 host, `<cgroup_root>/unified` beside v1), where the egress
    /// programs attach; `None` when it has none there.
    pub fn cgroup_of(&self, uid: &str) -> Option<PathBuf> {
        let v2 = [self.cgroup_root.clone(), self.cgroup_root.join("unified")]
            .into_iter()
            .find(|b| b.join("cgroup.controllers").is_file())?;
        relative_dirs(uid).into_iter().map(|r| v2.join(r)).find(|d| d.is_dir())
    }

    /// Namespaces no pod may be taken to be in: the host's (pid 1's) and the
    /// agent's own (`self`, when proc_root is this process's /proc or a host
    /// /proc seen with hostPID). Either may be unreadable (pid 1's without
    /// ptrace rights): one suffices.
    fn host_namespaces(&self) -> Result<Vec<u64>, PodNsError> {
        let host = self.proc_root.join("1/ns/net");
        let pid1 = std::fs::metadata(&host).map(|m| m.ino());
        let own = std::fs::metadata(self.proc_root.join("self/ns/net")).map(|m| m.ino());
        match (pid1, own) {
            (Err(e), Err(_)) => Err(PodNsError::HostUnknown {
                path: host,
                reason: e.to_string(),
            }),
            (a, b) => Ok(a.into_iter().chain(b).collect()),
        }
    }

    /// Every place the pod's cgroup may be, most common first.
    fn pod_dirs(&self, uid: &str) -> Vec<PathBuf> {
        let relative = relative_dirs(uid);
        let mut bases = vec![self.cgroup_root.clone()];
        // cgroup v1 (or hybrid): one hierarchy per controller directory.
        if let Ok(entries) = std::fs::read_dir(&self.cgroup_root) {
            let mut v1: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .filter(|p| p.join("kubepods.slice").is_dir() || p.join("kubepods").is_dir())
                .collect();
            // Prefer the hierarchies every process is in.
            v1.sort_by_key(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (
                    !["pids", "systemd", "unified", "memory", "cpu,cpuacct"].contains(&name.as_str()),
                    name,
                )
            });
            bases.extend(v1);
        }
        bases
            .iter()
            .flat_map(|b| relative.iter().map(move |r| b.join(r)))
            .collect()
    }
}

/// Where a pod's cgroup may be below a hierarchy's root, most common first.
fn relative_dirs(uid: &str) -> Vec<PathBuf> {
    let u = uid.replace('-', "_");
    let mut relative: Vec<PathBuf> = Vec::new();
    // systemd driver
    relative.push(format!("kubepods.slice/kubepods-pod{u}.slice").into());
    for q in QOS {
        relative.push(format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice").into());
    }
    // cgroupfs driver
    relative.push(format!("kubepods/pod{uid}").into());
    for q in QOS {
        relative.push(format!("kubepods/{q}/pod{uid}").into());
    }
    relative
}

/// Pids listed in `cgroup.procs` of the container cgroups under `dir` (and
/// of `dir` itself), skipping CRI-O's monitor; at most a few levels deep.
fn pids_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth >= 3 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        let mut subdirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("crio-conmon-"))
            })
            .collect();
        subdirs.sort();
        stack.extend(subdirs.into_iter().rev().map(|p| (p, depth + 1)));
    }
    out
}

#[cfg(test)]
mod tests;
