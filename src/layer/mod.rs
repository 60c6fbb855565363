//! Reading an upper branch offline — not mounted — as the changes it makes
//! to its lowers: `unionfs diff` (a `docker diff` list) and `unionfs export`
//! (an OCI layer tar).
//!
//! Invariant: an upper is read in whichever whiteout format it was written
//! (AUFS `.wh.` files, char 0:0 devices, xattr whiteouts, opaque markers
//! and xattrs, redirect and metacopy xattrs, unionfs-fuse `_HIDDEN~`
//! files), exactly as `whiteout` classifies names for the mounted union,
//! and union-internal names (`.wh..wh.*`, the staging dir, the unionfs-fuse
//! tree) never leave this module as paths. Nothing is written to the upper
//! or the lowers and no symlink is followed (`lstat`, `l*xattr`). Every
//! listing is sorted by name bytes, so the output is deterministic.
//! Takes no locks.

pub mod diff;
pub mod export;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::whiteout::{self, NameClass, Redirect};

/// An error of `diff` or `export`: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading or writing a path failed.
    #[error("{path}: {err}")]
    Io {
        /// The path.
        path: String,
        /// What went wrong.
        err: std::io::Error,
    },
    /// The upper cannot be turned into what was asked, and why.
    #[error("{0}")]
    Refused(String),
}

/// `Result` of this module.
pub type Result<T> = std::result::Result<T, LayerError>;

/// Attaches the path to an I/O error.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LayerError + '_ {
    move |err| LayerError::Io {
        path: path.display().to_string(),
        err,
    }
}

/// Joins a view path (relative, "" = root) and a name.
pub(crate) fn child(rel: &Path, name: &OsStr) -> PathBuf {
    if rel.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

/// A view path as users see it: `/a/b`.
pub(crate) fn shown(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// The xattrs of a path (not following a symlink), sorted by name.
pub(crate) fn xattrs(path: &Path) -> Result<BTreeMap<OsString, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattrs (and symlinks on some) have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(io_at(path)(e)),
    };
    for n in names {
        match xattr::get(path, &n) {
            Ok(Some(v)) => {
                out.insert(n, v);
            }
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(io_at(path)(e)),
        }
    }
    Ok(out)
}

fn has_any(x: &BTreeMap<OsString, Vec<u8>>, names: &[&str]) -> bool {
    names.iter().any(|n| x.contains_key(OsStr::new(n)))
}

fn first_of<'a>(x: &'a BTreeMap<OsString, Vec<u8>>, names: &[&str]) -> Option<&'a [u8]> {
    names
        .iter()
        .find_map(|n| x.get(OsStr::new(n)).map(Vec::as_slice))
}

/// Xattrs that say an upper object was copied up from (or hides) a lower
/// one, so it is a change, not an addition.
const PROVENANCE_XATTRS: [&str; 8] = [
    "trusted.overlay.origin",
    "user.overlay.origin",
    "user.fuseoverlayfs.origin",
    "trusted.unionfs.origin",
    "user.unionfs.origin",
    "trusted.unionfs.ino",
    "user.unionfs.ino",
    "trusted.overlay.impure",
];

/// What one upper entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obj {
    /// A directory; `redirect`: its lower content lives at another path.
    Dir {
        /// Where the lower content comes from.
        redirect: Option<Redirect>,
    },
    /// A regular file; `metacopy`: its data is in a lower (at `redirect`,
    /// or the same path).
    File {
        /// Metadata only.
        metacopy: bool,
        /// Where the data is.
        redirect: Option<Redirect>,
    },
    /// Symlink, device, fifo or socket.
    Other,
}

/// One object of an upper directory.
#[derive(Debug)]
pub struct Entry {
    /// Path on disk.
    pub path: PathBuf,
    /// Its lstat.
    pub md: Metadata,
    /// Its kind.
    pub obj: Obj,
    /// Its xattrs (private ones included).
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
    /// It carries an origin/ino xattr: it was copied up.
    pub copied_up: bool,
}

/// One upper directory, read.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects by name (whiteouts and internal names excluded).
    pub entries: BTreeMap<OsString, Entry>,
    /// Names whited out here, with the whiteout object's lstat (`None`
    /// for whiteouts kept elsewhere, as unionfs-fuse does).
    pub whiteouts: BTreeMap<OsString, Option<Metadata>>,
    /// The directory hides everything below it.
    pub opaque: bool,
}

