//! Fixtures for root-only tests of cgroup eBPF programs: a cgroup v2 made
//! for one test ([`CgroupGuard`]) and processes moved into it, as a pod's
//! containers are.
//!
//! Names are unique per process and fixture (`nodeward-test-<pid>x<n>`
//! under the cgroup v2 mount); drop kills what is left inside and removes
//! the cgroup, panics included. Tests using these run one at a time and
//! call `netns::require_root` first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::unique;

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a pure v2 host,
/// `/sys/fs/cgroup/unified` beside v1 (hybrid). Panics without one: the
/// egress programs need it.
pub fn cgroup2_root() -> PathBuf {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").unwrap_or_else(|e| panic!("reading /proc/self/mounts: {e}"));
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .unwrap_or_else(|| panic!("no cgroup v2 mount on this machine (see /proc/self/mounts)"))
}

/// A cgroup v2 directory made for one test, like a pod's cgroup. Drop
/// kills every process still in it and removes it.
#[derive(Debug)]
pub struct CgroupGuard {
    pub path: PathBuf,
}

impl CgroupGuard {
    pub fn new() -> Self {
        let (_, tag) = unique();
        let path = cgroup2_root().join(format!("nodeward-test-{tag}"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// Moves process `pid` (all its threads) into this cgroup. Sockets it
    /// creates from then on belong to the cgroup; ones it had keep theirs.
    pub fn add(&self, pid: u32) {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }

    /// The processes in this cgroup.
    pub fn procs(&self) -> Vec<u32> {
        procs(&self.path)
    }

    /// The cgroup's id (its directory's inode), as cgroup links show it.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
            .ino()
    }
}

impl Default for CgroupGuard {
    fn default() -> Self {
        Self::new()
    }
}

fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        // cgroup.kill (Linux 5.14, which egress steering needs anyway)
        // kills everything inside at once, also processes forked meanwhile.
        if let Err(e) = std::fs::write(self.path.join("cgroup.kill"), "1")
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("killing the processes of cgroup {}: {e}", self.path.display());
        }
        // The cgroup can be removed once its last process is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!(
                        "removing cgroup {}: {e} (processes: {:?})",
                        self.path.display(),
                        self.procs()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Cgroups this process's fixtures made that still exist (a leak check).
pub fn leftover_cgroups() -> Vec<String> {
    let prefix = format!("nodeward-test-{}x", std::process::id() % 100_000);
    std::fs::read_dir(cgroup2_root())
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}
