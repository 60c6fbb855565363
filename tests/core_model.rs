//! Test layer 2 (docs/TESTING.md): the differential model's operations applied to the
//! `UnionFs` core directly, on temporary directories — no mount, no /dev/fuse, no root.
//!
//! Every case builds two or three generated lower branches in AUFS format (`.wh.` files,
//! `.wh..wh..opq`), an empty upper and workdir, and the oracle: a plain directory holding
//! the merged view of the lowers, made by copying them bottom-up and honouring their
//! whiteouts and opaque directories. One generated operation sequence (the alphabet,
//! generator and shrinking of `tests/diff_ops.rs`, shared in `tests/common/model.rs`) is
//! applied to both: to the oracle with plain system calls ([`Side`]), to the union through
//! the core API ([`Core`]: names walked from `ROOT_INO` with `lookup`, `create_object`,
//! `open`/`write`/`release`, `rename`, `setattr`, ...), the union writing AUFS whiteouts
//! and keeping its bookkeeping in `user.*` xattrs (`XattrNs::User`) when not root, in
//! `trusted.*` as root, as the daemon does. It checks that
//!
//! 1. every operation gives the same result on both (value or errno; the core's errors
//!    through `Error::errno()`);
//! 2. the whole trees are equal after every `UNIONFS_CORE_MODEL_EVERY`-th operation (4 by
//!    default) and at the end: names, types, readdir types, modes, owners, link counts,
//!    sizes, contents, symlink targets, `user.*` xattrs, explicitly set mtimes — see
//!    [`model_comparable`] for what is left out and why;
//! 3. the same after the union is dropped and built again on the same upper and workdir
//!    (what a remount sees);
//! 4. the lower branches are untouched.
//!
//! [`Core`] plays the kernel's part of a FUSE mount: the path walk (following symlinks as
//! the system call would), the VFS checks made before a FUSE request is sent (existence,
//! types, rename loops, flags), `default_permissions` when not run as root, and the
//! suid/sgid clearing the FUSE kernel asks for on chown. Fifos are opened by the kernel,
//! never by a FUSE server: [`Core`] opens a scratch fifo of its own per union inode.
//!
//! Runs as whoever runs it. As root, [`runs_unprivileged_too`] also runs this binary as
//! nobody, so that CI covers the unprivileged union (bookkeeping in `user.*` and nothing
//! else, its own access to the branches checked) as well as the one a root daemon is.
//!
//! Budget: `UNIONFS_CORE_MODEL_CASES` cases (64 by default) of `UNIONFS_CORE_MODEL_LEN`
//! operations (200), the trees compared every `UNIONFS_CORE_MODEL_EVERY` operations (4).
//! A failure is shrunk and printed as pasteable Rust (lowers and ops) for a
//! `regression_*` test calling [`check_case`]. `CORE_MODEL_STATS=1` prints how many
//! operations of each kind succeeded, `CORE_MODEL_KEEP=1` keeps each case's directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/model.rs"]
mod model;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use model::*;
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag};
use nix::sys::stat::{Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use proptest::prelude::*;
use unionfs::backing::Backings;
use unionfs::branch::{Branch, BranchId};
use unionfs::error::Error;
use unionfs::handle::Fh;
use unionfs::inode::{Ino, Kind, ROOT_INO};
use unionfs::mode::Mode as BranchMode;
use unionfs::ops::{Attr, Caller, CoreOptions, NewObject, RenameHow, SetAttr, UnionFs};
use unionfs::stack::BranchStack;
use unionfs::sys::fs::SetTime;
use unionfs::upper::{Upper, XattrNs};
use unionfs::whiteout::WhiteoutFormat;

// ---------------------------------------------------------------------------------------
// The union on temp dirs
// ---------------------------------------------------------------------------------------

/// The directories of one case.
struct Dirs {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    oracle: PathBuf,
    /// the scratch fifos standing for the union's fifos
    fifos: PathBuf,
}

/// The union over `d`, built as the daemon builds it for an AUFS-format upper
/// (`whiteout=aufs`, metacopy on, the layer index of `udba=none`), its bookkeeping in `user.*` xattrs when not root (as
/// an unprivileged daemon keeps it) and in `trusted.*` as root (as a root daemon does).
fn open_union(d: &Dirs) -> UnionFs {
    let backings = Backings::new(unionfs::backing::DEFAULT_CACHED_FDS);
    let mut ub = Branch::open(BranchId(0), &d.upper, BranchMode::RW, false, &backings).unwrap();
    // an upper recorded as AUFS format: a char 0:0 device in it is a user's device
    ub.char_whiteouts = false;
    let ns = if nix::unistd::geteuid().is_root() {
        XattrNs::Trusted
    } else {
        XattrNs::User
    };
    let mut up = Upper::open(&ub, Some(&d.work), WhiteoutFormat::Aufs, true, ns).unwrap();
    up.durable = false;
    up.metacopy = true;
    let mut branches = vec![ub];
    for (i, l) in d.lowers.iter().enumerate() {
        let id = BranchId(u16::try_from(i + 1).unwrap());
        branches.push(Branch::open(id, l, BranchMode::RO_WH, false, &backings).unwrap());
    }
    // With the layer index, as the daemon under its default `udba=none`: listings the
    // operations take (readdir, rmdir's emptiness check) then answer later lookups.
    let stack = BranchStack::new(branches, vec![up], Arc::clone(&backings)).with_layer_index();
    let opts = CoreOptions {
        name_max: WhiteoutFormat::Aufs.name_max(),
        ..CoreOptions::default()
    };
    UnionFs::new(stack, opts).unwrap()
}

/// The merged view of the lower branches `roots` (top first) as a plain directory
/// `oracle`: the lowers copied bottom-up, each object replacing what lies below it, a
/// directory merging with a directory below unless it holds `.wh..wh..opq`, a `.wh.`
/// file removing what lies below. Contents, modes, owners (as root), `user.*` xattrs,
/// times and hard links within a lower are copied.
fn build_oracle(roots: &[PathBuf], oracle: &Path) {
    for root in roots.iter().rev() {
        merge_into(root, oracle, &mut BTreeMap::new());
    }
}

fn merge_into(src: &Path, dst: &Path, links: &mut BTreeMap<(u64, u64), PathBuf>) {
    let rm = |p: &Path| match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    };
    let mut names: Vec<OsString> = fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    // `.wh.` names sort first: a whiteout never removes what its own lower holds
    names.sort();
    for n in names {
        let (s, d) = (src.join(&n), dst.join(&n));
        if n.as_bytes() == b".wh..wh..opq" {
            continue;
        }
        if let Some(hidden) = n.as_bytes().strip_prefix(b".wh.") {
            rm(&dst.join(OsStr::from_bytes(hidden)));
            continue;
        }
        let md = fs::symlink_metadata(&s).unwrap();
        if md.is_dir() {
            let opaque = s.join(".wh..wh..opq").exists();
            if opaque || !fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
                rm(&d);
                fs::create_dir(&d).unwrap();
            }
            copy_attrs(&s, &d, &md);
            merge_into(&s, &d, links);
            continue;
        }
        rm(&d);
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            fs::hard_link(first, &d).unwrap();
            continue;
        }
        let ft = md.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s).unwrap(), &d).unwrap();
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(&d, Mode::empty()).unwrap();
        } else {
            assert!(
                ft.is_file(),
                "{}: no such object in a generated lower",
                s.display()
            );
            fs::copy(&s, &d).unwrap();
        }
        copy_attrs(&s, &d, &md);
        links.insert((md.dev(), md.ino()), d);
    }
}

