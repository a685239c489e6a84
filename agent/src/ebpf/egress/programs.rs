//! The three egress programs: loading and pinning them, reopening them from
//! their pins, and one set of cgroup links per workload, pinned as
//! `links/<workload>/{sockops,connect6,connect4}`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockAddrAttachType, SockOps};
use nodeward_common::egress::{CONNECT4_PROGRAM, CONNECT6_PROGRAM, SOCKOPS_PROGRAM};

use super::super::pins::{detach_and_unpin, file_name, pinned_link_target};
use super::super::{pin_error, program_error};
use super::EbpfError;
use crate::ebpf::error::privileged;

/// One of the programs, and so one link per workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    SockOps,
    Connect6,
    Connect4,
}

impl Hook {
    /// In attach order: `sockops` first, so that every connection the
    /// connect programs steer has its original destination recorded.
    /// Detaching goes the other way.
    pub const ALL: [Self; 3] = [Self::SockOps, Self::Connect6, Self::Connect4];

    /// The pin's file name (of the program and of each workload's link).
    pub fn pin_name(self) -> &'static str {
        match self {
            Self::SockOps => "sockops",
            Self::Connect6 => "connect6",
            Self::Connect4 => "connect4",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::SockOps => SOCKOPS_PROGRAM,
            Self::Connect6 => CONNECT6_PROGRAM,
            Self::Connect4 => CONNECT4_PROGRAM,
        }
    }
}

/// Paths under `<pin_dir>/egress`.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn program(&self, hook: Hook) -> PathBuf {
        self.dir.join(hook.pin_name())
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link_dir(&self, workload: &str) -> PathBuf {
        self.links().join(file_name(workload))
    }
}

/// The programs as this process holds them (always reopened from their
/// pins, whether this process loaded them or a previous agent did).
pub(super) struct Programs {
    connect4: CgroupSockAddr,
    connect6: CgroupSockAddr,
    sockops: SockOps,
    /// Kernel program ids, in `Hook::ALL` order.
    ids: [u32; 3],
}

