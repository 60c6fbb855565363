//! The control channel of a running union: `unionfs branch add|del|mod|list
//! MNT` (and `mount -o remount,add:...` through the mount helper) talk to
//! the daemon serving MNT over a unix socket.
//!
//! Where: the socket is named by the mount's device number, which the
//! kernel gives every FUSE connection and `stat MNT` shows, so any path
//! to the mount (a bind mount, a relative path) finds it:
//! `/run/unionfs/MAJOR:MINOR.sock` as root, else
//! `$XDG_RUNTIME_DIR/unionfs/` (or `/tmp/unionfs-UID/`). The directory is
//! 0700 and the socket 0600; the daemon also checks the peer's uid (root
//! or the daemon's own), so only who could remount may change branches.
//! Root reaching another user's union looks in that user's usual places
//! (`find_socket`: the mount's `user_id=`, then `/run/user/UID/unionfs`
//! and `/tmp/unionfs-UID`).
//!
//! Protocol: one request per connection. The request is NUL-separated
//! fields (verb first), ended by the client shutting down its side; the
//! reply is `ok\n` followed by NUL-separated records, or
//! `error ERRNO MESSAGE\n`. Paths travel as raw bytes. Verbs: `list`,
//! `add`, `del`, `mod`, and `flush` (answered once every pending copy-up
//! is in the upper: `unionfs umount` sends it after the kernel let go of
//! the mount, which a FUSE unmount does not wait for).
//!
//! Invariant: requests are served one at a time by one thread, so branch
//! changes are serialised without a lock; each is applied by the
//! `UnionControl` implementation as one atomic stack swap. Takes no locks.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::mode::Mode;

/// How long a client waits for a reply before saying whom it waits for.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest request accepted (a few paths).
const MAX_REQUEST: u64 = 64 * 1024;

/// One branch as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The branch directory (canonical).
    pub path: PathBuf,
    /// Its mode.
    pub mode: Mode,
}

/// Why a branch change was refused: an errno for scripts, a line for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Refused {
    /// What `errno` would say (EBUSY: open files; ENOENT: not a branch; ...).
    pub errno: Errno,
    /// One line for the user.
    pub msg: String,
}

impl Refused {
    /// A refusal with errno `errno`.
    pub fn new(errno: Errno, msg: impl Into<String>) -> Self {
        Refused {
            errno,
            msg: msg.into(),
        }
    }
}

/// What a running union offers the control channel.
pub trait UnionControl: Send + Sync {
    /// The branches, topmost first.
    fn list(&self) -> Vec<Listed>;
    /// Adds `path` at position `at` from the top (`None`: the bottom).
    fn add(&self, at: Option<usize>, path: &Path, mode: Option<Mode>) -> Result<(), Refused>;
    /// Removes the branch at `path`.
    fn del(&self, path: &Path) -> Result<(), Refused>;
    /// Changes the mode of the branch at `path`.
    fn modify(&self, path: &Path, mode: Mode) -> Result<(), Refused>;
    /// Puts every copy-up not yet named in the upper there (`unionfs
    /// umount`, after the kernel let go of the mount: the upper is then
    /// complete when it returns).
    fn flush(&self) -> Result<(), Refused>;
}

/// The directory control sockets live in, for the current user.
pub fn socket_dir() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/unionfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("unionfs"),
        _ => PathBuf::from(format!("/tmp/unionfs-{uid}")),
    }
}

/// The control socket of the mount with device number `dev`.
pub fn socket_path(dev: u64) -> PathBuf {
    socket_dir().join(format!("{}:{}.sock", libc::major(dev), libc::minor(dev)))
}