/// Owner (as root), mode, `user.*` xattrs (replacing a merged directory's) and times.
fn copy_attrs(s: &Path, d: &Path, md: &fs::Metadata) {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid())).unwrap();
    }
    if !md.file_type().is_symlink() {
        fs::set_permissions(d, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        for x in xattr::list(d).unwrap() {
            xattr::remove(d, x).unwrap();
        }
        for x in xattr::list(s).unwrap() {
            xattr::set(d, &x, &xattr::get(s, &x).unwrap().unwrap_or_default()).unwrap();
        }
    }
    let (a, m) = (
        TimeSpec::new(md.atime(), md.atime_nsec()),
        TimeSpec::new(md.mtime(), md.mtime_nsec()),
    );
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        d,
        &a,
        &m,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// The kernel's part: path walk, VFS checks, then the core
// ---------------------------------------------------------------------------------------

/// An open file of [`Core`].
enum Open {
    /// a regular file: a core handle
    File { fh: Fh, ino: Ino, write: bool },
    /// a directory opened O_RDONLY: a core directory handle
    Dir { fh: Fh, ino: Ino },
    /// a fifo: the scratch fifo of its union inode, opened for real
    Fifo { fd: OwnedFd, ino: Ino },
}

/// Where a path leads: the directory it ends in, the last name, and what that name is.
struct At {
    dir: Ino,
    dir_attr: Attr,
    /// the directory's names from the root (symlinks resolved; they never hold `..`)
    dir_path: Vec<String>,
    name: String,
    found: Option<Attr>,
}

impl At {
    fn path(&self) -> Vec<String> {
        let mut p = self.dir_path.clone();
        p.push(self.name.clone());
        p
    }
}

const MAY_READ: u32 = 4;
const MAY_WRITE: u32 = 2;
const MAY_EXEC: u32 = 1;

fn errno(e: &Error) -> Errno {
    e.errno()
}

fn kind_mode(k: Kind) -> u32 {
    match k {
        Kind::Dir => libc::S_IFDIR,
        Kind::File => libc::S_IFREG,
        Kind::Symlink => libc::S_IFLNK,
        Kind::Fifo => libc::S_IFIFO,
        Kind::Socket => libc::S_IFSOCK,
        Kind::CharDev => libc::S_IFCHR,
        Kind::BlockDev => libc::S_IFBLK,
    }
}

/// `stat_summary` of a union attribute.
fn attr_summary(a: &Attr) -> String {
    let kind = kind_char(kind_mode(a.kind));
    let size = if a.kind == Kind::Dir {
        String::new()
    } else {
        format!(" size {}", a.size)
    };
    format!(
        "{kind} {:04o} {}:{} nlink {}{size}",
        a.perm, a.uid, a.gid, a.nlink
    )
}

/// The mode a chown makes the FUSE kernel set along with the owner (no
/// `handle_killpriv`): suid cleared, sgid cleared when group-executable.
fn killed_mode(a: &Attr) -> Option<u32> {
    let m = u32::from(a.perm);
    let mut k = m & !libc::S_ISUID;
    if m & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP) {
        k &= !libc::S_ISGID;
    }
    (k != m).then_some(k)
}

/// The union as a process sees it through a FUSE mount, with the kernel's part done here.
struct Core<'a> {
    fs: &'a UnionFs,
    fifos: &'a Path,
    caller: Caller,
    root: bool,
    slots: Vec<Option<Open>>,
}

