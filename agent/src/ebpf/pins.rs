//! The pinning layout under the pin directory, bpffs checks, and what a
//! pinned link is attached to.
//!
//! ```text
//! <pin_dir>/                   default /sys/fs/bpf/nodeward
//!   prog                       the SK_LOOKUP program
//!   NW_PROTECTED NW_LISTENERS NW_COUNTERS NW_WORKLOADS   the maps
//!   links/<workload>           one netns link per enrolled workload
//! ```
//!
//! bpffs refuses names with a `.` (and no file name may hold a `/`), so a
//! workload name is escaped into its link's file name.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::EbpfError;

/// Where bpffs is conventionally mounted; the only place nodeward mounts it.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Paths of the pinned objects.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn program(&self) -> PathBuf {
        self.dir.join("prog")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, workload: &str) -> PathBuf {
        self.links().join(file_name(workload))
    }

    /// Where a new link is pinned before it is renamed over the old one.
    pub fn link_staging(&self, workload: &str) -> PathBuf {
        self.links().join(format!("{}~new", file_name(workload)))
    }
}

/// `workload` as a bpffs file name: `[A-Za-z0-9_-]` kept, any other byte as
/// `%XX`; names too long for a file name end in a digest of the whole name.
pub(super) fn file_name(workload: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(workload.len());
    for b in workload.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, workload.as_bytes());
        let hex: String = digest.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect();
        // The escaped text is ASCII, so any byte index is a char boundary.
        out.truncate(MAX - hex.len() - 1);
        out.push('~');
        out.push_str(&hex);
    }
    out
}

/// Makes sure `dir` is (or will be created) on a bpffs. When the nearest
/// existing ancestor is not bpffs and `dir` is under `/sys/fs/bpf`, mounts
/// bpffs there (fresh machines and CI); anywhere else it is an error.
pub fn ensure_bpffs(dir: &Path) -> Result<(), EbpfError> {
    let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing)? {
        return Ok(());
    }
    let root = Path::new(BPFFS);
    if dir.starts_with(root) && root.is_dir() {
        tracing::warn!(
            mount = BPFFS,
            "bpffs is not mounted: mounting it; pinned steering state lives only as long as this mount \
             (in Kubernetes, mount the host's /sys/fs/bpf into the agent instead)"
        );
        match nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => {}
            Err(source) if is_bpffs(root).unwrap_or(false) => {
                // Someone else mounted it meanwhile.
                tracing::debug!(%source, "bpffs mounted concurrently");
            }
            Err(source) => return Err(EbpfError::MountBpffs { source }),
        }
        let now = dir.ancestors().find(|a| a.exists()).unwrap_or(root);
        if is_bpffs(now)? {
            return Ok(());
        }
    }
    Err(EbpfError::NotBpffs {
        path: dir.to_path_buf(),
        checked: existing.to_path_buf(),
    })
}

fn is_bpffs(path: &Path) -> Result<bool, EbpfError> {
    let fs = statfs(path).map_err(|source| EbpfError::Statfs {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// What a pinned link is attached to, from the kernel's fdinfo.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LinkTarget {
    /// Inode of the network namespace of a netns link; 0 for other links
    /// and once that namespace is gone (the kernel detaches the link then).
    pub netns_ino: u64,
    /// Id of the cgroup of a cgroup link (its cgroup v2 directory's inode);
    /// 0 for other links and once the cgroup is gone.
    pub cgroup_id: u64,
    pub prog_id: u32,
}

/// `None` when nothing is pinned at `path`.
pub(super) fn pinned_link_target(path: &Path) -> Result<Option<LinkTarget>, EbpfError> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EbpfError::Pin {
                path: path.to_path_buf(),
                what: "opening the pinned link",
                source,
            });
        }
    };
    let fdinfo = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&fdinfo).map_err(|source| EbpfError::Pin {
        path: path.to_path_buf(),
        what: "reading the link's fdinfo",
        source,
    })?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    // A link of another kind, or one that lost its namespace or cgroup,
    // reads as 0: never reused.
    Ok(Some(LinkTarget {
        netns_ino: field("netns_ino:").unwrap_or(0),
        cgroup_id: field("cgroup_id:").unwrap_or(0),
        prog_id: field("prog_id:").and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
    }))
}

/// Detaches the link pinned at `path` now and removes the pin; `false`
/// when nothing was pinned there. Removing a pin alone detaches the link
/// only after an RCU grace period (bpffs frees inodes that way), so an
/// un-enrolled pod would stay steered for a moment.
pub(super) fn detach_and_unpin(path: &Path) -> Result<bool, EbpfError> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(EbpfError::Pin {
                path: path.to_path_buf(),
                what: "opening the pinned link",
                source,
            });
        }
    };
    match link_detach(&fd) {
        Ok(()) => {}
        // ENOLINK: already detached (its namespace is gone); EINVAL: not a
        // link (a stray pin): removing the pin is all there is to do.
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOLINK | nix::libc::EINVAL)) => {}
        Err(source) => {
            return Err(EbpfError::Pin {
                path: path.to_path_buf(),
                what: "detaching the link",
                source,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(EbpfError::Pin {
            path: path.to_path_buf(),
            what: "removing the pin",
            source,
        }),
    }
}

// aya opens pinned links too, but keeps their descriptor private, has no
// BPF_LINK_DETACH, and the netns a link is attached to shows only in that
// descriptor's fdinfo: hence these two raw bpf(2) commands.

const BPF_OBJ_GET: nix::libc::c_long = 7;
const BPF_LINK_DETACH: nix::libc::c_long = 34;

/// The `BPF_OBJ_*` member of `union bpf_attr`, zero-padded.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `link_detach` member of `union bpf_attr`, zero-padded.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
    _pad: u32,
}

/// BPF_OBJ_GET: a new file descriptor for the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    #[expect(unsafe_code, reason = "bpf(2) has no safe wrapper that returns the fd")]
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix for
    // BPF_OBJ_GET of the size passed; `pathname` points at a NUL-terminated
    // string that outlives the call; the kernel only reads them.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(ret).map_err(|_| io::Error::other("bpf(BPF_OBJ_GET) returned an invalid fd"))?;
    #[expect(unsafe_code, reason = "taking ownership of the fd the kernel returned")]
    // SAFETY: on success BPF_OBJ_GET returns a new descriptor that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// BPF_LINK_DETACH: detaches the link now, whoever else holds it.
fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let attr = LinkDetachAttr {
        link_fd: u32::try_from(link.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?,
        _pad: 0,
    };
    #[expect(unsafe_code, reason = "aya has no BPF_LINK_DETACH")]
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` prefix for
    // BPF_LINK_DETACH of the size passed, naming a descriptor we own for
    // the duration of the call; the kernel only reads it.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            BPF_LINK_DETACH,
            &raw const attr,
            std::mem::size_of::<LinkDetachAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_bpffs_safe_and_distinct() {
        assert_eq!(file_name("orders"), "orders");
        assert_eq!(file_name("default/orders.v1"), "default%2Forders%2Ev1");
        assert_ne!(file_name("a.b"), file_name("a_b"));
        let long = "n".repeat(400);
        let name = file_name(&long);
        assert!(name.len() <= 200, "{}", name.len());
        assert_ne!(name, file_name(&"n".repeat(401)));
        assert!(!name.contains('.') && !name.contains('/'));
    }

    #[test]
    fn a_directory_off_bpffs_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ensure_bpffs(&dir.path().join("nodeward")).expect_err("tmp is not bpffs");
        assert!(matches!(err, EbpfError::NotBpffs { .. }), "{err:?}");
    }
}