impl Programs {
    /// Loads the object (creating or reusing the pinned maps in
    /// `layout.dir`), runs the verifier on each program and pins it, over
    /// any program pinned there before.
    pub fn load_and_pin(layout: &Layout, object: &[u8]) -> Result<(), EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&layout.dir)
            .load(object)
            .map_err(privileged("loading the egress BPF object", |source| EbpfError::Load {
                source: Box::new(source),
            }))?;
        for hook in Hook::ALL {
            let program = ebpf
                .program_mut(hook.program())
                .ok_or(EbpfError::MissingEgressProgram {
                    program: hook.program(),
                })?;
            let path = layout.program(hook);
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::warn!(pin = %path.display(), "replaced an inconsistent pinned egress program"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_error(&path, "removing a stale pin")(e)),
            }
            let pinned = match hook {
                Hook::SockOps => {
                    let p: &mut SockOps = program.try_into().map_err(|_| EbpfError::MissingEgressProgram {
                        program: hook.program(),
                    })?;
                    p.load()
                        .map_err(program_error("loading the sockops program (verifier)"))?;
                    p.pin(&path)
                }
                Hook::Connect4 | Hook::Connect6 => {
                    let p: &mut CgroupSockAddr = program.try_into().map_err(|_| EbpfError::MissingEgressProgram {
                        program: hook.program(),
                    })?;
                    p.load()
                        .map_err(program_error("loading a cgroup connect program (verifier)"))?;
                    p.pin(&path)
                }
            };
            pinned.map_err(|source| EbpfError::PinObject {
                path: path.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Reopens the pinned programs; `None` when one is not pinned.
    pub fn from_pins(layout: &Layout) -> Result<Option<Self>, EbpfError> {
        if !Hook::ALL.iter().all(|h| layout.program(*h).exists()) {
            return Ok(None);
        }
        let connect4 = CgroupSockAddr::from_pin(layout.program(Hook::Connect4), CgroupSockAddrAttachType::Connect4)
            .map_err(program_error("opening the pinned connect4 program"))?;
        let connect6 = CgroupSockAddr::from_pin(layout.program(Hook::Connect6), CgroupSockAddrAttachType::Connect6)
            .map_err(program_error("opening the pinned connect6 program"))?;
        let sockops = SockOps::from_pin(layout.program(Hook::SockOps))
            .map_err(program_error("opening the pinned sockops program"))?;
        let id = |info: Result<aya::programs::ProgramInfo, _>| info.map(|i| i.id());
        let ids = [
            id(sockops.info()).map_err(program_error("reading a program's info"))?,
            id(connect6.info()).map_err(program_error("reading a program's info"))?,
            id(connect4.info()).map_err(program_error("reading a program's info"))?,
        ];
        Ok(Some(Self {
            connect4,
            connect6,
            sockops,
            ids,
        }))
    }

    pub fn ids(&self) -> [u32; 3] {
        self.ids
    }

    fn id(&self, hook: Hook) -> u32 {
        match hook {
            Hook::SockOps => self.ids[0],
            Hook::Connect6 => self.ids[1],
            Hook::Connect4 => self.ids[2],
        }
    }

    /// Kernel ids of every map one of the programs uses.
    pub fn map_ids(&self) -> Result<Vec<u32>, EbpfError> {
        let mut out = Vec::new();
        let infos = [self.sockops.info(), self.connect6.info(), self.connect4.info()];
        for info in infos {
            let info = info.map_err(program_error("reading a program's info"))?;
            out.extend(
                info.map_ids()
                    .map_err(program_error("reading a program's maps"))?
                    .unwrap_or_default(),
            );
        }
        Ok(out)
    }

    /// Attaches the programs to the cgroup v2 directory `cgroup` and pins
    /// the links under `dir`. Idempotent: a pinned link to the same cgroup
    /// and program is kept; one to another cgroup (the pod was recreated)
    /// or program is replaced by an atomic rename.
    pub fn attach(&mut self, dir: &Path, cgroup: &Path) -> Result<(), EbpfError> {
        let cgroup_error = |source| EbpfError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        };
        let file = File::open(cgroup).map_err(cgroup_error)?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| cgroup_error(e.into()))?;
        if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Err(EbpfError::NotCgroup2 {
                path: cgroup.to_path_buf(),
            });
        }
        // A cgroup v2 directory's inode number is the cgroup's id, which
        // the kernel shows in a cgroup link's fdinfo.
        let cgroup_id = file.metadata().map_err(cgroup_error)?.ino();
        std::fs::create_dir_all(dir).map_err(pin_error(dir, "creating the workload's link directory"))?;
        for hook in Hook::ALL {
            let pin = dir.join(hook.pin_name());
            if let Some(target) = pinned_link_target(&pin)? {
                if target.cgroup_id == cgroup_id && target.prog_id == self.id(hook) {
                    continue;
                }
                tracing::info!(
                    ?target,
                    cgroup_id,
                    hook = hook.pin_name(),
                    "replacing a stale egress link"
                );
            }
            let link = self.attach_one(hook, &file)?;
            let staging = dir.join(format!("{}~new", hook.pin_name()));
            match std::fs::remove_file(&staging) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_error(&staging, "removing a leftover")(e)),
            }
            link.pin(&staging).map_err(|source| EbpfError::PinObject {
                path: staging.clone(),
                source: Box::new(source),
            })?;
            // Replaces an old link in one step; the old one detaches when
            // its last reference (the pin) goes.
            std::fs::rename(&staging, &pin).map_err(pin_error(&pin, "renaming the new link into place"))?;
        }
        Ok(())
    }

    /// A new link of `hook` to `cgroup`. Links on a cgroup always allow
    /// other programs beside them (the kernel refuses attach flags on
    /// bpf_link), so nodeward coexists with, e.g., Cilium's socket load
    /// balancer on the root cgroup: ours, nearer the pod, runs first.
    fn attach_one(&mut self, hook: Hook, cgroup: &File) -> Result<FdLink, EbpfError> {
        let what = "attaching to a cgroup";
        let not_fd = |_| EbpfError::LinkUnsupported;
        match hook {
            Hook::SockOps => {
                let id = self
                    .sockops
                    .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                    .map_err(program_error(what))?;
                let link = self.sockops.take_link(id).map_err(program_error(what))?;
                FdLink::try_from(link).map_err(not_fd)
            }
            Hook::Connect4 | Hook::Connect6 => {
                let p = if hook == Hook::Connect4 {
                    &mut self.connect4
                } else {
                    &mut self.connect6
                };
                let id = p
                    .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                    .map_err(program_error(what))?;
                let link = p.take_link(id).map_err(program_error(what))?;
                FdLink::try_from(link).map_err(not_fd)
            }
        }
    }
}

/// Detaches the links pinned in a workload's link directory (connect
/// programs first) and removes it; `false` when there was none.
pub(super) fn detach_dir(dir: &Path) -> Result<bool, EbpfError> {
    if !dir.exists() {
        return Ok(false);
    }
    for hook in Hook::ALL.iter().rev() {
        detach_and_unpin(&dir.join(hook.pin_name()))?;
        detach_and_unpin(&dir.join(format!("{}~new", hook.pin_name())))?;
    }
    // Anything else in there is a stray pin: remove it too.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            detach_and_unpin(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(pin_error(dir, "removing the workload's link directory")(e)),
    }
}

/// Detaches every workload's links under `links`.
pub(super) fn detach_all(links: &Path) -> Result<(), EbpfError> {
    if let Ok(entries) = std::fs::read_dir(links) {
        for entry in entries.flatten() {
            detach_dir(&entry.path())?;
        }
    }
    Ok(())
}