impl<'a> Core<'a> {
    fn new(fs: &'a UnionFs, fifos: &'a Path) -> Core<'a> {
        let caller = Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            pid: std::process::id(),
        };
        Core {
            fs,
            fifos,
            caller,
            root: caller.uid == 0,
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// `default_permissions`: the classic owner/group/other check (root passes).
    fn may(&self, a: &Attr, mask: u32) -> Result<(), Errno> {
        if self.root {
            return Ok(());
        }
        let perm = u32::from(a.perm);
        let bits = if a.uid == self.caller.uid {
            perm >> 6
        } else if a.gid == self.caller.gid {
            perm >> 3
        } else {
            perm
        } & 7;
        if bits & mask == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    fn owner(&self, a: &Attr) -> Result<(), Errno> {
        if self.root || a.uid == self.caller.uid {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    fn lookup(&self, dir: Ino, name: &str) -> Result<Option<Attr>, Errno> {
        match self.fs.lookup(dir, OsStr::new(name)) {
            Ok(e) => Ok(Some(e.attr)),
            Err(e) if errno(&e) == Errno::ENOENT => Ok(None),
            Err(e) => Err(errno(&e)),
        }
    }

    fn readlink(&self, ino: Ino) -> Result<String, Errno> {
        let t = self.fs.readlink(ino).map_err(|e| errno(&e))?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// The path walk: every directory on the way needs search permission; symlinks on
    /// the way are followed, the last one only with `follow`; 40 links at most.
    fn at(&self, path: &str, follow: bool) -> Result<At, Errno> {
        let mut todo: Vec<String> = path.split('/').rev().map(String::from).collect();
        let mut dir = ROOT_INO;
        let mut dir_attr = self.fs.getattr(ROOT_INO).map_err(|e| errno(&e))?;
        let mut dir_path: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if dir_attr.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            self.may(&dir_attr, MAY_EXEC)?;
            let found = self.lookup(dir, &name)?;
            let last = todo.is_empty();
            match found {
                Some(a) if a.kind == Kind::Symlink && (follow || !last) => {
                    links += 1;
                    if links > 40 {
                        return Err(Errno::ELOOP);
                    }
                    // relative and without `..`: resolved from the link's directory
                    let target = self.readlink(a.ino)?;
                    todo.extend(target.split('/').rev().map(String::from));
                }
                _ if last => {
                    return Ok(At {
                        dir,
                        dir_attr,
                        dir_path,
                        name,
                        found,
                    })
                }
                None => return Err(Errno::ENOENT),
                Some(a) => {
                    dir = a.ino;
                    dir_attr = a;
                    dir_path.push(name);
                }
            }
        }
        Err(Errno::ENOENT)
    }

    /// `at`, for a path that must exist.
    fn existing(&self, path: &str, follow: bool) -> Result<(At, Attr), Errno> {
        let at = self.at(path, follow)?;
        let a = at.found.ok_or(Errno::ENOENT)?;
        Ok((at, a))
    }

    /// The directory at `path` ("" is the root), for listing: read permission.
    fn dir(&self, path: &str) -> Result<Attr, Errno> {
        self.dir_may(path, MAY_READ)
    }

    /// The directory at `path` ("" is the root; a final symlink followed),
    /// if the caller has permission `mask` on it.
    fn dir_may(&self, path: &str, mask: u32) -> Result<Attr, Errno> {
        let a = if path.is_empty() {
            self.fs.getattr(ROOT_INO).map_err(|e| errno(&e))?
        } else {
            self.existing(path, true)?.1
        };
        if a.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.may(&a, mask)?;
        Ok(a)
    }

    fn list(&self, a: &Attr) -> Result<Vec<(String, Kind, Ino)>, Errno> {
        let fh = self.fs.opendir(a.ino).map_err(|e| errno(&e))?;
        let mut out = Vec::new();
        let res = self.fs.readdir(a.ino, fh, 0, |e| {
            let n = e.name.to_string_lossy().into_owned();
            if n != "." && n != ".." {
                out.push((n, e.kind, e.ino));
            }
            false
        });
        self.fs.releasedir(fh);
        res.map_err(|e| errno(&e))?;
        Ok(out)
    }

    /// The scratch fifo standing for union fifo `ino`, opened with `flags`.
    fn open_fifo(&self, ino: Ino, flags: OFlag) -> Result<OwnedFd, Errno> {
        let p = self.fifos.join(ino.0.to_string());
        if !p.exists() {
            nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600))?;
        }
        nix::fcntl::open(&p, flags, Mode::empty())
    }

    /// open(2) (always O_NONBLOCK, as the oracle opens).
    fn open(&self, path: &str, flags: OFlag, mode: u32) -> Result<Open, Errno> {
        let flags = flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let creat = flags.contains(OFlag::O_CREAT);
        let excl = creat && flags.contains(OFlag::O_EXCL);
        let acc = flags & OFlag::O_ACCMODE;
        let at = self.at(path, !excl)?;
        let Some(a) = at.found else {
            if !creat {
                return Err(Errno::ENOENT);
            }
            self.may(&at.dir_attr, MAY_WRITE | MAY_EXEC)?;
            let (e, fh) = self
                .fs
                .create_object(
                    at.dir,
                    OsStr::new(&at.name),
                    NewObject::File {
                        flags: flags.bits(),
                    },
                    libc::S_IFREG | (mode & 0o7777),
                    self.caller,
                )
                .map_err(|e| errno(&e))?;
            let fh = fh.ok_or(Errno::EIO)?;
            return Ok(Open::File {
                fh,
                ino: e.attr.ino,
                write: acc != OFlag::O_RDONLY,
            });
        };
        if excl {
            return Err(Errno::EEXIST);
        }
        if a.kind == Kind::Dir {
            if creat || acc != OFlag::O_RDONLY {
                return Err(Errno::EISDIR);
            }
            self.may(&a, MAY_READ)?;
            let fh = self.fs.opendir(a.ino).map_err(|e| errno(&e))?;
            return Ok(Open::Dir { fh, ino: a.ino });
        }
        let mask = match acc {
            OFlag::O_RDONLY => MAY_READ,
            OFlag::O_WRONLY => MAY_WRITE,
            _ => MAY_READ | MAY_WRITE,
        };
        self.may(&a, mask)?;
        match a.kind {
            Kind::Fifo => Ok(Open::Fifo {
                fd: self.open_fifo(a.ino, flags & !(OFlag::O_CREAT | OFlag::O_TRUNC))?,
                ino: a.ino,
            }),
            Kind::File => {
                let o = self
                    .fs
                    .open(a.ino, (flags & !(OFlag::O_CREAT | OFlag::O_EXCL)).bits())
                    .map_err(|e| errno(&e))?;
                Ok(Open::File {
                    fh: o.fh,
                    ino: a.ino,
                    write: acc != OFlag::O_RDONLY,
                })
            }
            // no devices or sockets are ever made
            _ => Err(Errno::ENXIO),
        }
    }

    fn close(&self, o: Open) {
        match o {
            Open::File { fh, .. } => self.fs.release(fh),
            Open::Dir { fh, .. } => self.fs.releasedir(fh),
            Open::Fifo { .. } => {}
        }
    }

    /// `read_all` of the oracle: 64 KiB reads from 0 until EOF (or past 1 MiB).
    fn read_all(&self, o: &Open) -> Result<Vec<u8>, Errno> {
        match o {
            Open::File { fh, .. } => {
                let mut out = Vec::new();
                loop {
                    let b = self
                        .fs
                        .read(*fh, out.len() as u64, 65536)
                        .map_err(|e| errno(&e))?;
                    if b.is_empty() || out.len() > 1 << 20 {
                        return Ok(out);
                    }
                    out.extend_from_slice(&b);
                }
            }
            Open::Dir { .. } => Err(Errno::EISDIR),
            Open::Fifo { fd, .. } => read_all(fd),
        }
    }

    fn pwrite(&self, o: &Open, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        match o {
            Open::File { write: false, .. } | Open::Dir { .. } => Err(Errno::EBADF),
            Open::File { fh, .. } => self
                .fs
                .write(*fh, off, buf)
                .map(|n| n as usize)
                .map_err(|e| errno(&e)),
            Open::Fifo { fd, .. } => nix::sys::uio::pwrite(fd, buf, off as i64),
        }
    }

    fn fstat(&self, o: &Open) -> Result<String, Errno> {
        let a = match o {
            Open::File { fh, ino, .. } => self
                .fs
                .getattr_fh(*ino, *fh)
                .or_else(|_| self.fs.getattr(*ino)),
            Open::Dir { ino, .. } | Open::Fifo { ino, .. } => self.fs.getattr(*ino),
        };
        a.map(|a| attr_summary(&a)).map_err(|e| errno(&e))
    }

    fn setattr(&self, ino: Ino, set: SetAttr) -> Result<(), Errno> {
        self.fs.setattr(ino, set).map(|_| ()).map_err(|e| errno(&e))
    }

    fn unlink(&self, path: &str) -> Result<(), Errno> {
        let (at, a) = self.existing(path, false)?;
        self.may(&at.dir_attr, MAY_WRITE | MAY_EXEC)?;
        if a.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        self.fs
            .unlink(at.dir, OsStr::new(&at.name))
            .map_err(|e| errno(&e))
    }

    fn rmdir(&self, path: &str) -> Result<(), Errno> {
        let (at, a) = self.existing(path, false)?;
        self.may(&at.dir_attr, MAY_WRITE | MAY_EXEC)?;
        if a.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.fs
            .rmdir(at.dir, OsStr::new(&at.name))
            .map_err(|e| errno(&e))
    }

    /// `rm_tree` of the oracle: depth first, sorted, stopping at the first error.
    fn rm_tree(&self, path: &str) -> Result<(), Errno> {
        let (_, a) = self.existing(path, false)?;
        if a.kind != Kind::Dir {
            return self.unlink(path);
        }
        let d = self.dir(path)?;
        let mut names: Vec<String> = self.list(&d)?.into_iter().map(|(n, _, _)| n).collect();
        names.sort();
        for n in names {
            self.rm_tree(&format!("{path}/{n}"))?;
        }
        self.rmdir(path)
    }

    /// A new name (mkdir, mknod, symlink): the parent walk, EEXIST, then permission.
    fn new_name(&self, path: &str) -> Result<At, Errno> {
        let at = self.at(path, false)?;
        if at.found.is_some() {
            return Err(Errno::EEXIST);
        }
        self.may(&at.dir_attr, MAY_WRITE | MAY_EXEC)?;
        Ok(at)
    }

    fn create(&self, path: &str, what: NewObject<'_>, mode: u32) -> Result<(), Errno> {
        let at = self.new_name(path)?;
        self.fs
            .create_object(at.dir, OsStr::new(&at.name), what, mode, self.caller)
            .map(|_| ())
            .map_err(|e| errno(&e))
    }

    /// open(dir, O_TMPFILE|O_RDWR, 0600) ("" is the root), write, and with
    /// `to` a linkat of the open file to `to`: the VFS checks (do_tmpfile: the walk follows a
    /// final symlink, write and search permission on the directory; vfs_link
    /// for the name), then the core.
    fn tmpfile(&self, dir: &str, to: Option<&str>) -> Outcome {
        let d = self.dir_may(dir, MAY_WRITE | MAY_EXEC)?;
        let (e, fh) = self
            .fs
            .create_tmpfile(
                d.ino,
                // as the kernel passes them: O_TMPFILE (and its O_DIRECTORY)
                // among them, for the core to leave out of the open it makes
                (OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_LARGEFILE).bits(),
                libc::S_IFREG | 0o600,
                self.caller,
            )
            .map_err(|e| errno(&e))?;
        let o = Open::File {
            fh,
            ino: e.attr.ino,
            write: true,
        };
        let wrote = self.pwrite(&o, 0, b"tmp").map(|n| format!("wrote {n}"));
        let r = match (wrote, to) {
            (Ok(w), Some(to)) => self
                .new_name(to)
                .and_then(|at| {
                    self.fs
                        .link(e.node, at.dir, OsStr::new(&at.name))
                        .map_err(|e| errno(&e))
                })
                .map(|_| format!("{w}, linked")),
            (r, _) => r,
        };
        self.close(o);
        r
    }

    /// renameat2: the VFS checks (do_renameat2, vfs_rename), then the core.
    fn rename(&self, from: &str, to: &str, how: Rn) -> Result<(), Errno> {
        let s = self.at(from, false)?;
        let d = self.at(to, false)?;
        let sa = s.found.ok_or(Errno::ENOENT)?;
        match (how, d.found) {
            (Rn::NoReplace, Some(_)) => return Err(Errno::EEXIST),
            (Rn::Exchange, None) => return Err(Errno::ENOENT),
            _ => {}
        }
        // lock_rename's trap: the child of the common ancestor on the way to the other
        let (sp, dp) = (&s.dir_path, &d.dir_path);
        let trap = if sp == dp {
            None
        } else if dp.starts_with(sp) {
            Some(dp[..=sp.len()].to_vec())
        } else if sp.starts_with(dp) {
            Some(sp[..=dp.len()].to_vec())
        } else {
            None
        };
        if trap.as_ref() == Some(&s.path()) {
            return Err(Errno::EINVAL);
        }
        if trap.as_ref() == Some(&d.path()) {
            return Err(if how == Rn::Exchange {
                Errno::EINVAL
            } else {
                Errno::ENOTEMPTY
            });
        }
        if d.found.is_some_and(|da| da.ino == sa.ino) {
            return Ok(());
        }
        let is_dir = sa.kind == Kind::Dir;
        self.may(&s.dir_attr, MAY_WRITE | MAY_EXEC)?;
        if let Some(da) = d.found {
            self.may(&d.dir_attr, MAY_WRITE | MAY_EXEC)?;
            let new_is_dir = da.kind == Kind::Dir;
            if how != Rn::Exchange {
                if is_dir && !new_is_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !is_dir && new_is_dir {
                    return Err(Errno::EISDIR);
                }
            }
            if s.dir != d.dir && how == Rn::Exchange && new_is_dir {
                self.may(&da, MAY_WRITE)?;
            }
        } else {
            self.may(&d.dir_attr, MAY_WRITE | MAY_EXEC)?;
        }
        if s.dir != d.dir && is_dir {
            self.may(&sa, MAY_WRITE)?;
        }
        let how = match how {
            Rn::Plain => RenameHow::Replace,
            Rn::NoReplace => RenameHow::NoReplace,
            Rn::Exchange => RenameHow::Exchange,
        };
        self.fs
            .rename(s.dir, OsStr::new(&s.name), d.dir, OsStr::new(&d.name), how)
            .map_err(|e| errno(&e))
    }

    fn xattr_target(&self, path: &str) -> Result<Attr, Errno> {
        let (_, a) = self.existing(path, false)?;
        // user.* only on regular files and directories (xattr_permission)
        if !matches!(a.kind, Kind::File | Kind::Dir) {
            return Err(Errno::EPERM);
        }
        self.may(&a, MAY_WRITE)?;
        Ok(a)
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        let ok = |()| String::new();
        match *op {
            Op::Write {
                p,
                how,
                off,
                data: d,
            } => {
                let flags = how.flags();
                let o = self.open(p, flags, 0o644)?;
                let buf = data(d);
                let n = match (&o, how) {
                    (Open::Fifo { fd, .. }, Wr::Append) => nix::unistd::write(fd, &buf),
                    // O_APPEND: the backing fd appends whatever the offset
                    _ => self.pwrite(&o, off, &buf),
                };
                self.close(o);
                Ok(format!("wrote {}", n?))
            }
            Op::Create { p, mode: Oct(mode) } => {
                let o = self.open(p, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL, mode)?;
                self.close(o);
                Ok(String::new())
            }
            Op::Truncate { p, len } => {
                let (_, a) = self.existing(p, true)?;
                match a.kind {
                    Kind::Dir => return Err(Errno::EISDIR),
                    Kind::File => {}
                    _ => return Err(Errno::EINVAL),
                }
                self.may(&a, MAY_WRITE)?;
                let set = SetAttr {
                    size: Some(len),
                    ..SetAttr::default()
                };
                self.setattr(a.ino, set).map(ok)
            }
            Op::Unlink(p) => self.unlink(p).map(ok),
            Op::Mkdir { p, mode: Oct(mode) } => {
                // vfs_mkdir keeps only the permission bits and the sticky bit
                self.create(p, NewObject::Dir, mode & 0o1777).map(ok)
            }
            Op::Rmdir(p) => self.rmdir(p).map(ok),
            Op::RmTree(p) => self.rm_tree(p).map(ok),
            Op::Rename { from, to, how } => self.rename(from, to, how).map(ok),
            Op::Link { from, to } => {
                let (_, a) = self.existing(from, false)?;
                let at = self.new_name(to)?;
                if a.kind == Kind::Dir {
                    return Err(Errno::EPERM);
                }
                self.fs
                    .link(a.ino, at.dir, OsStr::new(&at.name))
                    .map(|_| String::new())
                    .map_err(|e| errno(&e))
            }
            Op::Symlink { target, p } => self
                .create(
                    p,
                    NewObject::Symlink {
                        target: OsStr::new(target),
                    },
                    0o777,
                )
                .map(ok),
            Op::Mkfifo { p, mode: Oct(mode) } => self
                .create(
                    p,
                    NewObject::Node { rdev: 0 },
                    libc::S_IFIFO | (mode & 0o7777),
                )
                .map(ok),
            Op::Chmod { p, mode: Oct(mode) } => {
                let (_, a) = self.existing(p, true)?;
                self.owner(&a)?;
                let set = SetAttr {
                    mode: Some(mode & 0o7777),
                    ..SetAttr::default()
                };
                self.setattr(a.ino, set).map(ok)
            }
            Op::Chown { p, uid, gid } => {
                let (_, a) = self.existing(p, false)?;
                if !self.root {
                    let mine = a.uid == self.caller.uid;
                    if uid.is_some_and(|u| !(mine && u == a.uid))
                        || gid.is_some_and(|g| !(mine && (g == a.gid || g == self.caller.gid)))
                    {
                        return Err(Errno::EPERM);
                    }
                }
                let mode = if a.kind == Kind::Dir {
                    None
                } else {
                    killed_mode(&a)
                };
                let set = SetAttr {
                    uid,
                    gid,
                    mode,
                    ..SetAttr::default()
                };
                self.setattr(a.ino, set).map(ok)
            }
            Op::Utimens { p, atime, mtime } => {
                if atime == Ts::Omit && mtime == Ts::Omit {
                    // utimensat returns before even looking at the path
                    return Ok(String::new());
                }
                let (_, a) = self.existing(p, false)?;
                if atime == Ts::Now && mtime == Ts::Now {
                    if self.owner(&a).is_err() {
                        self.may(&a, MAY_WRITE)?;
                    }
                } else {
                    self.owner(&a)?;
                }
                let t = |t: Ts| match t {
                    Ts::At(s, ns) => Some(SetTime::At(s, ns)),
                    Ts::Omit => None,
                    Ts::Now => Some(SetTime::Now),
                };
                let set = SetAttr {
                    atime: t(atime),
                    mtime: t(mtime),
                    ..SetAttr::default()
                };
                self.setattr(a.ino, set).map(ok)
            }
            Op::SetXattr {
                p,
                name,
                value,
                how,
            } => {
                let a = self.xattr_target(p)?;
                let flags = match how {
                    Xf::Any => 0,
                    Xf::Create => libc::XATTR_CREATE,
                    Xf::Replace => libc::XATTR_REPLACE,
                };
                self.fs
                    .setxattr(a.ino, OsStr::new(name), value.as_bytes(), flags)
                    .map(|()| String::new())
                    .map_err(|e| errno(&e))
            }
            Op::RemoveXattr { p, name } => {
                let a = self.xattr_target(p)?;
                self.fs
                    .removexattr(a.ino, OsStr::new(name))
                    .map(|()| String::new())
                    .map_err(|e| errno(&e))
            }
            Op::Fallocate { p, mode, off, len } => {
                let o = self.open(p, OFlag::O_WRONLY, 0)?;
                let flags = match mode {
                    Fa::Punch => {
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE
                    }
                    Fa::Extend => FallocateFlags::empty(),
                    Fa::KeepSize => FallocateFlags::FALLOC_FL_KEEP_SIZE,
                };
                let r = match &o {
                    Open::File { fh, .. } => self
                        .fs
                        .fallocate(*fh, off, len, flags.bits())
                        .map_err(|e| errno(&e)),
                    Open::Fifo { fd, .. } => {
                        nix::fcntl::fallocate(fd, flags, off as i64, len as i64)
                    }
                    Open::Dir { .. } => Err(Errno::EBADF),
                };
                self.close(o);
                r.map(ok)
            }
            Op::CopyRange { from, to } => {
                let src = self.open(from, OFlag::O_RDONLY, 0)?;
                let dst = match self.open(to, OFlag::O_WRONLY, 0) {
                    Ok(d) => d,
                    Err(e) => {
                        self.close(src);
                        return Err(e);
                    }
                };
                let r = self.copy_range(&src, &dst);
                self.close(src);
                self.close(dst);
                r.map(|n| format!("copied {n}"))
            }
            Op::Tmpfile(dir) => self.tmpfile(dir, None),
            Op::TmpfileLink { dir, to } => self.tmpfile(dir, Some(to)),
            Op::Read(p) => {
                let o = self.open(p, OFlag::O_RDONLY, 0)?;
                let r = self.read_all(&o);
                self.close(o);
                r.map(|b| summary(&b))
            }
            Op::Stat(p) => self.existing(p, false).map(|(_, a)| attr_summary(&a)),
            Op::List(d) => {
                let a = self.dir(d)?;
                let mut names: Vec<String> =
                    self.list(&a)?.into_iter().map(|(n, _, _)| n).collect();
                names.sort();
                Ok(names.join(" "))
            }
            Op::Open { p, slot, rw } => {
                if let Some(o) = self.slots[slot].take() {
                    self.close(o);
                }
                let acc = if rw { OFlag::O_RDWR } else { OFlag::O_RDONLY };
                self.slots[slot] = Some(self.open(p, acc, 0)?);
                Ok(String::new())
            }
            Op::ReadFd(slot) => match &self.slots[slot] {
                None => Ok("no fd".into()),
                Some(o) => self.read_all(o).map(|b| summary(&b)),
            },
            Op::WriteFd { slot, off, data: d } => match &self.slots[slot] {
                None => Ok("no fd".into()),
                Some(o) => self.pwrite(o, off, &data(d)).map(|n| n.to_string()),
            },
            Op::FstatFd(slot) => match &self.slots[slot] {
                None => Ok("no fd".into()),
                Some(o) => self.fstat(o),
            },
        }
    }

    /// copy_file_range(2) from offset 3 to offset 1, 100 bytes: the VFS checks
    /// (generic_copy_file_checks), then the core.
    fn copy_range(&self, src: &Open, dst: &Open) -> Result<u64, Errno> {
        let (
            Open::File {
                fh: fi, ino: ii, ..
            },
            Open::File {
                fh: fo,
                ino: io,
                write,
            },
        ) = (src, dst)
        else {
            if matches!(src, Open::Dir { .. }) || matches!(dst, Open::Dir { .. }) {
                return Err(Errno::EISDIR);
            }
            return Err(Errno::EINVAL);
        };
        if !write {
            return Err(Errno::EBADF);
        }
        let (pos_in, pos_out) = (3u64, 1u64);
        let size_in = self.fs.getattr(*ii).map_err(|e| errno(&e))?.size;
        let count = if pos_in >= size_in {
            0
        } else {
            (size_in - pos_in).min(100)
        };
        if ii == io && pos_out + count > pos_in && pos_out < pos_in + count {
            return Err(Errno::EINVAL);
        }
        if count == 0 {
            return Ok(0);
        }
        self.fs
            .copy_file_range(*fi, pos_in, *fo, pos_out, count)
            .map(u64::from)
            .map_err(|e| errno(&e))
    }

    fn close_all(&mut self) {
        for s in 0..self.slots.len() {
            if let Some(o) = self.slots[s].take() {
                self.close(o);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // The tree, as `model::snapshot` sees a directory
    // -----------------------------------------------------------------------------------

    fn snapshot(&self) -> Snap {
        let mut s = Snap::new();
        let root = self
            .fs
            .getattr(ROOT_INO)
            .map_err(|e| format!("{:?}", errno(&e)));
        s.insert(String::new(), root.and_then(|a| self.entry("", a, '-', 0)));
        self.walk("", &mut s);
        s
    }

    fn walk(&self, rel: &str, out: &mut Snap) {
        let listed = self.dir(rel).and_then(|a| self.list(&a));
        let entries = match listed {
            Ok(e) => e,
            Err(e) => {
                out.insert(format!("{rel}/<readdir>"), Err(format!("{e:?}")));
                return;
            }
        };
        for (name, kind, ino) in entries {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let dtype = kind_char(kind_mode(kind));
            let ent = self
                .existing(&child, false)
                .map_err(|e| format!("{e:?}"))
                .and_then(|(_, a)| self.entry(&child, a, dtype, ino.0));
            let is_dir = matches!(&ent, Ok(en) if en.kind == 'd');
            out.insert(child.clone(), ent);
            if is_dir {
                self.walk(&child, out);
            }
        }
    }

    fn entry(&self, rel: &str, a: Attr, dtype: char, dino: u64) -> Result<Ent, String> {
        let kind = kind_char(kind_mode(a.kind));
        let content = if a.kind == Kind::File {
            let read = self
                .open(rel, OFlag::O_RDONLY, 0)
                .and_then(|o| {
                    let r = self.read_all(&o);
                    self.close(o);
                    r
                })
                .map_err(|e| format!("read: {e:?}"))?;
            Some(summary(&read))
        } else {
            None
        };
        let target = if a.kind == Kind::Symlink {
            Some(
                self.readlink(a.ino)
                    .map_err(|e| format!("readlink: {e:?}"))?,
            )
        } else {
            None
        };
        let mtime = a
            .mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| (d.as_secs() as i64, i64::from(d.subsec_nanos())))
            .unwrap_or((0, 0));
        Ok(Ent {
            kind,
            dtype,
            mode: u32::from(a.perm),
            uid: a.uid,
            gid: a.gid,
            nlink: u64::from(a.nlink),
            size: a.size,
            content,
            target,
            rdev: u64::from(a.rdev),
            xattrs: self.xattrs(&a)?,
            mtime,
            ino: a.ino.0,
            dev: 0,
            dino,
        })
    }

    /// `xattrs_of`: listxattr needs no permission, getxattr of `user.*` needs read.
    fn xattrs(&self, a: &Attr) -> Result<Vec<(String, String)>, String> {
        let list = self
            .fs
            .listxattr(a.ino)
            .map_err(|e| format!("listxattr: {:?}", errno(&e)))?;
        let mut out = Vec::new();
        for n in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let n = OsString::from(OsStr::from_bytes(n));
            let v = self
                .may(a, MAY_READ)
                .and_then(|()| self.fs.getxattr(a.ino, &n).map_err(|e| errno(&e)))
                .map_err(|e| format!("getxattr {n:?}: {e:?}"))?;
            out.push((
                n.to_string_lossy().into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        out.sort();
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Comparing, and the deliberate differences
// ---------------------------------------------------------------------------------------

/// THE ONE PLACE listing what is deliberately not compared between the oracle (a plain
/// directory) and the union. Everything else must be equal.
///
/// * st_ino, st_dev and readdir's d_ino: the union numbers its objects itself.
/// * A merged directory's link count: the union reports 1 ("unknown", as overlayfs
///   does) rather than counting subdirectories across branches; the oracle's count is
///   taken as 1 wherever the union reports 1 for a directory (see [`tree_diff`], and
///   [`outcomes_differ`] for `Stat`/`FstatFd`). Other link counts are compared.
/// * The link count `fstat` reports for an open file that no name in the union leads to
///   any more: 0 in a plain directory; the union reports its backing object's, which for a
///   lower file whited out is the lower's own (as overlayfs does; [`outcomes_differ`]).
/// * A fifo's mtime once data went through it: the kernel updates its own inode (the
///   plain directory's fifo) but never tells a FUSE server, so the union keeps the time
///   it had ([`tree_diff`] takes the union's when the oracle's is "now").
/// * Sizes and mtimes of directories: the backing directory's, not the union's contract.
/// * mtimes set to "now" (by a write, or utimensat UTIME_NOW): the two sides run at
///   different instants; an mtime is compared only when older than [`OLD_TIME`], i.e.
///   copied from a lower or set explicitly by utimensat. atime and ctime: never.
fn model_comparable(e: &Ent) -> Ent {
    without_numbers_and_recent_times(e)
}

/// Operations not run (on either side) when the test is not root, because of two known
/// limitations of an unprivileged union (docs/TESTING.md); a daemon running as root meets
/// neither, and the properties cover these operations as root:
///
/// * a chmod that takes from the owner the right to read an object, or to search a
///   directory: the union can then no longer read the `user.*` xattrs it keeps on the
///   entries, and its readdir fails with EACCES where a plain directory lists the names;
/// * holding a fifo open across operations: `user.*` xattrs cannot be set on a fifo, so
///   one copied up keeps no record of its inode number and gets a new one; a fifo held
///   open across its copy-up is then another pipe than the one opened after it (as it
///   would be through FUSE, where the kernel's pipe belongs to the inode).
fn skipped_unprivileged(op: &Op, oracle: &Path) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    match *op {
        Op::Chmod { p, mode: Oct(mode) } => {
            let is_dir = fs::metadata(oracle.join(p)).is_ok_and(|m| m.is_dir());
            mode & 0o400 == 0 || (is_dir && mode & 0o100 == 0)
        }
        Op::Open { p, .. } => fs::metadata(oracle.join(p)).is_ok_and(|m| m.file_type().is_fifo()),
        _ => false,
    }
}

/// Differences between the oracle's tree and the union's (see [`model_comparable`]).
fn tree_diff(oracle: &Snap, union: &Snap) -> Vec<String> {
    let mut oracle = oracle.clone();
    for (p, u) in union {
        if let (Ok(u), Some(Ok(o))) = (u, oracle.get_mut(p)) {
            if u.kind == 'd' && o.kind == 'd' && u.nlink == 1 {
                o.nlink = 1;
            }
            if u.kind == 'p' && o.kind == 'p' && o.mtime.0 >= OLD_TIME {
                o.mtime = u.mtime;
            }
        }
    }
    tree_diff_by(&oracle, union, ("oracle", "union"), model_comparable)
}

/// Whether two outcomes of `op` differ, but for the link counts [`model_comparable`]
/// leaves out: a merged directory's, and an open file's that no union name leads to.
fn outcomes_differ(op: &Op, oracle: &Outcome, union: &Outcome) -> bool {
    if let (Op::Stat(_) | Op::FstatFd(_), Ok(o), Ok(u)) = (op, oracle, union) {
        let merged_dir = u.starts_with("d ") && u.contains(" nlink 1") && o.starts_with("d ");
        let unnamed = matches!(op, Op::FstatFd(_)) && o.contains(" nlink 0");
        if merged_dir || unnamed {
            // "f 0644 0:0 nlink 1 size 11" without " nlink 1"
            let strip = |s: &str| {
                let (head, tail) = s.split_once(" nlink ").unwrap_or((s, ""));
                format!("{head}{}", tail.find(' ').map_or("", |i| &tail[i..]))
            };
            return strip(o) != strip(u);
        }
    }
    oracle != union
}

// ---------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------

/// Compare the trees after every this many operations (`UNIONFS_CORE_MODEL_EVERY`, 4 by
/// default; 0: only at the end).
fn every() -> usize {
    env_num("UNIONFS_CORE_MODEL_EVERY", 4) as usize
}

/// Held (shared) while an operation runs on both sides, and (exclusive) while
/// [`runs_unprivileged_too`] forks: a forked child holds copies of every descriptor until
/// it execs, and one holding a fifo's read end would let a non-blocking open for writing
/// succeed on one side only.
static FORK_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Gives the owner full access to every directory under `dir`, so that the case's
/// directories can be removed without privilege.
fn unlock(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                unlock(&e.path());
            }
        }
    }
}

/// Runs one sequence on the oracle and the union; Err = a readable report.
fn run_case(lowers: &Lowers, ops: &[Op]) -> Result<(), String> {
    // The daemon runs with umask 0 (the kernel applies the caller's); so does the
    // oracle's caller here, whose modes are then what the operations ask for.
    nix::sys::stat::umask(Mode::empty());
    let (td, root) = case_root("unionfs-core-model-")?;
    let mk = |n: &str| subdir(&root, n);
    let d = Dirs {
        lowers: (1..=lowers.count()).map(|i| mk(&format!("l{i}"))).collect(),
        upper: mk("upper"),
        work: mk("work"),
        oracle: mk("oracle"),
        fifos: mk("fifos"),
    };
    lowers.build(&d.lowers, Marks::Aufs);
    build_oracle(&d.lowers, &d.oracle);
    let before: Vec<(PathBuf, Snap)> = d
        .lowers
        .iter()
        .map(|l| (l.clone(), branch_snapshot(l)))
        .collect();

    let mut report = Vec::new();
    let every = every();
    let fs_ = open_union(&d);
    {
        let mut oracle = Side::new(&d.oracle);
        let mut core = Core::new(&fs_, &d.fifos);
        let diff = tree_diff(&snapshot(&d.oracle), &core.snapshot());
        if !diff.is_empty() {
            report.push(format!(
                "trees differ before any operation:\n{}",
                diff.join("\n")
            ));
        }
        let stats = std::env::var_os("CORE_MODEL_STATS").is_some();
        let mut by_kind = OpStats::default();
        for (i, op) in ops.iter().enumerate() {
            if !report.is_empty() {
                break;
            }
            if skipped_unprivileged(op, &d.oracle) {
                continue;
            }
            let (a, b) = {
                let _no_forks = FORK_LOCK.read().unwrap_or_else(|e| e.into_inner());
                (oracle.apply(op), core.apply(op))
            };
            if stats {
                by_kind.count(op, a.is_ok());
            }
            if outcomes_differ(op, &a, &b) {
                report.push(format!(
                    "op #{i} {op:?}:\n      oracle: {}\n      union:  {}",
                    show(&a),
                    show(&b)
                ));
                break;
            }
            if every > 0 && (i + 1) % every == 0 {
                let diff = tree_diff(&snapshot(&d.oracle), &core.snapshot());
                if !diff.is_empty() {
                    report.push(format!(
                        "trees differ after op #{i} {op:?}:\n{}",
                        diff.join("\n")
                    ));
                }
            }
        }
        if stats {
            eprintln!("{} ops succeeded by kind: {}", ops.len(), by_kind.line());
        }
        if report.is_empty() {
            let diff = tree_diff(&snapshot(&d.oracle), &core.snapshot());
            if !diff.is_empty() {
                report.push(format!("trees differ after the ops:\n{}", diff.join("\n")));
            }
        }
        core.close_all();
    }
    drop(fs_);
    if report.is_empty() {
        // what a remount sees: a new union on the same upper and workdir
        let again = open_union(&d);
        let core = Core::new(&again, &d.fifos);
        let diff = tree_diff(&snapshot(&d.oracle), &core.snapshot());
        if !diff.is_empty() {
            report.push(format!(
                "trees differ after the union is built again:\n{}",
                diff.join("\n")
            ));
        }
    }
    let lp = lower_problems(&before);
    if !lp.is_empty() {
        report.push(format!("lower branches changed:\n{}", lp.join("\n")));
    }
    // an unprivileged owner cannot empty its own directories it may not search
    unlock(&root);
    if std::env::var_os("CORE_MODEL_KEEP").is_some() {
        eprintln!("kept {}", td.keep().display());
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the union core (whiteout=aufs, unprivileged: {}) differs from the plain-directory \
             oracle\nlowers = {}\nops = {}\n{}",
            !nix::unistd::geteuid().is_root(),
            lowers.as_rust(),
            ops_as_rust(ops),
            report.join("\n")
        ))
    }
}

/// Runs a fixed case (regression tests): panics with the report on a difference.
fn check_case(lowers: &Lowers, ops: &[Op]) {
    if let Err(e) = run_case(lowers, ops) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------

/// Operations per sequence: `UNIONFS_CORE_MODEL_LEN`, 200 by default.
fn len() -> usize {
    env_num("UNIONFS_CORE_MODEL_LEN", 200) as usize
}

proptest! {
    #![proptest_config(gen_config(env_num("UNIONFS_CORE_MODEL_CASES", 64)))]

    /// Generated AUFS-format lowers (see `GEN_NODES`), long sequences, the union core
    /// against a plain directory.
    #[test]
    fn core_matches_plain_directory((g, ops) in GenCase { len: len() }) {
        run_case(&Lowers::Gen(g), &ops).map_err(TestCaseError::fail)?;
    }

    /// The fixed fixture of `diff_ops` (`build_lowers`) in AUFS format: a merged and an
    /// opaque directory, a whiteout, a hard-linked pair, a symlink, a fifo, xattrs, a suid
    /// file, odd owners (as root); short sequences over its paths, which are mostly files,
    /// so the data operations succeed far more often than on generated lowers.
    #[test]
    fn core_matches_plain_directory_fixture(ops in prop::collection::vec(op(&FIXED), 1..=25)) {
        run_case(&Lowers::Fixed, &ops).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------
// Dedicated tests
// ---------------------------------------------------------------------------------------

/// The oracle is the merged view: whiteouts and opaque directories of every lower
/// honoured, the topmost object winning (and no operation: the trees must agree).
#[test]
fn oracle_is_the_merged_view() {
    let g = gen_lowers(&[
        &[
            ("d", Obj::Opaque),
            ("d/e", Obj::File(0)),
            ("e", Obj::Dir),
            ("e/d", Obj::Whiteout),
            ("e/e", Obj::Symlink("d")),
        ],
        &[
            ("d", Obj::Dir),
            ("d/d", Obj::File(1)),
            ("e", Obj::Dir),
            ("e/d", Obj::File(2)),
            ("e/e", Obj::Fifo),
        ],
    ]);
    let g = Lowers::Gen(g);
    check_case(&g, &[]);
    let td = tempfile::tempdir().unwrap();
    let roots: Vec<PathBuf> = (0..2)
        .map(|i| subdir(td.path(), &format!("l{i}")))
        .collect();
    g.build(&roots, Marks::Aufs);
    let oracle = subdir(td.path(), "o");
    build_oracle(&roots, &oracle);
    let names: BTreeMap<String, char> = snapshot(&oracle)
        .into_iter()
        .map(|(p, e)| (p, e.map_or('?', |e| e.kind)))
        .collect();
    let want: BTreeMap<String, char> = [
        ("", 'd'),
        ("d", 'd'),
        ("d/e", 'f'),
        ("e", 'd'),
        ("e/e", 'l'),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k))
    .collect();
    assert_eq!(names, want);
}

/// The copy-up of a metadata-only upper file (metacopy) completed by a rename, by an
/// unprivileged union: it removed every metacopy marker name, `trusted.overlay.metacopy`
/// included, and an unprivileged process gets EPERM for that, so the rename failed with
/// EPERM (found by this test run as nobody). Fails only unprivileged: as root
/// [`runs_unprivileged_too`] runs it so.
#[test]
fn regression_unprivileged_metacopy_copy_up() {
    check_case(
        &Lowers::Gen(gen_lowers(&[
            &[],
            &[("d", Obj::Dir), ("d/d", Obj::Dir), ("d/d/e", Obj::File(0))],
        ])),
        &[
            Op::Utimens {
                p: "d/d/e",
                atime: Ts::At(1_000_000_000, 123_456_789),
                mtime: Ts::At(1_000_000_000, 123_456_789),
            },
            Op::Rename {
                from: "d/d/e",
                to: "n",
                how: Rn::Plain,
            },
        ],
    );
}

/// As root, runs this test binary again as nobody (`setpriv`), for the property (a
/// quarter of its cases) and the regression tests: an unprivileged union (no clone of
/// the branches, its bookkeeping in `user.*`, no `trusted.*`, permission checks on its
/// own access to the branches) is what rootless users run. Not root: the other tests
/// already run unprivileged, and this one has nothing to add.
#[test]
fn runs_unprivileged_too() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let require = std::env::var_os("UNIONFS_TEST_REQUIRE").is_some_and(|v| v == "1");
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!require, "UNIONFS_TEST_REQUIRE=1 but setpriv(1) is missing");
        eprintln!("SKIP: setpriv(1) is missing");
        return;
    }
    // nobody must reach the binary, and write its cases: a copy in /tmp, TMPDIR=/tmp
    let td = tempfile::Builder::new()
        .prefix("unionfs-core-model-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(td.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = td.path().join("core_model");
    fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let cases = env_num("UNIONFS_CORE_MODEL_CASES", 64).div_ceil(4);
    let child = {
        let _forking = FORK_LOCK.write().unwrap_or_else(|e| e.into_inner());
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args(["core_matches_plain_directory", "regression_"])
            .env("UNIONFS_CORE_MODEL_CASES", cases.to_string())
            .env("TMPDIR", "/tmp")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "as nobody:\n{text}");
    // the filters matched: a run of nothing would pass too
    assert!(
        text.contains("test core_matches_plain_directory ... ok"),
        "as nobody:\n{text}"
    );
}