/// The bound (not yet served) control socket of a mount.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds the control socket of the union mounted on `mnt`. A socket
    /// file already there is stale: the device number is ours now.
    pub fn bind(mnt: &Path) -> std::io::Result<Server> {
        let dev = crate::sys::ctl::dev_nosync(mnt)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno() as i32))?;
        let path = socket_path(dev);
        let dir = socket_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Server { listener, path })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests on a thread of its own until the process ends.
    pub fn spawn(self, branches: std::sync::Arc<dyn UnionControl>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("unionfs-control".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    match conn {
                        Ok(c) => serve(c, &*branches),
                        Err(e) => tracing::warn!("control socket: {e}"),
                    }
                }
            })
            .map(|_| ())
    }
}

/// Answers one connection.
fn serve(mut c: UnixStream, branches: &dyn UnionControl) {
    let reply = match crate::sys::ctl::peer_uid(c.as_fd()) {
        Ok(uid) if uid == 0 || uid == nix::unistd::geteuid().as_raw() => {
            let mut req = Vec::new();
            match (&mut c).take(MAX_REQUEST).read_to_end(&mut req) {
                Ok(_) => answer(&req, branches),
                Err(e) => Err(Refused::new(
                    Errno::EIO,
                    format!("reading the request: {e}"),
                )),
            }
        }
        Ok(uid) => Err(Refused::new(
            Errno::EPERM,
            format!("uid {uid} may not change this union's branches"),
        )),
        Err(e) => Err(Refused::new(Errno::EPERM, format!("peer unknown: {e}"))),
    };
    let bytes = match reply {
        Ok(records) => {
            let mut b = b"ok\n".to_vec();
            for r in records {
                b.extend_from_slice(&r);
                b.push(0);
            }
            b
        }
        Err(r) => {
            tracing::info!("control: refused: {}", r.msg);
            format!("error {} {}\n", r.errno as i32, r.msg.replace('\n', " ")).into_bytes()
        }
    };
    let _ = c.write_all(&bytes);
}

fn path_of(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

fn mode_of(b: &[u8]) -> Result<Option<Mode>, Refused> {
    if b.is_empty() {
        return Ok(None);
    }
    let w = String::from_utf8_lossy(b);
    Mode::parse(&w)
        .map(Some)
        .ok_or_else(|| Refused::new(Errno::EINVAL, format!("unknown branch mode '{w}'")))
}

/// Runs request `req` (NUL-separated fields); the records of the reply.
fn answer(req: &[u8], branches: &dyn UnionControl) -> Result<Vec<Vec<u8>>, Refused> {
    let fields: Vec<&[u8]> = req.split(|&b| b == 0).collect();
    let bad = || Refused::new(Errno::EINVAL, "malformed request");
    match fields.as_slice() {
        [b"list"] => Ok(branches
            .list()
            .into_iter()
            .flat_map(|l| {
                [
                    l.mode.to_string().into_bytes(),
                    l.path.as_os_str().as_bytes().to_vec(),
                ]
            })
            .collect()),
        [b"add", at, path, mode] => {
            let at = if at.is_empty() {
                None
            } else {
                Some(
                    std::str::from_utf8(at)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                        .ok_or_else(bad)?,
                )
            };
            branches.add(at, &path_of(path), mode_of(mode)?)?;
            Ok(Vec::new())
        }
        [b"del", path] => {
            branches.del(&path_of(path))?;
            Ok(Vec::new())
        }
        [b"mod", path, mode] => {
            let mode = mode_of(mode)?.ok_or_else(bad)?;
            branches.modify(&path_of(path), mode)?;
            Ok(Vec::new())
        }
        [b"flush"] => {
            branches.flush()?;
            Ok(Vec::new())
        }
        _ => Err(bad()),
    }
}

/// A request as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The branches.
    List,
    /// Add a branch.
    Add {
        /// Position from the top; `None`: the bottom.
        at: Option<usize>,
        /// The directory.
        path: PathBuf,
        /// Its mode; `None`: `rw` at the top of a stack without a writable
        /// branch, else `ro+wh`... as the daemon decides.
        mode: Option<Mode>,
    },
    /// Remove a branch.
    Del {
        /// The directory.
        path: PathBuf,
    },
    /// Change a branch's mode.
    Mod {
        /// The directory.
        path: PathBuf,
        /// The new mode.
        mode: Mode,
    },
    /// Publish every pending copy-up into the upper.
    Flush,
}

