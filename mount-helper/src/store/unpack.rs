//! Unpacks one layer tar into a (staging) directory, as it is: `.wh.`
//! whiteouts and opaque markers stay plain files, which the union reads as
//! AUFS whiteouts.
//!
//! Invariant: nothing is ever written outside the layer directory. Every
//! entry is created with `*at()` calls relative to a parent directory fd
//! that was opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from the layer's own fd, so neither `..`, an absolute path, nor a
//! symlink made by an earlier entry (`a -> /etc`, then `a/passwd`) can lead
//! out: such entries are refused, with one line naming them. Hard links
//! may only name earlier entries of the same layer. Directories' modes and
//! times are applied last (deepest first), so a read-only directory can
//! still be filled and creating children does not disturb its mtime.
//! Takes no locks (the caller owns the staging directory).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// A path inside a layer, as checked components (empty = the layer root).
pub type LayerPath = Vec<OsString>;

/// Checks an entry path (or a hard link target): relative, no `..`.
/// `./` prefixes and `.` components are dropped.
pub fn layer_path(p: &Path) -> Result<LayerPath, String> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("'{}' escapes the layer with '..'", p.display()))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("'{}' is an absolute path", p.display()))
            }
        }
    }
    Ok(out)
}

/// The target of a symlink or hard-link entry (`what` names which, for
/// the error line).
fn link_target<R: std::io::Read>(
    entry: &tar::Entry<'_, R>,
    path: &[OsString],
    what: &str,
) -> Result<std::path::PathBuf, String> {
    entry
        .link_name()
        .map_err(|e| {
            format!(
                "layer entry '{}': bad link name: {}",
                show(path),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))
            )
        })?
        .ok_or_else(|| format!("layer entry '{}': {what} without a target", show(path)))
        .map(|t| t.into_owned())
}

fn show(p: &[OsString]) -> String {
    if p.is_empty() {
        return ".".into();
    }
    p.iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Owner, mode, times and xattrs of one entry.
#[derive(Debug, Clone)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Counts of what was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Entries written (all types).
    pub entries: u64,
}

/// Unpacks the tar stream `tar` into the directory `root` (an fd opened
/// with O_DIRECTORY). `as_root`: set owners and make device nodes (without
/// it, owners stay the caller's and device nodes are left out, as rootless
/// engines do). On error, what was written stays in `root`: the caller
/// throws the staging directory away.
pub fn unpack<R: Read>(tar: R, root: &OwnedFd, as_root: bool) -> Result<Stats, String> {
    let mut u = Unpacker {
        root: root.as_fd(),
        as_root,
        cache: None,
        dirs: Vec::new(),
        stats: Stats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        u.entry(entry)?;
    }
    // Deepest first: a parent's mtime is set after its children's.
    let dirs = std::mem::take(&mut u.dirs);
    for (path, meta) in dirs.iter().rev() {
        u.dir_meta(path, meta)?;
    }
    Ok(u.stats)
}

struct Unpacker<'a> {
    root: BorrowedFd<'a>,
    as_root: bool,
    /// The last parent directory opened (entries come grouped by dir).
    cache: Option<(LayerPath, OwnedFd)>,
    /// Directories whose metadata is applied at the end.
    dirs: Vec<(LayerPath, Meta)>,
    stats: Stats,
}

fn confined() -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        )
}

fn rel(p: &[OsString]) -> std::path::PathBuf {
    if p.is_empty() {
        return ".".into();
    }
    p.iter().collect()
}

fn through_link(entry: &[OsString], dir: &[OsString], e: Errno) -> String {
    match e {
        Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => format!(
            "layer entry '{}': '{}' is a symlink or not a directory (unpacking never follows links)",
            show(entry),
            show(dir)
        ),
        e => format!("layer entry '{}': cannot open '{}': {e}", show(entry), show(dir)),
    }
}