/// An upper branch on disk.
#[derive(Debug)]
pub struct UpperDir {
    /// Its root.
    pub root: PathBuf,
    /// False for an upper recorded in AUFS format, whose char 0:0 devices
    /// are a user's devices rather than whiteouts.
    char_whiteouts: bool,
}

/// True when the object at `path` (lstat `md`) is a whiteout object: a
/// char 0:0 device (when `char_whiteouts`) or, when its directory is marked
/// as holding xattr whiteouts (`xwh`: `*.overlay.opaque=x`), an empty
/// regular file with a whiteout xattr — the rule the mounted union applies.
fn is_whiteout_obj(path: &Path, md: &Metadata, char_whiteouts: bool, xwh: bool) -> Result<bool> {
    let ft = md.file_type();
    if ft.is_char_device() {
        return Ok(char_whiteouts && whiteout::is_char_whiteout(libc::S_IFCHR, md.rdev()));
    }
    if xwh && ft.is_file() && md.len() == 0 {
        return Ok(has_any(&xattrs(path)?, &whiteout::WHITEOUT_XATTRS));
    }
    Ok(false)
}

fn lstat(path: &Path) -> Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(io_at(path)(e)),
    }
}

fn read_names(dir: &Path) -> Result<Vec<OsString>> {
    let mut names = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io_at(dir))?;
    names.sort();
    Ok(names)
}

/// True when a directory's xattrs mark it as holding xattr whiteouts.
fn marks_xattr_whiteouts(x: &BTreeMap<OsString, Vec<u8>>) -> bool {
    whiteout::OPAQUE_XATTRS.iter().any(|n| {
        x.get(OsStr::new(n)).is_some_and(|v| {
            whiteout::opacity_from_xattr(v) == whiteout::Opacity::HasXattrWhiteouts
        })
    })
}

fn dir_is_opaque(path: &Path, x: &BTreeMap<OsString, Vec<u8>>) -> Result<bool> {
    let by_xattr = whiteout::OPAQUE_XATTRS.iter().any(|n| {
        x.get(OsStr::new(n))
            .is_some_and(|v| whiteout::opacity_from_xattr(v) == whiteout::Opacity::Opaque)
    });
    Ok(by_xattr || lstat(&path.join(whiteout::OPAQUE_MARKER))?.is_some())
}