impl Request {
    /// The request's verb, as it travels.
    fn verb(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Add { .. } => "add",
            Request::Del { .. } => "del",
            Request::Mod { .. } => "mod",
            Request::Flush => "flush",
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut f: Vec<Vec<u8>> = vec![self.verb().as_bytes().to_vec()];
        match self {
            Request::List | Request::Flush => {}
            Request::Add { at, path, mode } => {
                f.push(at.map(|a| a.to_string()).unwrap_or_default().into_bytes());
                f.push(path.as_os_str().as_bytes().to_vec());
                f.push(mode.map(|m| m.to_string()).unwrap_or_default().into_bytes());
            }
            Request::Del { path } => {
                f.push(path.as_os_str().as_bytes().to_vec());
            }
            Request::Mod { path, mode } => {
                f.push(path.as_os_str().as_bytes().to_vec());
                f.push(mode.to_string().into_bytes());
            }
        }
        f.join(&0u8)
    }
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// MNT is not a union served by a daemon we can reach.
    #[error("{0}")]
    NoDaemon(String),
    /// The daemon refused.
    #[error("{0}")]
    Refused(Refused),
}

/// The control socket of the union mounted at `mnt`, found without asking
/// its daemon anything (a hung daemon does not hang the caller): for
/// `unionfs umount`, which must know it before the mount goes. `None`
/// when `mnt` cannot be stat'ed.
pub fn socket_of(mnt: &Path) -> Option<PathBuf> {
    crate::sys::ctl::dev_nosync(mnt).ok().map(find_socket)
}

/// Sends `req` to the daemon serving `mnt`; the records of its reply.
/// (The mount's device is read with an empty statx mask, which a FUSE
/// mount answers even to a user it does not let in — root on another
/// user's mount without `allow_other`.)
pub fn request(mnt: &Path, req: &Request) -> Result<Vec<Vec<u8>>, ClientError> {
    let dev = crate::sys::ctl::dev_nosync(mnt)
        .map_err(|e| ClientError::NoDaemon(format!("{}: {e}", mnt.display())))?;
    request_at(mnt, &find_socket(dev), req)
}

/// The control socket of the mount with device number `dev`: this user's,
/// or — for root, on a mount another user's daemon serves — that user's
/// in its usual places (`/run/user/UID/unionfs`, `/tmp/unionfs-UID`; the
/// daemon lets root in). The caller's own path when none is there.
fn find_socket(dev: u64) -> PathBuf {
    let own = socket_path(dev);
    if own.exists() || !nix::unistd::geteuid().is_root() {
        return own;
    }
    let owner = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mount_owner(&m, dev));
    let name = own.file_name().map(PathBuf::from).unwrap_or_default();
    owner
        .filter(|&uid| uid != 0)
        .into_iter()
        .flat_map(|uid| {
            [
                PathBuf::from(format!("/run/user/{uid}/unionfs")),
                PathBuf::from(format!("/tmp/unionfs-{uid}")),
            ]
        })
        .map(|dir| dir.join(&name))
        .find(|p| p.exists())
        .unwrap_or(own)
}

/// The uid of the user a FUSE mount of device `dev` belongs to (its
/// `user_id=` option), from the text of a mountinfo file.
fn mount_owner(mountinfo: &str, dev: u64) -> Option<u32> {
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2) != Some(want.as_str()) {
            return None;
        }
        // After the " - " separator: type, source, superblock options.
        let (_, tail) = line.split_once(" - ")?;
        let options = tail.split(' ').nth(2)?;
        options
            .split(',')
            .find_map(|o| o.strip_prefix("user_id="))
            .and_then(|v| v.parse().ok())
    })
}