impl Unpacker<'_> {
    /// Opens directory `dir` of the layer (creating missing components with
    /// mode 0755) without following any symlink.
    fn open_dir(&mut self, dir: &[OsString], entry: &[OsString]) -> Result<OwnedFd, String> {
        if let Some((p, fd)) = &self.cache {
            if p.as_slice() == dir {
                return fd
                    .try_clone()
                    .map_err(|e| format!("layer entry '{}': {e}", show(entry)));
            }
        }
        let fd = match nix::fcntl::openat2(self.root, &rel(dir), confined()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                // Walk down, creating what is missing, one component at a time.
                let mut cur = nix::fcntl::openat2(self.root, ".", confined())
                    .map_err(|e| through_link(entry, &[], e))?;
                for (i, c) in dir.iter().enumerate() {
                    let next = match nix::fcntl::openat2(&cur, c.as_os_str(), confined()) {
                        Err(Errno::ENOENT) => {
                            match nix::sys::stat::mkdirat(
                                &cur,
                                c.as_os_str(),
                                Mode::from_bits_truncate(0o755),
                            ) {
                                Ok(()) | Err(Errno::EEXIST) => {}
                                Err(e) => {
                                    return Err(format!(
                                        "layer entry '{}': cannot create '{}': {e}",
                                        show(entry),
                                        show(&dir[..=i])
                                    ))
                                }
                            }
                            nix::fcntl::openat2(&cur, c.as_os_str(), confined())
                        }
                        r => r,
                    }
                    .map_err(|e| through_link(entry, &dir[..=i], e))?;
                    cur = next;
                }
                cur
            }
            Err(e) => return Err(through_link(entry, dir, e)),
        };
        let keep = fd
            .try_clone()
            .map_err(|e| format!("layer entry '{}': {e}", show(entry)))?;
        self.cache = Some((dir.to_vec(), keep));
        Ok(fd)
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), String> {
        let raw_path = entry
            .path()
            .map_err(|e| format!("bad tar entry name: {e}"))?
            .into_owned();
        let path = layer_path(&raw_path).map_err(|e| format!("layer entry {e}"))?;
        let kind = entry.header().entry_type();
        let meta = self.meta(&mut entry, &path)?;
        self.stats.entries += 1;
        let Some((name, parent)) = path.split_last() else {
            // The layer root itself: only its metadata.
            if kind.is_dir() {
                self.dirs.push((path, meta));
                return Ok(());
            }
            return Err("layer entry '.' is not a directory".into());
        };
        let name = name.clone();
        let pfd = self.open_dir(parent, &path)?;
        let ctx = |what: &str, e: Errno| format!("layer entry '{}': {what}: {e}", show(&path));
        let existing = nix::sys::stat::fstatat(
            &pfd,
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        let is_dir = |st: &nix::sys::stat::FileStat| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        };
        match &existing {
            Ok(st) if is_dir(st) && kind.is_dir() => {
                self.dirs.push((path, meta));
                return Ok(());
            }
            Ok(st) if is_dir(st) => {
                return Err(format!(
                    "layer entry '{}' replaces a directory with a non-directory",
                    show(&path)
                ))
            }
            Ok(_) => nix::unistd::unlinkat(&pfd, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| ctx("cannot replace the earlier entry", e))?,
            Err(_) => {}
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let fd = nix::fcntl::openat(
                    &pfd,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| ctx("create", e))?;
                let mut f = std::fs::File::from(fd);
                io::copy(&mut entry, &mut f)
                    .map_err(|e| format!("layer entry '{}': {e}", show(&path)))?;
                self.apply(&pfd, &name, &meta, &path, false)?;
            }
            EntryType::Directory => {
                nix::sys::stat::mkdirat(&pfd, name.as_os_str(), Mode::from_bits_truncate(0o700))
                    .map_err(|e| ctx("mkdir", e))?;
                self.dirs.push((path, meta));
            }
            EntryType::Symlink => {
                // The target is only a string: it is never resolved here.
                let target = link_target(&entry, &path, "symlink")?;
                nix::unistd::symlinkat(target.as_os_str(), &pfd, name.as_os_str())
                    .map_err(|e| ctx("symlink", e))?;
                self.apply(&pfd, &name, &meta, &path, true)?;
            }
            EntryType::Link => {
                let target = link_target(&entry, &path, "hard link")?;
                let t = layer_path(&target)
                    .map_err(|e| format!("layer entry '{}': hard link target {e}", show(&path)))?;
                let Some((tname, tparent)) = t.split_last() else {
                    return Err(format!(
                        "layer entry '{}': hard link to the layer root",
                        show(&path)
                    ));
                };
                let missing = || {
                    format!(
                        "layer entry '{}': hard link target '{}' is not an earlier entry of the layer",
                        show(&path),
                        show(&t)
                    )
                };
                let tfd = match nix::fcntl::openat2(self.root, &rel(tparent), confined()) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => return Err(missing()),
                    Err(e) => return Err(through_link(&path, tparent, e)),
                };
                match nix::unistd::linkat(
                    &tfd,
                    tname.as_os_str(),
                    &pfd,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::ENOENT) => return Err(missing()),
                    Err(e) => return Err(ctx("link", e)),
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Char => (SFlag::S_IFCHR, self.dev(&entry)),
                    EntryType::Block => (SFlag::S_IFBLK, self.dev(&entry)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                match nix::sys::stat::mknodat(
                    &pfd,
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                ) {
                    Ok(()) => self.apply(&pfd, &name, &meta, &path, false)?,
                    // Without root, device nodes are left out (as rootless podman does).
                    Err(Errno::EPERM) if !self.as_root && sflag != SFlag::S_IFIFO => {}
                    Err(e) => return Err(ctx("mknod", e)),
                }
            }
            EntryType::XGlobalHeader => {}
            other => {
                return Err(format!(
                    "layer entry '{}': unsupported tar entry type {other:?}",
                    show(&path)
                ))
            }
        }
        Ok(())
    }

    fn dev<R: Read>(&self, entry: &tar::Entry<'_, R>) -> u64 {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        nix::sys::stat::makedev(u64::from(major), u64::from(minor))
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &[OsString],
    ) -> Result<Meta, String> {
        let bad = |what: &str| format!("layer entry '{}': bad {what} in its header", show(path));
        let h = entry.header();
        let mut m = Meta {
            uid: u32::try_from(h.uid().map_err(|_| bad("uid"))?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(h.gid().map_err(|_| bad("gid"))?).map_err(|_| bad("gid"))?,
            mode: h.mode().map_err(|_| bad("mode"))? & 0o7777,
            mtime: TimeSpec::new(
                i64::try_from(h.mtime().map_err(|_| bad("mtime"))?).unwrap_or(0),
                0,
            ),
            xattrs: Vec::new(),
        };
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax {
                let ext = ext.map_err(|_| bad("PAX record"))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    m.xattrs
                        .push((OsStr::from_bytes(name).to_os_string(), value.to_vec()));
                } else if key == b"uid" || key == b"gid" {
                    let n = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u32>().ok())
                        .ok_or_else(|| bad("PAX uid/gid"))?;
                    if key == b"uid" {
                        m.uid = n;
                    } else {
                        m.gid = n;
                    }
                } else if key == b"mtime" {
                    let v = std::str::from_utf8(value).map_err(|_| bad("PAX mtime"))?;
                    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
                    let secs: i64 = s.parse().map_err(|_| bad("PAX mtime"))?;
                    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
                    let nanos: i64 = frac.parse().unwrap_or(0);
                    m.mtime = TimeSpec::new(secs, if secs < 0 { 0 } else { nanos });
                }
            }
        }
        Ok(m)
    }

    /// Owner, then mode (a chown clears set-uid bits), xattrs, times.
    fn apply(
        &self,
        pfd: &OwnedFd,
        name: &OsStr,
        m: &Meta,
        path: &[OsString],
        symlink: bool,
    ) -> Result<(), String> {
        let ctx = |what: &str, e: Errno| format!("layer entry '{}': {what}: {e}", show(path));
        if self.as_root {
            nix::unistd::fchownat(
                pfd,
                name,
                Some(Uid::from_raw(m.uid)),
                Some(Gid::from_raw(m.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| ctx("chown", e))?;
        }
        if !symlink {
            // Never a symlink here: the entry was just made by us, in a
            // directory reached without following any.
            nix::sys::stat::fchmodat(
                pfd,
                name,
                Mode::from_bits_truncate(m.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| ctx("chmod", e))?;
        }
        for (k, v) in &m.xattrs {
            match crate::sys::lsetxattr_at(pfd.as_fd(), name, k, v) {
                Ok(()) => {}
                // A file system without xattrs, or one only root may set.
                Err(Errno::EOPNOTSUPP) => {}
                Err(Errno::EPERM) if !self.as_root => {}
                Err(e) => return Err(ctx(&format!("set xattr {}", k.to_string_lossy()), e)),
            }
        }
        nix::sys::stat::utimensat(
            pfd,
            name,
            &m.mtime,
            &m.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| ctx("set times", e))
    }

    fn dir_meta(&mut self, path: &[OsString], m: &Meta) -> Result<(), String> {
        match path.split_last() {
            None => {
                let root = nix::fcntl::openat2(self.root, ".", confined())
                    .map_err(|e| through_link(path, path, e))?;
                self.apply(&root, OsStr::new("."), m, path, false)
            }
            Some((name, parent)) => {
                let pfd = self.open_dir(parent, path)?;
                self.apply(&pfd, name, m, path, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn entry_paths_are_checked() {
        let p = |s: &str| layer_path(Path::new(s));
        assert_eq!(
            ok(p("./etc/passwd")),
            vec![OsString::from("etc"), "passwd".into()]
        );
        assert_eq!(ok(p("./")), Vec::<OsString>::new());
        assert_eq!(ok(p("a/./b/")), vec![OsString::from("a"), "b".into()]);
        assert!(p("../x").is_err_and(|e| e.contains("..")));
        assert!(p("a/../../x").is_err());
        assert!(
            p("a/../b").is_err(),
            "no '..' at all, even if it stays inside"
        );
        assert!(p("/etc/passwd").is_err_and(|e| e.contains("absolute")));
    }

    fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let _ = h.set_path(path);
        h.set_cksum();
        h
    }

    fn layer(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    let mut h = header(path, *kind, 0);
                    ok(b.append_link(&mut h, path, data));
                }
                _ => {
                    let mut h = header(path, *kind, data.len() as u64);
                    // Raw names, so '..' and absolute paths reach the unpacker.
                    let name = path.as_bytes();
                    if let Some(gnu) = h.as_gnu_mut() {
                        gnu.name = [0; 100];
                        gnu.name[..name.len()].copy_from_slice(name);
                    }
                    h.set_cksum();
                    ok(b.append(&h, data.as_bytes()));
                }
            }
        }
        ok(b.into_inner())
    }

    fn unpack_into(t: &Path, data: &[u8]) -> Result<Stats, String> {
        let fd = ok(nix::fcntl::open(
            t,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ));
        unpack(data, &fd, nix::unistd::geteuid().is_root())
    }

    #[test]
    fn unpacks_files_links_and_whiteouts_as_they_are() {
        let t = ok(tempfile::tempdir());
        let d = t.path().join("l");
        ok(std::fs::create_dir(&d));
        let data = layer(&[
            ("etc/", EntryType::Directory, ""),
            ("etc/hosts", EntryType::Regular, "h"),
            ("etc/.wh.passwd", EntryType::Regular, ""),
            ("etc/.wh..wh..opq", EntryType::Regular, ""),
            ("etc/hosts2", EntryType::Link, "etc/hosts"),
            ("lib", EntryType::Symlink, "/usr/lib"),
            ("deep/er/file", EntryType::Regular, "x"),
        ]);
        let s = ok(unpack_into(&d, &data));
        assert_eq!(s.entries, 7);
        assert_eq!(ok(std::fs::read_to_string(d.join("etc/hosts"))), "h");
        assert!(d.join("etc/.wh.passwd").is_file());
        assert!(d.join("etc/.wh..wh..opq").is_file());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ok(std::fs::metadata(d.join("etc/hosts2"))).nlink(), 2);
        assert_eq!(ok(std::fs::read_link(d.join("lib"))), Path::new("/usr/lib"));
        assert_eq!(
            ok(std::fs::metadata(d.join("etc/hosts"))).mtime(),
            1_000_000
        );
        assert_eq!(ok(std::fs::metadata(d.join("etc"))).mtime(), 1_000_000);
        assert_eq!(ok(std::fs::read_to_string(d.join("deep/er/file"))), "x");
    }

    #[test]
    fn escapes_are_refused_and_nothing_is_written_outside() {
        let t = ok(tempfile::tempdir());
        let outside = t.path().join("outside");
        ok(std::fs::create_dir(&outside));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "..",
                layer(&[("../outside/x", EntryType::Regular, "pwned")]),
            ),
            (
                "absolute",
                layer(&[("/tmp/x", EntryType::Regular, "pwned")]),
            ),
            (
                "symlink",
                layer(&[
                    ("a", EntryType::Symlink, outside.to_str().unwrap_or("/")),
                    ("a/x", EntryType::Regular, "pwned"),
                ]),
            ),
            (
                "relative symlink",
                layer(&[
                    ("a", EntryType::Symlink, "../outside"),
                    ("a/x", EntryType::Regular, "pwned"),
                ]),
            ),
            (
                "hard link outside",
                layer(&[("x", EntryType::Link, "../outside/secret")]),
            ),
            (
                "hard link through a symlink",
                layer(&[
                    ("a", EntryType::Symlink, "../outside"),
                    ("x", EntryType::Link, "a/secret"),
                ]),
            ),
            (
                "hard link to nothing",
                layer(&[("x", EntryType::Link, "nothing")]),
            ),
        ];
        ok(std::fs::write(outside.join("secret"), "s"));
        for (i, (what, data)) in cases.iter().enumerate() {
            let d = t.path().join(format!("l{i}"));
            ok(std::fs::create_dir(&d));
            let r = unpack_into(&d, data);
            assert!(r.is_err(), "{what}: {r:?}");
            let e = r.err().unwrap_or_default();
            assert_eq!(e.lines().count(), 1, "{what}: {e}");
            assert!(!outside.join("x").exists(), "{what}: wrote outside");
        }
        let names: Vec<_> = ok(std::fs::read_dir(&outside))
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("secret")]);
    }
}