impl UpperDir {
    /// Opens an upper for reading.
    pub fn open(root: &Path) -> Result<UpperDir> {
        let md = std::fs::metadata(root).map_err(io_at(root))?;
        if !md.is_dir() {
            return Err(LayerError::Refused(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let x = xattrs(root)?;
        let aufs = first_of(&x, &whiteout::FORMAT_XATTRS) == Some(b"aufs".as_slice());
        Ok(UpperDir {
            root: root.to_path_buf(),
            char_whiteouts: !aufs,
        })
    }

    /// The on-disk path of view path `rel`.
    pub fn at(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// Reads the upper directory at view path `rel`.
    pub fn list(&self, rel: &Path) -> Result<Listing> {
        let dir = self.at(rel);
        let dir_x = xattrs(&dir)?;
        let mut l = Listing {
            opaque: dir_is_opaque(&dir, &dir_x)?,
            ..Listing::default()
        };
        let xwh = marks_xattr_whiteouts(&dir_x);
        let at_root = rel.as_os_str().is_empty();
        for name in read_names(&dir)? {
            if at_root
                && whiteout::UNIONFS_FUSE_DIRS
                    .iter()
                    .any(|d| name == OsStr::new(d))
            {
                continue;
            }
            let path = dir.join(&name);
            match whiteout::classify_name(&name) {
                NameClass::Internal | NameClass::OpaqueMarker => continue,
                NameClass::Whiteout(target) => {
                    l.whiteouts
                        .insert(target.to_os_string(), lstat(&path)?.filter(|m| m.is_file()));
                    continue;
                }
                NameClass::Plain => {}
            }
            let Some(md) = lstat(&path)? else { continue };
            if is_whiteout_obj(&path, &md, self.char_whiteouts, xwh)? {
                l.whiteouts.insert(name, Some(md));
                continue;
            }
            let x = xattrs(&path)?;
            let redirect =
                first_of(&x, &whiteout::REDIRECT_XATTRS).and_then(whiteout::parse_redirect);
            let obj = if md.is_dir() {
                Obj::Dir { redirect }
            } else if md.is_file() {
                Obj::File {
                    metacopy: has_any(&x, &whiteout::METACOPY_XATTRS),
                    redirect,
                }
            } else {
                Obj::Other
            };
            let copied_up =
                has_any(&x, &PROVENANCE_XATTRS) || matches!(obj, Obj::File { metacopy: true, .. });
            l.entries.insert(
                name,
                Entry {
                    path,
                    md,
                    obj,
                    xattrs: x,
                    copied_up,
                },
            );
        }
        // unionfs-fuse keeps whiteouts in a tree of its own.
        for d in whiteout::UNIONFS_FUSE_DIRS {
            let hidden = self.root.join(d).join(rel);
            if lstat(&hidden)?.is_some_and(|m| m.is_dir()) {
                for n in read_names(&hidden)? {
                    if let Some(t) = whiteout::strip_hidden(&n) {
                        if !l.entries.contains_key(t) {
                            l.whiteouts.entry(t.to_os_string()).or_insert(None);
                        }
                    }
                }
            }
        }
        Ok(l)
    }
}

/// Where a directory's (or metacopy file's) lower content lives, given the
/// lower source of its parent (`None`: the parent hides its lowers) and its
/// own name and redirect.
pub(crate) fn source_of(
    parent_src: Option<&Path>,
    name: &OsStr,
    redirect: Option<&Redirect>,
) -> Option<PathBuf> {
    match redirect {
        Some(Redirect::Absolute(p)) => Some(p.clone()),
        Some(Redirect::Relative(n)) => parent_src.map(|s| child(s, n)),
        None => parent_src.map(|s| child(s, name)),
    }
}

/// The merged view of the lower branches (topmost first), read offline with
/// the union's rules: a whiteout ends a lookup, a non-directory ends it, an
/// opaque directory stops the descent. (Redirects inside lowers are not
/// followed.)
#[derive(Debug)]
pub struct Lowers {
    roots: Vec<PathBuf>,
}

/// A path found in the lowers.
#[derive(Debug)]
pub struct Found {
    /// The topmost object.
    pub path: PathBuf,
    /// Its lstat.
    pub md: Metadata,
    /// For a directory, every branch directory merged into it, topmost first.
    pub dirs: Vec<PathBuf>,
}

fn lower_whiteout_at(dir: &Path, name: &OsStr) -> Result<bool> {
    if lstat(&dir.join(whiteout::whiteout_name(name)))?.is_some() {
        return Ok(true);
    }
    let p = dir.join(name);
    match lstat(&p)? {
        Some(md) => is_whiteout_obj(&p, &md, true, marks_xattr_whiteouts(&xattrs(dir)?)),
        None => Ok(false),
    }
}

impl Lowers {
    /// Checks that every lower is a directory.
    pub fn open(roots: Vec<PathBuf>) -> Result<Lowers> {
        for r in &roots {
            let md = std::fs::metadata(r).map_err(io_at(r))?;
            if !md.is_dir() {
                return Err(LayerError::Refused(format!(
                    "lower {} is not a directory",
                    r.display()
                )));
            }
        }
        Ok(Lowers { roots })
    }

    /// The object at view path `rel` in the merged lowers.
    pub fn find(&self, rel: &Path) -> Result<Option<Found>> {
        let mut dirs = self.roots.clone();
        let mut found: Option<Found> = None;
        for comp in rel.iter() {
            if dirs.is_empty() {
                return Ok(None);
            }
            let mut next = Vec::new();
            let mut top: Option<(PathBuf, Metadata)> = None;
            for d in &dirs {
                if lower_whiteout_at(d, comp)? {
                    break;
                }
                let p = d.join(comp);
                let Some(md) = lstat(&p)? else { continue };
                if !md.is_dir() {
                    if top.is_none() {
                        top = Some((p, md));
                    }
                    break;
                }
                let opaque = dir_is_opaque(&p, &xattrs(&p)?)?;
                if top.is_none() {
                    top = Some((p.clone(), md));
                }
                next.push(p);
                if opaque {
                    break;
                }
            }
            let Some((path, md)) = top else {
                return Ok(None);
            };
            dirs = if md.is_dir() { next } else { Vec::new() };
            found = Some(Found {
                path,
                md,
                dirs: dirs.clone(),
            });
        }
        if rel.as_os_str().is_empty() {
            let Some(first) = self.roots.first() else {
                return Ok(None);
            };
            let md = std::fs::metadata(first).map_err(io_at(first))?;
            return Ok(Some(Found {
                path: first.clone(),
                md,
                dirs: self.roots.clone(),
            }));
        }
        Ok(found)
    }

    /// The names of the merged lower directory at `rel` (empty when it is
    /// not a directory there), sorted, internal names and whiteouts
    /// removed.
    pub fn names(&self, rel: &Path) -> Result<BTreeSet<OsString>> {
        let mut out = BTreeSet::new();
        let Some(f) = self.find(rel)? else {
            return Ok(out);
        };
        let mut hidden = BTreeSet::new();
        for d in &f.dirs {
            // A `.wh.` file hides the name in the branches below only.
            let mut whited = Vec::new();
            let xwh = marks_xattr_whiteouts(&xattrs(d)?);
            for n in read_names(d)? {
                match whiteout::classify_name(&n) {
                    NameClass::Whiteout(t) => whited.push(t.to_os_string()),
                    NameClass::Plain => {
                        let p = d.join(&n);
                        let Some(md) = lstat(&p)? else { continue };
                        if !is_whiteout_obj(&p, &md, true, xwh)? && !hidden.contains(&n) {
                            out.insert(n.clone());
                        }
                        // A name found here hides the same name further down.
                        whited.push(n);
                    }
                    _ => {}
                }
            }
            hidden.extend(whited);
        }
        Ok(out)
    }
}

/// `unionfs diff UPPER [--lowers L1:L2] [--json]`: prints the changes.
pub fn run_diff(upper: &Path, lowers: Option<&str>, json: bool) -> Result<()> {
    let up = UpperDir::open(upper)?;
    let lw = lowers.map(|l| Lowers::open(parse_lowers(l))).transpose()?;
    let changes = diff::diff(&up, lw.as_ref())?;
    let text = diff::render(&changes, json);
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, text.as_bytes()).map_err(io_at(Path::new("stdout")))
}

/// `unionfs export UPPER OUT [--lowers L1:L2] [--mtime SECS]`: writes the
/// layer (to a temporary name beside OUT, renamed into place once
/// complete, so a failed export leaves no half layer), then prints its
/// digests on stderr.
pub fn run_export(
    upper: &Path,
    out: &Path,
    lowers: Option<&str>,
    mtime: Option<u64>,
) -> Result<()> {
    let up = UpperDir::open(upper)?;
    let lw = lowers.map(|l| Lowers::open(parse_lowers(l))).transpose()?;
    let opts = export::ExportOptions { mtime_clamp: mtime };
    let compression = export::Compression::of_name(out);
    let digests = if out.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        export::write_layer(
            &up,
            lw.as_ref(),
            &opts,
            std::io::BufWriter::new(stdout),
            compression,
        )?
    } else {
        let canon_up = std::fs::canonicalize(upper).map_err(io_at(upper))?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let canon_parent = std::fs::canonicalize(&parent).map_err(io_at(&parent))?;
        if canon_parent.starts_with(&canon_up) {
            return Err(LayerError::Refused(format!(
                "{}: the layer cannot be written inside the upper it is made from",
                out.display()
            )));
        }
        let Some(file_name) = out.file_name() else {
            return Err(LayerError::Refused(format!(
                "{}: not a file name",
                out.display()
            )));
        };
        let mut tmp_name = OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = parent.join(tmp_name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let res = export::write_layer(
            &up,
            lw.as_ref(),
            &opts,
            std::io::BufWriter::new(&f),
            compression,
        )
        .and_then(|d| {
            f.sync_all().map_err(io_at(&tmp))?;
            std::fs::rename(&tmp, out).map_err(io_at(out))?;
            Ok(d)
        });
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res?
    };
    eprintln!("diff_id {}", digests.diff_id);
    eprintln!("digest {}", digests.digest);
    Ok(())
}

/// Splits a `--lowers` list as the mount command does (`\:` escapes).
pub fn parse_lowers(list: &str) -> Vec<PathBuf> {
    crate::config::split_branches(list)
}

/// A path's bytes, for sorting and output.
pub(crate) fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}