/// `request` through control socket `sock` (of the union at `mnt`).
pub fn request_at(mnt: &Path, sock: &Path, req: &Request) -> Result<Vec<Vec<u8>>, ClientError> {
    let mut c = UnixStream::connect(sock).map_err(|e| {
        ClientError::NoDaemon(format!(
            "{} is not a unionfs mount this user controls (no control socket {}: {e})",
            mnt.display(),
            sock.display()
        ))
    })?;
    let io = |e: std::io::Error| ClientError::NoDaemon(format!("control socket: {e}"));
    c.write_all(&req.encode()).map_err(io)?;
    c.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut reply = Vec::new();
    // A daemon that is slow to answer (a `flush` syncing a big upper, a
    // stopped process) is waited for, as umount waits for a filesystem;
    // after a while the caller is told whom it waits for.
    c.set_read_timeout(Some(PATIENCE)).map_err(io)?;
    match c.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            // (The socket's peer pid is no help: it names the process
            // that bound it, which a background mount's daemon is not.)
            eprintln!(
                "unionfs: waiting for the daemon of {} to answer '{}'",
                mnt.display(),
                req.verb()
            );
            c.set_read_timeout(None).map_err(io)?;
            c.read_to_end(&mut reply).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    if let Some(rest) = reply.strip_prefix(b"ok\n") {
        let mut recs: Vec<Vec<u8>> = rest.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        // The reply ends with a NUL: the last split is empty.
        if recs.last().is_some_and(Vec::is_empty) {
            recs.pop();
        }
        return Ok(recs);
    }
    let text = String::from_utf8_lossy(&reply);
    let line = text.trim_end();
    let mut parts = line.splitn(3, ' ');
    match (
        parts.next(),
        parts.next().and_then(|n| n.parse::<i32>().ok()),
        parts.next(),
    ) {
        (Some("error"), Some(n), Some(msg)) => Err(ClientError::Refused(Refused::new(
            Errno::from_raw(n),
            msg.to_string(),
        ))),
        _ => Err(ClientError::NoDaemon(format!(
            "unexpected reply from the daemon: {line:?}"
        ))),
    }
}

