//! This process's resources, for tests that bound or count them: open
//! descriptors (leak checks), accepted sockets on a port, resident memory,
//! the open-file limit.

/// Number of open file descriptors of this process (leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Raises this process's open-file limit to at least `want` (the soft limit up
/// to the hard one; the hard one too where that is allowed, CAP_SYS_RESOURCE).
/// Returns the limit in force.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= want {
        return soft;
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let soft = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("raise the soft limit up to the hard one");
    soft
}

/// Connections to local `port` whose accepted end this process holds (a
/// descriptor), counted exactly: the kernel's TCP tables give each socket's
/// local port, state and inode, `/proc/self/fd` which inodes are ours. Not a
/// count of all descriptors, which moves with every short-lived request of
/// the test (its client socket, the agent's accepted and upstream ones, the
/// app's) around the moment it is taken.
pub fn accepted_sockets(port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: LISTEN, the listener itself, not a connection.
            if local_port == Some(port) && *state != "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| inodes.contains(&*target.to_string_lossy()))
        .count()
}

/// This process's resident set (with the agent in-process, the agent's too), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}