/// Parses `DIR[=MODE]`: the part after the last `=` is a mode when it
/// reads as one (so paths with `=` in them still work).
pub fn split_dir_mode(arg: &OsStr) -> Result<(PathBuf, Option<Mode>), String> {
    let b = arg.as_bytes();
    if let Some(i) = b.iter().rposition(|&c| c == b'=') {
        let word = String::from_utf8_lossy(&b[i + 1..]);
        if let Some(m) = Mode::parse(&word) {
            return Ok((path_of(&b[..i]), Some(m)));
        }
        if !word.contains('/') {
            return Err(format!(
                "unknown branch mode '{word}' in '{}' (rw, rw+nolwh, ro, ro+wh, rr, rr+wh)",
                arg.to_string_lossy()
            ));
        }
    }
    Ok((path_of(b), None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The owner of a FUSE mount is read from its superblock options, for
    /// the device asked only.
    #[test]
    fn mount_owner_reads_user_id_of_that_device() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
90 22 0:52 / /mnt/a rw,nosuid,nodev,relatime shared:50 - fuse.unionfs unionfs rw,user_id=65534,group_id=65534
91 22 0:53 / /mnt/b rw,relatime shared:51 - fuse.unionfs unionfs rw,user_id=0,group_id=0,allow_other
";
        assert_eq!(mount_owner(info, libc::makedev(0, 52)), Some(65534));
        assert_eq!(mount_owner(info, libc::makedev(0, 53)), Some(0));
        assert_eq!(mount_owner(info, libc::makedev(254, 0)), None);
        assert_eq!(mount_owner(info, libc::makedev(0, 54)), None);
    }
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake(Mutex<Vec<Listed>>);

    impl UnionControl for Fake {
        fn list(&self) -> Vec<Listed> {
            self.0.lock().unwrap().clone()
        }
        fn add(&self, at: Option<usize>, path: &Path, mode: Option<Mode>) -> Result<(), Refused> {
            let mut v = self.0.lock().unwrap();
            let at = at.unwrap_or(v.len());
            if at > v.len() {
                return Err(Refused::new(Errno::EINVAL, "no such position"));
            }
            v.insert(
                at,
                Listed {
                    path: path.into(),
                    mode: mode.unwrap_or(Mode::RO_WH),
                },
            );
            Ok(())
        }
        fn del(&self, path: &Path) -> Result<(), Refused> {
            let mut v = self.0.lock().unwrap();
            let i = v
                .iter()
                .position(|l| l.path == path)
                .ok_or_else(|| Refused::new(Errno::ENOENT, "not a branch"))?;
            v.remove(i);
            Ok(())
        }
        fn modify(&self, path: &Path, mode: Mode) -> Result<(), Refused> {
            let mut v = self.0.lock().unwrap();
            let l = v
                .iter_mut()
                .find(|l| l.path == path)
                .ok_or_else(|| Refused::new(Errno::ENOENT, "not a branch"))?;
            l.mode = mode;
            Ok(())
        }
        fn flush(&self) -> Result<(), Refused> {
            Err(Refused::new(Errno::ENOSPC, "full"))
        }
    }

    #[test]
    fn requests_round_trip_through_the_wire_format() {
        let f = Fake::default();
        let add = |at, p: &str, m| {
            answer(
                &Request::Add {
                    at,
                    path: p.into(),
                    mode: m,
                }
                .encode(),
                &f,
            )
        };
        assert_eq!(
            answer(&Request::Flush.encode(), &f).unwrap_err().errno,
            Errno::ENOSPC
        );
        add(None, "/b", None).unwrap();
        add(Some(0), "/a b=c", Some(Mode::RW)).unwrap();
        assert_eq!(add(Some(7), "/x", None).unwrap_err().errno, Errno::EINVAL);
        let l = answer(&Request::List.encode(), &f).unwrap();
        assert_eq!(
            l,
            vec![
                b"rw".to_vec(),
                b"/a b=c".to_vec(),
                b"ro+wh".to_vec(),
                b"/b".to_vec()
            ]
        );
        let m = Mode::parse("rr").unwrap();
        answer(
            &Request::Mod {
                path: "/b".into(),
                mode: m,
            }
            .encode(),
            &f,
        )
        .unwrap();
        answer(
            &Request::Del {
                path: "/a b=c".into(),
            }
            .encode(),
            &f,
        )
        .unwrap();
        assert_eq!(
            f.list(),
            vec![Listed {
                path: "/b".into(),
                mode: m
            }]
        );
        let e = answer(&Request::Del { path: "/zz".into() }.encode(), &f).unwrap_err();
        assert_eq!(e.errno, Errno::ENOENT);
        assert_eq!(answer(b"frobnicate", &f).unwrap_err().errno, Errno::EINVAL);
        assert_eq!(
            answer(b"mod\0/b\0ro+xx", &f).unwrap_err().errno,
            Errno::EINVAL
        );
    }

    #[test]
    fn dir_and_mode_split_at_the_last_equals_sign() {
        let s = |a: &str| split_dir_mode(OsStr::new(a));
        assert_eq!(s("/a=ro+wh"), Ok(("/a".into(), Mode::parse("ro+wh"))));
        assert_eq!(s("/a"), Ok(("/a".into(), None)));
        assert_eq!(s("/x=y/z"), Ok(("/x=y/z".into(), None)));
        assert_eq!(s("/a=b=rw"), Ok(("/a=b".into(), Some(Mode::RW))));
        assert!(s("/a=rx").is_err());
    }
}
